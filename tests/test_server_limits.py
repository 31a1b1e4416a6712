"""Server resource limits: oversized messages and calls beyond maximum_concurrent_rpcs answer
RESOURCE_EXHAUSTED and the server serves on; the default allows over a thousand open streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from arbiter.v1 import agent_pb2, orchestrator_service_pb2, registry_service_pb2
from shared.api_keys import Role
from shared.config import MESSAGE_HEADROOM_BYTES, Config, ConfigError
from shared.database import open_pool
from shared.server import Observability, RunningServer, ServerLimits, start_server
from tests.support.stack import Stack, running_stack
from tests.support.waiting import eventually

SMALL_MESSAGE_BYTES = 256 * 1024
OVERSIZED_TEXT = "x" * (2 * SMALL_MESSAGE_BYTES)


def test_the_message_limit_must_leave_room_around_the_largest_payload() -> None:
    with pytest.raises(ConfigError) as raised:
        Config.from_env({"ARBITER_MAX_PAYLOAD_BYTES": "1048576", "ARBITER_MAX_MESSAGE_BYTES": "1048576"})
    assert "ARBITER_MAX_MESSAGE_BYTES (1048576) must exceed ARBITER_MAX_PAYLOAD_BYTES (1048576)" in str(raised.value)
    config = Config.from_env({"ARBITER_MAX_MESSAGE_BYTES": str(1048576 + MESSAGE_HEADROOM_BYTES)})
    assert config.max_message_bytes == 1048576 + MESSAGE_HEADROOM_BYTES


def test_a_message_limit_grpc_cannot_take_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="ARBITER_MAX_MESSAGE_BYTES='4294967296'"):
        Config.from_env({"ARBITER_MAX_MESSAGE_BYTES": str(2**32)})


def test_the_defaults_allow_many_streams_and_8_mib_messages() -> None:
    config = Config.from_env({})
    assert config.max_concurrent_rpcs == 10_000
    assert config.max_message_bytes == 8 * 1024 * 1024


@pytest.fixture
async def small_message_stack(database_url: str) -> AsyncIterator[Stack]:
    async with running_stack(
        database_url, max_message_bytes=SMALL_MESSAGE_BYTES, max_payload_bytes=SMALL_MESSAGE_BYTES // 2
    ) as stack:
        yield stack


async def test_the_orchestrator_refuses_an_oversized_message_and_serves_on(small_message_stack: Stack) -> None:
    orchestrator = small_message_stack.orchestrator()
    submitter = small_message_stack.as_role(Role.SUBMITTER)
    payload = struct_pb2.Struct()
    payload.update({"text": OVERSIZED_TEXT})
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await orchestrator.SubmitTask(
            orchestrator_service_pb2.SubmitTaskRequest(task_type="echo", payload=payload), metadata=submitter
        )
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    response = await orchestrator.SubmitTask(
        orchestrator_service_pb2.SubmitTaskRequest(task_type="echo"), metadata=submitter
    )
    assert response.created


async def test_the_registry_refuses_an_oversized_message_and_serves_on(small_message_stack: Stack) -> None:
    registry = small_message_stack.registry()
    agent = small_message_stack.as_role(Role.AGENT)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await registry.RegisterAgent(
            registry_service_pb2.RegisterAgentRequest(agent=agent_pb2.Agent(id="big", name=OVERSIZED_TEXT)),
            metadata=agent,
        )
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    response = await registry.ListAgents(registry_service_pb2.ListAgentsRequest(), metadata=agent)
    assert list(response.agents) == []


@pytest.fixture
async def server_of_three(database_url: str) -> AsyncIterator[RunningServer]:
    """A server (health only) that runs at most three calls at once."""
    pool = await open_pool(database_url, 1, 1, name="server-limits-test")
    try:
        running = await start_server(
            "127.0.0.1:0",
            [],
            lambda server: None,
            [],
            pool,
            limits=ServerLimits(max_concurrent_rpcs=3, max_message_bytes=SMALL_MESSAGE_BYTES),
            observability=Observability("limits-test"),
        )
        try:
            yield running
        finally:
            await running.stop(0)
    finally:
        await pool.close()


async def open_health_watches(
    stubs: list[health_pb2_grpc.HealthStub], per_stub: int
) -> list[grpc.aio.UnaryStreamCall[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]]:
    """`per_stub` health Watch streams on each stub, all started at once; returns when each is open on the
    server (its first status received)."""
    watches = [stub.Watch(health_pb2.HealthCheckRequest()) for stub in stubs for _ in range(per_stub)]
    await asyncio.gather(*(watch.read() for watch in watches))
    return watches


async def test_a_call_beyond_maximum_concurrent_rpcs_is_refused_until_one_ends(
    server_of_three: RunningServer,
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server_of_three.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watches = await open_health_watches([stub], 3)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        watches[0].cancel()

        async def check_answers() -> bool:
            try:
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                return False
            return True

        await eventually(check_answers, "a call once a stream has ended")
        for watch in watches:
            watch.cancel()


STREAMS = 1_100
CHANNELS = 11


async def test_the_default_limits_take_1100_streams_opened_at_once_and_a_call_beside_them(stack: Stack) -> None:
    # Separate connections, as agents reconnecting together after a restart have; channels to one address
    # would otherwise share one connection.
    channels = [
        grpc.aio.insecure_channel(stack.orchestrator_address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CHANNELS)
    ]
    watches = []
    try:
        async with asyncio.timeout(30):
            watches = await open_health_watches(
                [health_pb2_grpc.HealthStub(channel) for channel in channels], STREAMS // CHANNELS
            )
            response = await stack.orchestrator().GetQueueStats(
                orchestrator_service_pb2.GetQueueStatsRequest(), metadata=stack.as_role(Role.VIEWER), timeout=5
            )
        assert response is not None
        assert len(watches) == STREAMS
        assert not any(watch.done() for watch in watches)
    finally:
        for watch in watches:
            watch.cancel()
        for channel in channels:
            await channel.close()
