"""Wires the registry together: pool, storage, servicer, API-key check, gRPC server."""

from __future__ import annotations

from dataclasses import dataclass

from arbiter.v1 import registry_service_pb2_grpc
from services.registry.domain import Silence
from services.registry.service import Registry
from services.registry.servicer import RegistryServicer
from services.registry.storage import AgentStore
from shared.api_keys import KeyCache
from shared.auth import ApiKeyInterceptor
from shared.config import Config
from shared.database import Pool, open_pool
from shared.permissions import REGISTRY_ROLES, REGISTRY_SERVICE, method_permissions
from shared.server import RunningServer, start_server


@dataclass
class RegistryApp:
    pool: Pool
    server: RunningServer

    @property
    def port(self) -> int:
        return self.server.port

    async def stop(self, grace: float) -> None:
        await self.server.stop(grace)
        await self.pool.close()


async def create_registry(config: Config) -> RegistryApp:
    """Starts the registry on config.registry_addr (port 0 picks a free port). Migrations are the caller's."""
    pool = await open_pool(
        config.require_database_url(), config.db_pool_min_size, config.db_pool_max_size, name="registry"
    )
    try:
        registry = Registry(
            AgentStore(pool, Silence.for_interval(config.heartbeat_interval_seconds)), config.heartbeat_interval_seconds
        )
        interceptor = ApiKeyInterceptor(
            KeyCache(pool, config.auth_cache_seconds), method_permissions(REGISTRY_SERVICE, REGISTRY_ROLES)
        )
        server = await start_server(
            config.registry_addr,
            [REGISTRY_SERVICE],
            lambda grpc_server: registry_service_pb2_grpc.add_RegistryServiceServicer_to_server(
                RegistryServicer(registry), grpc_server
            ),
            [interceptor],
            pool,
        )
    except BaseException:
        await pool.close()
        raise
    return RegistryApp(pool, server)
