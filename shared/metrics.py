"""Prometheus metrics every service process serves on ARBITER_METRICS_ADDR at /metrics: the gRPC server
metrics under the names go-grpc-prometheus made common, and the database pool's. Each service adds its
own (services/*/metrics.py). Counters and histograms are this process's; gauges read from the database
are the same in every replica, so a dashboard takes max() of them, not sum()."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.database import Pool

logger = logging.getLogger(__name__)

# From 1 ms (a cached unary call) to 60 s (a long WatchTask); streams are observed when they end.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_CALL_LABELS = ("grpc_type", "grpc_service", "grpc_method")

GRPC_STARTED = Counter("grpc_server_started_total", "RPCs started on the server.", _CALL_LABELS)
GRPC_HANDLED = Counter(
    "grpc_server_handled_total", "RPCs completed on the server, by status code.", (*_CALL_LABELS, "grpc_code")
)
GRPC_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of an RPC to its status, in seconds.",
    _CALL_LABELS,
    buckets=_LATENCY_BUCKETS,
)


def _call_labels(full_method: str, grpc_type: str) -> tuple[str, str, str]:
    service, _, method = full_method.lstrip("/").rpartition("/")
    return grpc_type, service, method


def _code_of(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    """The status the caller gets: what the handler set or aborted with; UNKNOWN for an exception it let
    escape, CANCELLED when the call was cancelled."""
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if error is not None and not isinstance(error, grpc.aio.AbortError):
        return grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.OK


def code_label(code: grpc.StatusCode) -> str:
    """The code as go-grpc-prometheus spells it (OK, Canceled, InvalidArgument, …), which dashboards and
    alerts written for gRPC servers expect."""
    if code == grpc.StatusCode.OK:
        return "OK"
    if code == grpc.StatusCode.CANCELLED:
        return "Canceled"
    return "".join(part.capitalize() for part in code.name.split("_"))


class _CallMeter:
    """One call: started now, handled when `finish` says how it ended."""

    def __init__(self, labels: tuple[str, str, str]) -> None:
        self._labels = labels
        self._started = time.perf_counter()
        GRPC_STARTED.labels(*labels).inc()

    def finish(self, context: grpc.aio.ServicerContext, error: BaseException | None) -> None:
        GRPC_HANDLED.labels(*self._labels, code_label(_code_of(context, error))).inc()
        GRPC_HANDLING_SECONDS.labels(*self._labels).observe(time.perf_counter() - self._started)


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts every call and times it. First among the interceptors, so calls the API-key check refuses
    are counted too, under the code they were refused with."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _metered_unary(handler.unary_unary, _call_labels(method, "unary")),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _metered_stream(handler.unary_stream, _call_labels(method, "server_stream")),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return handler


def _metered_unary(
    behaviour: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]], labels: tuple[str, str, str]
) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def metered(request: Any, context: grpc.aio.ServicerContext) -> Any:
        meter = _CallMeter(labels)
        try:
            response = await behaviour(request, context)
        except BaseException as error:
            meter.finish(context, error)
            raise
        meter.finish(context, None)
        return response

    return metered


def _metered_stream(behaviour: Callable[..., Any], labels: tuple[str, str, str]) -> Callable[..., Any]:
    """A server-streaming handler is either an async generator (it yields its responses) or a coroutine
    that writes them with context.write (grpc.health.v1's Watch); the metered one keeps the same shape."""
    if not inspect.isasyncgenfunction(behaviour):
        return _metered_unary(behaviour, labels)

    async def metered(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        meter = _CallMeter(labels)
        error: BaseException | None = None
        try:
            async for response in behaviour(request, context):
                yield response
        except BaseException as raised:
            error = raised
            raise
        finally:
            meter.finish(context, error)

    return metered


class _PoolCollector(Collector):
    """The psycopg pools of this process (one per service app, and one more for its read replica if it has
    one), read at each scrape, summed by service and pool ("primary" or "replica")."""

    def __init__(self) -> None:
        self._pools: dict[int, tuple[tuple[str, str], Pool]] = {}

    def add(self, service: str, pool: Pool, role: str = "primary") -> None:
        self._pools[id(pool)] = ((service, role), pool)

    def remove(self, pool: Pool) -> None:
        self._pools.pop(id(pool), None)

    def collect(self) -> Iterator[Metric]:
        totals: dict[tuple[str, str], dict[str, float]] = {}
        for labels, pool in list(self._pools.values()):
            stats = pool.get_stats()
            figures = totals.setdefault(labels, {})
            for _, key, _ in _POOL_FIGURES:
                figures[key] = figures.get(key, 0.0) + float(stats.get(key, 0))
        for name, key, text in _POOL_FIGURES:
            gauge = GaugeMetricFamily(name, text, labels=["service", "pool"])
            for labels, figures in sorted(totals.items()):
                gauge.add_metric(list(labels), figures[key])
            yield gauge


_POOL_FIGURES = (
    ("arbiter_db_pool_size", "pool_size", "Database connections the pool holds, in use or idle."),
    ("arbiter_db_pool_available", "pool_available", "Idle database connections ready for a request."),
    ("arbiter_db_pool_max", "pool_max", "Most database connections the pool may open."),
    ("arbiter_db_pool_requests_waiting", "requests_waiting", "Requests waiting for a database connection."),
)
DATABASE_POOLS = _PoolCollector()
REGISTRY.register(DATABASE_POOLS)
DATABASE_UP = Gauge(
    "arbiter_database_up", "1 while the service's database answers its health check, 0 while it does not.", ["service"]
)

# Only with ARBITER_DATABASE_READ_URL (shared/replica.py).
DATABASE_REPLICA_UP = Gauge(
    "arbiter_database_replica_up",
    "1 while the service's read replica answers, 0 while its reads go to the primary instead.",
    ["service"],
)
DATABASE_REPLICA_FALLBACKS = Counter(
    "arbiter_database_replica_fallbacks_total",
    "Reads meant for the read replica that ran on the primary, by reason: replica_down (it did not answer "
    "its last check), query_failed (the read failed on it), not_found (it lacked the task: replication lag).",
    ["service", "reason"],
)


# How often the gauges read from the database (tasks by state, agents by status) are read again.
REFRESH_SECONDS = 15.0


async def refresh_periodically(what: str, refresh: Callable[[], Awaitable[None]]) -> None:
    """Runs `refresh` every REFRESH_SECONDS until cancelled; a failure (the database down) is logged and the
    gauges keep their last figures until the next success."""
    while True:
        try:
            await refresh()
        except Exception as error:  # the loop must outlive any one failure
            logger.warning("reading %s for the metrics failed; retrying in %g s: %s", what, REFRESH_SECONDS, error)
        await asyncio.sleep(REFRESH_SECONDS)


def serve_metrics(address: str) -> WSGIServer:
    """Serves every metric of this process at http://address/metrics (port 0 picks one) until
    `shutdown()`; the HTTP server runs in its own thread."""
    host, _, port = address.rpartition(":")
    http, _thread = start_http_server(int(port), host.strip("[]") or "0.0.0.0", REGISTRY)
    logger.info("metrics at http://%s:%d/metrics", host or "0.0.0.0", http.server_port)
    return http
