"""Wires the registry together: pool, storage, agent feed, servicer, API-key check, gRPC server."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc
from opentelemetry.sdk.trace import TracerProvider

from arbiter.v1 import admin_service_pb2_grpc, registry_service_pb2_grpc
from services.registry import metrics
from services.registry.admin_servicer import AdminServicer
from services.registry.agent_feed import AgentFeed
from services.registry.domain import Silence
from services.registry.service import Registry
from services.registry.servicer import RegistryServicer
from services.registry.storage import AgentStore
from shared.auth import Gate, open_gate
from shared.config import Config
from shared.database import Pool, open_pool
from shared.metrics import refresh_periodically
from shared.permissions import (
    ADMIN_ROLES,
    ADMIN_SERVICE,
    REGISTRY_ROLES,
    REGISTRY_SERVICE,
    method_permissions,
)
from shared.replica import Reads, Replica, open_replica
from shared.server import Observability, RunningServer, ServerLimits, cancel_and_wait, start_server
from shared.tls import server_credentials
from shared.tracing import connection_tracer


@dataclass
class RegistryApp:
    pool: Pool
    feed: AgentFeed
    feed_task: asyncio.Task[None]
    server: RunningServer
    gate: Gate
    # Reads the agents by status for the metrics, when they are served.
    metrics_task: asyncio.Task[None] | None = None
    # The read replica (ARBITER_DATABASE_READ_URL), None without one.
    replica: Replica | None = None

    @property
    def port(self) -> int:
        return self.server.port

    async def stop(self, grace: float) -> None:
        """Health NOT_SERVING; WatchAgents streams end at once (UNAVAILABLE: reconnect elsewhere), since
        they would otherwise hold the server for the whole grace; unary calls get `grace` to finish."""
        await self.server.stop_serving_health()
        self.feed.close()
        await self.server.stop(grace)
        await cancel_and_wait([self.feed_task, *([self.metrics_task] if self.metrics_task else [])])
        await self.gate.close()
        if self.replica is not None:
            await self.replica.close()
        await self.pool.close()


async def create_registry(config: Config, tracer_provider: TracerProvider | None = None) -> RegistryApp:
    """Starts the registry on config.registry_addr (port 0 picks a free port), traced with
    `tracer_provider` if given (shared/tracing.py). Migrations are the caller's."""
    database_url = config.require_database_url()
    credentials = server_credentials(config)
    hasher = config.key_hasher()
    pool = await open_pool(
        database_url,
        config.db_pool_min_size,
        config.db_pool_max_size,
        name="registry",
        configure=connection_tracer(tracer_provider),
    )
    feed_task: asyncio.Task[None] | None = None
    gate: Gate | None = None
    replica: Replica | None = None
    try:
        replica = await open_replica(config, "registry", configure=connection_tracer(tracer_provider))
        silence = Silence.for_interval(config.heartbeat_interval_seconds)
        store = AgentStore(pool, silence)
        feed = AgentFeed(database_url, store, config.heartbeat_interval_seconds)
        feed_task = asyncio.create_task(feed.run())
        registry = Registry(
            store,
            feed,
            config.heartbeat_interval_seconds,
            config.degradation_min_outcomes,
            reads=Reads.over(store, replica, lambda replica_pool: AgentStore(replica_pool, silence)),
        )
        audit_reads = Reads.over(pool, replica, lambda replica_pool: replica_pool)
        gate = await open_gate(
            config,
            pool,
            {
                **method_permissions(REGISTRY_SERVICE, REGISTRY_ROLES),
                **method_permissions(ADMIN_SERVICE, ADMIN_ROLES),
            },
        )

        def add_servicers(grpc_server: grpc.aio.Server) -> None:
            registry_service_pb2_grpc.add_RegistryServiceServicer_to_server(RegistryServicer(registry), grpc_server)
            admin_service_pb2_grpc.add_AdminServiceServicer_to_server(
                AdminServicer(pool, hasher, audit_reads), grpc_server
            )

        server = await start_server(
            config.registry_addr,
            [REGISTRY_SERVICE, ADMIN_SERVICE],
            add_servicers,
            [gate.interceptor],
            pool,
            limits=ServerLimits.from_config(config),
            observability=Observability.from_config("registry", config, tracer_provider=tracer_provider),
            credentials=credentials,
        )
    except BaseException:
        if feed_task is not None:
            await cancel_and_wait([feed_task])
        if gate is not None:
            await gate.close()
        if replica is not None:
            await replica.close()
        await pool.close()
        raise
    metrics_task = None
    if config.metrics_addr is not None:

        async def count_agents() -> None:
            metrics.record_agents_by_status(await store.count_by_status())

        metrics_task = asyncio.create_task(refresh_periodically("agents by status", count_agents))
    return RegistryApp(pool, feed, feed_task, server, gate, metrics_task, replica)
