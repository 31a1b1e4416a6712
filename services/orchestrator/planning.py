"""One dispatch round, as plain logic: which PENDING work to look at for the agents with free slots, in
what order, and which agent gets each task.

Fairness between task types: work is read per task type (each type up to the free slots that can take
it), and tasks are handed out in priority order and, within a priority, by fair share across types
(start-time fair queuing, `FairShare`), so a type with a huge backlog cannot crowd out another type's
tasks, within a round or across rounds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.orchestrator.domain import AgentProfile, TaskRecord
from services.orchestrator.routing import CandidateAgent, Decision, Router
from shared import tenancy
from shared.matching import PRIOR_SUCCESS_RATE, can_take


@dataclass(slots=True, eq=False)
class FreeAgent:
    """A connected agent that takes work, with what it holds now (updated as the round assigns)."""

    profile: AgentProfile
    held: int
    # Tasks routed to it in this round, by task type: they count as samples already, so one round
    # spreads exploration instead of sending a whole burst to the same agent.
    routed: dict[str, int] = field(default_factory=dict)

    @property
    def free_slots(self) -> int:
        return self.profile.capacity - self.held

    @property
    def utilization(self) -> float:
        return min(1.0, self.held / self.profile.capacity)


@dataclass(frozen=True)
class WorkQuery:
    """PENDING tasks of one tenant and type that a group of that tenant's agents with the same
    capabilities can take, and how many of them the group has free slots for."""

    tenant: str
    task_type: str
    languages: frozenset[str]
    specializations: frozenset[str]
    labels: Mapping[str, str]
    max_tasks: int

    def as_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "task_type": self.task_type,
            "languages": sorted(self.languages),
            "specializations": sorted(self.specializations),
            "labels": dict(self.labels),
            "max_tasks": self.max_tasks,
        }


def work_queries(agents: Iterable[FreeAgent]) -> list[WorkQuery]:
    """One query per (tenant, task type, capabilities) among agents with free slots, asking for as many
    tasks as those agents have free slots together."""
    slots: dict[tuple[str, str, frozenset[str], frozenset[str], frozenset[tuple[str, str]]], int] = defaultdict(int)
    for agent in agents:
        if agent.free_slots <= 0:
            continue
        offered = agent.profile.capabilities
        labels = frozenset(offered.labels.items())
        tenant = tenancy.tenant_of(agent.profile.id)
        for task_type in offered.task_types:
            slots[(tenant, task_type, offered.languages, offered.specializations, labels)] += agent.free_slots
    return [
        WorkQuery(tenant, task_type, languages, specializations, dict(labels), count)
        for (tenant, task_type, languages, specializations, labels), count in sorted(
            slots.items(),
            key=lambda item: (item[0][0], item[0][1], sorted(item[0][2]), sorted(item[0][3]), sorted(item[0][4])),
        )
    ]


class FairShare:
    """Turns between task types, kept across rounds. Each type has a count of tasks handed out; a type
    that was idle starts level with the type served last (the virtual time), so it neither starves nor
    gets a burst to catch up on turns it never needed."""

    def __init__(self) -> None:
        self._turns: dict[str, int] = {}
        self._virtual_time = 0

    def start(self, task_type: str) -> int:
        return max(self._turns.get(task_type, 0), self._virtual_time)

    def served(self, task_type: str) -> None:
        start = self.start(task_type)
        self._virtual_time = start
        self._turns[task_type] = start + 1


def fair_order(tasks: Iterable[TaskRecord], share: FairShare) -> list[TaskRecord]:
    """Highest priority first; within a priority, the type whose turn it is (fewest handed out), so the
    types alternate; within a type, the oldest first."""
    by_age = sorted(tasks, key=lambda task: (-task.priority, task.created_at, task.id))
    rank_in_type: dict[tuple[int, str], int] = defaultdict(int)
    keyed = []
    for task in by_age:
        rank = rank_in_type[(task.priority, task.routing_type)]
        rank_in_type[(task.priority, task.routing_type)] += 1
        keyed.append(((-task.priority, share.start(task.routing_type) + rank, task.created_at, task.id), task))
    keyed.sort(key=lambda item: item[0])
    return [task for _, task in keyed]


RequirementsKey = tuple[str, frozenset[str], frozenset[str], frozenset[tuple[str, str]]]


@dataclass
class _Pool:
    """The connected agents that can take tasks of one (type, requirements), whether or not they have a
    free slot now, and their candidates for that type, index for index."""

    agents: list[FreeAgent]
    candidates: list[CandidateAgent]


class RoutingTable:
    """The connected agents as routing sees them, kept across dispatch rounds so that routing a task
    costs the router's pass and little else: which agents can take each kind of task (rebuilt only when
    an agent comes, goes or changes what it offers) and each agent's candidate per task type (updated
    in place as what it holds and its record change)."""

    def __init__(self) -> None:
        self._agents: dict[str, FreeAgent] = {}
        self._by_type: dict[str, list[FreeAgent]] = {}
        # (agent id, task type) -> its candidate, shared by every pool of that type.
        self._candidates: dict[tuple[str, str], CandidateAgent] = {}
        self._pools: dict[RequirementsKey, _Pool] = {}

    def agents(self) -> Iterable[FreeAgent]:
        return self._agents.values()

    def refresh(self, profiles: Iterable[AgentProfile], held: Mapping[str, int]) -> None:
        """At the start of a round: the agents that take work now, and what each holds."""
        current = {profile.id: profile for profile in profiles}
        if current.keys() != self._agents.keys() or any(
            _offers_differently(self._agents[agent_id].profile, profile)
            for agent_id, profile in current.items()
            if self._agents[agent_id].profile is not profile
        ):
            self._rebuild(current, held)
            return
        for agent_id, profile in current.items():
            agent = self._agents[agent_id]
            holds = held.get(agent_id, 0)
            if agent.profile is profile and agent.held == holds and not agent.routed:
                continue
            agent.profile, agent.held = profile, holds
            agent.routed.clear()
            for task_type in profile.task_types:
                candidate = self._candidates.get((agent_id, task_type))
                if candidate is not None:
                    performance = profile.performance_on(task_type)
                    candidate.utilization = agent.utilization
                    candidate.success_rate = performance.success_rate
                    candidate.samples = performance.samples

    def _rebuild(self, profiles: dict[str, AgentProfile], held: Mapping[str, int]) -> None:
        self._agents = {agent_id: FreeAgent(profile, held.get(agent_id, 0)) for agent_id, profile in profiles.items()}
        self._by_type = defaultdict(list)
        for agent in self._agents.values():
            tenant = tenancy.tenant_of(agent.profile.id)
            for task_type in agent.profile.task_types:
                # Keyed by type within the tenant: another tenant's agents never see the task.
                self._by_type[tenancy.qualify(tenant, task_type)].append(agent)
        self._candidates = {}
        self._pools = {}

    def candidates_for(self, task: TaskRecord) -> tuple[list[CandidateAgent], list[FreeAgent]]:
        """The agents that can take the task and have a free slot now, as candidates and as agents."""
        pool = self._pool(task)
        free = [index for index, candidate in enumerate(pool.candidates) if candidate.utilization < 1.0]
        return [pool.candidates[index] for index in free], [pool.agents[index] for index in free]

    def _pool(self, task: TaskRecord) -> _Pool:
        required = task.routing_requirements
        task_type = task.task_type
        key = (task.routing_type, required.languages, required.specializations, frozenset(required.labels.items()))
        pool = self._pools.get(key)
        if pool is not None:
            return pool
        pool = self._pools[key] = _Pool([], [])
        known = self._candidates
        for agent in self._by_type.get(task.routing_type, ()):
            profile = agent.profile
            if not can_take(profile.capabilities, required):
                continue
            candidate = known.get((profile.id, task_type))
            if candidate is None:
                performance = profile.performance.get(task_type)
                candidate = known[(profile.id, task_type)] = CandidateAgent(
                    profile.id,
                    profile.capabilities,
                    agent.utilization,
                    performance.success_rate if performance else PRIOR_SUCCESS_RATE,
                    (performance.samples if performance else 0) + agent.routed.get(task_type, 0),
                )
            pool.agents.append(agent)
            pool.candidates.append(candidate)
        return pool

    def assigned(self, agent: FreeAgent, task_type: str) -> None:
        """The agent took a task of this type: one slot less, one more sample on the type."""
        agent.held += 1
        agent.routed[task_type] = agent.routed.get(task_type, 0) + 1
        for each_type in agent.profile.task_types:
            candidate = self._candidates.get((agent.profile.id, each_type))
            if candidate is not None:
                candidate.utilization = agent.utilization
                if each_type == task_type:
                    candidate.samples += 1


def _offers_differently(before: AgentProfile, after: AgentProfile) -> bool:
    return (
        before.capabilities != after.capabilities
        or before.max_concurrent_tasks != after.max_concurrent_tasks
        or before.prefetch_tasks != after.prefetch_tasks
    )


def plan_assignments(
    tasks: Iterable[TaskRecord],
    table: RoutingTable,
    router: Router,
    outcomes_of_type: Callable[[str], int],
    share: FairShare,
) -> list[tuple[TaskRecord, Decision]]:
    """For each task in fair order, the router's pick among the agents that can take it and still have a
    free slot; a task no such agent can take is left out (it stays PENDING)."""
    routed_in_round: dict[str, int] = defaultdict(int)
    planned: list[tuple[TaskRecord, Decision]] = []
    for task in fair_order(tasks, share):
        candidates, agents = table.candidates_for(task)
        if not candidates:
            continue
        decision = router.choose(
            task.routing_requirements, candidates, outcomes_of_type(task.task_type) + routed_in_round[task.task_type]
        )
        chosen = next(agent for agent in agents if agent.profile.id == decision.agent_id)
        table.assigned(chosen, task.task_type)
        routed_in_round[task.task_type] += 1
        share.served(task.routing_type)
        planned.append((task, decision))
    return planned


def more_work_may_wait(limit_reached: bool, table: RoutingTable) -> bool:
    """After a round: whether to run another at once. Only if some query found as many tasks as it asked
    for (more may be PENDING) and an agent still has a free slot (e.g. the tasks went to others, or rows
    another orchestrator had locked were skipped). Otherwise the next round waits for news (a completion,
    a new task), which wakes the dispatcher: running again at once would find nothing new."""
    return limit_reached and any(agent.free_slots > 0 for agent in table.agents())
