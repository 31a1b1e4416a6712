"""The registry's Prometheus metrics, defined and updated here; every process serves them with the gRPC
and database ones at ARBITER_METRICS_ADDR (shared/metrics.py)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from services.registry.domain import AgentStatus

# Set from a registry-wide count after every degradation check, so every registry process reports the
# same figure.
AGENTS_DEGRADED = Gauge("arbiter_agents_degraded", "Agents currently flagged as degraded.")
# Counts transitions from not degraded to degraded seen by this process.
AGENT_DEGRADATIONS = Counter("arbiter_agent_degradations", "Times an agent became degraded.")
# Read from the database (every tenant) by every registry process: the same figure in each replica.
AGENTS_BY_STATUS = Gauge(
    "arbiter_agents", "Registered agents by status (UNHEALTHY and OFFLINE from silence).", ["status"]
)


def record_agents_by_status(counts: dict[AgentStatus, int]) -> None:
    for status in AgentStatus:
        AGENTS_BY_STATUS.labels(status.name).set(counts.get(status, 0))
