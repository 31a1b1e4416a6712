"""Many agents draining one queue, everything as real processes: each task runs exactly once, no agent
is sent more than its max_concurrent_tasks at a time, and higher priorities are claimed first."""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from arbiter import Client
from shared.api_keys import Role
from tests.support.processes import ServiceProcesses
from tests.support.sdk_agent import events_of, start_sdk_agent, wait_for, wait_for_event
from tests.support.stub_agent import AgentProcess, fleet

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]


def task_rows(database_url: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(database_url, row_factory=dict_row) as connection:
        rows = connection.execute(
            "SELECT id::text AS id, state, priority, attempt, assigned_at, created_at, result FROM tasks"
        ).fetchall()
    return {row["id"]: row for row in rows}


def test_five_agents_drain_200_tasks_once_each_within_concurrency_and_by_priority(
    database_url: str, tmp_path: Path
) -> None:
    concurrencies = {f"agent-c{n}": n for n in (1, 2, 3, 4, 5)}
    total_concurrency = sum(concurrencies.values())
    priorities = random.Random(20240501).choices(range(10), k=200)
    with fleet(database_url, tmp_path) as running:
        ids = running.submit(priorities)
        assert len(set(ids)) == 200
        started = time.monotonic()
        for agent_id, concurrency in concurrencies.items():
            running.start_agent(agent_id, concurrency, "5:25")
        running.wait_until_all_completed(200)
        drained_in = time.monotonic() - started
        rows = task_rows(database_url)
        assert [agent.stop() for agent in running.agents] == [0] * len(concurrencies)
        events_by_agent = {agent.agent_id: agent.events() for agent in running.agents}

    # Exactly once: every task has one accepted completion across all agents, on attempt 1, and the
    # database agrees on the state and on which agent's result was kept.
    completions = [
        (agent_id, event)
        for agent_id, events in events_by_agent.items()
        for event in events
        if event["event"] == "completed"
    ]
    completed_by = Counter(event["task_id"] for _, event in completions)
    assert set(completed_by) == set(ids)
    assert [task for task, n in completed_by.items() if n != 1] == []
    assert {event["attempt"] for _, event in completions} == {1}
    rejected = [
        event for events in events_by_agent.values() for event in events if event["event"] == "complete_rejected"
    ]
    assert rejected == []
    assert set(rows) == set(ids)
    assert {row["state"] for row in rows.values()} == {"completed"}
    assert {row["attempt"] for row in rows.values()} == {1}
    for agent_id, event in completions:
        assert rows[event["task_id"]]["result"] == {"agent": agent_id}

    # Within concurrency: an agent's in_flight counts the assignments it received and has not yet
    # handed back (see tests/support/stub_agent.py), so it can only understate what the orchestrator
    # thinks the agent holds; above max_concurrent_tasks means the orchestrator over-assigned.
    assigned_by_agent: dict[str, int] = defaultdict(int)
    for agent_id, events in events_by_agent.items():
        in_flight = [event["in_flight"] for event in events if event["event"] == "assigned"]
        assigned_by_agent[agent_id] = len(in_flight)
        assert max(in_flight, default=0) <= concurrencies[agent_id], f"{agent_id} was sent more than it may hold"
    # The check is not vacuous: agents really ran several tasks at once.
    peak = {
        agent_id: max((e["in_flight"] for e in events if e["event"] == "assigned"), default=0)
        for agent_id, events in events_by_agent.items()
    }
    assert max(peak.values()) >= 3, peak
    assert sum(assigned_by_agent.values()) == 200
    print(f"drained 200 tasks in {drained_in:.2f} s; tasks per agent {dict(assigned_by_agent)}; peak in flight {peak}")

    # Priority order, as claimed. A claim locks the highest-priority PENDING rows it may take (FOR UPDATE
    # SKIP LOCKED passes over rows another claim has locked) and stamps them assigned_at = clock_timestamp().
    # Agents claim concurrently, so a claim may stamp lower-priority rows before a concurrent claim that
    # locked higher-priority rows first has stamped them: assigned_at order is priority order only up to
    # what is being claimed at the same moment. Each claim takes at most its agent's free slots, and an
    # agent claims again only after finishing a task (5 ms or more here, far longer than one claim
    # statement), so the claims overlapping any one claim take at most the total concurrency (15) rows
    # together. Hence two tasks 15 or more apart in assigned_at order can never be inverted: the earlier
    # one must have a priority at least as high.
    ordered = sorted(rows.values(), key=lambda row: (row["assigned_at"], row["id"]))
    order = [row["priority"] for row in ordered]
    inversions = [
        (i, order[i], j, order[j])
        for j in range(len(order))
        for i in range(j - total_concurrency + 1)
        if order[i] < order[j]
    ]
    assert not inversions, (
        f"{len(inversions)} priority inversions (i, priority[i], j, priority[j]), first {inversions[:10]}, "
        f"in claim order {order}"
    )


def test_one_agent_of_concurrency_one_runs_tasks_in_strict_priority_then_submit_order(
    database_url: str, tmp_path: Path
) -> None:
    priorities = random.Random(11).choices(range(10), k=30)
    assert len(set(priorities)) < len(priorities), "ties are needed to check the submit-order tie-break"
    with fleet(database_url, tmp_path) as running:
        # One at a time, so that submit order is created_at order.
        ids = running.submit(priorities, chunk=1)
        agent = running.start_agent("agent-solo", 1, "5:25")
        running.wait_until_all_completed(30)
        rows = task_rows(database_url)
        events = agent.events()

    expected = [ids[i] for i in sorted(range(len(ids)), key=lambda i: (-priorities[i], i))]
    assert [event["task_id"] for event in events if event["event"] == "assigned"] == expected
    assert [event["task_id"] for event in events if event["event"] == "completed"] == expected
    assert [row["id"] for row in sorted(rows.values(), key=lambda row: row["assigned_at"])] == expected
    assert {event["in_flight"] for event in events if event["event"] == "assigned"} == {1}
    assert {row["state"] for row in rows.values()} == {"completed"}


async def _submitted_one_by_one_to_a_running_agent(
    services: ServiceProcesses, tmp_path: Path
) -> tuple[list[str], AgentProcess]:
    """An SDK agent of concurrency 2 (which reports through CompleteTasks, recorded in dispatch rounds)
    already working; then 60 tasks of 10–20 ms submitted one call at a time, faster than it works them
    off, so that some go straight to a free slot and the rest wait behind each other."""
    agent = start_sdk_agent(services, "sdk-pair", 2, tmp_path)
    try:
        async with Client(
            services.orchestrator_address, services.keys[Role.SUBMITTER], registry_address=services.registry_address
        ) as client:
            first = await client.submit("slow", {"ms": 1})
            await wait_for_event(agent, "finished", first.id)
            ids = [(await client.submit("slow", {"ms": 10 + number % 11})).id for number in range(60)]

            async def all_finished() -> bool:
                return {event["task_id"] for event in events_of(agent, "finished")} >= set(ids)

            await wait_for(all_finished, "60 tasks finished", agent=agent)
    finally:
        agent.stop()
        print(agent.report())
    return ids, agent


def most_held_at_once(database_url: str, agent_id: str) -> int:
    """The most attempts the agent held at once, replaying the tasks' recorded state changes in order."""
    with psycopg.connect(database_url) as connection:
        changes = connection.execute(
            "SELECT from_state, to_state FROM task_events WHERE agent_id = %s ORDER BY id", (agent_id,)
        ).fetchall()
    held = most = 0
    for from_state, to_state in changes:
        was_held, is_held = from_state in ("assigned", "running"), to_state in ("assigned", "running")
        held += int(is_held) - int(was_held)
        most = max(most, held)
    return most


async def test_tasks_submitted_to_a_working_agent_start_in_submit_order_when_some_must_wait(
    services: ServiceProcesses, tmp_path: Path
) -> None:
    # A task submitted while none waits goes straight to a free slot; once some wait, a newer one must
    # not overtake them (dispatcher: the cheap round routes new work only when no backlog can exist).
    ids, agent = await _submitted_one_by_one_to_a_running_agent(services, tmp_path)
    started = [event["task_id"] for event in events_of(agent, "started") if event["task_id"] in set(ids)]
    assert started == ids


async def test_tasks_submitted_to_a_working_agent_never_exceed_what_it_may_hold(
    services: ServiceProcesses, tmp_path: Path
) -> None:
    await _submitted_one_by_one_to_a_running_agent(services, tmp_path)
    # Both slots were used (the check is not vacuous), never more.
    assert most_held_at_once(services.database_url, "default/sdk-pair") == 2
