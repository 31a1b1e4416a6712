"""The orchestrator's view of the registry: agent profiles over gRPC, with the service key.

The orchestrator never reads the registry's tables. UNAVAILABLE is retried with backoff for a
bounded time; every other failure becomes a domain error the caller can act on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
from opentelemetry.propagate import inject
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

from arbiter.v1 import agent_pb2, registry_service_pb2, registry_service_pb2_grpc
from services.orchestrator.domain import AgentProfile, TypePerformance
from shared import tenancy
from shared.errors import ArbiterError, Internal, NotFound, Unavailable

# An agent that drains, is silent or is gone takes no new work.
_STATUSES_WITHOUT_WORK = frozenset(
    {agent_pb2.AGENT_STATUS_DRAINING, agent_pb2.AGENT_STATUS_UNHEALTHY, agent_pb2.AGENT_STATUS_OFFLINE}
)


def _is_unavailable(error: BaseException) -> bool:
    return isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.UNAVAILABLE


def profile_from_pb(agent: agent_pb2.Agent) -> AgentProfile:
    return AgentProfile(
        # Qualified with its tenant, as every agent id inside the orchestrator is.
        id=tenancy.qualify(agent.tenant, agent.id),
        task_types=list(agent.capabilities.task_types),
        languages=list(agent.capabilities.languages),
        specializations=list(agent.capabilities.specializations),
        labels=dict(agent.capabilities.labels),
        max_concurrent_tasks=agent.max_concurrent_tasks,
        prefetch_tasks=agent.prefetch_tasks,
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


# Calls spread over every address the target resolves to (a headless Service's pods, dns:///…); with one
# address it is the same as gRPC's default, pick_first.
REGISTRY_CHANNEL_OPTIONS = (("grpc.lb_policy_name", "round_robin"),)


def open_registry_channel(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
    """The channel to the registry: TLS with `credentials` (shared/tls.py), plaintext without."""
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=REGISTRY_CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(target, credentials, options=REGISTRY_CHANNEL_OPTIONS)


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

    def _call_metadata(self) -> tuple[tuple[str, str], ...]:
        """The key, and the current trace (W3C traceparent) when there is one, so the registry's span of
        the call joins the trace of whatever the orchestrator is doing (shared/tracing.py)."""
        carrier: dict[str, str] = {}
        inject(carrier)
        return (*self._metadata, *carrier.items())

    async def get_agent(self, agent_id: str) -> AgentProfile:
        """The agent with this qualified id (the service key acts in every tenant, so it names the tenant)."""
        tenant, plain_id = tenancy.split(agent_id)
        request = registry_service_pb2.GetAgentRequest(agent_id=plain_id, tenant=tenant)
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(_is_unavailable),
                stop=stop_after_delay(self._retry_seconds),
                wait=wait_exponential_jitter(multiplier=0.05, max=1.0),
                reraise=True,
            ):
                with attempt:
                    response = await self._stub.GetAgent(
                        request, metadata=self._call_metadata(), timeout=self._deadline_seconds
                    )
        except grpc.aio.AioRpcError as error:
            raise self._domain_error(error, agent_id) from error
        return profile_from_pb(response.agent)

    async def watch_agents(self) -> AsyncIterator[AgentChanges]:
        """The registry's WatchAgents stream: a snapshot, then changes, until it breaks (the caller
        reconnects). No deadline: the stream lives as long as the registry does."""
        call = self._stub.WatchAgents(registry_service_pb2.WatchAgentsRequest(), metadata=self._call_metadata())
        try:
            async for response in call:
                yield AgentChanges(
                    [profile_from_pb(agent) for agent in response.agents],
                    [tenancy.qualify(removed.tenant, removed.agent_id) for removed in response.removed_agents],
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
                    tenant=tenancy.tenant_of(outcome.agent_id),
                    agent_id=tenancy.plain(outcome.agent_id),
                    task_type=outcome.task_type,
                    success=outcome.success,
                    latency_ms=outcome.latency_ms,
                    quality=outcome.quality,
                )
                for outcome in outcomes
            ]
        )
        try:
            response = await self._stub.RecordOutcomes(
                request, metadata=self._call_metadata(), timeout=self._deadline_seconds
            )
        except grpc.aio.AioRpcError as error:
            raise self._domain_error(error, "") from error
        return [tenancy.qualify(unknown.tenant, unknown.agent_id) for unknown in response.unknown_agents]

    async def offline_among(self, agent_ids: set[str]) -> set[str]:
        """Which of these agents the registry considers OFFLINE (silent too long) or no longer knows."""
        known_online: set[str] = set()
        offline: set[str] = set()
        page_token = ""
        while True:
            try:
                response = await self._stub.ListAgents(
                    registry_service_pb2.ListAgentsRequest(page_size=500, page_token=page_token),
                    metadata=self._call_metadata(),
                    timeout=self._deadline_seconds,
                )
            except grpc.aio.AioRpcError as error:
                raise self._domain_error(error, "") from error
            for agent in response.agents:
                agent_id = tenancy.qualify(agent.tenant, agent.id)
                if agent_id in agent_ids:
                    (offline if agent.status == agent_pb2.AGENT_STATUS_OFFLINE else known_online).add(agent_id)
            page_token = response.next_page_token
            if not page_token:
                return offline | (agent_ids - known_online - offline)

    @staticmethod
    def _domain_error(error: grpc.aio.AioRpcError, agent_id: str) -> ArbiterError:
        code, details = error.code(), error.details()
        if code == grpc.StatusCode.NOT_FOUND:
            return NotFound(
                f"agent '{tenancy.plain(agent_id)}' is not registered: call RegistryService.RegisterAgent first"
            )
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return Internal(
                f"the registry rejected the orchestrator's service key ({details}); "
                "the operator must set ARBITER_SERVICE_KEY to a key with role 'service' for every tenant "
                "(`arbiter keys create --role service --tenant '*'`)"
            )
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return Unavailable(f"the registry is unreachable ({details}); retry shortly")
        return Internal(f"the registry answered {code.name}: {details}")
