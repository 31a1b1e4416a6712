"""Both services restarted under load, as real processes: the queue and the fleet live in PostgreSQL,
so a restart (graceful or SIGKILL) loses no task and runs none twice, and the agent carries on."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from psycopg.rows import dict_row

from arbiter.v1 import registry_service_pb2, registry_service_pb2_grpc
from shared.api_keys import Role
from tests.support.stack import metadata
from tests.support.stub_agent import AgentProcess, Fleet, fleet

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]

AGENT_ID = "agent-restart"
TASKS = 60
CONCURRENCY = 3


def database_state(database_url: str) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """The tasks rows by id, and the agents rows."""
    with psycopg.connect(database_url, row_factory=dict_row) as connection:
        tasks = connection.execute("SELECT id::text AS id, state, attempt, result FROM tasks").fetchall()
        agents = connection.execute("SELECT id, max_concurrent_tasks, registered_at FROM agents").fetchall()
    return {row["id"]: row for row in tasks}, agents


def get_agent(running: Fleet, agent_id: str) -> registry_service_pb2.GetAgentResponse:
    with grpc.insecure_channel(running.services.registry_address) as channel:
        stub = registry_service_pb2_grpc.RegistryServiceStub(channel)
        response: registry_service_pb2.GetAgentResponse = stub.GetAgent(
            registry_service_pb2.GetAgentRequest(agent_id=agent_id),
            metadata=metadata(running.keys[Role.VIEWER]),
            timeout=5,
        )
    return response


def restart_mid_run(
    database_url: str, directory: Path, *, kill: bool
) -> tuple[list[str], AgentProcess, dict[str, int]]:
    """One agent works through TASKS tasks; after about a third of them both services are stopped
    (SIGTERM, or SIGKILL with kill=True) and started again on the same ports. Returns the task ids,
    the agent and the services' exit codes, once every task is COMPLETED and the checks common to both
    kinds of restart have passed."""
    with fleet(database_url, directory) as running:
        agent = running.start_agent(AGENT_ID, CONCURRENCY, "50:150")
        ids = running.submit(random.Random(5).choices(range(10), k=TASKS))
        running.wait_for_events("completed", 20)
        tasks_before, agents_before = database_state(database_url)

        stopped_at = time.monotonic()
        codes = running.services.stop(kill=kill)
        completed_while_up = sum(1 for event in agent.events() if event["event"] == "completed")
        running.services.start()
        restarted_in = time.monotonic() - stopped_at

        running.wait_until_all_completed(TASKS)
        registered = get_agent(running, AGENT_ID).agent
        tasks_after, agents_after = database_state(database_url)
        assert agent.stop() == 0, "SIGTERM must stop the stub agent cleanly"
        events = agent.events()
        assert events[-1]["event"] == "stopped"
        print(
            f"{'SIGKILL' if kill else 'SIGTERM'}: {completed_while_up} completed before the stop, services back "
            f"after {restarted_in:.2f} s; events: {dict(Counter(event['event'] for event in events))}"
        )

    # The restart really happened mid-run, and the agent noticed and came back.
    assert completed_while_up < TASKS
    assert sum(1 for event in events if event["event"] == "registered") >= 2

    # The rows survived: same tasks, same agent row (registered_at is kept by re-registration).
    assert set(tasks_before) == set(tasks_after) == set(ids)
    assert [(row["id"], row["registered_at"]) for row in agents_after] == [
        (row["id"], row["registered_at"]) for row in agents_before
    ]
    assert registered.id == AGENT_ID
    assert registered.max_concurrent_tasks == CONCURRENCY

    # Exactly once as far as the database is concerned: every task COMPLETED on its first attempt with
    # this agent's result. The agent's events never show two accepted completions of one task. A
    # completion may be applied while its answer is lost to the stop; the agent then sends it again and
    # must be told FAILED_PRECONDITION (already COMPLETED), nothing else.
    assert {row["state"] for row in tasks_after.values()} == {"completed"}
    assert {row["attempt"] for row in tasks_after.values()} == {1}
    assert [row["id"] for row in tasks_after.values() if row["result"] != {"agent": AGENT_ID}] == []
    accepted = Counter(event["task_id"] for event in events if event["event"] == "completed")
    assert [task for task, n in accepted.items() if n > 1] == []
    rejected = [event for event in events if event["event"] == "complete_rejected"]
    assert {event["code"] for event in rejected} <= {"FAILED_PRECONDITION"}, rejected
    assert set(accepted) | {event["task_id"] for event in rejected} == set(ids)
    assert {event["attempt"] for event in events if event["event"] == "assigned"} == {1}

    # Re-delivery after the reconnect never pushed the agent past its concurrency.
    assert max(event["in_flight"] for event in events if event["event"] == "assigned") <= CONCURRENCY
    return ids, agent, codes


def test_sigterm_restart_of_both_services_completes_every_task_exactly_once(database_url: str, tmp_path: Path) -> None:
    _, _, codes = restart_mid_run(database_url, tmp_path, kill=False)
    assert codes == {"orchestrator": 0, "registry": 0}


def test_sigkill_restart_of_both_services_completes_every_task_exactly_once(database_url: str, tmp_path: Path) -> None:
    _, agent, codes = restart_mid_run(database_url, tmp_path, kill=True)
    assert codes == {"orchestrator": -9, "registry": -9}
    events = agent.events()
    # The killed orchestrator closed no stream cleanly: the agent saw it drop.
    assert any(event["event"] == "stream_lost" for event in events)
    # The agent still held tasks when it reconnected, so the orchestrator may send them again; which of
    # that and the agent's retried CompleteTask lands first is a race, so re-delivery itself is checked
    # deterministically by the next test, where the agent forgets everything.


def test_a_crashed_agents_tasks_are_released_at_once_and_done_by_the_restarted_agent(
    database_url: str, tmp_path: Path
) -> None:
    with fleet(database_url, tmp_path) as running:
        crashed = running.start_agent(AGENT_ID, CONCURRENCY, "60000:60000", files="first-life")
        ids = running.submit(list(range(9, 0, -1)), chunk=1)
        running.wait_for_events("assigned", CONCURRENCY)
        held = {event["task_id"] for event in crashed.events() if event["event"] == "assigned"}
        assert len(held) == CONCURRENCY
        crashed.kill()

        # Its stream closed: the attempts it held end at once (not at lease end), attempt bumped.
        def released() -> bool:
            rows = database_state(database_url)[0]
            return all(rows[task_id]["state"] == "pending" and rows[task_id]["attempt"] == 2 for task_id in held)

        deadline = time.monotonic() + 5
        while not released():
            assert time.monotonic() < deadline, "the crashed agent's tasks were not released within 5 s"
            time.sleep(0.05)

        reborn = running.start_agent(AGENT_ID, CONCURRENCY, "10:30", files="second-life")
        running.wait_until_all_completed(len(ids))
        tasks, _ = database_state(database_url)
        assert reborn.stop() == 0
        events = reborn.events()

    assigned = [event for event in events if event["event"] == "assigned"]
    # Highest priority first: the released tasks come back first, as their second attempt.
    assert {event["task_id"] for event in assigned[:CONCURRENCY]} == held
    assert sorted(event["task_id"] for event in assigned) == sorted(ids)
    assert {event["task_id"]: event["attempt"] for event in assigned} == {
        task_id: 2 if task_id in held else 1 for task_id in ids
    }
    assert max(event["in_flight"] for event in assigned) <= CONCURRENCY
    assert Counter(event["task_id"] for event in events if event["event"] == "completed") == Counter(ids)
    assert {row["state"] for row in tasks.values()} == {"completed"}
