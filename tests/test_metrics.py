"""Prometheus metrics, scraped over HTTP from real servers: the gRPC server metrics with each call's real
status code (refusals included), the task, agent and pool figures, and every metric the dashboard and
the alerts in deploy/monitoring use."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from arbiter import Client, Task
from arbiter.v1 import agent_pb2
from arbiter.v1 import orchestrator_service_pb2 as opb
from arbiter.v1 import registry_service_pb2 as rpb
from shared import metrics as shared_metrics
from shared.api_keys import Role
from tests.support.stack import Stack, running_stack, serving_agent

REPO_ROOT = Path(__file__).resolve().parents[1]
WAIT_SECONDS = 20.0
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
async def observed_stack(database_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    """Both services with metrics on free ports, their database gauges read every 0.1 s."""
    monkeypatch.setattr(shared_metrics, "REFRESH_SECONDS", 0.1)
    async with running_stack(database_url, metrics_addr="127.0.0.1:0") as stack:
        yield stack


def scrape(port: int | None) -> str:
    assert port is not None, "the server was started without a metrics address"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


def samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def eventually_scraped(port: int | None, name: str, check: Any, **labels: str) -> Samples:
    """Scrapes until the sample satisfies `check`, for figures refreshed in the background."""
    async with asyncio.timeout(WAIT_SECONDS):
        while True:
            found = samples(await asyncio.to_thread(scrape, port))
            if check(value(found, name, **labels)):
                return found
            await asyncio.sleep(0.05)


async def test_every_call_is_counted_and_timed_under_the_status_code_its_caller_got(observed_stack: Stack) -> None:
    port = observed_stack.orchestrator_app.server.metrics_port
    call = ("unary", "arbiter.v1.OrchestratorService", "SubmitTask")
    labels = dict(zip(("grpc_type", "grpc_service", "grpc_method"), call, strict=True))
    before = samples(scrape(port))
    orchestrator = observed_stack.orchestrator()
    await orchestrator.SubmitTask(
        opb.SubmitTaskRequest(task_type="work"), metadata=observed_stack.as_role(Role.SUBMITTER)
    )
    for metadata, expected in (
        ((("authorization", "Bearer arb_" + "0" * 64),), grpc.StatusCode.UNAUTHENTICATED),
        (observed_stack.as_role(Role.VIEWER), grpc.StatusCode.PERMISSION_DENIED),
        (observed_stack.as_role(Role.SUBMITTER), grpc.StatusCode.INVALID_ARGUMENT),
    ):
        request = opb.SubmitTaskRequest(task_type="" if expected == grpc.StatusCode.INVALID_ARGUMENT else "work")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await orchestrator.SubmitTask(request, metadata=metadata)
        assert refused.value.code() == expected
    after = samples(scrape(port))

    def grew(name: str, **extra: str) -> float:
        return value(after, name, **labels, **extra) - value(before, name, **labels, **extra)

    assert grew("grpc_server_started_total") == 4
    assert {
        code: grew("grpc_server_handled_total", grpc_code=code)
        for code in ("OK", "Unauthenticated", "PermissionDenied", "InvalidArgument")
    } == {"OK": 1, "Unauthenticated": 1, "PermissionDenied": 1, "InvalidArgument": 1}
    assert grew("grpc_server_handling_seconds_count") == 4


async def test_a_task_moves_the_task_assignment_and_agent_figures(observed_stack: Stack) -> None:
    orchestrator_port = observed_stack.orchestrator_app.server.metrics_port
    registry_port = observed_stack.registry_app.server.metrics_port

    async def handle(task: Task) -> dict[str, Any]:
        return {}

    async with Client(
        observed_stack.orchestrator_address,
        observed_stack.keys[Role.SUBMITTER],
        registry_address=observed_stack.registry_address,
    ) as client:
        waiting = await client.submit("metered", {})
        await eventually_scraped(
            orchestrator_port, "arbiter_queue_depth", lambda depth: depth == 1, task_type="metered"
        )
        found = await eventually_scraped(
            orchestrator_port, "arbiter_queue_oldest_pending_age_seconds", lambda age: age > 0, task_type="metered"
        )
        assert value(found, "arbiter_tasks", task_type="metered", state="PENDING") == 1
        async with serving_agent(observed_stack, "metered-agent", {"metered": handle}):
            await client.wait(waiting.id, timeout=WAIT_SECONDS)
            found = await eventually_scraped(orchestrator_port, "arbiter_connected_agents", lambda count: count >= 1)
            await eventually_scraped(registry_port, "arbiter_agents", lambda count: count >= 1, status="ONLINE")
    found = await eventually_scraped(
        orchestrator_port, "arbiter_tasks", lambda count: count == 1, task_type="metered", state="COMPLETED"
    )
    assert value(found, "arbiter_assignments_total", task_type="metered") >= 1
    assert value(found, "arbiter_schedule_to_start_seconds_count") >= 1
    assert value(found, "arbiter_routing_decision_seconds_count") >= 1
    assert value(found, "arbiter_queue_depth", task_type="metered") == 0
    assert value(found, "arbiter_database_up", service="orchestrator") == 1
    assert value(found, "arbiter_db_pool_size", service="orchestrator", pool="primary") >= 1


async def test_a_failure_without_attempts_left_counts_as_a_dead_letter_and_a_retryable_one_as_a_retry(
    observed_stack: Stack,
) -> None:
    port = observed_stack.orchestrator_app.server.metrics_port
    before = samples(scrape(port))

    async def fail(task: Task) -> dict[str, Any]:
        raise ValueError("not today")

    async with Client(
        observed_stack.orchestrator_address,
        observed_stack.keys[Role.SUBMITTER],
        registry_address=observed_stack.registry_address,
    ) as client:
        task = await client.submit("failing", {}, max_attempts=2)
        async with serving_agent(observed_stack, "failing-agent", {"failing": fail}):
            await client.wait(task.id, timeout=WAIT_SECONDS)
    after = samples(scrape(port))
    assert value(after, "arbiter_retries_total") - value(before, "arbiter_retries_total") == 1
    assert value(after, "arbiter_dead_letters_total", task_type="failing") == 1


async def test_an_attempt_whose_lease_runs_out_counts_as_a_lease_expiry_and_a_retry(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared_metrics, "REFRESH_SECONDS", 0.1)
    async with running_stack(database_url, metrics_addr="127.0.0.1:0", lease_seconds=0.5, sweep_seconds=0.1) as stack:
        port = stack.orchestrator_app.server.metrics_port
        before = samples(scrape(port))
        agent = agent_pb2.Agent(id="silent-agent", capabilities=agent_pb2.AgentCapabilities(task_types=["leased"]))
        await stack.registry().RegisterAgent(rpb.RegisterAgentRequest(agent=agent), metadata=stack.as_role(Role.AGENT))
        # Takes the task and never reports on it.
        stream = stack.orchestrator().StreamAssignments(
            opb.StreamAssignmentsRequest(agent_id="silent-agent"), metadata=stack.as_role(Role.AGENT)
        )
        await stack.orchestrator().SubmitTask(
            opb.SubmitTaskRequest(task_type="leased"), metadata=stack.as_role(Role.SUBMITTER)
        )
        async with asyncio.timeout(WAIT_SECONDS):
            assert (await stream.read()).WhichOneof("kind") == "assignment"
        found = await eventually_scraped(port, "arbiter_lease_expiries_total", lambda count: count >= 1)
        stream.cancel()
    assert value(found, "arbiter_lease_expiries_total") - value(before, "arbiter_lease_expiries_total") >= 1
    assert value(found, "arbiter_retries_total") - value(before, "arbiter_retries_total") >= 1


def referenced_metrics() -> set[str]:
    """Every metric family the dashboard's panels and the alert rules query."""
    monitoring = REPO_ROOT / "deploy" / "monitoring"
    dashboard = json.loads((monitoring / "grafana-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    rules = yaml.safe_load((monitoring / "prometheus-rules.yaml").read_text())
    expressions += [rule["expr"] for group in rules["spec"]["groups"] for rule in group["rules"]]
    names = {
        name for expression in expressions for name in re.findall(r"\b(?:arbiter|grpc_server)_[a-z_]+", expression)
    }
    return {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in names}


async def test_every_metric_the_dashboard_and_alerts_use_is_served(observed_stack: Stack) -> None:
    served: set[str] = set()
    for app in (observed_stack.registry_app, observed_stack.orchestrator_app):
        served |= {family.name for family in text_string_to_metric_families(scrape(app.server.metrics_port))}
    wanted = referenced_metrics()
    assert len(wanted) >= 15
    assert wanted - served == set()
