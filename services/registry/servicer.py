"""RegistryService over gRPC: protobuf in, domain call, protobuf out.

Agent ids arrive plain and are qualified with the caller's tenant here (`shared.callers`), so the
registry below never sees an id of another tenant than the caller's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
from google.protobuf.duration_pb2 import Duration

from arbiter.v1 import registry_service_pb2 as pb
from arbiter.v1 import registry_service_pb2_grpc as pb_grpc
from services.registry.convert import (
    agent_reference_to_pb,
    agent_to_pb,
    candidate_query_from_pb,
    candidate_to_pb,
    changes_to_pb,
    outcome_from_pb,
    outcomes_from_pb,
    registration_from_pb,
    status_from_pb,
)
from services.registry.domain import Outcome, validate_heartbeat
from services.registry.service import Registry
from shared import tenancy
from shared.api_keys import Role
from shared.callers import Caller, current_caller
from shared.errors import InvalidArgument, stream_errors, unary_errors


def _qualified_outcome(caller: Caller, request: pb.RecordOutcomeRequest, outcome: Outcome, prefix: str) -> Outcome:
    agent_id = caller.agent(
        f"{prefix}agent_id", request.agent_id, tenant_field=f"{prefix}tenant", requested_tenant=request.tenant
    )
    return replace(outcome, agent_id=agent_id)


class RegistryServicer(pb_grpc.RegistryServiceServicer):
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    @unary_errors
    async def RegisterAgent(
        self, request: pb.RegisterAgentRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterAgentResponse:
        if not request.HasField("agent"):
            raise InvalidArgument("agent", "is required")
        registration = registration_from_pb(request.agent)
        agent_id = current_caller().acting_agent("agent.id", registration.id)
        record = await self._registry.register(replace(registration, id=agent_id))
        return pb.RegisterAgentResponse(agent=agent_to_pb(record))

    @unary_errors
    async def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext) -> pb.HeartbeatResponse:
        beat = validate_heartbeat(request.agent_id, request.active_tasks, status_from_pb("status", request.status))
        agent_id = current_caller().acting_agent("agent_id", beat.agent_id)
        record = await self._registry.heartbeat(replace(beat, agent_id=agent_id))
        interval = Duration()
        interval.FromMilliseconds(round(self._registry.heartbeat_interval_seconds * 1000))
        return pb.HeartbeatResponse(agent=agent_to_pb(record), heartbeat_interval=interval)

    @unary_errors
    async def GetAgent(self, request: pb.GetAgentRequest, context: grpc.aio.ServicerContext) -> pb.GetAgentResponse:
        agent_id = current_caller().agent("agent_id", request.agent_id, requested_tenant=request.tenant)
        return pb.GetAgentResponse(agent=agent_to_pb(await self._registry.get(agent_id)))

    @unary_errors
    async def ListAgents(
        self, request: pb.ListAgentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAgentsResponse:
        page = await self._registry.list_agents(
            current_caller().tenant,
            request.page_size,
            request.page_token,
            request.task_type,
            status_from_pb("status", request.status),
        )
        return pb.ListAgentsResponse(
            agents=[agent_to_pb(record) for record in page.agents], next_page_token=page.next_page_token
        )

    @unary_errors
    async def DeregisterAgent(
        self, request: pb.DeregisterAgentRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeregisterAgentResponse:
        caller = current_caller()
        # Operators and admins remove any agent of their tenant; an agent key only those it acts as.
        agent_id = (
            caller.acting_agent("agent_id", request.agent_id)
            if caller.role == Role.AGENT
            else caller.agent("agent_id", request.agent_id)
        )
        await self._registry.deregister(agent_id)
        return pb.DeregisterAgentResponse()

    @unary_errors
    async def FindCandidates(
        self, request: pb.FindCandidatesRequest, context: grpc.aio.ServicerContext
    ) -> pb.FindCandidatesResponse:
        candidates = await self._registry.find_candidates(current_caller().tenant, candidate_query_from_pb(request))
        return pb.FindCandidatesResponse(candidates=[candidate_to_pb(candidate) for candidate in candidates])

    @unary_errors
    async def RecordOutcome(
        self, request: pb.RecordOutcomeRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordOutcomeResponse:
        outcome = _qualified_outcome(current_caller(), request, outcome_from_pb(request), "")
        record = await self._registry.record_outcome(outcome)
        return pb.RecordOutcomeResponse(agent=agent_to_pb(record))

    @unary_errors
    async def RecordOutcomes(
        self, request: pb.RecordOutcomesRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordOutcomesResponse:
        caller = current_caller()
        outcomes = [
            _qualified_outcome(caller, each_request, outcome, f"outcomes[{index}].")
            for index, (each_request, outcome) in enumerate(
                zip(request.outcomes, outcomes_from_pb(request.outcomes), strict=True)
            )
        ]
        recorded = await self._registry.record_outcomes(outcomes)
        return pb.RecordOutcomesResponse(
            recorded=recorded.recorded,
            unknown_agent_ids=[tenancy.plain(agent_id) for agent_id in recorded.unknown_agent_ids],
            unknown_agents=[agent_reference_to_pb(agent_id) for agent_id in recorded.unknown_agent_ids],
        )

    @stream_errors
    async def WatchAgents(
        self, request: pb.WatchAgentsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchAgentsResponse]:
        async for changes in self._registry.watch(current_caller().tenant):
            yield changes_to_pb(changes)
