"""How an SDK agent turns what a handler does into the task's outcome, with the agent in this test's
event loop against in-process services: returned dicts complete, exceptions retry, PermanentError and
unusable results fail for good with the reason."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from arbiter import Agent, ArbiterError, Client, PermanentError, Task, TaskInfo, TaskState
from arbiter.v1 import agent_pb2
from arbiter.v1 import orchestrator_service_pb2 as opb
from arbiter.v1 import registry_service_pb2 as rpb
from shared.api_keys import Role
from tests.support.stack import Stack, serving_agent

Handler = Callable[[Task], Awaitable[Any]]


def serving(stack: Stack, handler: Handler) -> AbstractAsyncContextManager[Agent]:
    """An agent for task type 'job' running `handler`, drained when the block ends."""
    return serving_agent(stack, "outcome-agent", {"job": handler})


async def outcome(stack: Stack, handler: Handler, payload: dict[str, Any] | None = None, **submit: Any) -> TaskInfo:
    async with serving(stack, handler), Client(stack.orchestrator_address, stack.keys[Role.SUBMITTER]) as client:
        task = await client.submit("job", payload or {}, **submit)
        return await client.wait(task.id, timeout=30)


async def test_the_returned_dict_is_the_result_and_none_means_an_empty_one(stack: Stack) -> None:
    async def nested(task: Task) -> dict[str, Any]:
        return {"echo": task.payload, "attempt": task.attempt, "list": [1, "two", None]}

    done = await outcome(stack, nested, {"question": 42})
    assert done.state == TaskState.COMPLETED
    assert done.result == {"echo": {"question": 42}, "attempt": 1, "list": [1, "two", None]}
    assert done.assigned_agent_id == "outcome-agent"  # who did the work stays on the task

    async def nothing(task: Task) -> None:
        return None

    assert (await outcome(stack, nothing)).result == {}


async def test_an_exception_fails_the_attempt_as_retryable_with_its_type_and_message(stack: Stack) -> None:
    async def flaky(task: Task) -> dict[str, Any]:
        if task.attempt < 3:
            raise ValueError(f"transient trouble on attempt {task.attempt}")
        return {"attempt": task.attempt}

    done = await outcome(stack, flaky, max_attempts=3)
    assert (done.state, done.attempt, done.result, done.error) == (TaskState.COMPLETED, 3, {"attempt": 3}, "")
    async with Client(stack.orchestrator_address, stack.keys[Role.VIEWER]) as client:
        retries = [event for event in await client.history(done.id) if event.to_state == TaskState.PENDING]
    assert [event.reason for event in retries] == [
        "submitted",
        "ValueError: transient trouble on attempt 1",
        "ValueError: transient trouble on attempt 2",
    ]


async def test_an_exception_on_the_last_attempt_fails_the_task(stack: Stack) -> None:
    async def broken(task: Task) -> dict[str, Any]:
        raise RuntimeError("always")

    done = await outcome(stack, broken, max_attempts=2)
    assert (done.state, done.attempt, done.error) == (TaskState.FAILED, 2, "RuntimeError: always")


async def test_permanent_error_fails_the_task_at_once_with_its_message(stack: Stack) -> None:
    async def refuses(task: Task) -> dict[str, Any]:
        raise PermanentError("the payload has no 'diff'")

    done = await outcome(stack, refuses, max_attempts=5)
    assert (done.state, done.attempt, done.error) == (TaskState.FAILED, 1, "the payload has no 'diff'")


UNUSABLE_RESULTS: dict[str, tuple[Any, str]] = {
    "not a dict": (["a", "list"], "the handler returned list; it must return a dict"),
    "not JSON-like": ({"when": object()}, "the handler's result is not JSON-like"),
    "over the size limit": ({"blob": "x" * 1_100_000}, "the result was refused: result: is "),
}


@pytest.mark.parametrize(("result", "reason"), UNUSABLE_RESULTS.values(), ids=UNUSABLE_RESULTS.keys())
async def test_an_unusable_result_fails_the_task_for_good_saying_why(stack: Stack, result: Any, reason: str) -> None:
    async def returns(task: Task) -> Any:
        return result

    done = await outcome(stack, returns, max_attempts=3)
    assert (done.state, done.attempt) == (TaskState.FAILED, 1)
    assert done.error.startswith(reason), done.error


async def test_progress_reported_by_a_handler_is_visible_while_it_runs(stack: Stack) -> None:
    reported = asyncio.Event()
    release = asyncio.Event()

    async def reports(task: Task) -> dict[str, Any]:
        await task.report_progress(0.25, "a quarter")
        reported.set()
        await release.wait()
        return {}

    async with serving(stack, reports), Client(stack.orchestrator_address, stack.keys[Role.SUBMITTER]) as client:
        task = await client.submit("job")
        await asyncio.wait_for(reported.wait(), 10)
        running = await client.get(task.id)
        assert (running.state, running.progress, running.progress_message) == (TaskState.RUNNING, 0.25, "a quarter")
        release.set()
        assert (await client.wait(task.id, timeout=10)).state == TaskState.COMPLETED


async def test_progress_outside_zero_to_one_is_refused_in_the_handler(stack: Stack) -> None:
    async def overshoots(task: Task) -> dict[str, Any]:
        await task.report_progress(1.5)
        return {}

    done = await outcome(stack, overshoots, max_attempts=1)
    assert done.state == TaskState.FAILED
    assert done.error == "ValueError: progress must be between 0 and 1; got 1.5"


async def test_an_agent_with_a_refused_key_stops_with_the_status(stack: Stack) -> None:
    agent = Agent(
        "locked-out",
        registry=stack.registry_address,
        orchestrator=stack.orchestrator_address,
        api_key="arb_not-a-real-key",
    )

    @agent.handler("job")
    async def never(task: Task) -> dict[str, Any]:
        return {}

    with pytest.raises(ArbiterError) as refused:
        await asyncio.wait_for(agent.serve(), 10)
    assert refused.value.code.name == "UNAUTHENTICATED"


def test_a_handler_must_be_async_and_a_type_has_one_handler() -> None:
    agent = Agent("declared", api_key="arb_unused")

    def blocking(task: Task) -> dict[str, Any]:
        return {}

    with pytest.raises(TypeError, match="async def"):
        agent.handler("job")(blocking)  # type: ignore[type-var]

    async def first(task: Task) -> dict[str, Any]:
        return {}

    agent.handler("job")(first)
    with pytest.raises(ValueError, match="already has a handler"):
        agent.handler("job")(first)


async def test_a_held_task_of_a_type_the_agent_no_longer_handles_is_handed_back_for_another_agent(
    stack: Stack,
) -> None:
    # An earlier run of "outcome-agent" took an 'old-type' task and stopped holding it.
    registry, orchestrator = stack.registry(), stack.orchestrator()
    await registry.RegisterAgent(
        rpb.RegisterAgentRequest(
            agent=agent_pb2.Agent(id="outcome-agent", capabilities=agent_pb2.AgentCapabilities(task_types=["old-type"]))
        ),
        metadata=stack.as_role(Role.AGENT),
    )
    earlier_run = orchestrator.StreamAssignments(
        opb.StreamAssignmentsRequest(agent_id="outcome-agent"), metadata=stack.as_role(Role.AGENT)
    )
    async with Client(stack.orchestrator_address, stack.keys[Role.SUBMITTER]) as client:
        held = await client.submit("old-type", max_attempts=3)
        assert (await earlier_run.read()).assignment.task.id == held.id
        # It was draining when it went, so its stream's end left the task with it.
        await registry.Heartbeat(
            rpb.HeartbeatRequest(agent_id="outcome-agent", status=agent_pb2.AGENT_STATUS_DRAINING),
            metadata=stack.as_role(Role.AGENT),
        )
        earlier_run.cancel()
        await asyncio.wait_for(stack.orchestrator_app.orchestrator.sessions.all_closed.wait(), 10)

        async def job(task: Task) -> dict[str, Any]:
            return {}

        async def next_attempt() -> TaskInfo:
            async for update in client.watch(held.id):
                if update.attempt == 2:
                    return update
            raise AssertionError("the task finished without a second attempt")

        async with serving(stack, job):
            handed_back = await asyncio.wait_for(next_attempt(), 10)
        assert (handed_back.state, handed_back.attempt) == (TaskState.PENDING, 2)
        assert handed_back.error == "agent 'outcome-agent' has no handler for task type 'old-type'"
