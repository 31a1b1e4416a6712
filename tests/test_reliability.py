"""Leases, retries with backoff, timeouts, releases, OFFLINE agents, task history, WatchTask, wake-ups
across orchestrators, graceful shutdown and pruning: each with the services in this test's event loop on
real PostgreSQL, seen through the raw gRPC stubs as an agent or a submitter sees them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
import psycopg
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from arbiter.v1 import agent_pb2, orchestrator_service_pb2_grpc, task_pb2
from arbiter.v1 import orchestrator_service_pb2 as opb
from arbiter.v1 import registry_service_pb2 as rpb
from services.orchestrator.agent_directory import AgentDirectory
from services.orchestrator.app import OrchestratorApp, create_orchestrator
from services.orchestrator.registry_client import RegistryClient
from services.orchestrator.storage import TaskStore
from services.orchestrator.sweeper import Sweeper
from shared.api_keys import Role
from shared.audit import prune_audit_events
from tests.support.stack import Stack, config_for_tests, running_stack

AGENT_ID = "agent-1"
OTHER_AGENT_ID = "agent-2"
TASK_TYPE = "echo"
# No agent offers this type.
UNTAKEN_TYPE = "nobody-takes-this"
UNKNOWN_TASK_ID = "9b2f3c1e-4d5a-4e6f-8a7b-0c1d2e3f4a5b"
WAIT_SECONDS = 10.0

PENDING, ASSIGNED, RUNNING = task_pb2.TASK_STATE_PENDING, task_pb2.TASK_STATE_ASSIGNED, task_pb2.TASK_STATE_RUNNING
COMPLETED, FAILED = task_pb2.TASK_STATE_COMPLETED, task_pb2.TASK_STATE_FAILED
ONLINE, DRAINING = agent_pb2.AGENT_STATUS_ONLINE, agent_pb2.AGENT_STATUS_DRAINING
UNHEALTHY, OFFLINE = agent_pb2.AGENT_STATUS_UNHEALTHY, agent_pb2.AGENT_STATUS_OFFLINE

Value = TypeVar("Value")


# Waiting on conditions, always with a deadline.


async def eventually(
    read: Callable[[], Awaitable[Value]], condition: Callable[[Value], bool], timeout: float = WAIT_SECONDS
) -> Value:
    """The first value `read` returns that meets `condition`; fails after `timeout` seconds."""
    last: Value | None = None
    try:
        async with asyncio.timeout(timeout):
            while not condition(last := await read()):
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"condition not met within {timeout} s; last value read: {last}") from None
    return last


async def next_message(stream: grpc.aio.UnaryStreamCall, timeout: float = WAIT_SECONDS) -> Any:
    """The next message on a stream (a response, or grpc.aio.EOF when the stream ended)."""
    return await asyncio.wait_for(stream.read(), timeout)


async def next_assignment(stream: grpc.aio.UnaryStreamCall, timeout: float = WAIT_SECONDS) -> opb.Assignment:
    message = await next_message(stream, timeout)
    assert message.WhichOneof("kind") == "assignment", message
    assignment: opb.Assignment = message.assignment
    return assignment


def moment(timestamp: Timestamp) -> datetime:
    return timestamp.ToDatetime(tzinfo=UTC)


def milliseconds(value: int) -> Duration:
    duration = Duration()
    duration.FromMilliseconds(value)
    return duration


async def query(database_url: str, sql: str, *parameters: object) -> list[tuple[Any, ...]]:
    """Reads this test's database directly, for what no RPC shows (which streams are open, raw events)."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as connection:
        cursor = await connection.execute(sql, parameters)
        return await cursor.fetchall()


async def execute(database_url: str, sql: str, *parameters: object) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as connection:
        await connection.execute(sql, parameters)


async def wait_until_stream_row(database_url: str, agent_id: str, *, present: bool) -> None:
    """agent_streams has the agent's row while a stream is open; the row goes in the same transaction as
    the release (or not) of what the agent holds, so its absence means the stream's close is done."""
    await eventually(
        lambda: query(database_url, "SELECT 1 FROM agent_streams WHERE agent_id = %s", f"default/{agent_id}"),
        lambda rows: bool(rows) == present,
    )


# Both services as agents and submitters call them.


class Api:
    def __init__(self, stack: Stack, orchestrator_address: str | None = None) -> None:
        self.stack = stack
        self.registry = stack.registry()
        address = orchestrator_address or stack.orchestrator_address
        channel = grpc.aio.insecure_channel(address)
        stack.channels.append(channel)
        self.orchestrator = orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel)
        self.agent = stack.as_role(Role.AGENT)
        self.submitter = stack.as_role(Role.SUBMITTER)
        self.viewer = stack.as_role(Role.VIEWER)

    def on(self, orchestrator: OrchestratorApp) -> Api:
        """The same calls, to another orchestrator."""
        return Api(self.stack, f"127.0.0.1:{orchestrator.port}")

    async def register(self, agent_id: str = AGENT_ID, max_concurrent_tasks: int = 1) -> None:
        agent = agent_pb2.Agent(
            id=agent_id,
            capabilities=agent_pb2.AgentCapabilities(task_types=[TASK_TYPE]),
            max_concurrent_tasks=max_concurrent_tasks,
        )
        await self.registry.RegisterAgent(rpb.RegisterAgentRequest(agent=agent), metadata=self.agent)

    async def heartbeat(self, agent_id: str = AGENT_ID, status: int = ONLINE) -> agent_pb2.Agent:
        response = await self.registry.Heartbeat(
            rpb.HeartbeatRequest(agent_id=agent_id, status=status), metadata=self.agent
        )
        agent: agent_pb2.Agent = response.agent
        return agent

    async def get_agent(self, agent_id: str = AGENT_ID) -> agent_pb2.Agent:
        response = await self.registry.GetAgent(rpb.GetAgentRequest(agent_id=agent_id), metadata=self.viewer)
        agent: agent_pb2.Agent = response.agent
        return agent

    async def agent_ids_with_status(self, status: int) -> list[str]:
        response = await self.registry.ListAgents(rpb.ListAgentsRequest(status=status), metadata=self.viewer)
        return [agent.id for agent in response.agents]

    def stream(self, agent_id: str = AGENT_ID) -> grpc.aio.UnaryStreamCall:
        return self.orchestrator.StreamAssignments(opb.StreamAssignmentsRequest(agent_id=agent_id), metadata=self.agent)

    async def submit(self, task_type: str = TASK_TYPE, **fields: Any) -> task_pb2.Task:
        response = await self.orchestrator.SubmitTask(
            opb.SubmitTaskRequest(task_type=task_type, **fields), metadata=self.submitter
        )
        task: task_pb2.Task = response.task
        return task

    async def get_task(self, task_id: str) -> task_pb2.Task:
        response = await self.orchestrator.GetTask(opb.GetTaskRequest(task_id=task_id), metadata=self.viewer)
        task: task_pb2.Task = response.task
        return task

    async def wait_for_task(
        self, task_id: str, condition: Callable[[task_pb2.Task], bool], timeout: float = WAIT_SECONDS
    ) -> task_pb2.Task:
        return await eventually(lambda: self.get_task(task_id), condition, timeout)

    async def history(self, task_id: str) -> list[opb.TaskEvent]:
        response = await self.orchestrator.GetTaskHistory(
            opb.GetTaskHistoryRequest(task_id=task_id), metadata=self.viewer
        )
        return list(response.events)

    def watch(self, task_id: str) -> grpc.aio.UnaryStreamCall:
        return self.orchestrator.WatchTask(opb.WatchTaskRequest(task_id=task_id), metadata=self.viewer)

    async def progress(
        self, task_id: str, attempt: int, agent_id: str = AGENT_ID, progress: float = 0.5, message: str = ""
    ) -> opb.ReportProgressResponse:
        response: opb.ReportProgressResponse = await self.orchestrator.ReportProgress(
            opb.ReportProgressRequest(
                task_id=task_id, agent_id=agent_id, attempt=attempt, progress=progress, message=message
            ),
            metadata=self.agent,
        )
        return response

    async def complete(self, task_id: str, attempt: int, agent_id: str = AGENT_ID) -> task_pb2.Task:
        result = Struct()
        result.update({"ok": True})
        response = await self.orchestrator.CompleteTask(
            opb.CompleteTaskRequest(task_id=task_id, agent_id=agent_id, attempt=attempt, result=result),
            metadata=self.agent,
        )
        task: task_pb2.Task = response.task
        return task

    async def fail(self, task_id: str, attempt: int, error: str, *, retryable: bool, agent_id: str = AGENT_ID) -> None:
        await self.orchestrator.FailTask(
            opb.FailTaskRequest(task_id=task_id, agent_id=agent_id, attempt=attempt, error=error, retryable=retryable),
            metadata=self.agent,
        )


@asynccontextmanager
async def api_for(database_url: str, **overrides: object) -> AsyncIterator[Api]:
    """A registry and an orchestrator configured with `overrides` (e.g. lease_seconds=0.5)."""
    async with running_stack(database_url, **overrides) as stack:
        yield Api(stack)


async def start_orchestrator(api: Api, database_url: str, **overrides: object) -> OrchestratorApp:
    """Another orchestrator on the same database and registry; the caller stops it."""
    return await create_orchestrator(
        config_for_tests(
            database_url,
            service_key=api.stack.keys[Role.SERVICE],
            registry_target=api.stack.registry_address,
            **overrides,
        )
    )


@asynccontextmanager
async def another_orchestrator(api: Api, database_url: str, **overrides: object) -> AsyncIterator[OrchestratorApp]:
    app = await start_orchestrator(api, database_url, **overrides)
    try:
        await asyncio.wait_for(app.notifications.listening.wait(), WAIT_SECONDS)
        yield app
    finally:
        await app.stop(0.5)


@dataclass
class Held:
    """An attempt an agent holds, and the stream it came on."""

    task_id: str
    attempt: int
    stream: grpc.aio.UnaryStreamCall
    assignment: opb.Assignment


async def hold_a_task(api: Api, agent_id: str = AGENT_ID, **submit_fields: Any) -> Held:
    """A registered agent with its stream open, holding a freshly submitted task."""
    await api.register(agent_id)
    stream = api.stream(agent_id)
    task = await api.submit(**submit_fields)
    assignment = await next_assignment(stream)
    assert assignment.task.id == task.id
    return Held(task.id, assignment.attempt, stream, assignment)


@asynccontextmanager
async def heartbeating(api: Api, agent_id: str = AGENT_ID, every: float = 0.05) -> AsyncIterator[None]:
    """The agent heartbeats ONLINE in the background for the duration of the block."""

    async def beat() -> None:
        while True:
            await api.heartbeat(agent_id)
            await asyncio.sleep(every)

    beating = asyncio.create_task(beat())
    try:
        yield
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating


async def refused(call: Awaitable[Any], code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return caught.value.details() or ""


# Leases.

LEASE = {"lease_seconds": 0.5, "sweep_seconds": 0.1}


async def test_an_expired_lease_puts_the_task_back_to_pending_for_the_next_attempt_after_a_backoff(
    database_url: str,
) -> None:
    async with api_for(database_url, **LEASE) as api:
        held = await hold_a_task(api)
        task = await api.wait_for_task(held.task_id, lambda task: task.state != ASSIGNED)
        seen_at = datetime.now(UTC)
        assert (task.state, task.attempt, task.assigned_agent_id) == (PENDING, 2, "")
        assert "lease expired" in task.error and AGENT_ID in task.error
        assert moment(task.not_before) > seen_at
        # Backoff after attempt 1: 1 s, jittered down to no less than half (allowing for clock reads).
        backoff = (moment(task.not_before) - moment(task.updated_at)).total_seconds()
        assert 0.5 <= backoff <= 1.1


async def test_an_expired_lease_sends_a_cancellation_for_the_attempt_on_its_agents_stream(database_url: str) -> None:
    async with api_for(database_url, **LEASE) as api:
        held = await hold_a_task(api)
        message = await next_message(held.stream)
        assert message.WhichOneof("kind") == "cancellation", message
        assert (message.cancellation.task_id, message.cancellation.attempt) == (held.task_id, 1)
        assert "lease expired" in message.cancellation.reason


async def test_a_late_completion_of_an_attempt_whose_lease_expired_is_refused(database_url: str) -> None:
    async with api_for(database_url, **LEASE) as api:
        held = await hold_a_task(api)
        await api.wait_for_task(held.task_id, lambda task: task.attempt == 2)
        details = await refused(api.complete(held.task_id, held.attempt), grpc.StatusCode.FAILED_PRECONDITION)
        assert "attempt 1" in details and "stale" in details


async def test_an_expired_lease_on_the_last_attempt_fails_the_task(database_url: str) -> None:
    async with api_for(database_url, **LEASE) as api:
        held = await hold_a_task(api, max_attempts=1)
        task = await api.wait_for_task(held.task_id, lambda task: task.state != ASSIGNED)
        assert (task.state, task.attempt, task.assigned_agent_id) == (FAILED, 1, AGENT_ID)
        assert "lease expired" in task.error
        assert not task.HasField("not_before")


async def test_reporting_progress_more_often_than_the_lease_keeps_the_attempt(database_url: str) -> None:
    async with api_for(database_url, lease_seconds=0.6, sweep_seconds=0.1) as api:
        held = await hold_a_task(api)
        previous_expiry = moment(held.assignment.lease_expires_at)
        # Three leases' worth of work, reporting every 0.1 s; the sweeper looks every 0.1 s meanwhile.
        finish_at = time.monotonic() + 1.8
        while time.monotonic() < finish_at:
            response = await api.progress(held.task_id, held.attempt, message="working")
            assert moment(response.lease_expires_at) > previous_expiry
            previous_expiry = moment(response.lease_expires_at)
            await asyncio.sleep(0.1)
        task = await api.complete(held.task_id, held.attempt)
        assert (task.state, task.attempt) == (COMPLETED, 1)
        assert not any("lease" in event.reason for event in await api.history(held.task_id))


# Retries wait out their backoff.


async def fail_and_expect_retry(api: Api) -> tuple[Held, task_pb2.Task]:
    """The agent fails its attempt as retryable; returns what it held and the task, PENDING with a backoff."""
    held = await hold_a_task(api)
    await api.fail(held.task_id, held.attempt, "flaky dependency", retryable=True)
    task = await api.get_task(held.task_id)
    assert (task.state, task.attempt) == (PENDING, 2)
    assert task.HasField("not_before")
    return held, task


async def test_a_retried_task_is_not_handed_out_before_its_backoff_ends(database_url: str) -> None:
    async with api_for(database_url, sweep_seconds=0.1) as api:
        # The failing agent's stream is open with a free slot and is woken by the failure itself.
        held, retried = await fail_and_expect_retry(api)
        assignment = await next_assignment(held.stream)
        assert (assignment.task.id, assignment.attempt) == (held.task_id, 2)
        assigned = [event for event in await api.history(held.task_id) if event.to_state == ASSIGNED]
        assert moment(assigned[-1].time) >= moment(retried.not_before)


async def test_agents_are_woken_when_a_backoff_ends_without_waiting_for_the_safety_poll(database_url: str) -> None:
    async with api_for(database_url, sweep_seconds=0.1, assignment_poll_seconds=60) as api:
        held, retried = await fail_and_expect_retry(api)
        assignment = await next_assignment(held.stream)
        late_by = (datetime.now(UTC) - moment(retried.not_before)).total_seconds()
        assert assignment.attempt == 2
        assert late_by < 1.0


# Attempt timeouts.

TIMEOUT = {"sweep_seconds": 0.1}


async def test_an_attempt_past_its_timeout_fails_as_retryable(database_url: str) -> None:
    async with api_for(database_url, **TIMEOUT) as api:
        held = await hold_a_task(api, timeout=milliseconds(300))
        task = await api.wait_for_task(held.task_id, lambda task: task.state != ASSIGNED)
        assert (task.state, task.attempt, task.assigned_agent_id) == (PENDING, 2, "")
        assert task.error == "attempt 1 timed out after 300 ms"
        assigned, taken_back = (await api.history(held.task_id))[-2:]
        assert (assigned.to_state, taken_back.to_state) == (ASSIGNED, PENDING)
        assert (moment(taken_back.time) - moment(assigned.time)).total_seconds() >= 0.3


async def test_an_attempt_past_its_timeout_is_cancelled_on_its_agents_stream(database_url: str) -> None:
    async with api_for(database_url, **TIMEOUT) as api:
        held = await hold_a_task(api, timeout=milliseconds(300))
        message = await next_message(held.stream)
        assert message.WhichOneof("kind") == "cancellation", message
        assert (message.cancellation.task_id, message.cancellation.attempt) == (held.task_id, 1)
        assert "timed out" in message.cancellation.reason


# schedule_to_start_timeout.


async def test_a_task_no_agent_starts_within_its_schedule_to_start_timeout_fails(database_url: str) -> None:
    async with api_for(database_url, sweep_seconds=0.1) as api:
        submitted = await api.submit(UNTAKEN_TYPE, schedule_to_start_timeout=milliseconds(300))
        task = await api.wait_for_task(submitted.id, lambda task: task.state != PENDING)
        assert (task.state, task.attempt) == (FAILED, 1)
        assert "schedule_to_start_timeout of 300 ms" in task.error
        assert f"task type '{UNTAKEN_TYPE}'" in task.error
        assert (moment(task.updated_at) - moment(task.created_at)).total_seconds() >= 0.3


async def test_a_task_started_within_its_schedule_to_start_timeout_is_unaffected_by_it(database_url: str) -> None:
    async with api_for(database_url, sweep_seconds=0.1) as api:
        held = await hold_a_task(api, schedule_to_start_timeout=milliseconds(300))
        # Submitted later with the same timeout and never taken: once it has failed, a sweep has
        # passed the held task's deadline too.
        witness = await api.submit(UNTAKEN_TYPE, schedule_to_start_timeout=milliseconds(300))
        await api.wait_for_task(witness.id, lambda task: task.state == FAILED)
        task = await api.get_task(held.task_id)
        assert (task.state, task.attempt, task.assigned_agent_id) == (ASSIGNED, 1, AGENT_ID)
        assert (await api.complete(held.task_id, held.attempt)).state == COMPLETED


# Releases when a stream closes.


async def test_closing_an_agents_stream_releases_its_tasks_at_once(database_url: str) -> None:
    async with api_for(database_url) as api:
        held = await hold_a_task(api)
        held.stream.cancel()
        task = await api.wait_for_task(held.task_id, lambda task: task.state != ASSIGNED)
        assert (task.state, task.attempt, task.assigned_agent_id) == (PENDING, 2, "")
        assert not task.HasField("not_before")
        assert "assignment stream of agent" in task.error


async def test_a_newer_stream_of_the_same_agent_takes_over_its_tasks_without_releasing_them(
    database_url: str,
) -> None:
    async with api_for(database_url) as api:
        held = await hold_a_task(api)
        newer = api.stream()
        resent = await next_assignment(newer)
        assert (resent.task.id, resent.attempt) == (held.task_id, held.attempt)
        # The replaced stream ends once its close is handled.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await next_message(held.stream)
        assert caught.value.code() == grpc.StatusCode.ABORTED
        task = await api.get_task(held.task_id)
        assert (task.state, task.attempt, task.assigned_agent_id) == (ASSIGNED, 1, AGENT_ID)
        assert (await api.complete(held.task_id, held.attempt)).state == COMPLETED


async def test_a_draining_agent_keeps_its_tasks_when_its_stream_closes(database_url: str) -> None:
    async with api_for(database_url) as api:
        held = await hold_a_task(api)
        await api.heartbeat(status=DRAINING)
        held.stream.cancel()
        await wait_until_stream_row(database_url, AGENT_ID, present=False)
        task = await api.get_task(held.task_id)
        assert (task.state, task.attempt, task.assigned_agent_id) == (ASSIGNED, 1, AGENT_ID)
        assert (await api.complete(held.task_id, held.attempt)).state == COMPLETED


# UNHEALTHY and OFFLINE agents.

HEARTBEAT_INTERVAL = 0.2


async def test_a_silent_agent_reads_unhealthy_after_three_heartbeat_intervals_and_offline_after_six(
    database_url: str,
) -> None:
    async with api_for(database_url, heartbeat_interval_seconds=HEARTBEAT_INTERVAL) as api:
        await api.register()
        last_heartbeat = moment((await api.get_agent()).last_heartbeat_at)

        def silent_for() -> float:
            return (datetime.now(UTC) - last_heartbeat).total_seconds()

        first_change = await eventually(api.get_agent, lambda agent: agent.status != ONLINE)
        unhealthy_seen_after = silent_for()
        second_change = await eventually(api.get_agent, lambda agent: agent.status != UNHEALTHY)
        offline_seen_after = silent_for()
        assert (first_change.status, second_change.status) == (UNHEALTHY, OFFLINE)
        assert 3 * HEARTBEAT_INTERVAL <= unhealthy_seen_after < 6 * HEARTBEAT_INTERVAL
        assert 6 * HEARTBEAT_INTERVAL <= offline_seen_after < 6 * HEARTBEAT_INTERVAL + 1.0


async def test_list_agents_filters_by_the_computed_status(database_url: str) -> None:
    async with api_for(database_url, heartbeat_interval_seconds=HEARTBEAT_INTERVAL) as api:
        await api.register(AGENT_ID)
        await api.register(OTHER_AGENT_ID)
        async with heartbeating(api, OTHER_AGENT_ID):
            await eventually(lambda: api.agent_ids_with_status(UNHEALTHY), lambda ids: ids == [AGENT_ID])
            await eventually(lambda: api.agent_ids_with_status(OFFLINE), lambda ids: ids == [AGENT_ID])
            assert await api.agent_ids_with_status(UNHEALTHY) == []
            assert await api.agent_ids_with_status(ONLINE) == [OTHER_AGENT_ID]


async def test_a_heartbeat_brings_an_offline_agent_back_online(database_url: str) -> None:
    async with api_for(database_url, heartbeat_interval_seconds=HEARTBEAT_INTERVAL) as api:
        await api.register()
        await eventually(api.get_agent, lambda agent: agent.status == OFFLINE)
        assert (await api.heartbeat()).status == ONLINE
        assert (await api.get_agent()).status == ONLINE


OFFLINE_SWEEP = {"heartbeat_interval_seconds": HEARTBEAT_INTERVAL, "sweep_seconds": 0.1}


async def test_the_sweeper_releases_the_tasks_of_an_offline_agent_whose_stream_is_still_open(
    database_url: str,
) -> None:
    async with api_for(database_url, **OFFLINE_SWEEP) as api:
        held = await hold_a_task(api)
        task = await api.wait_for_task(held.task_id, lambda task: task.attempt > 1)
        assert (await api.get_agent()).status == OFFLINE
        assert "OFFLINE" in task.error and AGENT_ID in task.error
        message = await next_message(held.stream)
        assert message.WhichOneof("kind") == "cancellation", message
        assert (message.cancellation.task_id, message.cancellation.attempt) == (held.task_id, 1)


async def test_an_offline_agent_with_its_stream_open_is_not_handed_its_released_tasks_again(
    database_url: str,
) -> None:
    async with api_for(database_url, **OFFLINE_SWEEP) as api:
        held = await hold_a_task(api)
        await api.wait_for_task(held.task_id, lambda task: task.attempt > 1)
        # Once this task, never taken, has failed, more than two OFFLINE checks have passed.
        witness = await api.submit(UNTAKEN_TYPE, schedule_to_start_timeout=milliseconds(500))
        await api.wait_for_task(witness.id, lambda task: task.state == FAILED)
        task = await api.get_task(held.task_id)
        assert (task.state, task.attempt, task.assigned_agent_id) == (PENDING, 2, "")


# GetTaskHistory.


async def test_task_history_records_every_state_change_with_attempt_agent_and_reason(database_url: str) -> None:
    async with api_for(database_url, sweep_seconds=0.1) as api:
        first = await hold_a_task(api, AGENT_ID)
        await api.progress(first.task_id, first.attempt, AGENT_ID, 0.5, "halfway")
        await api.fail(first.task_id, first.attempt, "first try broke", retryable=True)
        first.stream.cancel()
        await wait_until_stream_row(database_url, AGENT_ID, present=False)
        await api.register(OTHER_AGENT_ID)
        second = await next_assignment(api.stream(OTHER_AGENT_ID))
        assert (second.task.id, second.attempt) == (first.task_id, 2)
        await api.complete(first.task_id, second.attempt, OTHER_AGENT_ID)

        events = await api.history(first.task_id)
        assert [(e.from_state, e.to_state, e.attempt, e.agent_id, e.reason) for e in events] == [
            (task_pb2.TASK_STATE_UNSPECIFIED, PENDING, 1, "", "submitted"),
            (PENDING, ASSIGNED, 1, AGENT_ID, ""),
            (ASSIGNED, RUNNING, 1, AGENT_ID, ""),
            (RUNNING, PENDING, 1, AGENT_ID, "first try broke"),
            (PENDING, ASSIGNED, 2, OTHER_AGENT_ID, ""),
            (ASSIGNED, COMPLETED, 2, OTHER_AGENT_ID, ""),
        ]
        times = [moment(event.time) for event in events]
        assert times == sorted(times)


async def test_task_history_of_an_unknown_task_is_not_found(database_url: str) -> None:
    async with api_for(database_url) as api:
        details = await refused(api.history(UNKNOWN_TASK_ID), grpc.StatusCode.NOT_FOUND)
        assert UNKNOWN_TASK_ID in details


async def test_task_history_of_a_malformed_task_id_is_invalid_argument(database_url: str) -> None:
    async with api_for(database_url) as api:
        details = await refused(api.history("nope"), grpc.StatusCode.INVALID_ARGUMENT)
        assert details.startswith("task_id:")


# WatchTask.


async def watch_through_to_completion(submitter: Api, watcher: Api) -> None:
    """Watches a task on `watcher`'s orchestrator while an agent takes, reports and completes it on
    `submitter`'s; each change is made only after the previous one was seen."""
    task = await submitter.submit()
    watch = watcher.watch(task.id)
    current = (await next_message(watch)).task
    assert (current.id, current.state) == (task.id, PENDING)

    await submitter.register()
    stream = submitter.stream()
    assignment = await next_assignment(stream)
    current = (await next_message(watch)).task
    assert (current.state, current.attempt, current.assigned_agent_id) == (ASSIGNED, 1, AGENT_ID)

    await submitter.progress(task.id, assignment.attempt, progress=0.5, message="halfway")
    current = (await next_message(watch)).task
    assert (current.state, current.progress, current.progress_message) == (RUNNING, 0.5, "halfway")

    await submitter.complete(task.id, assignment.attempt)
    current = (await next_message(watch)).task
    assert (current.state, dict(current.result)) == (COMPLETED, {"ok": True})
    assert await next_message(watch) == grpc.aio.EOF
    assert await watch.code() == grpc.StatusCode.OK


async def test_watch_task_sends_the_task_now_then_each_change_and_ends_once_it_is_finished(
    database_url: str,
) -> None:
    async with api_for(database_url) as api:
        await watch_through_to_completion(api, api)


async def test_watch_task_on_one_orchestrator_sees_changes_made_through_another(database_url: str) -> None:
    async with api_for(database_url) as api, another_orchestrator(api, database_url) as other:
        await watch_through_to_completion(api, api.on(other))


async def test_watch_task_of_an_unknown_task_is_not_found(database_url: str) -> None:
    async with api_for(database_url) as api:
        details = await refused(next_message(api.watch(UNKNOWN_TASK_ID)), grpc.StatusCode.NOT_FOUND)
        assert UNKNOWN_TASK_ID in details


# Wake-ups across orchestrators.


async def test_a_task_submitted_on_one_orchestrator_reaches_an_idle_agent_streaming_from_another_at_once(
    database_url: str,
) -> None:
    no_poll = {"assignment_poll_seconds": 60}
    async with api_for(database_url, **no_poll) as api, another_orchestrator(api, database_url, **no_poll) as other:
        await api.register()
        stream = api.on(other).stream()
        await stream.initial_metadata()
        await wait_until_stream_row(database_url, AGENT_ID, present=True)
        task = await api.submit()
        assignment = await next_assignment(stream, timeout=1.0)
        assert assignment.task.id == task.id


# Graceful shutdown of an orchestrator ("leaving"), with another one staying up. Sweepers stay out of
# the way (they would release OFFLINE agents' tasks too).

SHUTDOWN = {"heartbeat_interval_seconds": HEARTBEAT_INTERVAL, "sweep_seconds": 60}


@asynccontextmanager
async def leaving_orchestrator(api: Api, database_url: str) -> AsyncIterator[tuple[OrchestratorApp, Api]]:
    """An orchestrator the test stops itself (it is stopped here if the test did not)."""
    app = await start_orchestrator(api, database_url, **SHUTDOWN)
    try:
        yield app, api.on(app)
    finally:
        if not app.orchestrator.sessions.closing:
            await app.stop(0.5)


async def health_of(app: OrchestratorApp) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    status: int = response.status
    return status


async def test_stopping_an_orchestrator_tells_open_streams_it_is_draining_before_ending_them(
    database_url: str,
) -> None:
    async with api_for(database_url, **SHUTDOWN) as api, leaving_orchestrator(api, database_url) as (leaving, on):
        await api.register()
        stream = on.stream()
        await wait_until_stream_row(database_url, AGENT_ID, present=True)
        stopping = asyncio.create_task(leaving.stop(1.0))
        message = await next_message(stream)
        assert message.WhichOneof("kind") == "draining", message
        assert "shutting down" in message.draining.reason
        assert await next_message(stream) == grpc.aio.EOF
        assert await stream.code() == grpc.StatusCode.OK
        await asyncio.wait_for(stopping, WAIT_SECONDS)


@asynccontextmanager
async def shutting_down(leaving: OrchestratorApp, held: Held) -> AsyncIterator[None]:
    """`leaving` is stopping, waiting (up to 10 s) for `held` to be reported: its stream has been told
    to drain. The block reports it, so the shutdown can end."""
    stopping = asyncio.create_task(leaving.stop(WAIT_SECONDS))
    try:
        assert (await next_message(held.stream)).WhichOneof("kind") == "draining"
        yield
    finally:
        await asyncio.wait_for(stopping, WAIT_SECONDS + 5)


async def test_health_is_not_serving_before_streams_are_told_an_orchestrator_is_draining(
    database_url: str,
) -> None:
    async with api_for(database_url, **SHUTDOWN) as api, leaving_orchestrator(api, database_url) as (leaving, on):
        assert await health_of(leaving) == health_pb2.HealthCheckResponse.SERVING
        held = await hold_a_task(on)
        async with shutting_down(leaving, held):
            assert await health_of(leaving) == health_pb2.HealthCheckResponse.NOT_SERVING
            await on.complete(held.task_id, held.attempt)


async def test_a_stream_opened_on_an_orchestrator_that_is_shutting_down_is_unavailable(database_url: str) -> None:
    async with api_for(database_url, **SHUTDOWN) as api, leaving_orchestrator(api, database_url) as (leaving, on):
        held = await hold_a_task(on)
        async with shutting_down(leaving, held):
            details = await refused(next_message(on.stream()), grpc.StatusCode.UNAVAILABLE)
            assert "shutting down" in details
            # Reports are still accepted during the grace period.
            assert (await on.complete(held.task_id, held.attempt)).state == COMPLETED


async def test_after_the_grace_an_orchestrator_shutting_down_releases_the_tasks_of_agents_that_are_gone(
    database_url: str,
) -> None:
    async with api_for(database_url, **SHUTDOWN) as api, leaving_orchestrator(api, database_url) as (leaving, on):
        held = await hold_a_task(on)
        await eventually(api.get_agent, lambda agent: agent.status == UNHEALTHY)
        await leaving.stop(0.3)
        task = await api.get_task(held.task_id)
        assert (task.state, task.attempt, task.assigned_agent_id) == (PENDING, 2, "")
        assert "shut down" in task.error and f"agent '{AGENT_ID}' is gone" in task.error


async def test_an_orchestrator_shutting_down_keeps_the_tasks_of_agents_still_heartbeating(database_url: str) -> None:
    async with api_for(database_url, **SHUTDOWN) as api, leaving_orchestrator(api, database_url) as (leaving, on):
        held = await hold_a_task(on)
        async with heartbeating(api):
            await leaving.stop(0.3)
            task = await api.get_task(held.task_id)
            assert (task.state, task.attempt, task.assigned_agent_id) == (ASSIGNED, 1, AGENT_ID)
            # The agent reconnects to the orchestrator still up and carries on with the same attempt.
            resent = await next_assignment(api.stream())
            assert (resent.task.id, resent.attempt) == (held.task_id, held.attempt)
            assert (await api.complete(held.task_id, held.attempt)).state == COMPLETED


# Pruning.


async def test_a_sweep_deletes_finished_tasks_older_than_the_retention_with_their_history(database_url: str) -> None:
    async with api_for(database_url, sweep_seconds=60) as api:
        await api.register(max_concurrent_tasks=5)
        stream = api.stream()
        submitted = {name: await api.submit() for name in ("completed", "failed", "cancelled", "held", "recent")}
        attempts = {}
        for _ in submitted:
            assignment = await next_assignment(stream)
            attempts[assignment.task.id] = assignment.attempt
        ids = {name: task.id for name, task in submitted.items()}
        await api.complete(ids["completed"], attempts[ids["completed"]])
        await api.fail(ids["failed"], attempts[ids["failed"]], "broken input", retryable=False)
        await api.orchestrator.CancelTask(opb.CancelTaskRequest(task_id=ids["cancelled"]), metadata=api.submitter)
        await api.complete(ids["recent"], attempts[ids["recent"]])
        ids["pending"] = (await api.submit(UNTAKEN_TYPE)).id
        old = [ids[name] for name in ("completed", "failed", "cancelled", "held", "pending")]
        await execute(
            database_url, "UPDATE tasks SET updated_at = now() - interval '8 days' WHERE id = ANY(%s::uuid[])", old
        )

        app = api.stack.orchestrator_app
        registry = RegistryClient(app.registry_channel, api.stack.keys[Role.SERVICE])
        sweeper = Sweeper(
            TaskStore(app.pool, lease_seconds=30),
            registry,
            AgentDirectory(registry),
            lambda: None,
            interval_seconds=60,
            retention=timedelta(days=7),
            prune_audit_events=lambda: prune_audit_events(app.pool, 90),
        )
        assert (await sweeper.sweep_once()).pruned == 3

        remaining = {row[0] for row in await query(database_url, "SELECT id::text FROM tasks")}
        assert remaining == {ids["held"], ids["recent"], ids["pending"]}
        with_history = {row[0] for row in await query(database_url, "SELECT DISTINCT task_id::text FROM task_events")}
        assert with_history == remaining
