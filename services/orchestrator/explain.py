"""Why a task waits, and how the agents that could take it score: what users see in Task.pending_reason
and ExplainRouting, computed from the live view of agents (no database, no registry call)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from services.orchestrator.domain import AgentProfile, TaskRecord, TaskState
from services.orchestrator.routing import CandidateAgent, Router, ScoredAgent
from shared import tenancy
from shared.matching import Requirements, can_take, unmet_requirement

# How many agents a message names before saying "and N more".
NAMED_AGENTS = 5


def _named(agents: list[AgentProfile], describe: str) -> str:
    names = [f"'{tenancy.plain(agent.id)}' ({describe.format(agent=agent)})" for agent in agents[:NAMED_AGENTS]]
    if len(agents) > NAMED_AGENTS:
        names.append(f"and {len(agents) - NAMED_AGENTS} more")
    return ", ".join(names)


class PendingReasons:
    """Why PENDING tasks wait, for many tasks at once (a page of ListTasks): tasks that ask for the same
    things share one reason, so the fleet is scanned once per kind of task, not once per task."""

    def __init__(self, fleet: Collection[AgentProfile], now: datetime) -> None:
        self._fleets: dict[str, list[AgentProfile]] = {}
        for agent in fleet:
            self._fleets.setdefault(tenancy.tenant_of(agent.id), []).append(agent)
        self._now = now
        self._by_requirements: dict[
            tuple[str, str, frozenset[str], frozenset[str], frozenset[tuple[str, str]]], str
        ] = {}

    def of(self, task: TaskRecord) -> str:
        """Why the task is still waiting; empty unless it is PENDING."""
        if task.state != TaskState.PENDING:
            return ""
        if task.not_before is not None and task.not_before > self._now:
            return (
                f"waiting out the retry backoff until {task.not_before.isoformat(timespec='seconds')} "
                f"before attempt {task.attempt}"
            )
        required = task.routing_requirements
        key = (
            task.tenant,
            required.task_type,
            required.languages,
            required.specializations,
            frozenset(required.labels.items()),
        )
        if key not in self._by_requirements:
            # Only the task's own tenant's agents can take it, or be named.
            self._by_requirements[key] = _why_waiting(required, self._fleets.get(task.tenant, []))
        return self._by_requirements[key]


def _why_waiting(required: Requirements, fleet: Collection[AgentProfile]) -> str:
    unmet = unmet_requirement(required, [agent.capabilities for agent in fleet])
    if unmet is not None:
        return f"no registered agent offers {unmet}"
    working = [agent for agent in fleet if agent.accepts_work]
    unmet = unmet_requirement(required, [agent.capabilities for agent in working])
    capable = sorted((agent for agent in fleet if can_take(agent.capabilities, required)), key=lambda a: a.id)
    if unmet is not None:
        return f"no ONLINE agent offers {unmet}; the capable agents are {_named(capable, '{agent.status}')}"
    capable_working = [agent for agent in capable if agent.accepts_work]
    if all(agent.active_tasks >= agent.capacity for agent in capable_working):
        return f"waiting for a free slot: the {len(capable_working)} capable agent(s) are at capacity: " + _named(
            capable_working, "{agent.active_tasks}/{agent.capacity}"
        )
    return (
        f"waiting for one of {len(capable_working)} capable agent(s) with a free slot to take it on its "
        "assignment stream: " + _named(capable_working, "{agent.status}")
    )


def candidate(agent: AgentProfile, task_type: str) -> CandidateAgent:
    """The agent as routing sees it, with its utilization from its last heartbeat."""
    performance = agent.performance_on(task_type)
    return CandidateAgent(
        agent_id=agent.id,
        capabilities=agent.capabilities,
        utilization=min(1.0, agent.active_tasks / agent.capacity),
        success_rate=performance.success_rate,
        samples=performance.samples,
    )


def scored_candidates(
    task: TaskRecord, fleet: Collection[AgentProfile], router: Router, type_outcomes: int
) -> list[ScoredAgent]:
    """Every agent that can take the task: those taking work scored by the strategy, best first, then
    those that cannot take work now, with why."""
    required = task.routing_requirements
    capable = sorted(
        (
            agent
            for agent in fleet
            if tenancy.tenant_of(agent.id) == task.tenant and can_take(agent.capabilities, required)
        ),
        key=lambda a: a.id,
    )
    taking = [candidate(agent, task.task_type) for agent in capable if agent.accepts_work]
    ranked = router.rank(required, taking, type_outcomes) if taking else []
    idle = [
        ScoredAgent(agent.id, 0.0, f"takes no work while {agent.status}") for agent in capable if not agent.accepts_work
    ]
    return ranked + idle
