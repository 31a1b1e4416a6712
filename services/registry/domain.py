"""Agents as the registry sees them: what an agent may say about itself, its track record, when it
counts as degraded, and how candidates for a task are ranked."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from shared import matching, tenancy, validation
from shared.errors import InvalidArgument

# The documented limits live in shared/validation.py (README, "Limits").
MAX_CONCURRENT_TASKS_LIMIT = validation.MAX_CONCURRENT_TASKS


class AgentStatus(StrEnum):
    ONLINE = "online"
    BUSY = "busy"
    DRAINING = "draining"
    UNHEALTHY = "unhealthy"
    OFFLINE = "offline"


# UNHEALTHY and OFFLINE are the registry's judgement, never the agent's own claim.
SELF_REPORTED_STATUSES = frozenset({AgentStatus.ONLINE, AgentStatus.BUSY, AgentStatus.DRAINING})


# An agent silent for this many heartbeat intervals is UNHEALTHY; for twice as many, OFFLINE (the
# orchestrators then release what it holds).
UNHEALTHY_AFTER_INTERVALS = 3
OFFLINE_AFTER_INTERVALS = 6


@dataclass(frozen=True)
class Silence:
    """How long without a heartbeat, in seconds, makes an agent UNHEALTHY and then OFFLINE."""

    unhealthy_after: float
    offline_after: float

    @classmethod
    def for_interval(cls, heartbeat_interval_seconds: float) -> Silence:
        return cls(
            UNHEALTHY_AFTER_INTERVALS * heartbeat_interval_seconds, OFFLINE_AFTER_INTERVALS * heartbeat_interval_seconds
        )


@dataclass(frozen=True)
class AgentRegistration:
    id: str
    name: str
    model_family: str
    task_types: list[str]
    languages: list[str]
    specializations: list[str]
    labels: dict[str, str]
    max_concurrent_tasks: int
    # Assignments it queues beyond max_concurrent_tasks.
    prefetch_tasks: int = 0


@dataclass(frozen=True)
class OutcomeTotals:
    """Sums over a set of outcomes (one task type's, one window's); rates are derived when read."""

    outcomes: int = 0
    successes: int = 0
    quality_sum: float = 0.0
    quality_count: int = 0
    latency_ms_sum: float = 0.0

    def __add__(self, other: OutcomeTotals) -> OutcomeTotals:
        return OutcomeTotals(
            self.outcomes + other.outcomes,
            self.successes + other.successes,
            self.quality_sum + other.quality_sum,
            self.quality_count + other.quality_count,
            self.latency_ms_sum + other.latency_ms_sum,
        )

    @property
    def success_rate_with_prior(self) -> float:
        return matching.success_rate_with_prior(self.successes, self.outcomes)

    @property
    def quality_with_prior(self) -> float:
        return matching.quality_with_prior(self.quality_sum, self.quality_count)

    @property
    def success_rate(self) -> float:
        """Raw: successes / outcomes; 0 with no outcomes."""
        return self.successes / self.outcomes if self.outcomes else 0.0

    @property
    def average_quality(self) -> float:
        """Raw: over the outcomes that reported a quality; 0 when none did."""
        return self.quality_sum / self.quality_count if self.quality_count else 0.0

    @property
    def average_latency_ms(self) -> float:
        return self.latency_ms_sum / self.outcomes if self.outcomes else 0.0


# The windows every full agent read reports, shortest first.
PERFORMANCE_WINDOWS = (timedelta(minutes=5), timedelta(hours=1), timedelta(hours=24))


@dataclass(frozen=True)
class WindowTotals:
    length: timedelta
    totals: OutcomeTotals


@dataclass(frozen=True)
class AgentRecord:
    registration: AgentRegistration
    status: AgentStatus
    active_tasks: int
    registered_at: datetime
    last_heartbeat_at: datetime
    # Only task types the agent has outcomes for; see totals_by_offered_task_type.
    totals_by_task_type: Mapping[str, OutcomeTotals] = field(default_factory=dict)
    # PERFORMANCE_WINDOWS in order; empty when the read left them out (the WatchAgents feed does).
    windows: tuple[WindowTotals, ...] = ()
    degraded: bool = False
    degraded_reason: str = ""

    @property
    def utilization(self) -> float:
        return min(1.0, self.active_tasks / self.registration.max_concurrent_tasks)

    @property
    def overall(self) -> OutcomeTotals:
        return sum(self.totals_by_task_type.values(), OutcomeTotals())

    def totals_on(self, task_type: str) -> OutcomeTotals:
        return self.totals_by_task_type.get(task_type, OutcomeTotals())

    def totals_by_offered_task_type(self) -> list[tuple[str, OutcomeTotals]]:
        """Every task type the agent offers (empty totals when it has none) and every one it has history
        for, by task type: readers need no priors of their own."""
        task_types = set(self.registration.task_types) | set(self.totals_by_task_type)
        return [(task_type, self.totals_on(task_type)) for task_type in sorted(task_types)]


@dataclass(frozen=True)
class Heartbeat:
    agent_id: str
    active_tasks: int
    status: AgentStatus


def validate_registration(
    agent_id: str,
    name: str,
    model_family: str,
    task_types: list[str],
    languages: list[str],
    specializations: list[str],
    labels: dict[str, str],
    max_concurrent_tasks: int,
    prefetch_tasks: int = 0,
) -> AgentRegistration:
    """Checks what an agent sends to register; 0 concurrency means 1."""
    checked_task_types = validation.names("agent.capabilities.task_types", task_types)
    if not checked_task_types:
        raise InvalidArgument("agent.capabilities.task_types", "list at least one task type the agent handles")
    concurrency = max_concurrent_tasks or 1
    if not 1 <= concurrency <= MAX_CONCURRENT_TASKS_LIMIT:
        raise InvalidArgument(
            "agent.max_concurrent_tasks",
            f"must be between 1 and {MAX_CONCURRENT_TASKS_LIMIT}; got {max_concurrent_tasks}",
        )
    if not 0 <= prefetch_tasks <= validation.MAX_PREFETCH_TASKS:
        raise InvalidArgument(
            "agent.prefetch_tasks", f"must be between 0 and {validation.MAX_PREFETCH_TASKS}; got {prefetch_tasks}"
        )
    return AgentRegistration(
        id=validation.agent_id("agent.id", agent_id),
        name=validation.name("agent.name", name, required=False),
        model_family=validation.name("agent.model_family", model_family, required=False),
        task_types=checked_task_types,
        languages=validation.names("agent.capabilities.languages", languages),
        specializations=validation.names("agent.capabilities.specializations", specializations),
        labels=validation.labels("agent.capabilities.labels", labels),
        max_concurrent_tasks=concurrency,
        prefetch_tasks=prefetch_tasks,
    )


def validate_heartbeat(agent_id: str, active_tasks: int, status: AgentStatus | None) -> Heartbeat:
    """Checks a heartbeat; no status means ONLINE."""
    if not 0 <= active_tasks <= validation.MAX_ACTIVE_TASKS:
        raise InvalidArgument(
            "active_tasks", f"must be between 0 and {validation.MAX_ACTIVE_TASKS}; got {active_tasks}"
        )
    reported = status or AgentStatus.ONLINE
    if reported not in SELF_REPORTED_STATUSES:
        raise InvalidArgument(
            "status",
            f"an agent may report ONLINE, BUSY or DRAINING, not {reported.name}; "
            "UNHEALTHY and OFFLINE are set by the registry",
        )
    return Heartbeat(validation.agent_id("agent_id", agent_id), active_tasks, reported)


# ---- Outcomes ----

MAX_OUTCOMES_PER_BATCH = validation.MAX_OUTCOMES_PER_BATCH


@dataclass(frozen=True)
class Outcome:
    """How one finished attempt went."""

    agent_id: str
    task_type: str
    success: bool
    latency_ms: float
    quality: float | None


@dataclass(frozen=True)
class RecordedOutcomes:
    recorded: int
    # Sorted, each once.
    unknown_agent_ids: list[str]


def validate_outcome(
    field_prefix: str, agent_id: str, task_type: str, success: bool, latency_ms: float, quality: float | None
) -> Outcome:
    """Checks one outcome; `field_prefix` is "" for RecordOutcome and e.g. "outcomes[3]." in a batch."""
    if not 0 <= latency_ms <= validation.MAX_LATENCY_MS:  # also rejects NaN
        raise InvalidArgument(
            f"{field_prefix}latency_ms", f"must be between 0 and {validation.MAX_LATENCY_MS}; got {latency_ms}"
        )
    if quality is not None and not (math.isfinite(quality) and 0 <= quality <= 1):
        raise InvalidArgument(f"{field_prefix}quality", f"must be from 0 to 1, or unset; got {quality}")
    return Outcome(
        agent_id=validation.agent_id(f"{field_prefix}agent_id", agent_id),
        task_type=validation.name(f"{field_prefix}task_type", task_type, required=True),
        success=success,
        latency_ms=latency_ms,
        quality=quality,
    )


def validate_outcome_batch_size(count: int) -> None:
    if not 1 <= count <= MAX_OUTCOMES_PER_BATCH:
        raise InvalidArgument("outcomes", f"must hold 1 to {MAX_OUTCOMES_PER_BATCH} outcomes; got {count}")


# ---- Degradation ----

# The recent window the degradation check looks at, and the baseline before it.
RECENT_WINDOW = timedelta(minutes=5)
BASELINE_WINDOW = timedelta(hours=24)
# Degraded when recent latency is at least this many times the baseline's...
LATENCY_DEGRADATION_FACTOR = 3.0
# ...or the recent success rate at most this share of the baseline's (down by a quarter).
SUCCESS_DEGRADATION_FACTOR = 0.75


@dataclass(frozen=True)
class Degradation:
    degraded: bool
    reason: str = ""


NOT_DEGRADED = Degradation(False)


def judge_degradation(recent: OutcomeTotals, baseline: OutcomeTotals, min_outcomes: int) -> Degradation:
    """Degraded when the last 5 minutes are much worse than the 24 h before them: latency tripled or the
    success rate down by a quarter. Needs `min_outcomes` in both, so a few unlucky attempts flag nobody.
    A baseline of 0 ms or 0 successes gives nothing to compare against, so it flags nothing."""
    if recent.outcomes < min_outcomes or baseline.outcomes < min_outcomes:
        return NOT_DEGRADED
    reasons: list[str] = []
    if baseline.average_latency_ms > 0 and (
        recent.average_latency_ms >= LATENCY_DEGRADATION_FACTOR * baseline.average_latency_ms
    ):
        reasons.append(
            f"average latency {recent.average_latency_ms:.0f} ms in the last 5 min "
            f"against {baseline.average_latency_ms:.0f} ms over the 24 h before"
        )
    if baseline.success_rate > 0 and recent.success_rate <= SUCCESS_DEGRADATION_FACTOR * baseline.success_rate:
        reasons.append(
            f"success rate {recent.success_rate:.2f} in the last 5 min "
            f"against {baseline.success_rate:.2f} over the 24 h before"
        )
    return Degradation(True, "; ".join(reasons)) if reasons else NOT_DEGRADED


# ---- Candidates ----

DEFAULT_CANDIDATE_LIMIT = validation.DEFAULT_CANDIDATE_LIMIT
MAX_CANDIDATE_LIMIT = validation.MAX_CANDIDATE_LIMIT


@dataclass(frozen=True)
class CandidateQuery:
    requirements: matching.Requirements
    max_utilization: float
    min_success_rate: float
    limit: int


@dataclass(frozen=True)
class Candidate:
    agent: AgentRecord
    score: float
    # On the task type, with the prior.
    success_rate: float
    reason: str


def validate_candidate_query(
    task_type: str,
    languages: Sequence[str],
    specializations: Sequence[str],
    labels: Mapping[str, str],
    max_utilization: float | None,
    min_success_rate: float,
    limit: int,
) -> CandidateQuery:
    """Checks a FindCandidates request; no max_utilization means 1, a limit of 0 means 10."""
    utilization = 1.0 if max_utilization is None else max_utilization
    if not 0 <= utilization <= 1:
        raise InvalidArgument("max_utilization", f"must be from 0 to 1, or unset for 1; got {max_utilization}")
    if not 0 <= min_success_rate <= 1:
        raise InvalidArgument("min_success_rate", f"must be from 0 to 1; got {min_success_rate}")
    return CandidateQuery(
        requirements=matching.Requirements(
            task_type=validation.name("task_type", task_type, required=True),
            languages=frozenset(validation.names("languages", languages)),
            specializations=frozenset(validation.names("specializations", specializations)),
            labels=validation.labels("labels", labels),
        ),
        max_utilization=utilization,
        min_success_rate=min_success_rate,
        limit=validation.page_size("limit", limit, default=DEFAULT_CANDIDATE_LIMIT, maximum=MAX_CANDIDATE_LIMIT),
    )


def capabilities_of(registration: AgentRegistration) -> matching.Capabilities:
    return matching.Capabilities(
        task_types=frozenset(registration.task_types),
        languages=frozenset(registration.languages),
        specializations=frozenset(registration.specializations),
        labels=registration.labels,
    )


def rank_candidates(query: CandidateQuery, agents: Iterable[AgentRecord]) -> list[Candidate]:
    """Of agents that already meet the requirements, status and utilization limit: those whose success
    rate on the task type reaches the minimum, best first (success rate, then match score, then lower
    utilization, then id), at most `query.limit`."""
    candidates = []
    for agent in agents:
        totals = agent.totals_on(query.requirements.task_type)
        success_rate = totals.success_rate_with_prior
        if success_rate < query.min_success_rate:
            continue
        score = matching.match_score(capabilities_of(agent.registration), query.requirements, success_rate)
        candidates.append(
            Candidate(agent, score, success_rate, _candidate_reason(query.requirements, agent, totals, score))
        )
    candidates.sort(
        key=lambda candidate: (
            -candidate.success_rate,
            -candidate.score,
            candidate.agent.utilization,
            candidate.agent.registration.id,
        )
    )
    return candidates[: query.limit]


def _candidate_reason(required: matching.Requirements, agent: AgentRecord, totals: OutcomeTotals, score: float) -> str:
    """e.g. "offers code-review with python; success 0.92 over 40 code-review tasks; 25% utilized; match 0.87"."""
    asked = [
        *sorted(required.languages),
        *sorted(required.specializations),
        *(f"{key}={value}" for key, value in sorted(required.labels.items())),
    ]
    offers = f"offers {required.task_type}" + (f" with {', '.join(asked)}" if asked else "")
    if totals.outcomes:
        tasks = "task" if totals.outcomes == 1 else "tasks"
        record = f"success {totals.success_rate_with_prior:.2f} over {totals.outcomes} {required.task_type} {tasks}"
    else:
        record = f"success {totals.success_rate_with_prior:.2f} (prior; no {required.task_type} tasks yet)"
    return f"{offers}; {record}; {agent.utilization:.0%} utilized; match {score:.2f}"


# ---- The WatchAgents feed ----


@dataclass(frozen=True)
class AgentChanges:
    """One WatchAgents message: agents added or changed (whole), agents removed."""

    upserted: tuple[AgentRecord, ...] = ()
    removed_ids: tuple[str, ...] = ()
    snapshot_complete: bool = False

    def of_tenant(self, tenant: str) -> AgentChanges:
        """Only what concerns one tenant's agents."""
        return AgentChanges(
            tuple(record for record in self.upserted if tenancy.tenant_of(record.registration.id) == tenant),
            tuple(agent_id for agent_id in self.removed_ids if tenancy.tenant_of(agent_id) == tenant),
            self.snapshot_complete,
        )
