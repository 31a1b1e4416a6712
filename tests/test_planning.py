"""The dispatcher's round as plain logic (services/orchestrator/planning.py): requirements and free
slots are always respected, whatever the agents and tasks, and task types take turns."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services.orchestrator.domain import AgentProfile, TaskRecord, TaskRequirements, TaskState, TypePerformance
from services.orchestrator.planning import (
    FairShare,
    FreeAgent,
    RoutingTable,
    fair_order,
    more_work_may_wait,
    plan_assignments,
    work_queries,
)
from services.orchestrator.routing import Router, RoutingSettings, Strategy
from shared.matching import can_take

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
TASK_TYPES = ["review", "build", "test"]
LANGUAGES = ["python", "rust", "go"]
SPECIALIZATIONS = ["security", "perf"]
LABELS = [("gpu", "a100"), ("gpu", "h100"), ("zone", "eu")]


def task(number: int, task_type: str = "review", priority: int = 0, **requirements: Any) -> TaskRecord:
    return TaskRecord(
        id=f"00000000-0000-0000-0000-{number:012d}",
        task_type=task_type,
        state=TaskState.PENDING,
        payload={},
        result=None,
        error="",
        priority=priority,
        requirements=TaskRequirements(**requirements),
        attempt=1,
        max_attempts=3,
        timeout_ms=None,
        idempotency_key=None,
        assigned_agent_id=None,
        progress=0.0,
        progress_message="",
        lease_expires_at=None,
        created_at=EPOCH + timedelta(seconds=number),
        updated_at=EPOCH,
    )


def agent(
    agent_id: str, *, held: int = 0, max_concurrent_tasks: int = 1, prefetch_tasks: int = 0, **capabilities: Any
) -> FreeAgent:
    capabilities.setdefault("task_types", ["review"])
    capabilities.setdefault("languages", [])
    capabilities.setdefault("specializations", [])
    capabilities.setdefault("labels", {})
    performance = {task_type: TypePerformance(0.7, 0) for task_type in capabilities["task_types"]}
    profile = AgentProfile(
        id=agent_id,
        max_concurrent_tasks=max_concurrent_tasks,
        prefetch_tasks=prefetch_tasks,
        accepts_work=True,
        performance=performance,
        **capabilities,
    )
    return FreeAgent(profile, held)


def router(strategy: Strategy = Strategy.UCB, seed: int = 1) -> Router:
    return Router(RoutingSettings(strategy), random.Random(seed))


def table_of(agents: list[FreeAgent]) -> RoutingTable:
    table = RoutingTable()
    table.refresh([agent.profile for agent in agents], {agent.profile.id: agent.held for agent in agents})
    return table


def plan(tasks: list[TaskRecord], agents: list[FreeAgent], strategy: Strategy = Strategy.UCB) -> dict[str, str]:
    planned = plan_assignments(tasks, table_of(agents), router(strategy), lambda task_type: 0, FairShare())
    return {task.id: decision.agent_id for task, decision in planned}


def test_a_task_goes_only_to_an_agent_with_every_requirement() -> None:
    agents = [
        agent("py", languages=["python"]),
        agent("rust", languages=["rust"]),
        agent("gpu", languages=["python"], labels={"gpu": "a100"}),
    ]
    tasks = [task(1, languages=["rust"]), task(2, labels={"gpu": "a100"}), task(3, languages=["go"])]
    assert plan(tasks, agents) == {tasks[0].id: "rust", tasks[1].id: "gpu"}


def test_an_agent_gets_no_more_than_its_free_slots() -> None:
    agents = [agent("a", held=2, max_concurrent_tasks=3), agent("full", held=2, max_concurrent_tasks=2)]
    assignments = plan([task(number) for number in range(5)], agents)
    assert list(assignments.values()) == ["a"]


def test_an_agent_with_prefetch_gets_its_free_slots_and_its_queue_and_no_more() -> None:
    agents = [agent("prefetching", held=1, max_concurrent_tasks=2, prefetch_tasks=3)]
    assignments = plan([task(number) for number in range(10)], agents)
    assert list(assignments.values()) == ["prefetching"] * 4
    queries = work_queries(table_of(agents).agents())
    assert [query.max_tasks for query in queries] == [4]


def test_work_is_read_per_task_type_and_capabilities_for_the_free_slots() -> None:
    agents = [
        agent("a", max_concurrent_tasks=3, task_types=["review", "build"], languages=["python"]),
        agent("b", max_concurrent_tasks=2, held=1, task_types=["review"], languages=["python"]),
        agent("full", held=1, task_types=["test"]),
    ]
    queries = {(query.task_type, tuple(sorted(query.languages)), query.max_tasks) for query in work_queries(agents)}
    assert queries == {("build", ("python",), 3), ("review", ("python",), 4)}


def test_types_take_turns_within_a_priority_and_priority_comes_first() -> None:
    share = FairShare()
    tasks = [task(number, "bulk") for number in range(4)] + [task(10 + number, "quick") for number in range(2)]
    tasks.append(task(20, "late", priority=5))
    order = [each.task_type for each in fair_order(tasks, share)]
    assert order == ["late", "bulk", "quick", "bulk", "quick", "bulk", "bulk"]


def test_turns_carry_over_between_rounds_and_an_idle_type_does_not_catch_up_in_a_burst() -> None:
    share = FairShare()
    for _ in range(1000):
        share.served("default/bulk")
    # One slot per round, a backlog of both: the types alternate.
    served = []
    for number in range(6):
        first = fair_order([task(number, "bulk"), task(100 + number, "quick")], share)[0]
        share.served(first.routing_type)
        served.append(first.task_type)
    assert served.count("quick") == 3 and served.count("bulk") == 3


requirements = st.fixed_dictionaries(
    {
        "languages": st.lists(st.sampled_from(LANGUAGES), max_size=2, unique=True),
        "specializations": st.lists(st.sampled_from(SPECIALIZATIONS), max_size=1, unique=True),
        "labels": st.dictionaries(
            st.sampled_from([key for key, _ in LABELS]), st.sampled_from(["a100", "h100", "eu"]), max_size=1
        ),
    }
)
fleets = st.lists(
    st.fixed_dictionaries(
        {
            "task_types": st.lists(st.sampled_from(TASK_TYPES), min_size=1, max_size=3, unique=True),
            "languages": st.lists(st.sampled_from(LANGUAGES), max_size=3, unique=True),
            "specializations": st.lists(st.sampled_from(SPECIALIZATIONS), max_size=2, unique=True),
            "labels": st.dictionaries(
                st.sampled_from(["gpu", "zone"]), st.sampled_from(["a100", "h100", "eu"]), max_size=2
            ),
            "max_concurrent_tasks": st.integers(1, 3),
            "held": st.integers(0, 3),
        }
    ),
    min_size=0,
    max_size=8,
)
workloads = st.lists(st.tuples(st.sampled_from(TASK_TYPES), st.integers(-1, 1), requirements), max_size=25)


@settings(max_examples=300, deadline=None)
@given(fleet=fleets, work=workloads, strategy=st.sampled_from(list(Strategy)), seed=st.integers(0, 2**16))
def test_requirements_and_free_slots_are_always_respected(
    fleet: list[dict[str, Any]], work: list[tuple[str, int, dict[str, Any]]], strategy: Strategy, seed: int
) -> None:
    agents = []
    for index, spec in enumerate(fleet):
        spec = dict(spec)
        held = min(spec.pop("held"), spec["max_concurrent_tasks"])
        agents.append(agent(f"agent-{index}", held=held, **spec))
    free_before = {each.profile.id: each.free_slots for each in agents}
    profiles = {each.profile.id: each.profile for each in agents}
    tasks = [
        task(number, task_type, priority, **required) for number, (task_type, priority, required) in enumerate(work)
    ]
    table = table_of(agents)
    planned = plan_assignments(tasks, table, router(strategy, seed), lambda task_type: 0, FairShare())

    given_to: dict[str, int] = {}
    for each, decision in planned:
        assert can_take(profiles[decision.agent_id].capabilities, each.routing_requirements)
        given_to[decision.agent_id] = given_to.get(decision.agent_id, 0) + 1
    for agent_id, count in given_to.items():
        assert count <= free_before[agent_id]
    # Nothing that could have been placed was left out: every task left over has no capable agent with
    # a free slot once the round is done.
    placed = {each.id for each, _ in planned}
    for each in tasks:
        if each.id not in placed:
            assert not any(
                free.free_slots > 0 and can_take(free.profile.capabilities, each.routing_requirements)
                for free in table.agents()
            )


def test_the_table_keeps_candidates_between_rounds_and_follows_what_agents_hold() -> None:
    agents = [agent("a", max_concurrent_tasks=2), agent("b", max_concurrent_tasks=2)]
    table = table_of(agents)
    first = plan_assignments(
        [task(1), task(2), task(3)], table, router(Strategy.LEAST_LOADED), lambda t: 0, FairShare()
    )
    assert sorted(decision.agent_id for _, decision in first) == ["a", "a", "b"] or sorted(
        decision.agent_id for _, decision in first
    ) == ["a", "b", "b"]
    # Next round: 'a' finished everything, 'b' still holds two.
    table.refresh([each.profile for each in agents], {"b": 2})
    second = plan_assignments(
        [task(4), task(5), task(6)], table, router(Strategy.LEAST_LOADED), lambda t: 0, FairShare()
    )
    assert [decision.agent_id for _, decision in second] == ["a", "a"]
    # 'b' leaves and 'c' arrives, offering another language: the table is rebuilt.
    newcomer = agent("c", languages=["rust"])
    table.refresh([agents[0].profile, newcomer.profile], {})
    third = plan_assignments([task(7, languages=["rust"])], table, router(), lambda t: 0, FairShare())
    assert [decision.agent_id for _, decision in third] == ["c"]


def test_another_round_at_once_only_when_a_query_was_filled_and_a_slot_is_still_free() -> None:
    def after_round(agents: list[FreeAgent], found: int, limit_reached: bool) -> bool:
        table = table_of(agents)
        plan_assignments([task(number) for number in range(found)], table, router(), lambda _: 0, FairShare())
        return more_work_may_wait(limit_reached, table)

    # Three found and assigned: every slot is taken, the next round waits for a completion.
    assert not after_round([agent("a", max_concurrent_tasks=3)], found=3, limit_reached=True)
    # One found of three asked for: the queue is empty.
    assert not after_round([agent("a", max_concurrent_tasks=3)], found=1, limit_reached=False)
    # As many found as asked, yet a slot is free (e.g. a task answered two queries): look again.
    assert after_round([agent("a", max_concurrent_tasks=3)], found=2, limit_reached=True)
