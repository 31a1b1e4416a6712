"""The registry's Prometheus metrics (defined and updated here; served over HTTP by a later issue)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

# Set from a registry-wide count after every degradation check, so every registry process reports the
# same figure.
AGENTS_DEGRADED = Gauge("arbiter_agents_degraded", "Agents currently flagged as degraded.")
# Counts transitions from not degraded to degraded seen by this process.
AGENT_DEGRADATIONS = Counter("arbiter_agent_degradations", "Times an agent became degraded.")
