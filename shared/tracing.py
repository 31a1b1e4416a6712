"""OpenTelemetry tracing for the services: a span per RPC served and per database statement; the
orchestrator's calls to the registry carry the current trace (services/orchestrator/registry_client.py),
so the registry's spans join it.

Spans are made and exported only when the standard variables ask for it: OTEL_EXPORTER_OTLP_ENDPOINT
(or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) set, or OTEL_TRACES_EXPORTER=otlp|console. The other OTEL_*
variables (headers, protocol options, sampler, batch sizes, resource attributes, OTEL_SERVICE_NAME) are
read by the OpenTelemetry SDK itself. Without them nothing is traced and nothing costs a span."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import psycopg
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

# Kubernetes probes ask for health every few seconds: tracing them would bury the real calls.
_NOT_HEALTH = filters.negate(filters.service_prefix("grpc.health.v1"))


def provider_from_env(service: str, environ: Mapping[str, str] | None = None) -> TracerProvider | None:
    """A provider exporting spans as the OTEL_* variables say, named arbiter-<service> unless
    OTEL_SERVICE_NAME names it; None when they ask for no export."""
    environ = os.environ if environ is None else environ
    exporter_name = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if exporter_name == "none" or not (endpoint or exporter_name in ("otlp", "console")):
        return None
    exporter: SpanExporter
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    else:
        # Imported here: the gRPC exporter is only needed when spans are sent.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    attributes = {} if environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: f"arbiter-{service}"}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def server_interceptors(provider: TracerProvider | None) -> list[Any]:
    """A span per call served (health checks left out), joining the caller's trace (W3C traceparent)."""
    if provider is None:
        return []
    return [aio_server_interceptor(tracer_provider=provider, filter_=_NOT_HEALTH)]


def connection_tracer(
    provider: TracerProvider | None,
) -> Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]] | None:
    """For the pool's `configure`: a span per statement on each new connection."""
    if provider is None:
        return None

    async def trace_statements(connection: psycopg.AsyncConnection[Any]) -> None:
        PsycopgInstrumentor.instrument_connection(connection, tracer_provider=provider)

    return trace_statements
