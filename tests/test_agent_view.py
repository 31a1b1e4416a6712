"""The orchestrator's live view of the agents (fed by the registry's WatchAgents stream) stays right
through registration, heartbeats, status changes, outcomes, deregistration, and a registry restart
during which another registry instance changed the agents."""

from __future__ import annotations

from typing import Any

import grpc

from arbiter.v1 import agent_pb2, registry_service_pb2_grpc
from arbiter.v1 import registry_service_pb2 as rpb
from services.orchestrator.agent_directory import AgentDirectory
from services.registry.app import create_registry
from shared.api_keys import Role
from shared.tenancy import DEFAULT_TENANT, qualify
from tests.support.stack import Stack, config_for_tests, metadata, running_stack
from tests.support.waiting import eventually


async def register(
    registry: registry_service_pb2_grpc.RegistryServiceStub, key: str, agent_id: str, **fields: Any
) -> None:
    await registry.RegisterAgent(
        rpb.RegisterAgentRequest(
            agent=agent_pb2.Agent(
                id=agent_id,
                capabilities=agent_pb2.AgentCapabilities(task_types=fields.pop("task_types", ["review"])),
                max_concurrent_tasks=fields.pop("max_concurrent_tasks", 2),
            )
        ),
        metadata=metadata(key),
    )


async def view_shows(directory: AgentDirectory, what: str, **expected: Any) -> None:
    """Waits until each agent id maps to the expected status (None: absent from the view)."""

    def matches() -> bool:
        for agent_id, status in expected.items():
            agent = directory.get(qualify(DEFAULT_TENANT, agent_id))
            if (agent.status if agent else None) != status:
                return False
        return True

    await eventually(matches, what)


async def test_the_view_follows_every_change_to_the_agents(database_url: str) -> None:
    async with running_stack(database_url, heartbeat_interval_seconds=0.5) as stack:
        directory = stack.orchestrator_app.orchestrator.directory
        registry, agent_key = stack.registry(), stack.keys[Role.AGENT]
        await register(registry, agent_key, "alpha", task_types=["review", "build"], max_concurrent_tasks=3)
        await view_shows(directory, "alpha registered", alpha="ONLINE")
        alpha = directory.get("default/alpha")
        assert alpha is not None
        assert alpha.task_types == ["review", "build"] and alpha.max_concurrent_tasks == 3

        await registry.Heartbeat(
            rpb.HeartbeatRequest(agent_id="alpha", active_tasks=2, status=agent_pb2.AGENT_STATUS_DRAINING),
            metadata=metadata(agent_key),
        )
        await view_shows(directory, "alpha draining", alpha="DRAINING")
        assert directory.get("default/alpha").active_tasks == 2  # type: ignore[union-attr]

        await registry.RecordOutcome(
            rpb.RecordOutcomeRequest(agent_id="alpha", task_type="review", success=True, latency_ms=5),
            metadata=stack.as_role(Role.SERVICE),
        )
        await eventually(lambda: directory.outcomes_of_type("review") == 1, "alpha's outcome in the view")
        assert directory.get("default/alpha").performance_on("review").success_rate == (1 + 0.7) / 2  # type: ignore[union-attr]

        # Silent for more than 3 heartbeat intervals: UNHEALTHY, with no row changing.
        await view_shows(directory, "alpha silent", alpha="UNHEALTHY")
        await registry.Heartbeat(rpb.HeartbeatRequest(agent_id="alpha"), metadata=metadata(agent_key))
        await view_shows(directory, "alpha back", alpha="ONLINE")

        await registry.DeregisterAgent(rpb.DeregisterAgentRequest(agent_id="alpha"), metadata=metadata(agent_key))
        await view_shows(directory, "alpha deregistered", alpha=None)
        assert "default/alpha" in directory.removed


async def test_the_view_resynchronises_after_a_registry_restart(database_url: str) -> None:
    async with running_stack(database_url) as stack:
        directory = stack.orchestrator_app.orchestrator.directory
        agent_key = stack.keys[Role.AGENT]
        await register(stack.registry(), agent_key, "stays")
        await register(stack.registry(), agent_key, "leaves")
        await view_shows(directory, "both agents", stays="ONLINE", leaves="ONLINE")

        port = stack.registry_app.port
        await stack.registry_app.stop(0.5)
        await eventually(lambda: not directory.synced.is_set(), "the view to notice the registry is gone")
        # Meanwhile, another registry instance (sharing the database) takes changes.
        other = await create_registry(config_for_tests(database_url))
        try:
            other_stub = registry_service_pb2_grpc.RegistryServiceStub(_channel(stack, f"127.0.0.1:{other.port}"))
            await other_stub.DeregisterAgent(
                rpb.DeregisterAgentRequest(agent_id="leaves"), metadata=metadata(agent_key)
            )
            await register(other_stub, agent_key, "arrives")
            await other_stub.Heartbeat(
                rpb.HeartbeatRequest(agent_id="stays", status=agent_pb2.AGENT_STATUS_DRAINING),
                metadata=metadata(agent_key),
            )
        finally:
            await other.stop(0.5)
        # The view, blind meanwhile, still shows what it last knew.
        assert directory.get("default/leaves") is not None and directory.get("default/arrives") is None

        stack.registry_app = await create_registry(config_for_tests(database_url, registry_addr=f"127.0.0.1:{port}"))
        await view_shows(directory, "the view after the restart", stays="DRAINING", leaves=None, arrives="ONLINE")
        assert directory.synced.is_set()


def _channel(stack: Stack, address: str) -> grpc.aio.Channel:
    channel = grpc.aio.insecure_channel(address)
    stack.channels.append(channel)
    return channel
