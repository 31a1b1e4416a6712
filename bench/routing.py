"""How long routing one task takes in-process, per strategy, with 1,000 candidate agents.

Times the dispatcher's whole in-memory step for one task among 1,000 connected agents
(planning.plan_assignments: the capable agents with a free slot, then Router.choose), warm (the routing
table kept from the previous round, the usual case) and cold (the first task after the table was
rebuilt because an agent connected, left or changed what it offers); and, separately, Router.choose over
1,000 candidates per strategy and the can_take filter over a fleet of 1,000 agents. Prints a markdown
table, writes bench/results/routing.json, and exits non-zero when any strategy's median choose() or the
warm median of one task takes 1,000 µs or more.

    python -m bench.routing [--calls 2000]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from services.orchestrator.domain import AgentProfile, TaskRecord, TaskRequirements, TaskState, TypePerformance
from services.orchestrator.planning import FairShare, RoutingTable, plan_assignments
from services.orchestrator.routing import CandidateAgent, Router, RoutingSettings, Strategy
from shared.matching import Capabilities, Requirements, can_take, success_rate_with_prior

AGENT_COUNT = 1000
DEFAULT_CALLS = 2000
WARMUP_CALLS = 100
# The routing budget: one task among 1,000 candidates, median.
MEDIAN_CHOOSE_LIMIT_MICROSECONDS = 1000.0
# Outcomes recorded on the task type across the fleet: a fleet that has been running a while.
TYPE_OUTCOMES = 50_000
RESULTS_PATH = Path(__file__).parent / "results" / "routing.json"

TASK_TYPE = "code-review"
REQUIRED = Requirements(task_type=TASK_TYPE, languages=frozenset({"python"}), specializations=frozenset({"security"}))
OTHER_LANGUAGES = ("go", "rust", "java", "typescript", "c++")
OTHER_SPECIALIZATIONS = ("performance", "style", "docs", "testing")
OTHER_TASK_TYPES = ("summarize", "translate", "triage")
# The fleet for the filter: this share of agents lacks the required language.
SHARE_WITHOUT_LANGUAGE = 0.2


@dataclass(frozen=True)
class Timing:
    median_microseconds: float
    p99_microseconds: float


def build_fleet(rng: random.Random, count: int, share_without_language: float) -> list[CandidateAgent]:
    """`count` agents that all offer TASK_TYPE and the required specialization, with varied other task
    types, languages, specializations, load and records; `share_without_language` of them lack python."""
    fleet = []
    for index in range(count):
        languages = set(rng.sample(OTHER_LANGUAGES, rng.randint(0, 3)))
        if rng.random() >= share_without_language:
            languages.add("python")
        elif not languages:
            languages.add(rng.choice(OTHER_LANGUAGES))
        outcomes = rng.choice([0, 2, 10, 50, 300, 2000])
        max_concurrent_tasks = rng.choice([1, 2, 4, 8])
        fleet.append(
            CandidateAgent(
                agent_id=f"agent-{index:04d}",
                capabilities=Capabilities(
                    task_types=frozenset({TASK_TYPE, *rng.sample(OTHER_TASK_TYPES, rng.randint(0, 2))}),
                    languages=frozenset(languages),
                    specializations=frozenset({"security", *rng.sample(OTHER_SPECIALIZATIONS, rng.randint(0, 2))}),
                    labels={"region": rng.choice(["eu", "us"])},
                ),
                # A free slot left: 0 .. (max - 1) / max.
                utilization=rng.randrange(max_concurrent_tasks) / max_concurrent_tasks,
                success_rate=success_rate_with_prior(round(outcomes * rng.uniform(0.4, 1.0)), outcomes),
                samples=outcomes,
            )
        )
    return fleet


def as_profile(candidate: CandidateAgent) -> AgentProfile:
    return AgentProfile(
        id=candidate.agent_id,
        task_types=sorted(candidate.capabilities.task_types),
        languages=sorted(candidate.capabilities.languages),
        specializations=sorted(candidate.capabilities.specializations),
        labels=dict(candidate.capabilities.labels),
        max_concurrent_tasks=8,
        accepts_work=True,
        performance={TASK_TYPE: TypePerformance(candidate.success_rate, candidate.samples)},
    )


def pending_task() -> TaskRecord:
    moment = datetime.now(UTC)
    return TaskRecord(
        id="00000000-0000-0000-0000-000000000001",
        task_type=TASK_TYPE,
        state=TaskState.PENDING,
        payload={},
        result=None,
        error="",
        priority=0,
        requirements=TaskRequirements(sorted(REQUIRED.languages), sorted(REQUIRED.specializations), {}),
        attempt=1,
        max_attempts=3,
        timeout_ms=None,
        idempotency_key=None,
        assigned_agent_id=None,
        progress=0.0,
        progress_message="",
        lease_expires_at=None,
        created_at=moment,
        updated_at=moment,
    )


def time_one_task_rounds(fleet: list[CandidateAgent], calls: int) -> tuple[Timing, Timing]:
    """plan_assignments for one task among the fleet as connected agents (one task held each): warm, with
    the table refreshed as a new round does; cold, on a freshly rebuilt table."""
    profiles = [as_profile(candidate) for candidate in fleet]
    held = {profile.id: 1 for profile in profiles}
    router = Router(RoutingSettings(Strategy.UCB), random.Random(4))
    table = RoutingTable()
    table.refresh(profiles, held)

    def warm() -> None:
        table.refresh(profiles, held)
        plan_assignments([pending_task()], table, router, lambda task_type: TYPE_OUTCOMES, FairShare())

    def cold() -> None:
        fresh = RoutingTable()
        fresh.refresh(profiles, held)
        plan_assignments([pending_task()], fresh, router, lambda task_type: TYPE_OUTCOMES, FairShare())

    return time_calls(warm, calls), time_calls(cold, calls // 4)


def time_calls(call: Callable[[], object], calls: int) -> Timing:
    for _ in range(WARMUP_CALLS):
        call()
    durations = []
    clock = time.perf_counter_ns
    for _ in range(calls):
        started = clock()
        call()
        durations.append(clock() - started)
    durations.sort()
    p99_index = min(len(durations) - 1, round(0.99 * (len(durations) - 1)))
    return Timing(
        median_microseconds=statistics.median(durations) / 1000,
        p99_microseconds=durations[p99_index] / 1000,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=DEFAULT_CALLS, help="timed calls per measurement")
    arguments = parser.parse_args()

    fleet = build_fleet(random.Random(1), AGENT_COUNT, SHARE_WITHOUT_LANGUAGE)
    # choose() is given only agents that can take the task: a fleet where every one of 1,000 can.
    candidates = build_fleet(random.Random(2), AGENT_COUNT, share_without_language=0.0)
    assert all(can_take(candidate.capabilities, REQUIRED) for candidate in candidates)
    capable_in_fleet = sum(can_take(agent.capabilities, REQUIRED) for agent in fleet)

    choose_timings = {
        strategy: time_calls(
            partial(Router(RoutingSettings(strategy), random.Random(3)).choose, REQUIRED, candidates, TYPE_OUTCOMES),
            arguments.calls,
        )
        for strategy in Strategy
    }
    filter_timing = time_calls(
        lambda: [agent for agent in fleet if can_take(agent.capabilities, REQUIRED)], arguments.calls
    )
    warm_timing, cold_timing = time_one_task_rounds(fleet, arguments.calls)
    results = {
        "one task, whole step (ucb), warm": warm_timing,
        "one task, whole step (ucb), cold table": cold_timing,
    }
    results.update({f"choose {strategy}": timing for strategy, timing in choose_timings.items()})
    results["filter with can_take"] = filter_timing

    print(
        f"Routing one task among {AGENT_COUNT} connected agents ({capable_in_fleet} capable): the whole "
        f"in-memory step, then choose() alone over {AGENT_COUNT} candidates and the filter alone. "
        f"{arguments.calls} calls each (cold: a quarter), Python {platform.python_version()}.\n"
    )
    print("| step | median µs | p99 µs |")
    print("| --- | ---: | ---: |")
    for name, timing in results.items():
        print(f"| {name} | {timing.median_microseconds:.1f} | {timing.p99_microseconds:.1f} |")

    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(
        json.dumps(
            {
                "candidates": AGENT_COUNT,
                "fleet_for_filter": AGENT_COUNT,
                "capable_in_fleet": capable_in_fleet,
                "type_outcomes": TYPE_OUTCOMES,
                "calls": arguments.calls,
                "python": platform.python_version(),
                "machine": platform.machine(),
                "median_choose_limit_microseconds": MEDIAN_CHOOSE_LIMIT_MICROSECONDS,
                "results": {
                    name: {
                        "median_microseconds": round(timing.median_microseconds, 1),
                        "p99_microseconds": round(timing.p99_microseconds, 1),
                    }
                    for name, timing in results.items()
                },
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {RESULTS_PATH}")

    too_slow = [
        str(strategy)
        for strategy, timing in choose_timings.items()
        if timing.median_microseconds >= MEDIAN_CHOOSE_LIMIT_MICROSECONDS
    ]
    if warm_timing.median_microseconds >= MEDIAN_CHOOSE_LIMIT_MICROSECONDS:
        too_slow.append("the whole step for one task")
    if too_slow:
        print(
            f"too slow: the median choose() under {', '.join(too_slow)} is "
            f"{MEDIAN_CHOOSE_LIMIT_MICROSECONDS:.0f} µs or more; "
            "profile Router._scores and Router._best_indices for a per-candidate allocation or call",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
