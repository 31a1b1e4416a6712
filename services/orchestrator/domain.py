"""Tasks and their rules: what a valid submission is, the state machine, and what a failure leads to."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cached_property
from typing import TYPE_CHECKING, Any

from shared import tenancy, validation
from shared.errors import InvalidArgument
from shared.matching import PRIOR_SUCCESS_RATE, Capabilities, Requirements

if TYPE_CHECKING:
    from services.orchestrator.routing import Decision

# The documented limits live in shared/validation.py (README, "Limits").
PRIORITY_MIN, PRIORITY_MAX = validation.MIN_PRIORITY, validation.MAX_PRIORITY
DEFAULT_MAX_ATTEMPTS, MAX_ATTEMPTS_LIMIT = validation.DEFAULT_MAX_ATTEMPTS, validation.MAX_ATTEMPTS
MAX_TIMEOUT_MS = validation.MAX_TIMEOUT_MS
MAX_IDEMPOTENCY_KEY_LENGTH = validation.MAX_IDEMPOTENCY_KEY_LENGTH
MAX_ERROR_LENGTH = validation.MAX_ERROR_LENGTH
MAX_MESSAGE_LENGTH = validation.MAX_PROGRESS_MESSAGE_LENGTH
MAX_BATCH_SIZE = validation.MAX_TASKS_PER_BATCH


class TaskState(StrEnum):
    PENDING = "pending"
    ASSIGNED = "assigned"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED)

    @property
    def is_in_flight(self) -> bool:
        return self in (TaskState.ASSIGNED, TaskState.RUNNING)


@dataclass(frozen=True)
class TaskRequirements:
    languages: list[str] = field(default_factory=list)
    specializations: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordedDecision:
    """A routing decision as stored: which attempt it routed, and when."""

    attempt: int
    decided_at: datetime
    decision: Decision


@dataclass(frozen=True)
class NewTask:
    task_type: str
    payload: dict[str, Any]
    priority: int
    requirements: TaskRequirements
    max_attempts: int
    timeout_ms: int | None
    idempotency_key: str | None
    schedule_to_start_timeout_ms: int | None = None
    tenant: str = tenancy.DEFAULT_TENANT
    # The id of the key that submitted it.
    submitted_by: str | None = None


@dataclass(frozen=True)
class TaskRecord:
    id: str
    task_type: str
    state: TaskState
    payload: dict[str, Any]
    result: dict[str, Any] | None
    error: str
    priority: int
    requirements: TaskRequirements
    attempt: int
    max_attempts: int
    timeout_ms: int | None
    idempotency_key: str | None
    assigned_agent_id: str | None
    progress: float
    progress_message: str
    lease_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    not_before: datetime | None = None
    schedule_to_start_timeout_ms: int | None = None
    # When the current (or last) attempt was handed out.
    assigned_at: datetime | None = None
    # The current (or last) attempt's routing decision; read only where users see the task.
    routing: RecordedDecision | None = None
    # While PENDING, why: computed from the live view of agents when the task is shown.
    pending_reason: str = ""
    tenant: str = tenancy.DEFAULT_TENANT
    submitted_by: str | None = None
    # The submitting call's W3C trace context (traceparent, tracestate); empty when it was not traced.
    trace_context: Mapping[str, str] = field(default_factory=dict)

    @property
    def routing_type(self) -> str:
        """The task type within its tenant: only the tenant's agents offer it."""
        return tenancy.qualify(self.tenant, self.task_type)

    @cached_property
    def routing_requirements(self) -> Requirements:
        return Requirements(
            self.task_type,
            frozenset(self.requirements.languages),
            frozenset(self.requirements.specializations),
            self.requirements.labels,
        )


@dataclass(frozen=True)
class Submitted:
    """A submitted task; `created` is False when its idempotency key named an earlier task."""

    task: TaskRecord
    created: bool


@dataclass(frozen=True)
class TaskEvent:
    """One state change of a task; `from_state` is None for the submission."""

    at: datetime
    from_state: TaskState | None
    to_state: TaskState
    attempt: int
    agent_id: str | None
    reason: str


@dataclass(frozen=True)
class AttemptCancellation:
    """Tells the agent holding an attempt to stop it."""

    task_id: str
    attempt: int
    reason: str


@dataclass(frozen=True)
class OrchestratorDraining:
    """Tells an agent this orchestrator is shutting down: reconnect, keep working on what it holds."""

    reason: str


@dataclass(frozen=True)
class TaskCount:
    task_type: str
    state: TaskState
    count: int
    oldest_created_at: datetime


@dataclass(frozen=True)
class TypePerformance:
    """An agent's record on one task type, as the registry reports it (prior included)."""

    success_rate: float
    samples: int


@dataclass(frozen=True)
class AgentProfile:
    """What the orchestrator needs to know of an agent, as learned from the registry."""

    id: str
    task_types: list[str]
    languages: list[str]
    specializations: list[str]
    labels: dict[str, str]
    max_concurrent_tasks: int
    accepts_work: bool
    # Assignments it queues beyond max_concurrent_tasks.
    prefetch_tasks: int = 0
    # Finishing what it holds: its tasks stay with it when its stream closes.
    draining: bool = False
    # Heartbeating: not UNHEALTHY or OFFLINE.
    alive: bool = True
    # ONLINE, BUSY, DRAINING, UNHEALTHY or OFFLINE, for messages.
    status: str = "ONLINE"
    # From its last heartbeat; the orchestrator counts what local agents hold itself.
    active_tasks: int = 0
    # By task type; every type it offers is present once the registry has reported it.
    performance: Mapping[str, TypePerformance] = field(default_factory=dict)

    @property
    def capacity(self) -> int:
        """Attempts it may hold: its running slots and its prefetch queue."""
        return self.max_concurrent_tasks + self.prefetch_tasks

    @cached_property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            frozenset(self.task_types), frozenset(self.languages), frozenset(self.specializations), self.labels
        )

    def performance_on(self, task_type: str) -> TypePerformance:
        """Its record on the task type; an unreported type counts as a new agent's (the registry's prior)."""
        return self.performance.get(task_type) or TypePerformance(PRIOR_SUCCESS_RATE, 0)


@dataclass(frozen=True)
class AttemptReport:
    """Who reports on which attempt: every report must name the attempt it was handed."""

    task_id: str
    agent_id: str
    attempt: int


@dataclass(frozen=True)
class Completion:
    """A checked result for an attempt, as CompleteTask or one entry of CompleteTasks brings it."""

    report: AttemptReport
    result: dict[str, Any]
    quality: float | None


@dataclass(frozen=True)
class CompletedAttempt:
    """An attempt just recorded COMPLETED: what its agent's track record needs."""

    task_id: str
    attempt: int
    task_type: str
    assigned_at: datetime | None


def validate_submission(
    *,
    task_type: str,
    payload: dict[str, Any],
    payload_bytes: int,
    max_payload_bytes: int,
    priority: int,
    requirements: TaskRequirements,
    max_attempts: int,
    timeout_ms: int | None,
    idempotency_key: str,
    schedule_to_start_timeout_ms: int | None = None,
) -> NewTask:
    """Checks a submission; 0 max_attempts means 3, no timeout means none."""
    validation.name("task_type", task_type, required=True)
    if payload_bytes > max_payload_bytes:
        raise InvalidArgument("payload", f"is {payload_bytes} bytes; the limit is {max_payload_bytes}")
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise InvalidArgument("priority", f"must be between {PRIORITY_MIN} and {PRIORITY_MAX}; got {priority}")
    attempts = max_attempts or DEFAULT_MAX_ATTEMPTS
    if not 1 <= attempts <= MAX_ATTEMPTS_LIMIT:
        raise InvalidArgument(
            "max_attempts",
            f"must be between 1 and {MAX_ATTEMPTS_LIMIT} (0 means {DEFAULT_MAX_ATTEMPTS}); got {max_attempts}",
        )
    if timeout_ms is not None and not 0 < timeout_ms <= MAX_TIMEOUT_MS:
        raise InvalidArgument("timeout", "must be positive and at most 7 days, or unset for none")
    if schedule_to_start_timeout_ms is not None and not 0 < schedule_to_start_timeout_ms <= MAX_TIMEOUT_MS:
        raise InvalidArgument("schedule_to_start_timeout", "must be positive and at most 7 days, or unset for none")
    validation.text("idempotency_key", idempotency_key, maximum=MAX_IDEMPOTENCY_KEY_LENGTH)
    return NewTask(
        task_type=task_type,
        payload=validation.storable_json("payload", payload),
        priority=priority,
        requirements=TaskRequirements(
            languages=validation.names("requirements.languages", requirements.languages),
            specializations=validation.names("requirements.specializations", requirements.specializations),
            labels=validation.labels("requirements.labels", requirements.labels),
        ),
        max_attempts=attempts,
        timeout_ms=timeout_ms,
        idempotency_key=idempotency_key or None,
        schedule_to_start_timeout_ms=schedule_to_start_timeout_ms,
    )


def validate_batch_size(size: int, field: str = "tasks") -> None:
    if size == 0:
        raise InvalidArgument(field, f"is empty; send 1 to {MAX_BATCH_SIZE}")
    if size > MAX_BATCH_SIZE:
        raise InvalidArgument(field, f"has {size}; at most {MAX_BATCH_SIZE} per call, so split the batch")


def validate_report(task_id: str, agent_id: str, attempt: int) -> AttemptReport:
    if not 1 <= attempt <= MAX_ATTEMPTS_LIMIT:
        raise InvalidArgument(
            "attempt", f"must be the attempt from the assignment (1 to {MAX_ATTEMPTS_LIMIT}); got {attempt}"
        )
    # The agent id is checked (and qualified with its tenant) where the caller is known.
    return AttemptReport(task_id=validation.task_id("task_id", task_id), agent_id=agent_id, attempt=attempt)


def validate_progress(progress: float, message: str) -> None:
    if not 0.0 <= progress <= 1.0:  # also rejects NaN
        raise InvalidArgument("progress", f"must be between 0 and 1; got {progress}")
    validation.text("message", message, maximum=MAX_MESSAGE_LENGTH)


def validate_failure(error: str) -> None:
    if not error.strip():
        raise InvalidArgument("error", "is required: say what went wrong")
    validation.text("error", error, maximum=MAX_ERROR_LENGTH)


def state_after_failure(task: TaskRecord, retryable: bool) -> TaskState:
    """A retryable failure with attempts left goes back to PENDING; anything else is FAILED."""
    return TaskState.PENDING if retryable and task.attempt < task.max_attempts else TaskState.FAILED


# Retry backoff: min(1 s·2^(n−1), 60 s)·random(0.5..1) after attempt n fails, so a failing task does not
# spin and a fleet of retries does not arrive in step.
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 60.0


def retry_backoff_seconds(failed_attempt: int, random_fraction: float) -> float:
    """`random_fraction` in 0..1 picks the point in the 0.5..1 jitter band."""
    ceiling = min(BACKOFF_BASE_SECONDS * 2.0 ** (failed_attempt - 1), BACKOFF_CAP_SECONDS)
    return ceiling * (0.5 + 0.5 * random_fraction)


@dataclass(frozen=True)
class AttemptEnd:
    """How an in-flight attempt ends when it fails or is taken back: the task's next state, when it may
    run again, and the reason stored as its error (and in its history)."""

    state: TaskState
    not_before: datetime | None
    error: str


def end_of_attempt(
    task: TaskRecord, reason: str, *, retryable: bool, backoff: bool, now: datetime, random_fraction: float
) -> AttemptEnd:
    """Retryable with attempts left: PENDING again (after the backoff if `backoff`); otherwise FAILED."""
    if state_after_failure(task, retryable) == TaskState.FAILED:
        return AttemptEnd(TaskState.FAILED, None, reason)
    wait = retry_backoff_seconds(task.attempt, random_fraction) if backoff else 0.0
    return AttemptEnd(TaskState.PENDING, now + timedelta(seconds=wait) if wait else None, reason)


def seconds_text(milliseconds: float) -> str:
    """3 s, 1.5 s, 250 ms."""
    if milliseconds < 1000:
        return f"{milliseconds:g} ms"
    return f"{milliseconds / 1000:g} s"


def why_report_is_stale(task: TaskRecord, report: AttemptReport) -> str:
    """Why a report on an attempt no longer counts, in words the agent's operator can act on."""
    prefix = (
        f"task {task.id}: report for attempt {report.attempt} from agent '{tenancy.plain(report.agent_id)}' is stale: "
    )
    if task.state.is_terminal:
        return prefix + f"the task is already {task.state.name}"
    if task.attempt != report.attempt:
        return prefix + f"the task is now at attempt {task.attempt} ({task.state.name})"
    if task.state == TaskState.PENDING:
        return prefix + "the attempt was released and the task is PENDING again"
    return prefix + f"attempt {task.attempt} is held by agent '{tenancy.plain(task.assigned_agent_id or '')}'"
