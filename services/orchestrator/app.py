"""Wires the orchestrator together: pool, storage, registry client, sessions, servicer, gRPC server."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
from opentelemetry.sdk.trace import TracerProvider

from arbiter.v1 import orchestrator_service_pb2_grpc
from services.orchestrator import metrics
from services.orchestrator.agent_directory import AgentDirectory
from services.orchestrator.dispatcher import Dispatcher
from services.orchestrator.domain import TaskRecord
from services.orchestrator.notifications import TaskNotifications
from services.orchestrator.outcomes import OutcomeReporter
from services.orchestrator.registry_client import RegistryClient, open_registry_channel
from services.orchestrator.routing import Router, RoutingSettings
from services.orchestrator.service import Orchestrator
from services.orchestrator.servicer import OrchestratorServicer
from services.orchestrator.sessions import AgentSessions
from services.orchestrator.storage import TaskStore
from services.orchestrator.sweeper import Sweeper
from shared.audit import prune_audit_events
from shared.auth import Gate, open_gate
from shared.config import Config
from shared.database import Pool, open_pool
from shared.metrics import refresh_periodically
from shared.permissions import ORCHESTRATOR_ROLES, ORCHESTRATOR_SERVICE, method_permissions
from shared.replica import Reads, Replica, open_replica
from shared.server import Observability, RunningServer, ServerLimits, cancel_and_wait, start_server
from shared.tenancy import TaskScope
from shared.tls import registry_channel_credentials, server_credentials
from shared.tracing import connection_tracer


@dataclass
class OrchestratorApp:
    pool: Pool
    registry_channel: grpc.aio.Channel
    orchestrator: Orchestrator
    notifications: TaskNotifications
    server: RunningServer
    background: list[asyncio.Task[None]]
    gate: Gate
    # The read replica (ARBITER_DATABASE_READ_URL), None without one.
    replica: Replica | None = None

    @property
    def port(self) -> int:
        return self.server.port

    async def stop(self, grace: float) -> None:
        """Health NOT_SERVING first; streams are told to reconnect elsewhere and end; reports are still
        accepted for up to `grace` seconds; then what is left is released and the server stops."""
        await self.server.stop_serving_health()
        await self.orchestrator.shutdown(grace)
        await self.server.stop(min(grace, 1.0))
        await self.orchestrator.outcomes.close(min(grace, 1.0))
        await cancel_and_wait(self.background)
        await self.gate.close()
        await self.registry_channel.close()
        if self.replica is not None:
            await self.replica.close()
        await self.pool.close()


async def create_orchestrator(config: Config, tracer_provider: TracerProvider | None = None) -> OrchestratorApp:
    """Starts the orchestrator on config.orchestrator_addr (port 0 picks a free port), traced with
    `tracer_provider` if given (shared/tracing.py). Migrations are the caller's."""
    service_key = config.require_service_key()
    credentials = server_credentials(config)
    registry_credentials = registry_channel_credentials(config)
    instance_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    # Unique per instance: the task triggers' notifications name the session that freed a slot.
    application_name = f"arbiter-orchestrator {instance_id}"
    pool = await open_pool(
        config.require_database_url(),
        config.db_pool_min_size,
        config.db_pool_max_size,
        name="orchestrator",
        application_name=application_name,
        configure=connection_tracer(tracer_provider),
    )
    registry_channel = open_registry_channel(config.registry_dial_target, registry_credentials)
    background: list[asyncio.Task[None]] = []
    gate: Gate | None = None
    replica: Replica | None = None
    try:
        replica = await open_replica(config, "orchestrator", configure=connection_tracer(tracer_provider))
        sessions = AgentSessions()
        registry = RegistryClient(registry_channel, service_key, retry_seconds=config.registry_retry_seconds)
        outcomes = OutcomeReporter(registry)

        def agents_failed(tasks: list[TaskRecord]) -> None:
            orchestrator.record_failures(tasks)

        def agents_changed(agent_ids: set[str]) -> None:
            dispatcher.wake_for_agents(agent_ids)

        store = TaskStore(pool, config.lease_seconds, agents_failed)
        directory = AgentDirectory(registry, agents_changed)
        router = Router(RoutingSettings.from_config(config), random.Random(config.routing_seed))
        dispatcher = Dispatcher(store, sessions, directory, router, poll_seconds=config.assignment_poll_seconds)
        notifications = TaskNotifications(
            config.require_database_url(), sessions, dispatcher.wake, application_name[:63]
        )
        orchestrator = Orchestrator(
            store,
            registry,
            sessions,
            notifications,
            directory,
            dispatcher,
            router,
            outcomes,
            max_payload_bytes=config.max_payload_bytes,
            poll_seconds=config.assignment_poll_seconds,
            instance_id=instance_id,
            reads=Reads.over(store, replica, lambda replica_pool: TaskStore(replica_pool, config.lease_seconds)),
        )
        sweeper = Sweeper(
            store,
            registry,
            directory,
            dispatcher.wake,
            interval_seconds=config.sweep_seconds,
            retention=timedelta(days=config.task_retention_days),
            prune_audit_events=lambda: prune_audit_events(pool, config.audit_retention_days),
        )
        background = [
            asyncio.create_task(notifications.run()),
            asyncio.create_task(sweeper.run()),
            asyncio.create_task(directory.run()),
            asyncio.create_task(dispatcher.run()),
            asyncio.create_task(outcomes.run()),
        ]
        if config.metrics_addr is not None:

            async def count_tasks() -> None:
                counts = await store.count_by_type_and_state(TaskScope(tenant=None))
                metrics.record_task_counts(counts, datetime.now(UTC))

            background.append(asyncio.create_task(refresh_periodically("tasks by type and state", count_tasks)))
        gate = await open_gate(config, pool, method_permissions(ORCHESTRATOR_SERVICE, ORCHESTRATOR_ROLES))
        server = await start_server(
            config.orchestrator_addr,
            [ORCHESTRATOR_SERVICE],
            lambda grpc_server: orchestrator_service_pb2_grpc.add_OrchestratorServiceServicer_to_server(
                OrchestratorServicer(orchestrator), grpc_server
            ),
            [gate.interceptor],
            pool,
            limits=ServerLimits.from_config(config),
            # Ready only while the registry's agent feed is up: without it no task can be routed.
            observability=Observability.from_config(
                "orchestrator", config, also_ready=directory.synced.is_set, tracer_provider=tracer_provider
            ),
            credentials=credentials,
        )
    except BaseException:
        await cancel_and_wait(background)
        if gate is not None:
            await gate.close()
        await registry_channel.close()
        if replica is not None:
            await replica.close()
        await pool.close()
        raise
    return OrchestratorApp(pool, registry_channel, orchestrator, notifications, server, background, gate, replica)
