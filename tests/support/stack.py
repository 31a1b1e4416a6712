"""Both services in this test's event loop on free loopback ports, with a key per role."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.sdk.trace import TracerProvider

from arbiter import Agent, Task
from arbiter.v1 import admin_service_pb2_grpc, orchestrator_service_pb2_grpc, registry_service_pb2_grpc
from services.orchestrator.app import OrchestratorApp, create_orchestrator
from services.registry.app import RegistryApp, create_registry
from shared.api_keys import KeyHasher, KeySpec, Role, create_key
from shared.config import Config
from shared.database import open_pool
from shared.tenancy import ALL_TENANTS, DEFAULT_TENANT

# The pepper every test service and key uses (real deployments set their own secret).
TEST_PEPPER = "test-pepper-not-a-secret-0123456789abcdef"
TEST_HASHER = KeyHasher(TEST_PEPPER)


def config_for_tests(database_url: str, **overrides: object) -> Config:
    """Defaults for tests: free ports, a short safety poll, plaintext allowed; `overrides` win."""
    settings: dict[str, object] = {
        "database_url": database_url,
        "allow_insecure": True,
        "api_key_pepper": TEST_PEPPER,
        "registry_addr": "127.0.0.1:0",
        "orchestrator_addr": "127.0.0.1:0",
        "assignment_poll_seconds": 0.5,
        "shutdown_grace_seconds": 1.0,
    }
    settings.update(overrides)
    return dataclasses.replace(Config.from_env({}), **settings)  # type: ignore[arg-type]


async def create_keys(database_url: str, tenant: str = DEFAULT_TENANT) -> dict[Role, str]:
    """A key per role in the tenant."""
    pool = await open_pool(database_url, 1, 1, name="test-keys")
    try:
        return {role: (await create_key(pool, TEST_HASHER, KeySpec(role, tenant, "test"))).secret for role in Role}
    finally:
        await pool.close()


async def create_every_tenant_key(database_url: str, role: Role = Role.SERVICE) -> str:
    """A key that acts in every tenant: what the orchestrator uses in production (ARBITER_SERVICE_KEY)."""
    pool = await open_pool(database_url, 1, 1, name="test-keys")
    try:
        return (await create_key(pool, TEST_HASHER, KeySpec(role, ALL_TENANTS, "every tenant"))).secret
    finally:
        await pool.close()


def metadata(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


@dataclass
class Stack:
    registry_app: RegistryApp
    orchestrator_app: OrchestratorApp
    keys: dict[Role, str]
    channels: list[grpc.aio.Channel]

    @property
    def registry_address(self) -> str:
        return f"127.0.0.1:{self.registry_app.port}"

    @property
    def orchestrator_address(self) -> str:
        return f"127.0.0.1:{self.orchestrator_app.port}"

    def as_role(self, role: Role) -> tuple[tuple[str, str], ...]:
        return metadata(self.keys[role])

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(address)
        self.channels.append(channel)
        return channel

    def registry(self) -> registry_service_pb2_grpc.RegistryServiceStub:
        return registry_service_pb2_grpc.RegistryServiceStub(self._channel(self.registry_address))

    def orchestrator(self) -> orchestrator_service_pb2_grpc.OrchestratorServiceStub:
        return orchestrator_service_pb2_grpc.OrchestratorServiceStub(self._channel(self.orchestrator_address))

    def admin(self) -> admin_service_pb2_grpc.AdminServiceStub:
        """AdminService, served by the registry."""
        return admin_service_pb2_grpc.AdminServiceStub(self._channel(self.registry_address))


@asynccontextmanager
async def running_stack(
    database_url: str, tracer_provider: TracerProvider | None = None, **overrides: object
) -> AsyncIterator[Stack]:
    keys = await create_keys(database_url)
    registry_app = await create_registry(config_for_tests(database_url, **overrides), tracer_provider)
    orchestrator_app = await create_orchestrator(
        config_for_tests(
            database_url,
            service_key=await create_every_tenant_key(database_url),
            registry_target=f"127.0.0.1:{registry_app.port}",
            **overrides,
        ),
        tracer_provider,
    )
    stack = Stack(registry_app, orchestrator_app, keys, [])
    try:
        yield stack
    finally:
        for channel in stack.channels:
            await channel.close()
        await orchestrator_app.stop(0.5)
        await registry_app.stop(0.5)


@asynccontextmanager
async def serving_agent(
    stack: Stack, agent_id: str, handlers: dict[str, Callable[[Task], Awaitable[Any]]], **agent_options: Any
) -> AsyncIterator[Agent]:
    """An SDK agent in this test's event loop with these handlers (by task type), drained when the block ends."""
    agent = Agent(
        agent_id,
        registry=stack.registry_address,
        orchestrator=stack.orchestrator_address,
        api_key=stack.keys[Role.AGENT],
        **agent_options,
    )
    for task_type, handler in handlers.items():
        agent.handler(task_type)(handler)
    running = asyncio.create_task(agent.serve())
    try:
        yield agent
    finally:
        agent.drain()
        await asyncio.wait_for(running, 30)
