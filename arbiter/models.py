"""Typed results of the SDK, read from the protobuf messages once so callers never touch them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from arbiter.v1 import admin_service_pb2, agent_pb2, orchestrator_service_pb2, registry_service_pb2, task_pb2


class TaskState(Enum):
    PENDING = task_pb2.TASK_STATE_PENDING
    ASSIGNED = task_pb2.TASK_STATE_ASSIGNED
    RUNNING = task_pb2.TASK_STATE_RUNNING
    COMPLETED = task_pb2.TASK_STATE_COMPLETED
    FAILED = task_pb2.TASK_STATE_FAILED
    CANCELLED = task_pb2.TASK_STATE_CANCELLED

    @property
    def is_terminal(self) -> bool:
        return self in (TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED)

    @classmethod
    def parse(cls, name: str) -> TaskState:
        """`pending`, `PENDING` or `TASK_STATE_PENDING`."""
        key = name.strip().upper().removeprefix("TASK_STATE_")
        if key not in cls.__members__:
            raise ValueError(f"unknown task state {name!r}; expected one of {', '.join(cls.__members__).lower()}")
        return cls[key]


class AgentStatus(Enum):
    ONLINE = agent_pb2.AGENT_STATUS_ONLINE
    BUSY = agent_pb2.AGENT_STATUS_BUSY
    DRAINING = agent_pb2.AGENT_STATUS_DRAINING
    UNHEALTHY = agent_pb2.AGENT_STATUS_UNHEALTHY
    OFFLINE = agent_pb2.AGENT_STATUS_OFFLINE
    UNKNOWN = agent_pb2.AGENT_STATUS_UNSPECIFIED


def optional_time(timestamp: Timestamp, present: bool) -> datetime | None:
    """An aware UTC datetime, or None when the field is unset."""
    return timestamp.ToDatetime(tzinfo=UTC) if present else None


def struct_to_dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message)


def strategy_name(strategy: int) -> str:
    """A routing strategy as ARBITER_ROUTING_STRATEGY spells it, e.g. `ucb`; empty when unspecified."""
    if strategy == task_pb2.ROUTING_STRATEGY_UNSPECIFIED:
        return ""
    return task_pb2.RoutingStrategy.Name(strategy).removeprefix("ROUTING_STRATEGY_").lower()


@dataclass(frozen=True)
class ScoredAgent:
    """One agent a routing decision weighed, with its score under the strategy and why."""

    agent_id: str
    score: float
    # e.g. "success 0.92 over 40 tasks + exploration 0.17, 25% utilized".
    reason: str

    @classmethod
    def from_pb(cls, scored: task_pb2.ScoredAgent) -> ScoredAgent:
        return cls(agent_id=scored.agent_id, score=scored.score, reason=scored.reason)


@dataclass(frozen=True)
class RoutingDecision:
    """Why one attempt of a task went to the agent it went to."""

    attempt: int
    agent_id: str
    # `capability`, `least_loaded`, `epsilon_greedy` or `ucb`.
    strategy: str
    # 0..1: ucb and epsilon_greedy: the agent's success rate on the task type; capability: its match
    # score; least_loaded: its free share of slots.
    confidence: float
    # The chosen agent's score under the strategy.
    score: float
    # The pick was exploration (epsilon_greedy's random pick, ucb's exploration or new-agent bonus).
    explored: bool
    reason: str
    # The other capable agents with a free slot, best first (at most 5).
    alternatives: list[ScoredAgent]
    decided_at: datetime | None

    @classmethod
    def from_pb(cls, decision: task_pb2.RoutingDecision) -> RoutingDecision:
        return cls(
            attempt=decision.attempt,
            agent_id=decision.agent_id,
            strategy=strategy_name(decision.strategy),
            confidence=decision.confidence,
            score=decision.score,
            explored=decision.explored,
            reason=decision.reason,
            alternatives=[ScoredAgent.from_pb(scored) for scored in decision.alternatives],
            decided_at=optional_time(decision.decided_at, decision.HasField("decided_at")),
        )


@dataclass(frozen=True)
class TaskInfo:
    """A task as the orchestrator last reported it."""

    id: str
    task_type: str
    state: TaskState
    payload: dict[str, Any]
    result: dict[str, Any] | None
    error: str
    priority: int
    attempt: int
    max_attempts: int
    assigned_agent_id: str
    idempotency_key: str
    progress: float
    progress_message: str
    timeout: timedelta | None
    created_at: datetime | None
    updated_at: datetime | None
    lease_expires_at: datetime | None
    # A retried task waits for its backoff until then.
    not_before: datetime | None = None
    schedule_to_start_timeout: timedelta | None = None
    languages: list[str] = field(default_factory=list)
    specializations: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    # How the current (or last) attempt was routed; None before the first assignment.
    routing: RoutingDecision | None = None
    # While PENDING: why it is still waiting, e.g. "no ONLINE agent offers task type 'code-review' with
    # language 'rust'"; empty otherwise.
    pending_reason: str = ""
    # False when submit found an earlier task under the same idempotency key.
    created: bool = True

    @classmethod
    def from_pb(cls, task: task_pb2.Task, created: bool = True) -> TaskInfo:
        return cls(
            id=task.id,
            task_type=task.task_type,
            state=TaskState(task.state),
            payload=struct_to_dict(task.payload),
            result=struct_to_dict(task.result) if task.HasField("result") else None,
            error=task.error,
            priority=task.priority,
            attempt=task.attempt,
            max_attempts=task.max_attempts,
            assigned_agent_id=task.assigned_agent_id,
            idempotency_key=task.idempotency_key,
            progress=task.progress,
            progress_message=task.progress_message,
            timeout=task.timeout.ToTimedelta() if task.HasField("timeout") else None,
            created_at=optional_time(task.created_at, task.HasField("created_at")),
            updated_at=optional_time(task.updated_at, task.HasField("updated_at")),
            lease_expires_at=optional_time(task.lease_expires_at, task.HasField("lease_expires_at")),
            not_before=optional_time(task.not_before, task.HasField("not_before")),
            schedule_to_start_timeout=(
                task.schedule_to_start_timeout.ToTimedelta() if task.HasField("schedule_to_start_timeout") else None
            ),
            languages=list(task.requirements.languages),
            specializations=list(task.requirements.specializations),
            labels=dict(task.requirements.labels),
            routing=RoutingDecision.from_pb(task.routing) if task.HasField("routing") else None,
            pending_reason=task.pending_reason,
            created=created,
        )


@dataclass(frozen=True)
class TaskSpec:
    """One task to submit; `Client.submit_many` takes a list of these."""

    task_type: str
    payload: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    max_attempts: int = 0
    # Bound on one attempt; None means none.
    timeout: timedelta | float | None = None
    idempotency_key: str = ""
    # Fail the task if no agent starts it this long after it became PENDING; None means wait forever.
    schedule_to_start_timeout: timedelta | float | None = None
    languages: list[str] = field(default_factory=list)
    specializations: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)

    def to_pb(self) -> orchestrator_service_pb2.SubmitTaskRequest:
        request = orchestrator_service_pb2.SubmitTaskRequest(
            task_type=self.task_type,
            priority=self.priority,
            max_attempts=self.max_attempts,
            idempotency_key=self.idempotency_key,
            requirements=task_pb2.TaskRequirements(
                languages=self.languages, specializations=self.specializations, labels=self.labels
            ),
        )
        try:
            request.payload.update(self.payload)
        except (TypeError, ValueError) as error:
            raise ValueError(f"payload of a '{self.task_type}' task is not JSON-like: {error}") from None
        if self.timeout is not None:
            request.timeout.FromTimedelta(_timedelta(self.timeout))
        if self.schedule_to_start_timeout is not None:
            request.schedule_to_start_timeout.FromTimedelta(_timedelta(self.schedule_to_start_timeout))
        return request


def _timedelta(value: timedelta | float) -> timedelta:
    return value if isinstance(value, timedelta) else timedelta(seconds=value)


@dataclass(frozen=True)
class TaskTypePerformance:
    """An agent's track record on one task type. Rates start from priors (README, "Routing"): with no
    outcomes the success rate and quality read 0.7."""

    task_type: str
    success_rate: float
    average_quality: float
    average_latency_ms: float
    task_count: int

    @classmethod
    def from_pb(cls, performance: agent_pb2.TaskTypePerformance) -> TaskTypePerformance:
        return cls(
            task_type=performance.task_type,
            success_rate=performance.success_rate,
            average_quality=performance.average_quality,
            average_latency_ms=performance.average_latency_ms,
            task_count=performance.task_count,
        )


@dataclass(frozen=True)
class PerformanceWindow:
    """An agent's record over the last `length` (5 minutes, 1 hour, 24 hours): raw figures, no prior;
    the rates are 0 when the window holds no outcome."""

    length: timedelta
    task_count: int
    success_rate: float
    average_latency_ms: float
    # Over the outcomes that reported a quality; 0 when none did.
    average_quality: float

    @classmethod
    def from_pb(cls, window: agent_pb2.PerformanceWindow) -> PerformanceWindow:
        return cls(
            length=window.length.ToTimedelta(),
            task_count=window.task_count,
            success_rate=window.success_rate,
            average_latency_ms=window.average_latency_ms,
            average_quality=window.average_quality,
        )


@dataclass(frozen=True)
class AgentInfo:
    """An agent as the registry sees it, with its track record over every task type (success rate and
    quality start from priors; README, "Routing")."""

    id: str
    name: str
    model_family: str
    status: AgentStatus
    task_types: list[str]
    languages: list[str]
    specializations: list[str]
    labels: dict[str, str]
    max_concurrent_tasks: int
    active_tasks: int
    utilization: float
    success_rate: float
    task_count: int
    registered_at: datetime | None
    last_heartbeat_at: datetime | None
    # Over the outcomes that reported a quality; the prior (0.7) while there are none.
    average_quality: float = 0.0
    # 0 until the first outcome.
    average_latency_ms: float = 0.0
    # Every task type the agent offers or has done, by task type.
    by_task_type: list[TaskTypePerformance] = field(default_factory=list)
    # The last 5 minutes, hour and 24 hours, shortest first.
    windows: list[PerformanceWindow] = field(default_factory=list)
    # The last 5 minutes are much worse than the agent's 24 h baseline; `degraded_reason` says how.
    degraded: bool = False
    degraded_reason: str = ""
    # The tenant the agent belongs to (the tenant of the key that registered it).
    tenant: str = ""
    # Assignments it queues beyond max_concurrent_tasks.
    prefetch_tasks: int = 0

    def performance_on(self, task_type: str) -> TaskTypePerformance | None:
        """The agent's record on one task type; None for a type it neither offers nor has done."""
        return next((performance for performance in self.by_task_type if performance.task_type == task_type), None)

    @classmethod
    def from_pb(cls, agent: agent_pb2.Agent) -> AgentInfo:
        capabilities = agent.capabilities
        performance = agent.performance
        return cls(
            id=agent.id,
            name=agent.name,
            model_family=agent.model_family,
            status=AgentStatus(agent.status),
            task_types=list(capabilities.task_types),
            languages=list(capabilities.languages),
            specializations=list(capabilities.specializations),
            labels=dict(capabilities.labels),
            max_concurrent_tasks=agent.max_concurrent_tasks,
            prefetch_tasks=agent.prefetch_tasks,
            active_tasks=agent.load.active_tasks,
            utilization=agent.load.utilization,
            success_rate=performance.success_rate,
            task_count=performance.task_count,
            registered_at=optional_time(agent.registered_at, agent.HasField("registered_at")),
            last_heartbeat_at=optional_time(agent.last_heartbeat_at, agent.HasField("last_heartbeat_at")),
            average_quality=performance.average_quality,
            average_latency_ms=performance.average_latency_ms,
            by_task_type=[TaskTypePerformance.from_pb(each) for each in performance.by_task_type],
            windows=[PerformanceWindow.from_pb(window) for window in performance.windows],
            degraded=performance.degraded,
            degraded_reason=performance.degraded_reason,
            tenant=agent.tenant,
        )


@dataclass(frozen=True)
class Candidate:
    """An agent that could take a task with the asked requirements now (`Client.find_candidates`)."""

    agent: AgentInfo
    # 0..1: 0.25 x language fit + 0.25 x specialization fit + 0.5 x success rate on the task type.
    score: float
    # On the task type, with the prior.
    success_rate: float
    # e.g. "offers code-review with python; success 0.92 over 40 code-review tasks; 25% utilized; match 0.87".
    reason: str

    @classmethod
    def from_pb(cls, candidate: registry_service_pb2.Candidate) -> Candidate:
        return cls(
            agent=AgentInfo.from_pb(candidate.agent),
            score=candidate.score,
            success_rate=candidate.success_rate,
            reason=candidate.reason,
        )


@dataclass(frozen=True)
class RoutingExplanation:
    """Why a task went where it went (`Client.explain_routing`)."""

    # With its current `routing` and, while PENDING, its `pending_reason`.
    task: TaskInfo
    # One per attempt that was assigned, oldest first.
    decisions: list[RoutingDecision]
    # The answering orchestrator's strategy, e.g. `ucb`.
    strategy: str
    # While PENDING: every registered agent that could take it, scored as the strategy would score it
    # now, best first; one that takes no work now scores 0 and says why. Empty otherwise.
    candidates: list[ScoredAgent]

    @classmethod
    def from_pb(cls, response: orchestrator_service_pb2.ExplainRoutingResponse) -> RoutingExplanation:
        return cls(
            task=TaskInfo.from_pb(response.task),
            decisions=[RoutingDecision.from_pb(decision) for decision in response.decisions],
            strategy=strategy_name(response.strategy),
            candidates=[ScoredAgent.from_pb(scored) for scored in response.candidates],
        )


@dataclass(frozen=True)
class TaskCount:
    """How many tasks of one type are in one state, and when the oldest was submitted."""

    task_type: str
    state: TaskState
    count: int
    oldest_created_at: datetime | None

    @classmethod
    def from_pb(cls, count: orchestrator_service_pb2.TaskCount) -> TaskCount:
        return cls(
            task_type=count.task_type,
            state=TaskState(count.state),
            count=count.count,
            oldest_created_at=optional_time(count.oldest_created_at, count.HasField("oldest_created_at")),
        )


@dataclass(frozen=True)
class TaskEvent:
    """One state change of a task: `from_state` is None for the submission itself."""

    time: datetime | None
    from_state: TaskState | None
    to_state: TaskState
    attempt: int
    agent_id: str
    reason: str

    @classmethod
    def from_pb(cls, event: orchestrator_service_pb2.TaskEvent) -> TaskEvent:
        return cls(
            time=optional_time(event.time, event.HasField("time")),
            from_state=TaskState(event.from_state) if event.from_state else None,
            to_state=TaskState(event.to_state),
            attempt=event.attempt,
            agent_id=event.agent_id,
            reason=event.reason,
        )


@dataclass(frozen=True)
class ApiKeyInfo:
    """An API key as AdminService lists it: never its secret."""

    id: str
    prefix: str
    role: str
    tenant: str
    description: str
    created_at: datetime | None
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    rotated_at: datetime | None
    agent_ids: list[str]
    sees_tenant_tasks: bool

    @classmethod
    def from_pb(cls, key: admin_service_pb2.ApiKey) -> ApiKeyInfo:
        return cls(
            id=key.id,
            prefix=key.prefix,
            role=admin_service_pb2.Role.Name(key.role).removeprefix("ROLE_").lower(),
            tenant=key.tenant,
            description=key.description,
            created_at=optional_time(key.created_at, key.HasField("created_at")),
            expires_at=optional_time(key.expires_at, key.HasField("expires_at")),
            last_used_at=optional_time(key.last_used_at, key.HasField("last_used_at")),
            revoked_at=optional_time(key.revoked_at, key.HasField("revoked_at")),
            rotated_at=optional_time(key.rotated_at, key.HasField("rotated_at")),
            agent_ids=list(key.agent_ids),
            sees_tenant_tasks=key.sees_tenant_tasks,
        )


@dataclass(frozen=True)
class CreatedApiKey:
    """A key just created or rotated, with its secret: shown this once, never readable again."""

    key: ApiKeyInfo
    secret: str


@dataclass(frozen=True)
class AuditEventInfo:
    """One audited call: who, what, on which resource, how it ended, from where."""

    at: datetime | None
    tenant: str
    key_id: str
    role: str
    rpc: str
    resource_id: str
    status: str
    message: str
    peer: str
    trace_id: str

    @classmethod
    def from_pb(cls, event: admin_service_pb2.AuditEvent) -> AuditEventInfo:
        return cls(
            at=optional_time(event.at, event.HasField("at")),
            tenant=event.tenant,
            key_id=event.key_id,
            role=event.role,
            rpc=event.rpc,
            resource_id=event.resource_id,
            status=event.status,
            message=event.message,
            peer=event.peer,
            trace_id=event.trace_id,
        )
