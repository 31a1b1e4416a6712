"""Health follows the database: NOT_SERVING while it cannot be reached, SERVING again after."""

from __future__ import annotations

import asyncio

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.database import PostgresForTests
from tests.support.stack import Stack

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


async def test_health_is_not_serving_while_the_database_is_unreachable(
    stack: Stack, test_postgres: PostgresForTests, database_url: str
) -> None:
    for address, service in (
        (stack.registry_address, "arbiter.v1.RegistryService"),
        (stack.orchestrator_address, "arbiter.v1.OrchestratorService"),
    ):
        await wait_for_status(address, service, SERVING)
    block_connections(test_postgres, database_url, blocked=True)
    try:
        await wait_for_status(stack.registry_address, "arbiter.v1.RegistryService", NOT_SERVING)
        await wait_for_status(stack.orchestrator_address, "", NOT_SERVING)
    finally:
        block_connections(test_postgres, database_url, blocked=False)
    await wait_for_status(stack.registry_address, "arbiter.v1.RegistryService", SERVING)
    await wait_for_status(stack.orchestrator_address, "arbiter.v1.OrchestratorService", SERVING)
