"""What both gRPC servers share: options, health, reflection, metrics, the API-key check, and shutdown.

Health: the process as a whole ("") is SERVING from start to shutdown (liveness: restart it only if it
stops answering); each service name is SERVING only while the database answers and, where the app says
so, its other dependencies do (readiness: send it work). Both turn NOT_SERVING when shutdown begins."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.sdk.trace import TracerProvider

from shared.config import Config
from shared.database import Pool, database_answers
from shared.metrics import DATABASE_POOLS, DATABASE_UP, MetricsInterceptor, serve_metrics
from shared.tracing import server_interceptors

logger = logging.getLogger(__name__)

HEALTH_CHECK_SECONDS = 2.0

SERVER_OPTIONS: Sequence[tuple[str, int]] = (
    # Without this a second server silently binds the same port.
    ("grpc.so_reuseport", 0),
    # Keep long-lived assignment streams alive through idle proxies, and let clients ping every 10 s.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
)


CANCEL_RETRY_SECONDS = 0.1


class AddressInUse(Exception):
    pass


_LARGEST_GRPC_INT = 2**31 - 1


@dataclass(frozen=True)
class ServerLimits:
    """What one server accepts at most; beyond either, gRPC itself answers RESOURCE_EXHAUSTED."""

    max_concurrent_rpcs: int
    max_message_bytes: int

    @classmethod
    def from_config(cls, config: Config) -> ServerLimits:
        return cls(max_concurrent_rpcs=config.max_concurrent_rpcs, max_message_bytes=config.max_message_bytes)

    def options(self) -> list[tuple[str, int]]:
        return [
            *SERVER_OPTIONS,
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            # gRPC cancels calls at random once more than 1,000 have arrived and not yet been taken up
            # (3,000: all of them): a thousand agents reconnecting at once would lose some streams.
            ("grpc.server.max_pending_requests", self.max_concurrent_rpcs),
            ("grpc.server.max_pending_requests_hard_limit", min(2 * self.max_concurrent_rpcs, _LARGEST_GRPC_INT)),
        ]


@dataclass(frozen=True)
class Observability:
    """What a server exposes besides its API: the service's name in metrics, the plaintext health port
    (None: health on the main port only), the metrics port (None: no metrics served), and what else must
    hold for its services to read SERVING (the orchestrator's registry link)."""

    service: str
    health_address: str | None = None
    metrics_address: str | None = None
    also_ready: Callable[[], bool] = lambda: True
    # A span per call served (shared/tracing.py); None: no tracing.
    tracer_provider: TracerProvider | None = None

    @classmethod
    def from_config(
        cls,
        service: str,
        config: Config,
        also_ready: Callable[[], bool] = lambda: True,
        tracer_provider: TracerProvider | None = None,
    ) -> Observability:
        return cls(service, config.health_addr, config.metrics_addr, also_ready, tracer_provider)


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    health_task: asyncio.Task[None]
    # The plaintext health-only server and the metrics endpoint, when configured.
    health_server: grpc.aio.Server | None = None
    health_port: int | None = None
    metrics_http: WSGIServer | None = None
    pool: Pool | None = None

    @property
    def metrics_port(self) -> int | None:
        return None if self.metrics_http is None else int(self.metrics_http.server_port)

    async def stop_serving_health(self) -> None:
        """NOT_SERVING from now on (load balancers stop sending new work), while calls still run."""
        await cancel_and_wait([self.health_task])
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float) -> None:
        await self.stop_serving_health()
        await self.server.stop(grace)
        if self.health_server is not None:
            await self.health_server.stop(None)
        if self.metrics_http is not None:
            self.metrics_http.shutdown()
            self.metrics_http.server_close()
        if self.pool is not None:
            DATABASE_POOLS.remove(self.pool)


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancels the tasks and waits until they have ended. Cancelling again until they do: in Python
    3.11 a cancellation that lands while `asyncio.wait_for` (inside psycopg's pool, for one) is finishing
    can be lost, and the task would run on."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=CANCEL_RETRY_SECONDS)


async def _track_readiness(
    pool: Pool, servicer: health.aio.HealthServicer, service_names: Sequence[str], observability: Observability
) -> None:
    """The service names SERVING only while the database answers and `also_ready` holds; "" SERVING."""
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    last: int | None = None
    while True:
        database_up = await database_answers(pool)
        DATABASE_UP.labels(observability.service).set(1 if database_up else 0)
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if database_up and observability.also_ready()
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        if status != last:
            for name in service_names:
                await servicer.set(name, status)
            if last is not None:
                # Losing readiness is worth a warning; regaining it is news.
                logger.log(
                    logging.INFO if status == health_pb2.HealthCheckResponse.SERVING else logging.WARNING,
                    "readiness is now %s (database %s%s)",
                    health_pb2.HealthCheckResponse.ServingStatus.Name(status),
                    "answers" if database_up else "does not answer",
                    "" if not database_up or observability.also_ready() else "; waiting for the registry link",
                )
            last = status
        await asyncio.sleep(HEALTH_CHECK_SECONDS)


def _listen(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    try:
        if credentials is None:
            return int(server.add_insecure_port(address))
        return int(server.add_secure_port(address, credentials))
    except RuntimeError as error:
        raise AddressInUse(f"cannot listen on {address}: the port is taken or the address is not local") from error


async def start_server(
    address: str,
    service_names: Sequence[str],
    add_servicers: Callable[[grpc.aio.Server], None],
    interceptors: Sequence[grpc.aio.ServerInterceptor],
    pool: Pool,
    *,
    limits: ServerLimits,
    observability: Observability,
    credentials: grpc.ServerCredentials | None = None,
) -> RunningServer:
    """Starts a gRPC server on `address` (port 0 picks a free port) with health, reflection and call
    metrics; TLS with `credentials` (shared/tls.py), plaintext without, which is logged as a warning.
    Also the plaintext health port and the metrics endpoint, where `observability` names them."""
    server = grpc.aio.server(
        # First, so that calls the API-key check refuses are counted too.
        interceptors=[MetricsInterceptor(), *server_interceptors(observability.tracer_provider), *interceptors],
        options=limits.options(),
        # Open streams count too: each connected agent holds a StreamAssignments stream.
        maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
    )
    add_servicers(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = _listen(server, address, credentials)
    health_server: grpc.aio.Server | None = None
    health_port: int | None = None
    if observability.health_address is not None:
        # Only grpc.health.v1 (and reflection of it, for grpcurl): nothing else is reachable without TLS
        # and an API key.
        health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        reflection.enable_server_reflection((health.SERVICE_NAME, reflection.SERVICE_NAME), health_server)
        health_port = _listen(health_server, observability.health_address, None)
    metrics_http: WSGIServer | None = None
    if observability.metrics_address is not None:
        try:
            metrics_http = serve_metrics(observability.metrics_address)
        except OSError as error:
            raise AddressInUse(f"cannot serve metrics on {observability.metrics_address}: {error}") from error
    DATABASE_POOLS.add(observability.service, pool)
    await server.start()
    if health_server is not None:
        await health_server.start()
    if credentials is None:
        logger.warning(
            "TLS is off: %s serves plaintext on port %d (ARBITER_ALLOW_INSECURE=true); anyone on the network can "
            "read API keys and payloads. Set ARBITER_TLS_CERT and ARBITER_TLS_KEY to serve TLS.",
            ", ".join(service_names),
            port,
        )
    health_task = asyncio.create_task(_track_readiness(pool, health_servicer, service_names, observability))
    return RunningServer(server, port, health_servicer, health_task, health_server, health_port, metrics_http, pool)


async def wait_for_stop_signal() -> None:
    """Returns on the first SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stopped.set)
    await stopped.wait()
