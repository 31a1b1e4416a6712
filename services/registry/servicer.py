"""RegistryService over gRPC: protobuf in, domain call, protobuf out."""

from __future__ import annotations

import grpc
from google.protobuf.duration_pb2 import Duration

from arbiter.v1 import registry_service_pb2 as pb
from arbiter.v1 import registry_service_pb2_grpc as pb_grpc
from services.registry.convert import agent_to_pb, registration_from_pb, status_from_pb
from services.registry.service import Registry
from shared.errors import InvalidArgument, unary_errors


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
