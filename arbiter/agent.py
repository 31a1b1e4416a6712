"""`Agent`: a worker in a few lines.

    agent = Agent("reviewer-1", languages=["python"], max_concurrent_tasks=4)

    @agent.handler("code-review")
    async def review(task: Task) -> dict:
        await task.report_progress(0.5, "reading the diff")
        task.quality = 0.9  # optional: how good the result is, 0..1
        return {"verdict": "approve"}

    agent.run()

The agent registers with the registry, heartbeats, keeps its assignment stream open (reconnecting
with backoff when the orchestrator or the network goes away), runs up to `max_concurrent_tasks`
handlers at once, keeps each attempt's lease alive while its handler runs, and reports the result (with
`task.quality`, if the handler set it).
A handler that raises fails the attempt as retryable, unless it raises `PermanentError`. When the
orchestrator cancels a task, or the attempt is no longer this agent's, the handler's asyncio task is
cancelled. The first SIGTERM or SIGINT drains (no new work; what is held finishes); a second one stops
at once, failing what is still running as retryable so another agent takes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from google.protobuf.struct_pb2 import Struct
from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.trace import SpanKind, TracerProvider
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

from arbiter import settings
from arbiter._completions import CompletionSender
from arbiter._grpc import PemPath, is_transient, key_metadata, open_channel, traced
from arbiter.errors import ArbiterError, PermanentError
from arbiter.models import optional_time, struct_to_dict
from arbiter.v1 import agent_pb2
from arbiter.v1 import orchestrator_service_pb2 as opb
from arbiter.v1 import orchestrator_service_pb2_grpc as opb_grpc
from arbiter.v1 import registry_service_pb2 as rpb
from arbiter.v1 import registry_service_pb2_grpc as rpb_grpc

logger = logging.getLogger("arbiter.agent")

Handler = Callable[["Task"], Coroutine[Any, Any, dict[str, Any] | None]]
HandlerVar = TypeVar("HandlerVar", bound=Handler)

CALL_TIMEOUT_SECONDS = 10.0
DEFAULT_HEARTBEAT_SECONDS = 5.0
# Reconnect backoff: from 0.1 s, doubling with jitter, to at most this.
MAX_RECONNECT_SECONDS = 5.0
# 0.1 s, 0.2 s, 0.4 s … up to MAX_RECONNECT_SECONDS, each plus up to 0.25 s of jitter so a fleet
# cut off at once does not come back at once.
BACKOFF = wait_exponential_jitter(multiplier=0.1, max=MAX_RECONNECT_SECONDS, jitter=0.25)
# A stream that stayed up this long was healthy: the next reconnect starts from the shortest backoff.
HEALTHY_STREAM_SECONDS = 10.0
# How long a result or failure is retried while the orchestrator is unreachable.
REPORT_RETRY_SECONDS = 300.0
# Codes that retrying will not change: the agent stops and says why.
FATAL_CODES = frozenset(
    {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT}
)
# A report answered with these means the attempt is no longer this agent's.
LOST_ATTEMPT_CODES = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND})


class _StreamLost(Exception):
    """The assignment stream ended soon after it opened: reconnect after a growing backoff."""


@dataclass
class _Attempt:
    """One attempt this agent holds: the handler running it, and what its reports must quote."""

    task_id: str
    task_type: str
    attempt: int
    lease_expires_at: datetime | None
    progress: float = 0.0
    message: str = ""
    # The loop keeps only weak references to tasks: these keep them alive.
    runner: asyncio.Task[None] | None = None
    handler_task: asyncio.Task[Any] | None = None
    # Why the handler was cancelled: the orchestrator took the attempt back, or the agent is stopping.
    revoked_because: str = ""
    stopping: bool = False
    # Assigned after this agent began draining: given back unstarted.
    arrived_while_draining: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Task:
    """What a handler gets: the task's payload and attempt, a way to report progress, and `quality` to
    say how good its result is."""

    def __init__(self, assignment: opb.Assignment, report_progress: Callable[[float, str], Awaitable[None]]) -> None:
        task = assignment.task
        self.id: str = task.id
        self.task_type: str = task.task_type
        self.payload: dict[str, Any] = struct_to_dict(task.payload)
        self.attempt: int = assignment.attempt
        self.max_attempts: int = task.max_attempts
        self.priority: int = task.priority
        self._report_progress = report_progress
        self._quality: float | None = None

    @property
    def quality(self) -> float | None:
        """How good the result is, 0..1, if the handler can tell: set it before returning and it is sent
        with the result, feeding the agent's average quality (and so how routing sees it). None, the
        default, reports no quality. Ignored when the handler raises."""
        return self._quality

    @quality.setter
    def quality(self, value: float | None) -> None:
        if value is not None and not 0.0 <= value <= 1.0:  # also refuses NaN
            raise ValueError(f"quality must be between 0 and 1, or None; got {value}")
        self._quality = None if value is None else float(value)

    async def report_progress(self, fraction: float, message: str = "") -> None:
        """Records progress (0..1) and extends the lease. If the attempt is no longer this agent's
        (the task was cancelled or given to another agent), the handler is cancelled."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"progress must be between 0 and 1; got {fraction}")
        await self._report_progress(fraction, message)

    def __repr__(self) -> str:
        return f"Task(id={self.id!r}, task_type={self.task_type!r}, attempt={self.attempt})"


class Agent:
    def __init__(
        self,
        id: str,
        *,
        name: str = "",
        model_family: str = "",
        languages: Iterable[str] = (),
        specializations: Iterable[str] = (),
        labels: dict[str, str] | None = None,
        max_concurrent_tasks: int = 1,
        prefetch_tasks: int = 0,
        registry: str | None = None,
        orchestrator: str | None = None,
        api_key: str | None = None,
        tls: bool | None = None,
        tls_ca: PemPath | None = None,
        tls_client_cert: PemPath | None = None,
        tls_client_key: PemPath | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        """Addresses and key not given come from ARBITER_REGISTRY_TARGET (or ARBITER_REGISTRY_ADDR),
        ARBITER_ORCHESTRATOR_ADDR and ARBITER_API_KEY; the addresses default to 127.0.0.1:50051/50052.
        Plaintext unless TLS is asked for, as in `Client`: `tls=True`, `tls_ca`, `tls_client_cert` and
        `tls_client_key`, or ARBITER_TLS_CA, ARBITER_TLS_CLIENT_CERT and ARBITER_TLS_CLIENT_KEY.
        `prefetch_tasks` assignments beyond `max_concurrent_tasks` wait here for a free slot (their leases
        kept meanwhile), so the next task is already here when one finishes: worth it for many short tasks.
        Each attempt runs in an OpenTelemetry span (`tracer_provider`, else the global one; nothing is
        recorded unless one is configured), a child of the submitter's trace when the task carries it,
        and the attempt's reports carry that trace to the orchestrator."""
        if max_concurrent_tasks < 1:
            raise ValueError(f"max_concurrent_tasks must be at least 1; got {max_concurrent_tasks}")
        if prefetch_tasks < 0:
            raise ValueError(f"prefetch_tasks must be 0 or more; got {prefetch_tasks}")
        self.id = id
        self.name = name or id
        self.model_family = model_family
        self.languages = list(languages)
        self.specializations = list(specializations)
        self.labels = dict(labels or {})
        self.max_concurrent_tasks = max_concurrent_tasks
        self.prefetch_tasks = prefetch_tasks
        self._tracer = trace.get_tracer("arbiter.agent", tracer_provider=tracer_provider)
        self.registry_address = registry or settings.registry_address()
        self.orchestrator_address = orchestrator or settings.orchestrator_address()
        self._metadata = key_metadata(settings.api_key(api_key))
        self._credentials = settings.transport_credentials(tls, tls_ca, tls_client_cert, tls_client_key)
        self._handlers: dict[str, Handler] = {}
        # Keyed by (task id, attempt): a task taken back and handed out again is a new attempt.
        self._held: dict[tuple[str, int], _Attempt] = {}
        self._draining = asyncio.Event()
        self._stopping = False
        self._heartbeat_seconds = DEFAULT_HEARTBEAT_SECONDS
        # For callers that must know how far `serve()` got (e.g. `arbiter smoke`): set once the
        # registry accepted the registration; set while the assignment stream is open.
        self.registered = asyncio.Event()
        self.connected = asyncio.Event()

    # Declaring the agent.

    def handler(self, task_type: str) -> Callable[[HandlerVar], HandlerVar]:
        """Registers `async def handler(task) -> dict` for one task type."""

        def register(function: HandlerVar) -> HandlerVar:
            is_async = inspect.iscoroutinefunction(function)
            if not is_async:
                raise TypeError(f"the handler for '{task_type}' must be an async function (async def)")
            if task_type in self._handlers:
                raise ValueError(f"task type '{task_type}' already has a handler")
            self._handlers[task_type] = function
            return function

        return register

    @property
    def task_types(self) -> list[str]:
        return sorted(self._handlers)

    @property
    def active_tasks(self) -> int:
        return len(self._held)

    # Running it.

    def run(self) -> None:
        """Serves until SIGTERM/SIGINT (drain) or a fatal error; a second signal stops at once."""
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        asyncio.run(self._serve_with_signals())

    async def _serve_with_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signal_number, self._on_signal)
        await self.serve()

    def _on_signal(self) -> None:
        if self._draining.is_set():
            logger.warning("second signal: stopping now; unfinished tasks are failed as retryable")
            self.stop()
        else:
            logger.info("draining: taking no new work, finishing %d held task(s)", len(self._held))
            self.drain()

    def drain(self) -> None:
        """Stop taking work; `serve()` returns once every held task is finished and reported."""
        self._draining.set()

    def stop(self) -> None:
        """Stop now: cancel running handlers and fail their attempts as retryable."""
        self._stopping = True
        self._draining.set()
        for attempt in self._held.values():
            if attempt.handler_task is not None and not attempt.revoked_because:
                attempt.stopping = True
                attempt.handler_task.cancel()

    async def serve(self) -> None:
        """Registers, then takes and runs work until `drain()` or `stop()`."""
        if not self._handlers:
            raise ValueError("the agent has no handlers: add one with @agent.handler('task-type')")
        registry_channel = open_channel(self.registry_address, self._credentials)
        orchestrator_channel = open_channel(self.orchestrator_address, self._credentials)
        self._registry = rpb_grpc.RegistryServiceStub(registry_channel)
        self._orchestrator = opb_grpc.OrchestratorServiceStub(orchestrator_channel)
        self._completions = CompletionSender(self._orchestrator, self._report)
        self._slots = asyncio.Semaphore(self.max_concurrent_tasks)
        heartbeats: asyncio.Task[None] | None = None
        receiving: asyncio.Task[None] | None = None
        try:
            await self._register()
            heartbeats = asyncio.create_task(self._send_heartbeats())
            receiving = asyncio.create_task(self._receive_assignments())
            draining = asyncio.create_task(self._draining.wait())
            await asyncio.wait({receiving, draining}, return_when=asyncio.FIRST_COMPLETED)
            draining.cancel()
            if receiving.done():
                receiving.result()  # a fatal error: raise it
            # DRAINING first, so the orchestrator leaves this agent's tasks with it when the stream closes.
            await self._heartbeat_once()
            # The stream stays open while held tasks finish: their cancellations still arrive, and a task
            # routed here before the orchestrator saw DRAINING arrives and is given back, not lost.
            await self._wait_for_held_tasks()
            receiving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiving
            await self._wait_for_held_tasks()
            logger.info("agent %s drained; stopping", self.id)
        finally:
            self.stop()
            await self._wait_for_held_tasks()
            for background in (heartbeats, receiving):
                if background is not None:
                    background.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await background
            await registry_channel.close()
            await orchestrator_channel.close()

    async def _wait_for_held_tasks(self) -> None:
        while self._held:
            await next(iter(self._held.values())).done.wait()

    # Registry.

    def _registration(self) -> agent_pb2.Agent:
        return agent_pb2.Agent(
            id=self.id,
            name=self.name,
            model_family=self.model_family,
            capabilities=agent_pb2.AgentCapabilities(
                task_types=self.task_types,
                languages=self.languages,
                specializations=self.specializations,
                labels=self.labels,
            ),
            max_concurrent_tasks=self.max_concurrent_tasks,
            prefetch_tasks=self.prefetch_tasks,
        )

    async def _register(self) -> None:
        """Registers (again), retrying while the registry is unreachable; a refusal is fatal."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(is_transient),
            wait=BACKOFF,
            before_sleep=lambda state: logger.warning(
                "registry %s unreachable; retrying: %s", self.registry_address, _details(state.outcome)
            ),
            reraise=True,
        ):
            with attempt:
                try:
                    await self._registry.RegisterAgent(
                        rpb.RegisterAgentRequest(agent=self._registration()),
                        metadata=self._metadata,
                        timeout=CALL_TIMEOUT_SECONDS,
                    )
                except grpc.aio.AioRpcError as error:
                    if is_transient(error):
                        raise
                    raise ArbiterError.from_rpc_error(error, self.registry_address) from None
        self.registered.set()
        logger.info("agent %s registered for %s", self.id, ", ".join(self.task_types))

    def _status(self) -> agent_pb2.AgentStatus:
        if self._draining.is_set():
            return agent_pb2.AGENT_STATUS_DRAINING
        if len(self._held) >= self.max_concurrent_tasks:
            return agent_pb2.AGENT_STATUS_BUSY
        return agent_pb2.AGENT_STATUS_ONLINE

    async def _heartbeat_once(self) -> None:
        try:
            response = await self._registry.Heartbeat(
                rpb.HeartbeatRequest(agent_id=self.id, active_tasks=len(self._held), status=self._status()),
                metadata=self._metadata,
                timeout=CALL_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND and not self._draining.is_set():
                logger.warning("the registry no longer knows agent %s; registering again", self.id)
                try:
                    await self._register()
                except ArbiterError as refused:
                    logger.error("registering again was refused: %s", refused)
            else:
                logger.warning("heartbeat failed: %s: %s", error.code().name, error.details())
            return
        if response.HasField("heartbeat_interval"):
            self._heartbeat_seconds = max(0.1, response.heartbeat_interval.ToTimedelta().total_seconds())

    async def _send_heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_seconds)
            await self._heartbeat_once()

    # Orchestrator: the assignment stream.

    async def _receive_assignments(self) -> None:
        while True:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(lambda error: isinstance(error, _StreamLost)),
                wait=BACKOFF,
                before_sleep=lambda state: logger.warning("reconnecting: %s", _details(state.outcome)),
                reraise=True,
            ):
                with attempt:
                    await self._stream_once()

    async def _stream_once(self) -> None:
        """Reads one assignment stream to its end. Raises _StreamLost if it ended soon after opening,
        ArbiterError if the orchestrator refuses this agent for good."""
        opened_at = time.monotonic()
        call = self._orchestrator.StreamAssignments(
            opb.StreamAssignmentsRequest(agent_id=self.id), metadata=self._metadata
        )
        try:
            await call.initial_metadata()
            self.connected.set()
            logger.info("assignment stream open at %s", self.orchestrator_address)
            async for message in call:
                kind = message.WhichOneof("kind")
                if kind == "assignment":
                    self._accept(message.assignment)
                elif kind == "cancellation":
                    cancellation = message.cancellation
                    self._revoke(cancellation.task_id, cancellation.attempt, cancellation.reason)
                elif kind == "draining":
                    # Reconnect at once (to another instance, behind a load balancer); held tasks go on.
                    logger.info("orchestrator is draining (%s); reconnecting", message.draining.reason)
                    return
            reason = "the orchestrator closed the stream"
        except grpc.aio.AioRpcError as error:
            if error.code() in FATAL_CODES:
                raise ArbiterError.from_rpc_error(error, self.orchestrator_address) from None
            if error.code() == grpc.StatusCode.NOT_FOUND:
                await self._register()
            reason = f"{error.code().name}: {error.details()}"
        finally:
            self.connected.clear()
            call.cancel()
        if time.monotonic() - opened_at < HEALTHY_STREAM_SECONDS:
            raise _StreamLost(reason)
        logger.warning("assignment stream ended (%s); reconnecting", reason)

    def _accept(self, assignment: opb.Assignment) -> None:
        task_id = assignment.task.id
        held = self._held.get((task_id, assignment.attempt))
        if held is not None:
            # Sent again after a reconnect: already running here.
            held.lease_expires_at = _lease_end(assignment)
            return
        for older in [attempt for (held_id, _), attempt in self._held.items() if held_id == task_id]:
            self._revoke(task_id, older.attempt, f"superseded by attempt {assignment.attempt}")
        attempt = _Attempt(task_id, assignment.task.task_type, assignment.attempt, _lease_end(assignment))
        attempt.arrived_while_draining = self._draining.is_set()
        self._held[(task_id, attempt.attempt)] = attempt
        attempt.runner = asyncio.create_task(self._run_traced(attempt, assignment))

    def _revoke(self, task_id: str, attempt_number: int, reason: str) -> None:
        """The attempt is no longer this agent's: cancel its handler and report nothing for it."""
        attempt = self._held.get((task_id, attempt_number))
        if attempt is None or attempt.revoked_because:
            return
        attempt.revoked_because = reason or "cancelled"
        logger.info("task %s attempt %d taken back: %s", task_id, attempt_number, attempt.revoked_because)
        if attempt.handler_task is not None:
            attempt.handler_task.cancel()

    # Running one attempt.

    async def _run_traced(self, attempt: _Attempt, assignment: opb.Assignment) -> None:
        """The attempt in its span: a child of the submitter's span when the assignment carries its trace."""
        parent = extract(dict(assignment.trace_context)) if assignment.trace_context else None
        with self._tracer.start_as_current_span(
            f"arbiter.task {attempt.task_type}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "arbiter.task_id": attempt.task_id,
                "arbiter.attempt": attempt.attempt,
                "arbiter.agent_id": self.id,
            },
        ):
            await self._run(attempt, assignment)

    async def _run(self, attempt: _Attempt, assignment: opb.Assignment) -> None:
        lease_keeper: asyncio.Task[None] | None = None
        try:
            if attempt.arrived_while_draining and not attempt.revoked_because:
                await self._fail(
                    attempt, f"agent '{self.id}' is draining: it gave the task back without starting it", retryable=True
                )
                return
            # From arrival: a prefetched attempt waiting for a slot keeps its lease too.
            lease_keeper = asyncio.create_task(self._keep_lease(attempt))
            async with self._slots:
                if attempt.revoked_because:
                    return
                if attempt.stopping or self._stopping:
                    await self._fail(attempt, f"agent '{self.id}' stopped before starting the task", retryable=True)
                    return
                handler = self._handlers.get(attempt.task_type)
                if handler is None:
                    # Held under this agent id by an earlier run with other handlers: let another agent take it.
                    await self._fail(
                        attempt, f"agent '{self.id}' has no handler for task type '{attempt.task_type}'", retryable=True
                    )
                    return
                task = Task(assignment, lambda fraction, message: self._report_progress(attempt, fraction, message))
                attempt.handler_task = asyncio.create_task(handler(task))
                await asyncio.wait({attempt.handler_task})
                lease_keeper.cancel()
            # The slot is free once the handler is done: the next assignment (which the orchestrator sends
            # as soon as the result is recorded) starts while this report's answer is still on its way.
            await self._report_outcome(attempt, attempt.handler_task, task.quality)
        except Exception:
            logger.exception("task %s attempt %d: reporting the outcome failed", attempt.task_id, attempt.attempt)
        finally:
            if lease_keeper is not None:
                lease_keeper.cancel()
            if attempt.handler_task is not None and not attempt.handler_task.done():
                attempt.handler_task.cancel()
            del self._held[(attempt.task_id, attempt.attempt)]
            attempt.done.set()

    async def _report_outcome(self, attempt: _Attempt, handler_task: asyncio.Task[Any], quality: float | None) -> None:
        if attempt.revoked_because:
            return
        if handler_task.cancelled():
            if attempt.stopping:
                await self._fail(attempt, f"agent '{self.id}' stopped before the task finished", retryable=True)
            else:
                await self._fail(attempt, "the handler was cancelled", retryable=True)
            return
        error = handler_task.exception()
        if isinstance(error, PermanentError):
            await self._fail(attempt, str(error) or type(error).__name__, retryable=False)
            return
        if error is not None:
            logger.warning("task %s attempt %d failed", attempt.task_id, attempt.attempt, exc_info=error)
            await self._fail(attempt, f"{type(error).__name__}: {error}", retryable=True)
            return
        result = handler_task.result()
        struct = Struct()
        if result is not None and not isinstance(result, dict):
            await self._fail(
                attempt, f"the handler returned {type(result).__name__}; it must return a dict", retryable=False
            )
            return
        try:
            struct.update(result or {})
        except (TypeError, ValueError) as not_json:
            await self._fail(attempt, f"the handler's result is not JSON-like: {not_json}", retryable=False)
            return
        await self._complete(attempt, struct, quality)

    async def _complete(self, attempt: _Attempt, result: Struct, quality: float | None) -> None:
        refusal = await self._completions.complete(
            opb.CompleteTaskRequest(
                task_id=attempt.task_id, agent_id=self.id, attempt=attempt.attempt, result=result, quality=quality
            )
        )
        if refusal is None:
            return
        code, details = refusal
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            # E.g. a result over the size limit: retrying cannot help, so the task fails and says why.
            await self._fail(attempt, f"the result was refused: {details}", retryable=False)
        else:
            self._log_refused_report(attempt, "result", code, details)

    async def _fail(self, attempt: _Attempt, message: str, *, retryable: bool) -> None:
        request = opb.FailTaskRequest(
            task_id=attempt.task_id,
            agent_id=self.id,
            attempt=attempt.attempt,
            error=message[:8192] or "failed",
            retryable=retryable,
        )
        try:
            await self._report(self._orchestrator.FailTask, request)
        except grpc.aio.AioRpcError as error:
            self._log_refused_report(attempt, "failure", error.code(), error.details() or "")

    async def _report(self, method: Callable[..., Awaitable[Any]], request: Any) -> Any:
        """Sends a result or failure, retrying while the orchestrator is unreachable."""
        async for retrying in AsyncRetrying(
            retry=retry_if_exception(is_transient),
            wait=BACKOFF,
            stop=stop_after_delay(REPORT_RETRY_SECONDS),
            reraise=True,
        ):
            with retrying:
                return await method(request, metadata=traced(self._metadata), timeout=CALL_TIMEOUT_SECONDS)

    @staticmethod
    def _log_refused_report(attempt: _Attempt, what: str, code: grpc.StatusCode, details: str) -> None:
        logger.warning(
            "task %s attempt %d: %s not accepted (%s: %s)", attempt.task_id, attempt.attempt, what, code.name, details
        )

    async def _send_progress(self, attempt: _Attempt) -> None:
        """One ReportProgress with the latest progress; on a lost attempt, cancels the handler."""
        try:
            response = await self._orchestrator.ReportProgress(
                opb.ReportProgressRequest(
                    task_id=attempt.task_id,
                    agent_id=self.id,
                    attempt=attempt.attempt,
                    progress=attempt.progress,
                    message=attempt.message,
                ),
                metadata=self._metadata,
                timeout=CALL_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in LOST_ATTEMPT_CODES:
                self._revoke(attempt.task_id, attempt.attempt, error.details() or error.code().name)
            else:
                logger.warning("task %s: progress not recorded yet: %s", attempt.task_id, error.details())
            return
        if response.HasField("lease_expires_at"):
            attempt.lease_expires_at = optional_time(response.lease_expires_at, True)

    async def _report_progress(self, attempt: _Attempt, fraction: float, message: str) -> None:
        attempt.progress, attempt.message = fraction, message[:1024]
        await self._send_progress(attempt)
        if attempt.revoked_because:
            # The handler's own task was just cancelled; let the cancellation surface here.
            await asyncio.sleep(0)

    async def _keep_lease(self, attempt: _Attempt) -> None:
        """Extends the lease at a third of its remaining time while the attempt is held, queued or running."""
        while True:
            remaining = 30.0
            if attempt.lease_expires_at is not None:
                remaining = (attempt.lease_expires_at - datetime.now(UTC)).total_seconds()
            await asyncio.sleep(min(60.0, max(0.5, remaining / 3)))
            await self._send_progress(attempt)


def _lease_end(assignment: opb.Assignment) -> datetime | None:
    return optional_time(assignment.lease_expires_at, assignment.HasField("lease_expires_at"))


def _details(outcome: Any) -> str:
    error = outcome.exception() if outcome is not None else None
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return str(error)
