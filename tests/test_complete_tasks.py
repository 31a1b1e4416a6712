"""CompleteTasks: many results in one call, each checked on its own; and the SDK agent's use of it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import psycopg
import pytest

from arbiter import Task
from arbiter._completions import CompletionSender
from arbiter.v1 import orchestrator_service_pb2 as opb
from arbiter.v1 import orchestrator_service_pb2_grpc as opb_grpc
from arbiter.v1 import registry_service_pb2 as rpb
from arbiter.v1 import task_pb2
from tests.support.stack import Stack, serving_agent
from tests.support.waiting import eventually
from tests.test_bad_input import AGENT_ID, TASK_TYPE, UNKNOWN_TASK_ID, Api, agent, rejected_as_invalid, struct

OK = grpc.StatusCode.OK.value[0]
INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.value[0]


@pytest.fixture
def api(stack: Stack) -> Api:
    return Api(stack)


async def held_tasks(api: Api, count: int) -> list[opb.Assignment]:
    """A registered agent with `count` slots, its stream open, holding `count` fresh tasks."""
    await api.registry.RegisterAgent(
        rpb.RegisterAgentRequest(agent=agent(max_concurrent_tasks=count)), metadata=api.agent
    )
    stream = api.stream()
    for _ in range(count):
        await api.submit()
    return [(await stream.read()).assignment for _ in range(count)]


def completion(assignment: opb.Assignment, **fields: Any) -> opb.CompleteTaskRequest:
    values: dict[str, Any] = {
        "task_id": assignment.task.id,
        "agent_id": AGENT_ID,
        "attempt": assignment.attempt,
        "result": struct({"done": True}),
    }
    values.update(fields)
    return opb.CompleteTaskRequest(**values)


async def complete_tasks(api: Api, completions: list[opb.CompleteTaskRequest]) -> opb.CompleteTasksResponse:
    return await api.orchestrator.CompleteTasks(opb.CompleteTasksRequest(completions=completions), metadata=api.agent)


async def test_complete_tasks_records_the_good_completions_and_answers_each_bad_one_with_its_own_status(
    api: Api,
) -> None:
    first, second, third = await held_tasks(api, 3)
    response = await complete_tasks(
        api,
        [
            completion(first),
            completion(second, attempt=second.attempt + 1),
            completion(first, task_id=UNKNOWN_TASK_ID),
            completion(first, task_id="not-a-task-id"),
            completion(first),
            completion(third, quality=2.0),
        ],
    )
    assert [(result.task_id, result.code) for result in response.results] == [
        (first.task.id, OK),
        (second.task.id, FAILED_PRECONDITION),
        (UNKNOWN_TASK_ID, NOT_FOUND),
        ("not-a-task-id", INVALID),
        (first.task.id, INVALID),
        (third.task.id, INVALID),
    ]
    messages = [result.message for result in response.results]
    assert messages[0] == ""
    assert "stale" in messages[1] and f"attempt {second.attempt + 1}" in messages[1]
    assert messages[3].startswith("task_id:")
    assert "more than once" in messages[4]
    assert messages[5].startswith("quality:")
    states = {
        assignment.task.id: (await api.get_task(assignment.task.id)).state for assignment in (first, second, third)
    }
    assert states == {
        first.task.id: task_pb2.TASK_STATE_COMPLETED,
        second.task.id: task_pb2.TASK_STATE_ASSIGNED,
        third.task.id: task_pb2.TASK_STATE_ASSIGNED,
    }
    completed = await api.get_task(first.task.id)
    assert dict(completed.result) == {"done": True}


async def test_complete_tasks_leaves_an_event_for_each_completed_task(api: Api) -> None:
    assignments = await held_tasks(api, 2)
    response = await complete_tasks(api, [completion(each) for each in assignments])
    assert [result.code for result in response.results] == [OK, OK]
    for each in assignments:
        history = await api.orchestrator.GetTaskHistory(
            opb.GetTaskHistoryRequest(task_id=each.task.id), metadata=api.admin
        )
        assert [event.to_state for event in history.events] == [
            task_pb2.TASK_STATE_PENDING,
            task_pb2.TASK_STATE_ASSIGNED,
            task_pb2.TASK_STATE_COMPLETED,
        ]


@pytest.mark.parametrize("size", [0, 1001], ids=["empty", "over-1000"])
async def test_complete_tasks_refuses_an_empty_or_oversized_call(api: Api, size: int) -> None:
    request = opb.CompleteTaskRequest(task_id=UNKNOWN_TASK_ID, agent_id=AGENT_ID, attempt=1)
    await rejected_as_invalid(complete_tasks(api, [request] * size), "completions")


async def test_an_agent_sends_results_that_finish_together_in_fewer_calls_than_tasks(
    stack: Stack, database_url: str
) -> None:
    release = asyncio.Event()
    started: list[str] = []

    async def wait_for_release(task: Task) -> dict[str, Any]:
        started.append(task.id)
        await release.wait()
        return {"id": task.id}

    async with serving_agent(stack, "batcher", {TASK_TYPE: wait_for_release}, max_concurrent_tasks=8):
        api = Api(stack)
        submitted = [await api.submit() for _ in range(8)]
        await eventually(lambda: len(started) == 8, "all eight handlers to start")
        release.set()

        async def all_completed() -> bool:
            tasks = [await api.get_task(task.id) for task in submitted]
            return all(task.state == task_pb2.TASK_STATE_COMPLETED for task in tasks)

        await eventually(all_completed, "all eight tasks to complete")
    async with await psycopg.AsyncConnection.connect(database_url) as connection:
        cursor = await connection.execute(
            "SELECT count(*) FROM audit_events WHERE rpc LIKE %s AND status = 'OK'", ("%/CompleteTasks",)
        )
        row = await cursor.fetchone()
    assert row is not None
    assert 1 <= row[0] < 8


class OrchestratorWithoutCompleteTasks(opb_grpc.OrchestratorServiceServicer):
    """An orchestrator from before CompleteTasks: that call answers UNIMPLEMENTED (the generated
    default), CompleteTask records the result or refuses a task named 'stale'."""

    def __init__(self) -> None:
        self.completed: list[str] = []

    async def CompleteTask(
        self, request: opb.CompleteTaskRequest, context: grpc.aio.ServicerContext
    ) -> opb.CompleteTaskResponse:
        if request.task_id == "stale":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the attempt is no longer yours")
        self.completed.append(request.task_id)
        return opb.CompleteTaskResponse()


@pytest.fixture
async def old_orchestrator() -> AsyncIterator[tuple[OrchestratorWithoutCompleteTasks, grpc.aio.Channel]]:
    servicer = OrchestratorWithoutCompleteTasks()
    server = grpc.aio.server()
    opb_grpc.add_OrchestratorServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield servicer, channel
    finally:
        await channel.close()
        await server.stop(0)


async def test_completion_sender_falls_back_to_complete_task_against_an_older_orchestrator(
    old_orchestrator: tuple[OrchestratorWithoutCompleteTasks, grpc.aio.Channel],
) -> None:
    servicer, channel = old_orchestrator

    async def send_once(method: Any, request: Any) -> Any:
        return await method(request, timeout=5)

    sender = CompletionSender(opb_grpc.OrchestratorServiceStub(channel), send_once)
    task_ids = ["a", "b", "stale", "c"]
    refusals = await asyncio.gather(
        *(sender.complete(opb.CompleteTaskRequest(task_id=task_id, agent_id="x", attempt=1)) for task_id in task_ids)
    )
    assert refusals == [None, None, (grpc.StatusCode.FAILED_PRECONDITION, "the attempt is no longer yours"), None]
    assert sorted(servicer.completed) == ["a", "b", "c"]
