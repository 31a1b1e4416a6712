"""The orchestrator's Prometheus metrics, defined and updated here; every process serves them with the gRPC
and database ones at ARBITER_METRICS_ADDR (shared/metrics.py). Counters and histograms count what this
process did (sum them over replicas); the task gauges are read from the database by every replica (take
the max)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from prometheus_client import Counter, Gauge, Histogram

from services.orchestrator.domain import TaskCount, TaskRecord, TaskState

# From 1 ms (a task handed to a waiting agent) to 10 minutes (a backlog).
_WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

TASKS = Gauge(
    "arbiter_tasks", "Tasks of every tenant by type and state, read from the database.", ["task_type", "state"]
)
QUEUE_DEPTH = Gauge("arbiter_queue_depth", "PENDING tasks by type, read from the database.", ["task_type"])
OLDEST_PENDING_AGE = Gauge(
    "arbiter_queue_oldest_pending_age_seconds",
    "Seconds since the oldest PENDING task of the type was submitted, read from the database.",
    ["task_type"],
)
SCHEDULE_TO_START = Histogram(
    "arbiter_schedule_to_start_seconds",
    "From a task's submission to its first assignment to an agent, in seconds.",
    buckets=_WAIT_BUCKETS,
)
ASSIGNMENTS = Counter("arbiter_assignments", "Attempts assigned to agents.", ["task_type"])
LEASE_EXPIRIES = Counter("arbiter_lease_expiries", "Attempts taken back because their lease ran out.")
RETRIES = Counter("arbiter_retries", "Attempts that ended with their task PENDING again for another attempt.")
DEAD_LETTERS = Counter(
    "arbiter_dead_letters", "Tasks that ended FAILED: no attempts left or a permanent failure.", ["task_type"]
)
CONNECTED_AGENTS = Gauge("arbiter_connected_agents", "Agents with an assignment stream open to this orchestrator.")
ROUTING_SECONDS = Histogram(
    "arbiter_routing_decision_seconds",
    "Time to route one dispatch round's tasks to agents (every decision of the round), in seconds.",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)


def record_task_counts(counts: Iterable[TaskCount], now: datetime) -> None:
    """Replaces the task gauges with a fresh count (types that have no tasks any more disappear)."""
    TASKS.clear()
    QUEUE_DEPTH.clear()
    OLDEST_PENDING_AGE.clear()
    for count in counts:
        TASKS.labels(count.task_type, count.state.name).set(count.count)
        if count.state == TaskState.PENDING:
            QUEUE_DEPTH.labels(count.task_type).set(count.count)
            OLDEST_PENDING_AGE.labels(count.task_type).set(max(0.0, (now - count.oldest_created_at).total_seconds()))


def record_assignments(tasks: Iterable[TaskRecord]) -> None:
    for task in tasks:
        ASSIGNMENTS.labels(task.task_type).inc()
        if task.attempt == 1 and task.assigned_at is not None:
            SCHEDULE_TO_START.observe(max(0.0, (task.assigned_at - task.created_at).total_seconds()))


def record_attempt_ends(ended: Iterable[TaskRecord]) -> None:
    """Attempts that ended without completing: retried (PENDING again) or dead-lettered (FAILED)."""
    for task in ended:
        if task.state == TaskState.PENDING:
            RETRIES.inc()
        elif task.state == TaskState.FAILED:
            DEAD_LETTERS.labels(task.task_type).inc()
