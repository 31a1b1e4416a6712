"""RegistryService over gRPC: protobuf in, domain call, protobuf out."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf.duration_pb2 import Duration

from arbiter.v1 import registry_service_pb2 as pb
from arbiter.v1 import registry_service_pb2_grpc as pb_grpc
from services.registry.convert import (
    agent_to_pb,
    candidate_query_from_pb,
    candidate_to_pb,
    changes_to_pb,
    outcome_from_pb,
    outcomes_from_pb,
    registration_from_pb,
    status_from_pb,
)
from services.registry.service import Registry
from shared.errors import InvalidArgument, stream_errors, unary_errors


class RegistryServicer(pb_grpc.RegistryServiceServicer):
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    @unary_errors
    async def RegisterAgent(
        self, request: pb.RegisterAgentRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterAgentResponse:
        if not request.HasField("agent"):
            raise InvalidArgument("agent", "is required")
        record = await self._registry.register(registration_from_pb(request.agent))
        return pb.RegisterAgentResponse(agent=agent_to_pb(record))

    @unary_errors
    async def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext) -> pb.HeartbeatResponse:
        record = await self._registry.heartbeat(
            request.agent_id, request.active_tasks, status_from_pb("status", request.status)
        )
        interval = Duration()
        interval.FromMilliseconds(round(self._registry.heartbeat_interval_seconds * 1000))
        return pb.HeartbeatResponse(agent=agent_to_pb(record), heartbeat_interval=interval)

    @unary_errors
    async def GetAgent(self, request: pb.GetAgentRequest, context: grpc.aio.ServicerContext) -> pb.GetAgentResponse:
        return pb.GetAgentResponse(agent=agent_to_pb(await self._registry.get(request.agent_id)))

    @unary_errors
    async def ListAgents(
        self, request: pb.ListAgentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAgentsResponse:
        page = await self._registry.list_agents(
            request.page_size, request.page_token, request.task_type, status_from_pb("status", request.status)
        )
        return pb.ListAgentsResponse(
            agents=[agent_to_pb(record) for record in page.agents], next_page_token=page.next_page_token
        )

    @unary_errors
    async def DeregisterAgent(
        self, request: pb.DeregisterAgentRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeregisterAgentResponse:
        await self._registry.deregister(request.agent_id)
        return pb.DeregisterAgentResponse()

    @unary_errors
    async def FindCandidates(
        self, request: pb.FindCandidatesRequest, context: grpc.aio.ServicerContext
    ) -> pb.FindCandidatesResponse:
        candidates = await self._registry.find_candidates(candidate_query_from_pb(request))
        return pb.FindCandidatesResponse(candidates=[candidate_to_pb(candidate) for candidate in candidates])

    @unary_errors
    async def RecordOutcome(
        self, request: pb.RecordOutcomeRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordOutcomeResponse:
        record = await self._registry.record_outcome(outcome_from_pb(request))
        return pb.RecordOutcomeResponse(agent=agent_to_pb(record))

    @unary_errors
    async def RecordOutcomes(
        self, request: pb.RecordOutcomesRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordOutcomesResponse:
        recorded = await self._registry.record_outcomes(outcomes_from_pb(request.outcomes))
        return pb.RecordOutcomesResponse(recorded=recorded.recorded, unknown_agent_ids=recorded.unknown_agent_ids)

    @stream_errors
    async def WatchAgents(
        self, request: pb.WatchAgentsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchAgentsResponse]:
        async for changes in self._registry.watch():
            yield changes_to_pb(changes)
