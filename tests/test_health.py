"""Health: liveness ("") SERVING while the process runs; readiness (each service name) SERVING only while
the database answers and, for the orchestrator, its registry link is up; a plaintext health-only port."""

from __future__ import annotations

import asyncio

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from arbiter.v1 import orchestrator_service_pb2 as opb
from arbiter.v1 import orchestrator_service_pb2_grpc
from shared.api_keys import Role
from tests.support.database import PostgresForTests
from tests.support.grpcurl import grpcurl
from tests.support.stack import Stack, running_stack

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


async def wait_for_status(address: str, service: str, expected: int, timeout: float = 15.0) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        async with asyncio.timeout(timeout):
            while await status_of(stub, service) != expected:
                await asyncio.sleep(0.05)


async def status_of(stub: health_pb2_grpc.HealthStub, service: str) -> int | None:
    """The service's status; None while the server has not set one yet (NOT_FOUND), just after it started."""
    try:
        return (await stub.Check(health_pb2.HealthCheckRequest(service=service))).status
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return None


def block_connections(postgres: PostgresForTests, database_url: str, blocked: bool) -> None:
    name = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    with psycopg.connect(postgres.admin_url, autocommit=True) as connection:
        connection.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"false" if blocked else "true"}')
        if blocked:
            connection.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


REGISTRY_SERVICE, ORCHESTRATOR_SERVICE = "arbiter.v1.RegistryService", "arbiter.v1.OrchestratorService"


async def test_readiness_is_not_serving_while_the_database_is_unreachable_and_liveness_stays_serving(
    stack: Stack, test_postgres: PostgresForTests, database_url: str
) -> None:
    services = ((stack.registry_address, REGISTRY_SERVICE), (stack.orchestrator_address, ORCHESTRATOR_SERVICE))
    for address, service in services:
        await wait_for_status(address, service, SERVING)
    block_connections(test_postgres, database_url, blocked=True)
    try:
        for address, service in services:
            await wait_for_status(address, service, NOT_SERVING)
            # The process works: restarting it would not bring the database back.
            await wait_for_status(address, "", SERVING, timeout=0.5)
    finally:
        block_connections(test_postgres, database_url, blocked=False)
    for address, service in services:
        await wait_for_status(address, service, SERVING)


async def test_the_orchestrator_is_not_ready_while_its_registry_is_unreachable(database_url: str) -> None:
    async with running_stack(database_url) as stack:
        await wait_for_status(stack.orchestrator_address, ORCHESTRATOR_SERVICE, SERVING)
        await stack.registry_app.stop(0)
        await wait_for_status(stack.orchestrator_address, ORCHESTRATOR_SERVICE, NOT_SERVING)
        await wait_for_status(stack.orchestrator_address, "", SERVING, timeout=0.5)


async def test_the_health_port_answers_health_in_plaintext_and_nothing_else(database_url: str) -> None:
    async with running_stack(database_url, health_addr="127.0.0.1:0", allow_insecure=True) as stack:
        for app, service in ((stack.registry_app, REGISTRY_SERVICE), (stack.orchestrator_app, ORCHESTRATOR_SERVICE)):
            health_port = app.server.health_port
            assert health_port is not None and health_port != app.port
            await wait_for_status(f"127.0.0.1:{health_port}", service, SERVING)
            await wait_for_status(f"127.0.0.1:{health_port}", "", SERVING)
            # An operator's grpcurl finds the health service by reflection there too.
            answer = await asyncio.to_thread(
                grpcurl, None, f"127.0.0.1:{health_port}", "grpc.health.v1.Health/Check", {"service": service}
            )
            assert answer == {"status": "SERVING"}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.orchestrator_app.server.health_port}") as channel:
            stub = orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.GetQueueStats(opb.GetQueueStatsRequest(), metadata=stack.as_role(Role.VIEWER))
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_shutting_down_turns_liveness_and_readiness_not_serving(database_url: str) -> None:
    async with running_stack(database_url, health_addr="127.0.0.1:0") as stack:
        health_address = f"127.0.0.1:{stack.orchestrator_app.server.health_port}"
        await wait_for_status(health_address, ORCHESTRATOR_SERVICE, SERVING)
        await stack.orchestrator_app.server.stop_serving_health()
        await wait_for_status(health_address, "", NOT_SERVING, timeout=1)
        await wait_for_status(health_address, ORCHESTRATOR_SERVICE, NOT_SERVING, timeout=1)
