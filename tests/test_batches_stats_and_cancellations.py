"""SubmitTasks stores a batch all-or-nothing with per-task idempotency, GetQueueStats counts the queue,
and cancelling an assigned task tells its agent on the assignment stream."""

from __future__ import annotations

import asyncio

import grpc
import psycopg
import pytest
from google.protobuf.struct_pb2 import Struct

from arbiter.v1 import agent_pb2, task_pb2
from arbiter.v1 import orchestrator_service_pb2 as opb
from arbiter.v1 import registry_service_pb2 as rpb
from shared.api_keys import Role
from tests.support.stack import Stack

TASK_TYPE = "echo"
AGENT_ID = "agent-1"


def submission(number: int = 0, **fields: object) -> opb.SubmitTaskRequest:
    payload = Struct()
    payload.update({"number": number})
    return opb.SubmitTaskRequest(task_type=str(fields.pop("task_type", TASK_TYPE)), payload=payload, **fields)


async def submit_batch(stack: Stack, *requests: opb.SubmitTaskRequest) -> opb.SubmitTasksResponse:
    response: opb.SubmitTasksResponse = await stack.orchestrator().SubmitTasks(
        opb.SubmitTasksRequest(tasks=requests), metadata=stack.as_role(Role.SUBMITTER)
    )
    return response


async def stored_task_ids(stack: Stack) -> set[str]:
    response = await stack.orchestrator().ListTasks(
        opb.ListTasksRequest(page_size=500), metadata=stack.as_role(Role.VIEWER)
    )
    return {task.id for task in response.tasks}


async def test_a_batch_is_stored_in_request_order_and_each_task_can_be_read_back(stack: Stack) -> None:
    response = await submit_batch(stack, *(submission(number) for number in range(5)))
    assert [task.payload["number"] for task in response.tasks] == [0, 1, 2, 3, 4]
    assert list(response.created) == [True] * 5
    assert {task.state for task in response.tasks} == {task_pb2.TASK_STATE_PENDING}
    assert await stored_task_ids(stack) == {task.id for task in response.tasks}


async def test_each_task_of_a_batch_keeps_its_own_idempotency_key(stack: Stack) -> None:
    earlier = await stack.orchestrator().SubmitTask(
        submission(0, idempotency_key="order-1"), metadata=stack.as_role(Role.SUBMITTER)
    )
    assert earlier.created
    response = await submit_batch(
        stack,
        submission(1, idempotency_key="order-1"),
        submission(2, idempotency_key="order-2"),
        submission(3, idempotency_key="order-2"),
        submission(4),
    )
    ids = [task.id for task in response.tasks]
    assert list(response.created) == [False, True, False, True]
    assert ids[0] == earlier.task.id
    assert response.tasks[0].payload["number"] == 0  # the first submission's task, unchanged
    assert ids[1] == ids[2]
    assert await stored_task_ids(stack) == {earlier.task.id, ids[1], ids[3]}


async def test_concurrent_batches_sharing_keys_create_one_task_per_key(stack: Stack) -> None:
    keys = [f"key-{number}" for number in range(20)]
    responses = await asyncio.gather(
        *(submit_batch(stack, *(submission(idempotency_key=key) for key in keys)) for _ in range(5))
    )
    ids_by_key = {key: {response.tasks[index].id for response in responses} for index, key in enumerate(keys)}
    assert all(len(ids) == 1 for ids in ids_by_key.values())
    assert sum(created for response in responses for created in response.created) == len(keys)
    assert len(await stored_task_ids(stack)) == len(keys)


async def test_a_batch_that_fails_in_the_database_stores_none_of_its_tasks(stack: Stack, database_url: str) -> None:
    # A fault injected in this test's own database: inserting a task whose payload says so fails.
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(
            """
            CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.payload ? 'poison' THEN RAISE EXCEPTION 'poisoned task'; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse_poison BEFORE INSERT ON tasks FOR EACH ROW EXECUTE FUNCTION refuse_poison();
            """
        )
    poisoned = submission(2)
    poisoned.payload.update({"poison": True})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await submit_batch(stack, submission(0), submission(1), poisoned, submission(3))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert await stored_task_ids(stack) == set()


async def test_queue_stats_count_tasks_by_type_and_state_with_the_oldest_submission(stack: Stack) -> None:
    first = await submit_batch(stack, submission(0), submission(1), submission(2, task_type="review"))
    cancelled = first.tasks[1]
    await stack.orchestrator().CancelTask(
        opb.CancelTaskRequest(task_id=cancelled.id), metadata=stack.as_role(Role.ADMIN)
    )
    response = await stack.orchestrator().GetQueueStats(opb.GetQueueStatsRequest(), metadata=stack.as_role(Role.VIEWER))
    counts = {(count.task_type, count.state): count for count in response.counts}
    assert {key: count.count for key, count in counts.items()} == {
        (TASK_TYPE, task_pb2.TASK_STATE_PENDING): 1,
        (TASK_TYPE, task_pb2.TASK_STATE_CANCELLED): 1,
        ("review", task_pb2.TASK_STATE_PENDING): 1,
    }
    assert counts[(TASK_TYPE, task_pb2.TASK_STATE_PENDING)].oldest_created_at == first.tasks[0].created_at
    assert [count.task_type for count in response.counts] == sorted(count.task_type for count in response.counts)


async def test_cancelling_an_assigned_task_sends_a_cancellation_on_its_agents_stream(stack: Stack) -> None:
    await stack.registry().RegisterAgent(
        rpb.RegisterAgentRequest(
            agent=agent_pb2.Agent(
                id=AGENT_ID, capabilities=agent_pb2.AgentCapabilities(task_types=[TASK_TYPE]), max_concurrent_tasks=2
            )
        ),
        metadata=stack.as_role(Role.AGENT),
    )
    orchestrator = stack.orchestrator()
    stream = orchestrator.StreamAssignments(
        opb.StreamAssignmentsRequest(agent_id=AGENT_ID), metadata=stack.as_role(Role.AGENT)
    )
    task = (await submit_batch(stack, submission(0))).tasks[0]
    assignment = (await stream.read()).assignment
    assert assignment.task.id == task.id

    await orchestrator.CancelTask(
        opb.CancelTaskRequest(task_id=task.id, reason="no longer needed"), metadata=stack.as_role(Role.SUBMITTER)
    )
    message = await asyncio.wait_for(stream.read(), 10)
    assert message.WhichOneof("kind") == "cancellation"
    assert (message.cancellation.task_id, message.cancellation.attempt) == (task.id, assignment.attempt)
    assert message.cancellation.reason == "no longer needed"

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await orchestrator.CompleteTask(
            opb.CompleteTaskRequest(task_id=task.id, agent_id=AGENT_ID, attempt=assignment.attempt),
            metadata=stack.as_role(Role.AGENT),
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "CANCELLED" in (caught.value.details() or "")

    # The slot is free again: the next task reaches the same stream.
    following = (await submit_batch(stack, submission(1))).tasks[0]
    assert (await asyncio.wait_for(stream.read(), 10)).assignment.task.id == following.id
    stream.cancel()
