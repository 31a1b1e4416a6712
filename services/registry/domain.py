"""Agents as the registry sees them, and the rules for what an agent may say about itself."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from shared import validation
from shared.errors import InvalidArgument

MAX_CONCURRENT_TASKS_LIMIT = 1000


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


@dataclass(frozen=True)
class AgentRecord:
    registration: AgentRegistration
    status: AgentStatus
    active_tasks: int
    success_rate: float
    average_quality: float
    average_latency_ms: float
    task_count: int
    registered_at: datetime
    last_heartbeat_at: datetime

    @property
    def utilization(self) -> float:
        return min(1.0, self.active_tasks / self.registration.max_concurrent_tasks)


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
    return AgentRegistration(
        id=validation.agent_id("agent.id", agent_id),
        name=validation.name("agent.name", name, required=False),
        model_family=validation.name("agent.model_family", model_family, required=False),
        task_types=checked_task_types,
        languages=validation.names("agent.capabilities.languages", languages),
        specializations=validation.names("agent.capabilities.specializations", specializations),
        labels=validation.labels("agent.capabilities.labels", labels),
        max_concurrent_tasks=concurrency,
    )


def validate_heartbeat(agent_id: str, active_tasks: int, status: AgentStatus | None) -> Heartbeat:
    """Checks a heartbeat; no status means ONLINE."""
    if active_tasks < 0:
        raise InvalidArgument("active_tasks", f"must be 0 or more; got {active_tasks}")
    reported = status or AgentStatus.ONLINE
    if reported not in SELF_REPORTED_STATUSES:
        raise InvalidArgument(
            "status",
            f"an agent may report ONLINE, BUSY or DRAINING, not {reported.name}; "
            "UNHEALTHY and OFFLINE are set by the registry",
        )
    return Heartbeat(validation.agent_id("agent_id", agent_id), active_tasks, reported)
