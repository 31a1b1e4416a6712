"""`arbiter smoke` against a live local deployment: both services as real subprocesses with their metrics
served, the command run as a person runs it (a subprocess), its steps, exit codes and what it leaves."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest

from arbiter.v1 import agent_pb2
from arbiter.v1 import registry_service_pb2 as rpb
from arbiter.v1 import registry_service_pb2_grpc as rpb_grpc
from shared.api_keys import Role
from shared.database import open_pool
from tests.support.certificates import create_pki
from tests.support.processes import ServiceProcesses, free_port, running_services
from tests.support.stack import create_keys, metadata, running_stack
from tests.support.waiting import eventually
from tests.test_cli import arbiter, assert_one_line_error, environment, succeeded
from tests.test_tls import server_tls

PASSING_STEPS = [
    "registry health",
    "registry reflection",
    "orchestrator health",
    "orchestrator reflection",
    "register agent",
    "open assignment stream",
    "submit task",
    "run one task",
    "read result",
    "orchestrator metrics",
    "registry metrics",
    "deregister agent",
]


@pytest.fixture
async def deployment(database_url: str, tmp_path: Path) -> AsyncIterator[ServiceProcesses]:
    """Both services as subprocesses, each serving Prometheus metrics on a port of its own."""
    async with running_services(database_url, tmp_path / "service-logs", metrics=True) as processes:
        yield processes


def smoke_arguments(services: ServiceProcesses, *extra: str, key: str | None = None) -> list[str]:
    return [
        "smoke",
        "--orchestrator",
        services.orchestrator_address,
        "--registry",
        services.registry_address,
        "--key",
        services.keys[Role.ADMIN] if key is None else key,
        *extra,
    ]


def with_metrics(services: ServiceProcesses) -> list[str]:
    return [
        "--orchestrator-metrics",
        services.metrics_url("orchestrator"),
        "--registry-metrics",
        services.metrics_url("registry"),
    ]


async def smoke_rows(database_url: str) -> dict[str, int]:
    """How many smoke agents the registry holds, how many open streams the orchestrator records for
    them, and how many smoke tasks completed."""
    pool = await open_pool(database_url, 1, 1, name="smoke-test")
    try:
        async with pool.connection() as connection:
            counts = {}
            for name, query in (
                ("agents", "SELECT count(*) AS n FROM agents WHERE id LIKE '%smoke-%'"),
                ("streams", "SELECT count(*) AS n FROM agent_streams WHERE agent_id LIKE '%smoke-%'"),
                (
                    "completed tasks",
                    "SELECT count(*) AS n FROM tasks WHERE task_type LIKE 'arbiter-smoke-%' AND state = 'completed'",
                ),
            ):
                row = await (await connection.execute(query)).fetchone()
                assert row is not None
                counts[name] = int(row["n"])
            return counts
    finally:
        await pool.close()


async def no_stream_left(database_url: str) -> None:
    """The orchestrator forgets a closed stream a moment after it closes (its reconnect grace)."""

    async def streams_gone() -> bool:
        return (await smoke_rows(database_url))["streams"] == 0

    await eventually(streams_gone, "the orchestrator to forget the smoke agent's stream")


async def test_every_step_passes_against_a_live_deployment_and_no_agent_is_left_behind(
    deployment: ServiceProcesses, database_url: str
) -> None:
    result = await arbiter(environment(), *smoke_arguments(deployment, *with_metrics(deployment)))
    output = succeeded(result)
    lines = output.splitlines()
    assert [line.split("  ")[0] for line in lines[:-1]] == [f"✓ {step}" for step in PASSING_STEPS], output
    assert lines[-1].startswith(f"smoke passed: {len(PASSING_STEPS)} steps in "), output
    assert result.stderr == ""
    rows = await smoke_rows(database_url)
    assert (rows["agents"], rows["completed tasks"]) == (0, 1), rows
    await no_stream_left(database_url)


async def test_json_reports_every_step_with_its_outcome_and_time(deployment: ServiceProcesses) -> None:
    result = await arbiter(environment(), *smoke_arguments(deployment, "--skip-metrics", "--json"))
    report = json.loads(succeeded(result))
    assert set(report) == {
        "passed",
        "failed_step",
        "error",
        "orchestrator",
        "registry",
        "agent_id",
        "task_type",
        "task_id",
        "steps",
    }
    assert (report["passed"], report["failed_step"], report["error"]) == (True, None, None)
    assert report["agent_id"].startswith("smoke-") and report["task_type"].startswith("arbiter-smoke-")
    assert report["orchestrator"] == deployment.orchestrator_address
    outcomes = {step["name"]: step["outcome"] for step in report["steps"]}
    assert [step["name"] for step in report["steps"]] == PASSING_STEPS
    assert outcomes["orchestrator metrics"] == outcomes["registry metrics"] == "skipped"
    assert {outcome for name, outcome in outcomes.items() if "metrics" not in name} == {"passed"}
    for step in report["steps"]:
        assert set(step) == {"name", "outcome", "milliseconds", "detail"}
        assert isinstance(step["milliseconds"], int | float) and step["milliseconds"] >= 0
    assert report["task_id"] in next(step["detail"] for step in report["steps"] if step["name"] == "submit task")


async def test_a_submitting_key_and_an_agent_key_bound_to_smoke_agents_together_pass(
    deployment: ServiceProcesses, database_url: str
) -> None:
    result = await arbiter(
        environment(),
        *smoke_arguments(
            deployment,
            "--skip-metrics",
            "--agent-key",
            deployment.keys[Role.AGENT],
            key=deployment.keys[Role.SUBMITTER],
        ),
    )
    assert "✓ deregister agent" in succeeded(result)
    assert (await smoke_rows(database_url))["agents"] == 0


async def test_a_task_that_never_runs_fails_the_run_step_and_is_cancelled_and_the_agent_removed(
    deployment: ServiceProcesses, database_url: str
) -> None:
    # An agent key of another tenant: the agent registers and connects there, where the task never goes.
    other_tenant_agent_key = (await create_keys(database_url, tenant="elsewhere"))[Role.AGENT]
    arguments = smoke_arguments(deployment, "--skip-metrics", "--timeout", "2", "--agent-key", other_tenant_agent_key)
    result = await arbiter(environment(), *arguments)
    line = assert_one_line_error(
        result, 1, 'arbiter: smoke failed at "run one task": DEADLINE_EXCEEDED: the task is still PENDING after '
    )
    assert line.endswith("(are --key and --agent-key keys of one tenant?)"), line
    assert "✓ cancel task" in result.stdout and "✓ deregister agent" in result.stdout, result.stdout
    rows = await smoke_rows(database_url)
    assert (rows["agents"], rows["completed tasks"]) == (0, 0), rows
    await no_stream_left(database_url)
    pool = await open_pool(database_url, 1, 1, name="smoke-test")
    try:
        async with pool.connection() as connection:
            states = await (
                await connection.execute("SELECT state FROM tasks WHERE task_type LIKE 'arbiter-smoke-%'")
            ).fetchall()
    finally:
        await pool.close()
    assert [row["state"] for row in states] == ["cancelled"]


async def test_a_wrong_key_fails_at_registering_the_agent_as_unauthenticated(
    deployment: ServiceProcesses, database_url: str
) -> None:
    result = await arbiter(environment(), *smoke_arguments(deployment, "--skip-metrics", key="arb_" + "0" * 64))
    assert_one_line_error(result, 1, 'arbiter: smoke failed at "register agent": UNAUTHENTICATED: ')
    assert "✓ orchestrator reflection" in result.stdout
    assert "✗ register agent" in result.stdout
    assert "- deregister agent  skipped (the agent was never registered)" in result.stdout
    assert (await smoke_rows(database_url))["agents"] == 0


async def test_a_key_that_may_not_register_agents_fails_there_as_permission_denied(
    deployment: ServiceProcesses,
) -> None:
    result = await arbiter(
        environment(), *smoke_arguments(deployment, "--skip-metrics", key=deployment.keys[Role.SUBMITTER])
    )
    assert_one_line_error(result, 1, 'arbiter: smoke failed at "register agent": PERMISSION_DENIED: ')


async def test_a_closed_registry_port_fails_the_registry_health_step(deployment: ServiceProcesses) -> None:
    closed = f"127.0.0.1:{free_port()}"
    arguments = smoke_arguments(deployment, "--skip-metrics")
    arguments[arguments.index("--registry") + 1] = closed
    result = await arbiter(environment(), *arguments)
    line = assert_one_line_error(result, 1, 'arbiter: smoke failed at "registry health": UNAVAILABLE: ')
    assert f"cannot reach {closed}" in line
    assert "register agent" not in result.stdout


async def test_over_mutual_tls_every_step_passes_with_the_tls_flags_and_plaintext_fails_at_health(
    database_url: str, tmp_path: Path
) -> None:
    pki = create_pki(tmp_path / "pki")
    async with running_stack(database_url, **server_tls(pki, mutual=True)) as stack:
        addresses = ["--orchestrator", stack.orchestrator_address, "--registry", stack.registry_address]
        common = ["smoke", *addresses, "--key", stack.keys[Role.ADMIN], "--skip-metrics"]
        tls_flags = ["--tls-ca", str(pki.ca), "--tls-client-cert", str(pki.client.cert)]
        tls_flags += ["--tls-client-key", str(pki.client.key)]
        over_tls = await arbiter(environment(), *common, *tls_flags)
        plaintext = await arbiter(environment(), *common)
    assert "✓ deregister agent" in succeeded(over_tls)
    assert_one_line_error(plaintext, 1, 'arbiter: smoke failed at "registry health": UNAVAILABLE: ')


class AnswersNotFound(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_error(404, "Not Found")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def not_found_url() -> Iterator[str]:
    """An HTTP server that answers every request 404."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), AnswersNotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()


async def test_a_metrics_url_answering_404_fails_the_orchestrator_metrics_step_and_still_cleans_up(
    deployment: ServiceProcesses, database_url: str, not_found_url: str
) -> None:
    arguments = [
        "--orchestrator-metrics",
        not_found_url,
        "--registry-metrics",
        deployment.metrics_url("registry"),
    ]
    result = await arbiter(environment(), *smoke_arguments(deployment, *arguments))
    assert_one_line_error(result, 1, 'arbiter: smoke failed at "orchestrator metrics": HTTP_404: ')
    assert "✓ deregister agent" in result.stdout
    assert (await smoke_rows(database_url))["agents"] == 0


async def test_a_closed_metrics_port_fails_the_registry_metrics_step(deployment: ServiceProcesses) -> None:
    closed = f"http://127.0.0.1:{free_port()}/metrics"
    arguments = ["--orchestrator-metrics", deployment.metrics_url("orchestrator"), "--registry-metrics", closed]
    result = await arbiter(environment(), *smoke_arguments(deployment, *arguments))
    line = assert_one_line_error(result, 1, 'arbiter: smoke failed at "registry metrics": UNREACHABLE: ')
    assert closed in line
    assert "✓ orchestrator metrics" in result.stdout


async def test_metrics_of_another_process_fail_as_not_counting_the_smokes_calls(
    deployment: ServiceProcesses,
) -> None:
    # The registry's metrics where the orchestrator's belong: real metrics, but of a process that never
    # served SubmitTask.
    arguments = [
        "--orchestrator-metrics",
        deployment.metrics_url("registry"),
        "--registry-metrics",
        deployment.metrics_url("registry"),
    ]
    result = await arbiter(environment(), *smoke_arguments(deployment, *arguments))
    assert_one_line_error(result, 1, 'arbiter: smoke failed at "orchestrator metrics": NOT_COUNTED: ')


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "arbiter: no metrics to check: give --orchestrator-metrics URL and --registry-metrics URL"),
        (["--orchestrator-metrics", "http://127.0.0.1:9464/metrics"], "arbiter: --registry-metrics is missing: "),
        (["--skip-metrics", "--registry-metrics", "http://x/metrics"], "arbiter: --skip-metrics skips the metrics"),
        (
            ["--orchestrator-metrics", "127.0.0.1:9464", "--registry-metrics", "http://x/metrics"],
            "arbiter: --orchestrator-metrics takes an http(s) URL",
        ),
    ],
)
async def test_without_a_clear_choice_about_metrics_it_is_a_usage_error(extra: list[str], message: str) -> None:
    result = await arbiter(environment(ARBITER_API_KEY="arb_unused"), "smoke", *extra)
    assert_one_line_error(result, 2, message)
    assert result.stdout == ""


async def test_agents_deregister_removes_an_agent_and_a_second_time_says_not_found(
    services: ServiceProcesses,
) -> None:
    async with grpc.aio.insecure_channel(services.registry_address) as channel:
        await rpb_grpc.RegistryServiceStub(channel).RegisterAgent(
            rpb.RegisterAgentRequest(
                agent=agent_pb2.Agent(
                    id="leaving", capabilities=agent_pb2.AgentCapabilities(task_types=["x"]), max_concurrent_tasks=1
                )
            ),
            metadata=metadata(services.keys[Role.AGENT]),
        )
    variables = environment(
        ARBITER_REGISTRY_ADDR=services.registry_address,
        ARBITER_ORCHESTRATOR_ADDR=services.orchestrator_address,
        ARBITER_API_KEY=services.keys[Role.OPERATOR],
    )
    assert succeeded(await arbiter(variables, "agents", "deregister", "leaving")) == "agent leaving deregistered\n"
    again = await arbiter(variables, "agents", "deregister", "leaving")
    assert_one_line_error(again, 1, "arbiter: NOT_FOUND: ")
