"""The orchestrator's view of the registry: agent profiles over gRPC, with the service key.

The orchestrator never reads the registry's tables. UNAVAILABLE is retried with backoff for a
bounded time; every other failure becomes a domain error the caller can act on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

from arbiter.v1 import agent_pb2, registry_service_pb2, registry_service_pb2_grpc
from services.orchestrator.domain import AgentProfile, TypePerformance
from shared.errors import ArbiterError, Internal, NotFound, Unavailable

# An agent that drains, is silent or is gone takes no new work.
_STATUSES_WITHOUT_WORK = frozenset(
    {agent_pb2.AGENT_STATUS_DRAINING, agent_pb2.AGENT_STATUS_UNHEALTHY, agent_pb2.AGENT_STATUS_OFFLINE}
)


def _is_unavailable(error: BaseException) -> bool:
    return isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.UNAVAILABLE


def profile_from_pb(agent: agent_pb2.Agent) -> AgentProfile:
    return AgentProfile(
        id=agent.id,
        task_types=list(agent.capabilities.task_types),
        languages=list(agent.capabilities.languages),
        specializations=list(agent.capabilities.specializations),
        labels=dict(agent.capabilities.labels),
        max_concurrent_tasks=agent.max_concurrent_tasks,
        accepts_work=agent.status not in _STATUSES_WITHOUT_WORK,
        draining=agent.status == agent_pb2.AGENT_STATUS_DRAINING,
        alive=agent.status not in (agent_pb2.AGENT_STATUS_UNHEALTHY, agent_pb2.AGENT_STATUS_OFFLINE),
        status=agent_pb2.AgentStatus.Name(agent.status).removeprefix("AGENT_STATUS_"),
        active_tasks=agent.load.active_tasks,
        performance={
            record.task_type: TypePerformance(record.success_rate, record.task_count)
            for record in agent.performance.by_task_type
        },
    )


@dataclass(frozen=True)
class AgentChanges:
    """One WatchAgents message: agents added or changed, agents removed, and whether the snapshot that
    opens the stream is now complete."""

    agents: list[AgentProfile]
    removed_agent_ids: list[str]
    snapshot_complete: bool


@dataclass(frozen=True)
class Outcome:
    """How one finished attempt went, for the agent's track record."""

    agent_id: str
    task_type: str
    success: bool
    latency_ms: float
    quality: float | None = None


class RegistryClient:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        api_key: str,
        *,
        deadline_seconds: float = 5.0,
        retry_seconds: float = 10.0,
    ) -> None:
        self._stub = registry_service_pb2_grpc.RegistryServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self._deadline_seconds = deadline_seconds
        self._retry_seconds = retry_seconds

    async def get_agent(self, agent_id: str) -> AgentProfile:
        request = registry_service_pb2.GetAgentRequest(agent_id=agent_id)
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(_is_unavailable),
                stop=stop_after_delay(self._retry_seconds),
                wait=wait_exponential_jitter(multiplier=0.05, max=1.0),
                reraise=True,
            ):
                with attempt:
                    response = await self._stub.GetAgent(
                        request, metadata=self._metadata, timeout=self._deadline_seconds
                    )
        except grpc.aio.AioRpcError as error:
            raise self._domain_error(error, agent_id) from error
        return profile_from_pb(response.agent)

    async def watch_agents(self) -> AsyncIterator[AgentChanges]:
        """The registry's WatchAgents stream: a snapshot, then changes, until it breaks (the caller
        reconnects). No deadline: the stream lives as long as the registry does."""
        call = self._stub.WatchAgents(registry_service_pb2.WatchAgentsRequest(), metadata=self._metadata)
        try:
            async for response in call:
                yield AgentChanges(
                    [profile_from_pb(agent) for agent in response.agents],
                    list(response.removed_agent_ids),
                    response.snapshot_complete,
                )
        except grpc.aio.AioRpcError as error:
            raise self._domain_error(error, "") from error
        finally:
            call.cancel()

    async def record_outcomes(self, outcomes: Sequence[Outcome]) -> list[str]:
        """Stores the outcomes in one call; returns the agents the registry no longer knows."""
        request = registry_service_pb2.RecordOutcomesRequest(
            outcomes=[
                registry_service_pb2.RecordOutcomeRequest(
                    agent_id=outcome.agent_id,
                    task_type=outcome.task_type,
                    success=outcome.success,
                    latency_ms=outcome.latency_ms,
                    quality=outcome.quality,
                )
                for outcome in outcomes
            ]
        )
        try:
            response = await self._stub.RecordOutcomes(request, metadata=self._metadata, timeout=self._deadline_seconds)
        except grpc.aio.AioRpcError as error:
            raise self._domain_error(error, "") from error
        return list(response.unknown_agent_ids)

    async def offline_among(self, agent_ids: set[str]) -> set[str]:
        """Which of these agents the registry considers OFFLINE (silent too long) or no longer knows."""
        known_online: set[str] = set()
        offline: set[str] = set()
        page_token = ""
        while True:
            try:
                response = await self._stub.ListAgents(
                    registry_service_pb2.ListAgentsRequest(page_size=500, page_token=page_token),
                    metadata=self._metadata,
                    timeout=self._deadline_seconds,
                )
            except grpc.aio.AioRpcError as error:
                raise self._domain_error(error, "") from error
            for agent in response.agents:
                if agent.id in agent_ids:
                    (offline if agent.status == agent_pb2.AGENT_STATUS_OFFLINE else known_online).add(agent.id)
            page_token = response.next_page_token
            if not page_token:
                return offline | (agent_ids - known_online - offline)

    @staticmethod
    def _domain_error(error: grpc.aio.AioRpcError, agent_id: str) -> ArbiterError:
        code, details = error.code(), error.details()
        if code == grpc.StatusCode.NOT_FOUND:
            return NotFound(f"agent '{agent_id}' is not registered: call RegistryService.RegisterAgent first")
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return Internal(
                f"the registry rejected the orchestrator's service key ({details}); "
                "the operator must set ARBITER_SERVICE_KEY to a key with role 'service'"
            )
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return Unavailable(f"the registry is unreachable ({details}); retry shortly")
        return Internal(f"the registry answered {code.name}: {details}")
