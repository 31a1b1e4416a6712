"""The SDK against real components, no mocks. `Agent`: a program built only with it
(tests/support/sdk_agent.py) runs as its own process against both services as subprocesses. `Client`:
against both services running in the test's event loop (with an in-process `Agent` where a task must
move)."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from arbiter import (
    Agent,
    AgentInfo,
    AgentStatus,
    ArbiterError,
    Client,
    Task,
    TaskInfo,
    TaskSpec,
    TaskState,
    WaitTimeout,
)
from services.orchestrator.domain import AgentProfile
from shared.api_keys import Role
from tests.support.processes import ServiceProcesses
from tests.support.sdk_agent import events_of, start_sdk_agent, wait_for, wait_for_event, wait_for_exit
from tests.support.stack import Stack, running_stack
from tests.support.stub_agent import AgentProcess

WAIT_SECONDS = 20.0
Test = TypeVar("Test", bound=Callable[..., Any])


def e2e(test: Test) -> Test:
    """Starts the services as subprocesses: runs with the other such tests, one at a time."""
    for mark in (pytest.mark.e2e, pytest.mark.xdist_group("e2e")):
        test = mark(test)
    return test


@pytest.fixture
async def client(services: ServiceProcesses) -> AsyncIterator[Client]:
    async with Client(
        services.orchestrator_address, services.keys[Role.SUBMITTER], registry_address=services.registry_address
    ) as client:
        yield client


@pytest.fixture
def start_agent(services: ServiceProcesses, tmp_path: Path) -> Iterator[Callable[[str, int], AgentProcess]]:
    """Starts SDK agents as subprocesses; stops each (SIGTERM, then SIGKILL) when the test ends."""
    agents: list[AgentProcess] = []

    def start(agent_id: str, concurrency: int) -> AgentProcess:
        agent = start_sdk_agent(services, agent_id, concurrency, tmp_path)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.stop()
        print(agent.report())  # shown when the test fails


@pytest.fixture
async def inprocess_client(stack: Stack) -> AsyncIterator[Client]:
    async with Client(
        stack.orchestrator_address, stack.keys[Role.SUBMITTER], registry_address=stack.registry_address
    ) as client:
        yield client


async def count_by_type_and_state(client: Client) -> dict[tuple[str, TaskState], int]:
    return {(count.task_type, count.state): count.count for count in await client.queue_stats()}


# Agent, as its own process.


@e2e
async def test_sdk_agent_completes_500_batched_tasks_reporting_progress_with_at_most_4_handlers_at_once(
    client: Client, start_agent: Callable[[str, int], AgentProcess]
) -> None:
    agent = start_agent("sdk-worker", 4)
    submitted = await client.submit_many([TaskSpec("work", {"ms": i % 6, "value": i}) for i in range(500)])
    assert len({task.id for task in submitted}) == 500
    assert [task.payload["value"] for task in submitted] == list(range(500))
    assert all(task.created and task.state == TaskState.PENDING for task in submitted)

    async def all_completed() -> bool:
        return (await count_by_type_and_state(client)).get(("work", TaskState.COMPLETED)) == 500

    await wait_for(all_completed, "500 COMPLETED work tasks", agent=agent, timeout=60)

    finished = {task.id: task for task in await client.list_tasks(state=TaskState.COMPLETED, limit=1000)}
    assert set(finished) == {task.id for task in submitted}
    for value, task in enumerate(submitted):
        done = finished[task.id]
        assert done.result == {"agent": "sdk-worker", "value": value}
        assert done.attempt == 1
        # Only ReportProgress sets the message (and moves the task to RUNNING); completing sets progress 1.
        assert (done.progress, done.progress_message) == (1.0, "halfway")
    ids = {task.id for task in submitted}
    assert {event["task_id"] for event in events_of(agent, "progress_reported")} == ids
    assert {event["task_id"] for event in events_of(agent, "finished")} == ids
    most_at_once = max(event["running"] for event in events_of(agent, "started"))
    assert 1 < most_at_once <= 4, f"{most_at_once} handlers ran at once"


@e2e
async def test_cancelling_a_running_task_cancels_its_handler_and_the_agent_goes_on_working(
    client: Client, start_agent: Callable[[str, int], AgentProcess]
) -> None:
    agent = start_agent("sdk-cancelled", 2)
    blocked = await client.submit("block")
    await wait_for_event(agent, "started", blocked.id)

    assert (await client.cancel(blocked.id, "no longer needed")).state == TaskState.CANCELLED
    await wait_for_event(agent, "cancelled", blocked.id)
    after = await client.get(blocked.id)
    assert (after.state, after.error, after.attempt) == (TaskState.CANCELLED, "no longer needed", 1)

    next_task = await client.submit("work", {"value": "next"})
    done = await client.wait(next_task.id, timeout=WAIT_SECONDS)
    assert (done.state, done.result) == (TaskState.COMPLETED, {"agent": "sdk-cancelled", "value": "next"})
    agent.check_alive()


@e2e
@pytest.mark.parametrize("kill", [True, False], ids=["sigkill", "sigterm"])
async def test_agent_carries_on_by_itself_across_an_orchestrator_restart(
    services: ServiceProcesses, client: Client, start_agent: Callable[[str, int], AgentProcess], kill: bool
) -> None:
    agent = start_agent("sdk-reconnecting", 2)
    held = await client.submit("slow", {"ms": 1500})
    await wait_for_event(agent, "started", held.id)

    exit_code = await asyncio.to_thread(services.stop_service, "orchestrator", kill)
    assert exit_code == (-signal.SIGKILL if kill else 0)
    await asyncio.to_thread(services.start_service, "orchestrator")

    # The task running through the restart is finished and reported once, on its first attempt; the
    # orchestrator sends it again on reconnect, and the SDK must not start it twice.
    done = await client.wait(held.id, timeout=WAIT_SECONDS)
    assert (done.state, done.attempt, done.result) == (TaskState.COMPLETED, 1, {"agent": "sdk-reconnecting"})
    assert len(events_of(agent, "started", held.id)) == 1
    # Tasks submitted after the restart reach the agent over the stream it reopened itself.
    submitted = await client.submit_many([TaskSpec("work", {"value": i}) for i in range(10)])
    for value, task in enumerate(submitted):
        done = await client.wait(task.id, timeout=WAIT_SECONDS)
        assert (done.state, done.result) == (TaskState.COMPLETED, {"agent": "sdk-reconnecting", "value": value})
    # The same process all along: nobody restarted the agent.
    agent.check_alive()


@e2e
async def test_a_handler_that_raises_is_retried_and_completes_at_attempt_2(
    client: Client, start_agent: Callable[[str, int], AgentProcess]
) -> None:
    agent = start_agent("sdk-retried", 2)
    task = await client.submit("work", {"fail_first": True, "value": "second try"})

    done = await client.wait(task.id, timeout=WAIT_SECONDS)
    assert (done.state, done.attempt) == (TaskState.COMPLETED, 2)
    assert done.result == {"agent": "sdk-retried", "value": "second try"}
    handled = [(event["event"], event["attempt"]) for event in agent.events() if event.get("task_id") == task.id]
    assert handled == [("started", 1), ("raised", 1), ("started", 2), ("progress_reported", 2), ("finished", 2)]


@e2e
async def test_a_handler_raising_permanent_error_fails_the_task_at_once_with_its_message(
    client: Client, start_agent: Callable[[str, int], AgentProcess]
) -> None:
    agent = start_agent("sdk-permanent", 2)
    task = await client.submit("permanent", max_attempts=3)

    done = await client.wait(task.id, timeout=WAIT_SECONDS)
    assert (done.state, done.attempt) == (TaskState.FAILED, 1)
    assert done.error == f"bad input: task {task.id} can never succeed"
    assert len(events_of(agent, "started", task.id)) == 1


async def wait_until_registered_as_draining(client: Client, agent: AgentProcess) -> None:
    async def registered_as_draining() -> AgentInfo | None:
        registered = await client.get_agent(agent.agent_id)
        return registered if registered.status == AgentStatus.DRAINING else None

    await wait_for(registered_as_draining, "the registry to show the agent DRAINING", agent=agent)


@e2e
async def test_sigterm_drains_the_agent_it_takes_no_new_work_finishes_its_task_and_exits_0(
    client: Client, start_agent: Callable[[str, int], AgentProcess]
) -> None:
    # Two slots: the agent could take the late task if it were not draining.
    agent = start_agent("sdk-draining", 2)
    slow = await client.submit("slow", {"ms": 2000})
    await wait_for_event(agent, "started", slow.id)

    agent.process.send_signal(signal.SIGTERM)

    await wait_until_registered_as_draining(client, agent)
    late = await client.submit("work", {"value": "late"})
    assert events_of(agent, "finished", slow.id) == [], "the slow task must still be running"

    done = await client.wait(slow.id, timeout=WAIT_SECONDS)
    assert (done.state, done.result) == (TaskState.COMPLETED, {"agent": "sdk-draining"})
    assert await wait_for_exit(agent) == 0
    assert events_of(agent, "exited")
    late_now = await client.get(late.id)
    assert (late_now.state, late_now.assigned_agent_id) == (TaskState.PENDING, "")
    assert events_of(agent, "started", late.id) == []


async def test_a_draining_agent_gives_back_unstarted_a_task_routed_to_it_before_the_orchestrator_knew(
    stack: Stack, inprocess_client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The orchestrator learns of DRAINING from the registry's feed, a moment after the registry: a task
    routed meanwhile reaches the agent, which gives it back instead of running it."""
    agent = start_sdk_agent(stack, "sdk-draining-late", 2, tmp_path)
    try:
        slow = await inprocess_client.submit("slow", {"ms": 1500})
        await wait_for_event(agent, "started", slow.id)
        directory = stack.orchestrator_app.orchestrator.directory

        async def in_the_orchestrators_view() -> AgentProfile | None:
            return next((each for each in directory.agents() if each.id.endswith("/sdk-draining-late")), None)

        # The feed's lag, held open: the orchestrator keeps seeing the agent as it was before draining.
        view_before_draining = await wait_for(in_the_orchestrators_view, "the orchestrator to learn of the agent")
        qualified_id = view_before_draining.id
        real_get = directory.get
        monkeypatch.setattr(
            directory, "get", lambda agent_id: view_before_draining if agent_id == qualified_id else real_get(agent_id)
        )

        agent.process.send_signal(signal.SIGTERM)

        await wait_until_registered_as_draining(inprocess_client, agent)
        late = await inprocess_client.submit("work", {"value": "late"})

        async def given_back_once() -> TaskInfo | None:
            task = await inprocess_client.get(late.id)
            return task if task.attempt > 1 else None

        given_back = await wait_for(given_back_once, "the agent to give the late task back", agent=agent)
        monkeypatch.undo()  # the feed catches up: no second routing to the draining agent
        assert (given_back.state, given_back.attempt, given_back.assigned_agent_id) == (TaskState.PENDING, 2, "")
        assert "draining" in given_back.error
        assert events_of(agent, "started", late.id) == []
        done = await inprocess_client.wait(slow.id, timeout=WAIT_SECONDS)
        assert (done.state, done.result) == (TaskState.COMPLETED, {"agent": "sdk-draining-late"})
        assert await wait_for_exit(agent) == 0
    finally:
        agent.stop()
        print(agent.report())


# Client, against the services in this event loop.


async def test_wait_raises_wait_timeout_for_a_task_no_agent_takes(inprocess_client: Client) -> None:
    task = await inprocess_client.submit("nobody-handles-this")
    with pytest.raises(WaitTimeout):
        await inprocess_client.wait(task.id, timeout=0.3)
    assert (await inprocess_client.get(task.id)).state == TaskState.PENDING


async def test_watch_yields_each_state_in_order_ending_with_the_terminal_one(
    stack: Stack, inprocess_client: Client
) -> None:
    release = asyncio.Event()
    agent = Agent(
        "watched-worker",
        registry=stack.registry_address,
        orchestrator=stack.orchestrator_address,
        api_key=stack.keys[Role.AGENT],
    )

    @agent.handler("gated")
    async def gated(task: Task) -> dict[str, Any]:
        await task.report_progress(0.5, "waiting for the test")
        await release.wait()
        return {"released": True}

    task = await inprocess_client.submit("gated")
    seen: list[TaskState] = []
    serving: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(WAIT_SECONDS):
            async for current in inprocess_client.watch(task.id):
                seen.append(current.state)
                if serving is None:  # the first state is seen before any agent exists
                    serving = asyncio.create_task(agent.serve())
                if current.state == TaskState.RUNNING:
                    release.set()
    finally:
        agent.drain()
        if serving is not None:
            async with asyncio.timeout(WAIT_SECONDS):
                await serving

    states = [state for index, state in enumerate(seen) if index == 0 or state != seen[index - 1]]
    assert states in (
        [TaskState.PENDING, TaskState.RUNNING, TaskState.COMPLETED],
        [TaskState.PENDING, TaskState.ASSIGNED, TaskState.RUNNING, TaskState.COMPLETED],
    )


LEASE_SECONDS = 1.0


async def test_prefetched_tasks_wait_held_for_a_free_slot_and_keep_their_leases_meanwhile(database_url: str) -> None:
    """One slot and two prefetched: all three are held at once; the queued ones outlive several leases
    and still run as attempt 1, one at a time."""
    async with running_stack(database_url, lease_seconds=LEASE_SECONDS, sweep_seconds=0.1) as stack:
        agent = Agent(
            "prefetcher",
            max_concurrent_tasks=1,
            prefetch_tasks=2,
            registry=stack.registry_address,
            orchestrator=stack.orchestrator_address,
            api_key=stack.keys[Role.AGENT],
        )
        running = 0
        most_running = 0

        @agent.handler("slow")
        async def slow(task: Task) -> dict[str, Any]:
            nonlocal running, most_running
            running += 1
            most_running = max(most_running, running)
            await asyncio.sleep(1.5 * LEASE_SECONDS)
            running -= 1
            return {}

        async with Client(
            stack.orchestrator_address, stack.keys[Role.SUBMITTER], registry_address=stack.registry_address
        ) as client:
            tasks = [await client.submit("slow", {}) for _ in range(4)]
            serving = asyncio.create_task(agent.serve())
            try:

                async def three_held() -> list[TaskInfo] | None:
                    current = [await client.get(task.id) for task in tasks]
                    held = [task for task in current if task.assigned_agent_id == "prefetcher"]
                    return current if len(held) == 3 else None

                at_once = await wait_for(three_held, "the agent to hold its slot and its two prefetched tasks")
                assert [task.state for task in at_once].count(TaskState.PENDING) == 1
                finished = [await client.wait(task.id, timeout=WAIT_SECONDS) for task in tasks]
            finally:
                agent.drain()
                async with asyncio.timeout(WAIT_SECONDS):
                    await serving
        assert [(task.state, task.attempt) for task in finished] == [(TaskState.COMPLETED, 1)] * 4
        assert most_running == 1


async def test_get_of_an_unknown_task_raises_not_found(inprocess_client: Client) -> None:
    with pytest.raises(ArbiterError) as raised:
        await inprocess_client.get(str(uuid.uuid4()))
    assert raised.value.code == grpc.StatusCode.NOT_FOUND


async def test_a_bad_api_key_raises_unauthenticated(stack: Stack) -> None:
    async with Client(stack.orchestrator_address, "arb_" + "0" * 64) as client:
        with pytest.raises(ArbiterError) as raised:
            await client.submit("work")
    assert raised.value.code == grpc.StatusCode.UNAUTHENTICATED


async def test_submit_with_a_repeated_idempotency_key_returns_the_first_task_not_created_again(
    inprocess_client: Client,
) -> None:
    first = await inprocess_client.submit("work", {"n": 1}, idempotency_key="order-42")
    again = await inprocess_client.submit("work", {"n": 2}, idempotency_key="order-42")
    assert (first.created, again.created) == (True, False)
    assert again.id == first.id
    assert again.payload == {"n": 1}


async def test_submit_many_of_1001_tasks_splits_them_into_calls_the_server_accepts_in_order(
    inprocess_client: Client,
) -> None:
    # The server refuses more than 1000 tasks in one SubmitTasks call.
    submitted = await inprocess_client.submit_many([TaskSpec("bulk", {"i": i}) for i in range(1001)])
    assert [task.payload["i"] for task in submitted] == list(range(1001))
    assert len({task.id for task in submitted}) == 1001
    assert (await count_by_type_and_state(inprocess_client)) == {("bulk", TaskState.PENDING): 1001}


async def test_list_tasks_returns_only_tasks_in_the_requested_state(inprocess_client: Client) -> None:
    submitted = [await inprocess_client.submit("listed", {"n": n}) for n in range(3)]
    await inprocess_client.cancel(submitted[1].id)

    cancelled = await inprocess_client.list_tasks(state=TaskState.CANCELLED)
    pending = await inprocess_client.list_tasks(state=TaskState.PENDING)
    assert [task.id for task in cancelled] == [submitted[1].id]
    assert {task.id for task in pending} == {submitted[0].id, submitted[2].id}


async def test_queue_stats_counts_tasks_by_type_and_state(inprocess_client: Client) -> None:
    alphas = await inprocess_client.submit_many([TaskSpec("alpha") for _ in range(3)])
    await inprocess_client.submit_many([TaskSpec("beta") for _ in range(2)])
    await inprocess_client.cancel(alphas[0].id)

    stats = await inprocess_client.queue_stats()
    assert {(count.task_type, count.state): count.count for count in stats} == {
        ("alpha", TaskState.PENDING): 2,
        ("alpha", TaskState.CANCELLED): 1,
        ("beta", TaskState.PENDING): 2,
    }
    assert all(count.oldest_created_at is not None for count in stats)
