"""How work reaches agents: at once on submit, and through a registry that is briefly away."""

from __future__ import annotations

import asyncio
import dataclasses

import grpc
import pytest

from arbiter.v1 import agent_pb2, orchestrator_service_pb2, orchestrator_service_pb2_grpc, registry_service_pb2
from services.orchestrator.app import create_orchestrator
from services.registry.app import create_registry
from shared.api_keys import Role
from tests.support.processes import free_port
from tests.support.stack import Stack, config_for_tests, create_keys, running_stack


async def register(stack: Stack, agent_id: str, task_type: str = "echo") -> None:
    agent = agent_pb2.Agent(
        id=agent_id, capabilities=agent_pb2.AgentCapabilities(task_types=[task_type]), max_concurrent_tasks=1
    )
    await stack.registry().RegisterAgent(
        registry_service_pb2.RegisterAgentRequest(agent=agent), metadata=stack.as_role(Role.AGENT)
    )


async def test_a_submitted_task_reaches_an_idle_agent_without_waiting_for_the_poll(database_url: str) -> None:
    # With a 60 s safety poll, only the in-process wake-up can deliver within the 5 s bound.
    async with running_stack(database_url, assignment_poll_seconds=60.0) as stack:
        await register(stack, "idle-1")
        orchestrator = stack.orchestrator()
        stream = orchestrator.StreamAssignments(
            orchestrator_service_pb2.StreamAssignmentsRequest(agent_id="idle-1"), metadata=stack.as_role(Role.AGENT)
        )
        async with asyncio.timeout(5):
            while len(stack.orchestrator_app.orchestrator.sessions) == 0:
                await asyncio.sleep(0.01)
        submitted = await orchestrator.SubmitTask(
            orchestrator_service_pb2.SubmitTaskRequest(task_type="echo"), metadata=stack.as_role(Role.SUBMITTER)
        )
        async with asyncio.timeout(5):
            message = await stream.read()
        assert message.assignment.task.id == submitted.task.id
        stream.cancel()


async def test_a_reconnecting_agent_receives_the_tasks_it_still_holds(stack: Stack) -> None:
    await register(stack, "flaky-1")
    orchestrator = stack.orchestrator()
    request = orchestrator_service_pb2.StreamAssignmentsRequest(agent_id="flaky-1")
    first = orchestrator.StreamAssignments(request, metadata=stack.as_role(Role.AGENT))
    submitted = await orchestrator.SubmitTask(
        orchestrator_service_pb2.SubmitTaskRequest(task_type="echo"), metadata=stack.as_role(Role.SUBMITTER)
    )
    assert (await first.read()).assignment.task.id == submitted.task.id
    first.cancel()
    second = orchestrator.StreamAssignments(request, metadata=stack.as_role(Role.AGENT))
    again = (await second.read()).assignment
    assert (again.task.id, again.attempt) == (submitted.task.id, 1)
    second.cancel()


async def test_orchestrator_retries_the_registry_until_it_comes_up(database_url: str) -> None:
    keys = await create_keys(database_url)
    registry_address = f"127.0.0.1:{free_port()}"
    orchestrator_app = await create_orchestrator(
        config_for_tests(database_url, service_key=keys[Role.SERVICE], registry_target=registry_address)
    )
    registry_app = None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{orchestrator_app.port}") as channel:
            stub = orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel)
            stream = stub.StreamAssignments(
                orchestrator_service_pb2.StreamAssignmentsRequest(agent_id="late-1"),
                metadata=(("authorization", f"Bearer {keys[Role.AGENT]}"),),
            )
            read = asyncio.ensure_future(stream.read())
            await asyncio.sleep(0.5)  # the orchestrator is now retrying against a closed port
            registry_app = await create_registry(
                dataclasses.replace(config_for_tests(database_url), registry_addr=registry_address)
            )
            # The registry answers, so the retried call ends with its real answer: no such agent.
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                async with asyncio.timeout(15):
                    await read
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await orchestrator_app.stop(0.5)
        if registry_app is not None:
            await registry_app.stop(0.5)


async def test_an_unreachable_registry_answers_unavailable_after_the_retry_window(database_url: str) -> None:
    keys = await create_keys(database_url)
    orchestrator_app = await create_orchestrator(
        config_for_tests(
            database_url,
            service_key=keys[Role.SERVICE],
            registry_target=f"127.0.0.1:{free_port()}",
            registry_retry_seconds=1.0,
        )
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{orchestrator_app.port}") as channel:
            stream = orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel).StreamAssignments(
                orchestrator_service_pb2.StreamAssignmentsRequest(agent_id="any-1"),
                metadata=(("authorization", f"Bearer {keys[Role.AGENT]}"),),
            )
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stream.read()
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "registry is unreachable" in (raised.value.details() or "")
    finally:
        await orchestrator_app.stop(0.5)


async def test_a_newer_stream_for_the_same_agent_replaces_the_older_one(stack: Stack) -> None:
    await register(stack, "twice-1")
    orchestrator = stack.orchestrator()
    request = orchestrator_service_pb2.StreamAssignmentsRequest(agent_id="twice-1")
    older = orchestrator.StreamAssignments(request, metadata=stack.as_role(Role.AGENT))
    async with asyncio.timeout(5):
        while len(stack.orchestrator_app.orchestrator.sessions) == 0:
            await asyncio.sleep(0.01)
    newer = orchestrator.StreamAssignments(request, metadata=stack.as_role(Role.AGENT))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await older.read()
    assert raised.value.code() == grpc.StatusCode.ABORTED
    submitted = await orchestrator.SubmitTask(
        orchestrator_service_pb2.SubmitTaskRequest(task_type="echo"), metadata=stack.as_role(Role.SUBMITTER)
    )
    assert (await newer.read()).assignment.task.id == submitted.task.id
    newer.cancel()
