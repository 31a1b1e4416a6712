"""OpenTelemetry: real servers in this event loop, spans caught by an in-memory exporter. A call joins
the caller's trace (W3C traceparent), its database statements are spans under it, and the orchestrator's
calls to the registry carry the trace on, so the registry's span joins it too."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from arbiter import Client, Task
from arbiter.v1 import agent_pb2
from arbiter.v1 import orchestrator_service_pb2 as opb
from arbiter.v1 import registry_service_pb2 as rpb
from shared.api_keys import Role
from shared.tracing import provider_from_env
from tests.support.stack import running_stack, serving_agent
from tests.test_reliability import wait_until_stream_row

WAIT_SECONDS = 15.0
TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
CALLER_SPAN_ID = 0xB7AD6B7169203331


def traceparent(trace_id: int = TRACE_ID, span_id: int = CALLER_SPAN_ID) -> tuple[str, str]:
    return ("traceparent", f"00-{trace_id:032x}-{span_id:016x}-01")


@pytest.fixture
async def traced() -> AsyncIterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


async def spans_until(
    exporter: InMemorySpanExporter, found: Callable[[list[ReadableSpan]], bool]
) -> list[ReadableSpan]:
    async with asyncio.timeout(WAIT_SECONDS):
        while not found(spans := list(exporter.get_finished_spans())):
            await asyncio.sleep(0.05)
    return spans


def named(spans: list[ReadableSpan], name: str, kind: SpanKind) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name and span.kind == kind]


def descends_from(span: ReadableSpan, ancestor: ReadableSpan, spans: list[ReadableSpan]) -> bool:
    by_id = {each.context.span_id: each for each in spans}
    current: ReadableSpan | None = span
    while current is not None and current.parent is not None:
        if current.parent.span_id == ancestor.context.span_id:
            return True
        current = by_id.get(current.parent.span_id)
    return False


async def test_a_call_joins_the_callers_trace_with_a_span_per_database_statement(
    database_url: str, traced: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = traced
    async with running_stack(database_url, provider) as stack:
        metadata = (*stack.as_role(Role.SUBMITTER), traceparent())
        await stack.orchestrator().SubmitTask(opb.SubmitTaskRequest(task_type="traced"), metadata=metadata)
        name = "/arbiter.v1.OrchestratorService/SubmitTask"
        spans = await spans_until(exporter, lambda spans: bool(named(spans, name, SpanKind.SERVER)))
    (server,) = named(spans, name, SpanKind.SERVER)
    assert server.context.trace_id == TRACE_ID
    assert server.parent is not None and server.parent.span_id == CALLER_SPAN_ID
    statements = [
        span
        for span in spans
        if span.attributes and span.attributes.get("db.system") == "postgresql" and descends_from(span, server, spans)
    ]
    assert statements, "no database statement ran under the call's span"
    assert all(span.context.trace_id == TRACE_ID for span in statements)
    assert not [span for span in spans if "grpc.health.v1" in span.name]


async def test_the_orchestrators_call_to_the_registry_carries_the_trace(
    database_url: str, traced: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = traced
    async with running_stack(database_url, provider) as stack:
        agent = agent_pb2.Agent(id="traced-agent", capabilities=agent_pb2.AgentCapabilities(task_types=["traced"]))
        await stack.registry().RegisterAgent(rpb.RegisterAgentRequest(agent=agent), metadata=stack.as_role(Role.AGENT))
        stream = stack.orchestrator().StreamAssignments(
            opb.StreamAssignmentsRequest(agent_id="traced-agent"), metadata=(*stack.as_role(Role.AGENT), traceparent())
        )
        await wait_until_stream_row(database_url, "traced-agent", present=True)
        # The stream closes: the orchestrator asks the registry whether the agent is draining.
        stream.cancel()
        registry_name = "/arbiter.v1.RegistryService/GetAgent"
        stream_name = "/arbiter.v1.OrchestratorService/StreamAssignments"

        def all_ended(spans: list[ReadableSpan]) -> bool:
            return all(
                any(span.context.trace_id == TRACE_ID for span in named(spans, name, kind))
                for name, kind in ((registry_name, SpanKind.SERVER), (stream_name, SpanKind.SERVER))
            )

        spans = await spans_until(exporter, all_ended)
    (stream_span,) = named(spans, stream_name, SpanKind.SERVER)
    registry_span = next(
        span for span in named(spans, registry_name, SpanKind.SERVER) if span.context.trace_id == TRACE_ID
    )
    assert registry_span.parent is not None
    assert registry_span.parent.span_id == stream_span.context.span_id or descends_from(
        registry_span, stream_span, spans
    )


async def test_one_tasks_trace_runs_from_its_submitter_through_its_agent_and_report_to_the_registry(
    database_url: str, traced: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = traced

    async def handle(task: Task) -> dict[str, Any]:
        return {"done": True}

    async with running_stack(database_url, provider) as stack:
        async with (
            serving_agent(stack, "trace-agent", {"traced": handle}, tracer_provider=provider),
            Client(stack.orchestrator_address, stack.keys[Role.SUBMITTER]) as client,
        ):
            with provider.get_tracer("submitter").start_as_current_span("submit work") as root:
                task = await client.submit("traced", {})
            await client.wait(task.id, timeout=WAIT_SECONDS)
            trace_id = root.get_span_context().trace_id
            registry_name = "/arbiter.v1.RegistryService/RecordOutcomes"
            spans = await spans_until(
                exporter,
                lambda spans: any(
                    span.context.trace_id == trace_id for span in named(spans, registry_name, SpanKind.SERVER)
                ),
            )
    in_trace = [span for span in spans if span.context.trace_id == trace_id]
    (submitted,) = named(in_trace, "/arbiter.v1.OrchestratorService/SubmitTask", SpanKind.SERVER)
    assert submitted.parent is not None and submitted.parent.span_id == root.get_span_context().span_id
    (handled,) = named(in_trace, "arbiter.task traced", SpanKind.CONSUMER)
    assert handled.attributes is not None and handled.attributes["arbiter.task_id"] == task.id
    assert descends_from(handled, submitted, in_trace)
    (reported,) = named(in_trace, "/arbiter.v1.OrchestratorService/CompleteTasks", SpanKind.SERVER)
    assert descends_from(reported, handled, in_trace)
    (recorded,) = named(in_trace, registry_name, SpanKind.SERVER)
    assert descends_from(recorded, reported, in_trace)


def test_spans_are_exported_only_when_the_otel_variables_ask_for_it() -> None:
    assert provider_from_env("registry", {}) is None
    assert provider_from_env("registry", {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"}) is None
    exporting = provider_from_env("orchestrator", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert exporting is not None
    try:
        assert exporting.resource.attributes["service.name"] == "arbiter-orchestrator"
    finally:
        exporting.shutdown()
