"""Wires the orchestrator together: pool, storage, registry client, sessions, servicer, gRPC server."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from arbiter.v1 import orchestrator_service_pb2_grpc
from services.orchestrator.registry_client import RegistryClient
from services.orchestrator.service import Orchestrator
from services.orchestrator.servicer import OrchestratorServicer
from services.orchestrator.sessions import AgentSessions
from services.orchestrator.storage import TaskStore
from shared.api_keys import KeyCache
from shared.auth import ApiKeyInterceptor
from shared.config import Config
from shared.database import Pool, open_pool
from shared.permissions import ORCHESTRATOR_ROLES, ORCHESTRATOR_SERVICE, method_permissions
from shared.server import RunningServer, start_server


@dataclass
class OrchestratorApp:
    pool: Pool
    registry_channel: grpc.aio.Channel
    sessions: AgentSessions
    server: RunningServer

    @property
    def port(self) -> int:
        return self.server.port

    async def stop(self, grace: float) -> None:
        # Open streams end first so their agents reconnect elsewhere instead of waiting out the grace.
        self.sessions.close_all()
        await self.server.stop(grace)
        await self.registry_channel.close()
        await self.pool.close()


async def create_orchestrator(config: Config) -> OrchestratorApp:
    """Starts the orchestrator on config.orchestrator_addr (port 0 picks a free port). Migrations are the caller's."""
    service_key = config.require_service_key()
    pool = await open_pool(
        config.require_database_url(), config.db_pool_min_size, config.db_pool_max_size, name="orchestrator"
    )
    registry_channel = grpc.aio.insecure_channel(config.registry_dial_target)
    try:
        sessions = AgentSessions()
        orchestrator = Orchestrator(
            TaskStore(pool, config.lease_seconds),
            RegistryClient(registry_channel, service_key, retry_seconds=config.registry_retry_seconds),
            sessions,
            max_payload_bytes=config.max_payload_bytes,
            poll_seconds=config.assignment_poll_seconds,
        )
        interceptor = ApiKeyInterceptor(
            KeyCache(pool, config.auth_cache_seconds), method_permissions(ORCHESTRATOR_SERVICE, ORCHESTRATOR_ROLES)
        )
        server = await start_server(
            config.orchestrator_addr,
            [ORCHESTRATOR_SERVICE],
            lambda grpc_server: orchestrator_service_pb2_grpc.add_OrchestratorServiceServicer_to_server(
                OrchestratorServicer(orchestrator), grpc_server
            ),
            [interceptor],
            pool,
        )
    except BaseException:
        await registry_channel.close()
        await pool.close()
        raise
    return OrchestratorApp(pool, registry_channel, sessions, server)
