"""`make loadtest` (bench/loadtest): its arithmetic and verdict as pure functions, a short run against its
own stack, and a run in which the test deletes a task from the database, which must fail naming it."""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from bench.loadtest import metrics, report
from bench.loadtest.clients import split_clients
from bench.loadtest.run import SHARES, parse_arguments, rate_limits_setting
from bench.loadtest.stack import UNLIMITED_RATE_LIMITS
from shared.api_keys import Role
from tests.support.database import PostgresForTests
from tests.support.processes import REPO_ROOT, ServiceProcesses
from tests.support.waiting import eventually

CLIENT_RPCS = {"SubmitTask", "SubmitTasks", "WatchTask", "GetTask", "GetTaskHistory", "ListTasks", "ListAgents"}
CLIENT_RPCS |= {"GetQueueStats"}
RUN_TIMEOUT_SECONDS = 150.0


# The arithmetic.


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(number) for number in range(1, 101)]
    assert report.percentile(values, 0.50) == 50.0
    assert report.percentile(values, 0.95) == 95.0
    assert report.percentile(values, 0.99) == 99.0
    assert report.percentile([7.0], 0.99) == 7.0
    assert math.isnan(report.percentile([], 0.5))


def test_rpc_figures_count_every_call_by_code_and_sort_by_name() -> None:
    figures = report.rpc_figures(
        {"SubmitTask": [3.0, 1.0, 2.0], "GetTask": [5.0]},
        {"SubmitTask": {"OK": 2, "INTERNAL": 1}, "GetTask": {"OK": 1, "NOT_FOUND": 0}},
    )
    assert [figure.rpc for figure in figures] == ["GetTask", "SubmitTask"]
    submit = figures[1]
    assert (submit.calls, submit.errors, submit.codes) == (3, 1, {"INTERNAL": 1, "OK": 2})
    assert (submit.p50_ms, submit.p99_ms, submit.max_ms) == (2.0, 3.0, 3.0)
    assert figures[0].codes == {"OK": 1}


def test_refusals_server_errors_and_other_errors_are_told_apart() -> None:
    figures = report.rpc_figures(
        {},
        {
            "SubmitTask": {"OK": 90, "RESOURCE_EXHAUSTED": 5, "INTERNAL": 1},
            "GetTask": {"OK": 2, "DEADLINE_EXCEEDED": 1, "NOT_FOUND": 1},
        },
    )
    summary = report.summarise_errors(figures)
    assert (summary.calls, summary.refused, summary.server_errors, summary.other_errors) == (100, 5, 2, 1)
    assert summary.error_rate == pytest.approx(0.08)


def test_a_task_missing_from_the_database_is_lost_and_one_not_finished_is_stuck() -> None:
    account = report.account_tasks(
        ["a", "b", "c", "d", "a"], {"a": "completed", "b": "failed", "c": "running", "x": "pending"}
    )
    assert account.submitted == 4
    assert account.lost == ["d"]
    assert account.stuck == {"c": "running"}
    assert account.by_state == {"completed": 1, "failed": 1, "running": 1}


def test_a_clean_run_has_no_failures() -> None:
    errors = report.ErrorSummary(calls=1000, refused=3, server_errors=0, other_errors=2)
    account = report.account_tasks(["a"], {"a": "completed"})
    assert report.failures(errors, {}, account, max_error_rate=0.01) == []


def test_every_reason_to_fail_is_named() -> None:
    errors = report.ErrorSummary(calls=100, refused=0, server_errors=1, other_errors=4)
    account = report.account_tasks(["lost-1", "stuck-1"], {"stuck-1": "pending"})
    server_errors = report.server_side_errors({"OrchestratorService/SubmitTask": {"OK": 9, "INTERNAL": 2}})
    found = report.failures(errors, server_errors, account, max_error_rate=0.01)
    assert len(found) == 5
    assert "lost" in found[0] and "lost-1" in found[0]
    assert "stuck" in found[1] and "stuck-1 (pending)" in found[1]
    assert "server error" in found[2]
    assert "OrchestratorService/SubmitTask" in found[3] and "INTERNAL ×2" in found[3]
    assert "error rate 5.0000%" in found[4]


def test_refusals_and_client_cancellations_are_not_server_errors() -> None:
    handled = {"OrchestratorService/WatchTask": {"OK": 5, "CANCELLED": 3}, "X/Y": {"RESOURCE_EXHAUSTED": 4}}
    assert report.server_side_errors(handled) == {}


def test_histogram_quantile_interpolates_within_the_bucket() -> None:
    bounds = [(0.01, 50.0), (0.1, 90.0), (1.0, 100.0), (math.inf, 100.0)]
    assert metrics.histogram_quantile(bounds, 0.5) == pytest.approx(0.01)
    assert metrics.histogram_quantile(bounds, 0.95) == pytest.approx(0.55)
    assert metrics.histogram_quantile([(0.1, 0.0), (math.inf, 0.0)], 0.95) != metrics.histogram_quantile([], 0.5)
    assert metrics.histogram_quantile([(0.1, 1.0), (math.inf, 10.0)], 0.99) == 0.1


GET_TASK = 'grpc_type="unary",grpc_service="arbiter.v1.OrchestratorService",grpc_method="GetTask"'


def scrape_text(ok: float, fast: float, every: float, internal: float = 0.0) -> str:
    """/metrics as a service serves it (codes spelt as go-grpc-prometheus does): GetTask's calls by code
    and its latency buckets."""
    return f"""
# TYPE grpc_server_handled_total counter
grpc_server_handled_total{{{GET_TASK},grpc_code="OK"}} {ok}
grpc_server_handled_total{{{GET_TASK},grpc_code="NotFound"}} 1.0
grpc_server_handled_total{{{GET_TASK},grpc_code="Internal"}} {internal}
# TYPE grpc_server_handling_seconds histogram
grpc_server_handling_seconds_bucket{{{GET_TASK},le="0.01"}} {fast}
grpc_server_handling_seconds_bucket{{{GET_TASK},le="+Inf"}} {every}
"""


def test_the_server_figures_are_the_difference_between_two_scrapes() -> None:
    before = metrics.parse([scrape_text(10.0, 10.0, 11.0)])
    after = metrics.parse([scrape_text(30.0, 30.0, 31.0)])
    figures = metrics.server_figures(metrics.difference(after, before))
    assert figures["OrchestratorService/GetTask"]["codes"] == {"OK": 20}
    assert figures["OrchestratorService/GetTask"]["p95_ms"] == pytest.approx(9.5)


def test_a_server_error_in_the_scrapes_is_found_under_the_clients_name_for_it() -> None:
    before = metrics.parse([scrape_text(10.0, 10.0, 11.0)])
    after = metrics.parse([scrape_text(10.0, 10.0, 13.0, internal=2.0)])
    handled = metrics.difference(after, before).handled
    assert report.server_side_errors(handled) == {"OrchestratorService/GetTask": {"INTERNAL": 2}}


def test_clients_are_split_into_every_kind_and_spread_over_the_processes() -> None:
    splits = split_clients(100, 3, SHARES)
    assert sum(sum(split.values()) for split in splits) == 100
    assert all(all(split[kind] > 0 for kind in SHARES) for split in splits)
    assert {kind: sum(split[kind] for split in splits) for kind in SHARES} == {
        "submitter": 30,
        "watcher": 30,
        "reader": 40,
    }
    assert split_clients(6, 2, SHARES) == [{"submitter": 1, "watcher": 1, "reader": 1}] * 2


def test_an_existing_deployment_needs_its_registry_key_and_database(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ARBITER_DATABASE_URL", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        parse_arguments(["--orchestrator", "127.0.0.1:50052"])
    assert exit_info.value.code == 2
    assert "also give --registry, --key, --database-url" in capsys.readouterr().err


def test_rate_limits_are_off_unless_asked_for() -> None:
    assert rate_limits_setting("off") == UNLIMITED_RATE_LIMITS
    assert rate_limits_setting("default") is None
    assert rate_limits_setting("submitter=10/20") == "submitter=10/20"
    assert parse_arguments([]).rate_limits == "off"


# Real runs.


def loadtest_command(tmp_path: Path, *options: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.loadtest",
        "--duration",
        "3",
        "--clients",
        "6",
        "--client-processes",
        "2",
        "--agents",
        "2",
        "--agents-per-process",
        "1",
        "--out",
        str(tmp_path / "loadtest.json"),
        *options,
    ]


async def run_loadtest(command: list[str], environment: dict[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=REPO_ROOT,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_SECONDS)
    assert process.returncode is not None
    return process.returncode, output.decode()


@pytest.fixture
def loadtest_database(test_postgres: PostgresForTests) -> Iterator[str]:
    """The name of the database the run makes for itself, dropped afterwards."""
    name = f"arbiter_test_loadtest_{uuid.uuid4().hex[:12]}"
    yield name
    test_postgres.drop_database(test_postgres.url_for(name))


@pytest.mark.e2e
@pytest.mark.xdist_group("e2e")
async def test_a_short_run_on_its_own_stack_passes_and_reports_every_rpc(
    test_postgres: PostgresForTests, loadtest_database: str, tmp_path: Path
) -> None:
    environment = {
        **{name: value for name, value in os.environ.items() if not name.startswith(("ARBITER_", "PG"))},
        "ARBITER_DATABASE_URL": test_postgres.admin_url,
    }
    code, output = await run_loadtest(loadtest_command(tmp_path, "--database-name", loadtest_database), environment)
    assert code == 0, output
    assert "PASSED" in output
    figures = json.loads((tmp_path / "loadtest.json").read_text())
    assert figures["setup"]["clients"] == {"submitter": 2, "watcher": 2, "reader": 2}
    rpcs = {rpc["rpc"]: rpc for rpc in figures["rpcs"]}
    assert set(rpcs) == CLIENT_RPCS
    for name, rpc in rpcs.items():
        assert rpc["calls"] > 0 and rpc["errors"] == 0, name
        assert rpc["p50_ms"] <= rpc["p95_ms"] <= rpc["p99_ms"] <= rpc["max_ms"], name
        assert name in output
    tasks = figures["tasks"]
    assert tasks["submitted"] > 0
    assert tasks["by_state"] == {"completed": tasks["submitted"]}
    assert (tasks["lost"], tasks["stuck"]) == ([], {})
    server = figures["server"]
    for method in (
        "OrchestratorService/SubmitTasks",
        "OrchestratorService/CompleteTasks",
        "RegistryService/ListAgents",
    ):
        assert server[method]["codes"].get("OK", 0) > 0, method
    assert figures["server_errors"] == {}
    assert figures["setup"]["rate_limits"].startswith("admin=unlimited")


@pytest.mark.e2e
@pytest.mark.xdist_group("e2e")
async def test_a_task_deleted_from_the_database_fails_the_run_naming_it(
    services: ServiceProcesses, tmp_path: Path
) -> None:
    environment = {name: value for name, value in os.environ.items() if not name.startswith(("ARBITER_", "PG"))}
    command = loadtest_command(
        tmp_path,
        "--orchestrator",
        services.orchestrator_address,
        "--registry",
        services.registry_address,
        "--key",
        services.keys[Role.SUBMITTER],
        "--agent-key",
        services.keys[Role.AGENT],
        "--database-url",
        services.database_url,
    )
    run = asyncio.create_task(run_loadtest(command, environment))

    async def delete_a_task() -> str | None:
        async with await psycopg.AsyncConnection.connect(services.database_url, autocommit=True) as connection:
            cursor = await connection.execute(
                "DELETE FROM tasks WHERE id = (SELECT id FROM tasks ORDER BY created_at LIMIT 1) RETURNING id::text"
            )
            row = await cursor.fetchone()
        return row[0] if row else None

    deleted = await eventually(delete_a_task, "a task submitted by the load test", timeout=60)
    code, output = await run
    assert code == 1, output
    assert "FAILED" in output
    assert f"1 task(s) lost (a client holds the id, the database does not): {deleted}" in output
    figures = json.loads((tmp_path / "loadtest.json").read_text())
    assert figures["tasks"]["lost"] == [deleted]
    assert figures["passed"] is False
