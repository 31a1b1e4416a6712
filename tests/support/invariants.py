"""What must be true of the database whatever callers sent: the rules the migrations' constraints do not
(or cannot) state, checked by reading every table. Each query names the rows that break its rule.

`broken_invariants` holds at any moment; `unsettled_references` holds once the services have caught up
with the last change (a stream noticed its agent is gone, the sweeper released a vanished agent's tasks).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg.rows import dict_row

from shared import validation


@dataclass(frozen=True)
class Invariant:
    name: str
    # Returns one row per offending row (at most a few are shown); no rows means the rule holds.
    query: str


# A row is shown by its first columns; LIMIT keeps a broken table from flooding the message.
INVARIANTS: tuple[Invariant, ...] = (
    # An attempt in flight belongs to one agent, under a lease, from a known start.
    Invariant(
        "in_flight_task_has_agent_lease_and_start",
        """
        SELECT id, state, assigned_agent_id, lease_expires_at, assigned_at FROM tasks
        WHERE state IN ('assigned', 'running')
          AND (assigned_agent_id IS NULL OR lease_expires_at IS NULL OR assigned_at IS NULL)
        LIMIT 5
        """,
    ),
    # A PENDING task waits for an agent: it holds none and no lease.
    Invariant(
        "pending_task_holds_no_agent_or_lease",
        """
        SELECT id, assigned_agent_id, lease_expires_at FROM tasks
        WHERE state = 'pending' AND (assigned_agent_id IS NOT NULL OR lease_expires_at IS NOT NULL)
        LIMIT 5
        """,
    ),
    # A finished task keeps no lease (nothing may extend or expire it any more).
    Invariant(
        "finished_task_holds_no_lease",
        """
        SELECT id, state, lease_expires_at FROM tasks
        WHERE state IN ('completed', 'failed', 'cancelled') AND lease_expires_at IS NOT NULL
        LIMIT 5
        """,
    ),
    # COMPLETED means a result was stored.
    Invariant(
        "completed_task_has_result",
        "SELECT id FROM tasks WHERE state = 'completed' AND result IS NULL LIMIT 5",
    ),
    # Every stored number of a task is within its documented limit, and attempts never pass the maximum.
    Invariant(
        "task_numbers_within_limits",
        f"""
        SELECT id, attempt, max_attempts, priority, progress, timeout_ms, schedule_to_start_timeout_ms FROM tasks
        WHERE NOT (attempt BETWEEN 1 AND max_attempts)
           OR NOT (max_attempts BETWEEN 1 AND {validation.MAX_ATTEMPTS})
           OR NOT (priority BETWEEN {validation.MIN_PRIORITY} AND {validation.MAX_PRIORITY})
           OR NOT (progress BETWEEN 0 AND 1)
           OR NOT (COALESCE(timeout_ms, 1) BETWEEN 1 AND {validation.MAX_TIMEOUT_MS})
           OR NOT (COALESCE(schedule_to_start_timeout_ms, 1) BETWEEN 1 AND {validation.MAX_TIMEOUT_MS})
        LIMIT 5
        """,
    ),
    # Stored text is within its documented length.
    Invariant(
        "task_text_within_limits",
        f"""
        SELECT id, length(task_type), length(idempotency_key), length(progress_message), length(error) FROM tasks
        WHERE length(task_type) NOT BETWEEN 1 AND {validation.MAX_NAME_LENGTH}
           OR length(idempotency_key) > {validation.MAX_IDEMPOTENCY_KEY_LENGTH}
           OR length(progress_message) > {validation.MAX_PROGRESS_MESSAGE_LENGTH}
           OR length(error) > {validation.MAX_ERROR_LENGTH}
        LIMIT 5
        """,
    ),
    # The trigger records every change, so a task's history starts with exactly one submission.
    Invariant(
        "task_history_starts_with_one_submission",
        """
        SELECT t.id, count(e.id) FILTER (WHERE e.from_state IS NULL) AS submissions FROM tasks t
        LEFT JOIN task_events e ON e.task_id = t.id
        GROUP BY t.id
        HAVING count(e.id) FILTER (WHERE e.from_state IS NULL) <> 1
        LIMIT 5
        """,
    ),
    # ...and ends in the state the task is in now.
    Invariant(
        "task_history_ends_in_current_state",
        """
        SELECT t.id, t.state, last.to_state FROM tasks t
        JOIN LATERAL (SELECT to_state FROM task_events WHERE task_id = t.id ORDER BY id DESC LIMIT 1) last ON true
        WHERE last.to_state <> t.state
        LIMIT 5
        """,
    ),
    # No history or routing decision outlives its task (the foreign keys cascade; this proves it).
    Invariant(
        "no_orphan_task_events",
        "SELECT e.id, e.task_id FROM task_events e LEFT JOIN tasks t ON t.id = e.task_id WHERE t.id IS NULL LIMIT 5",
    ),
    Invariant(
        "no_orphan_routing_decisions",
        """
        SELECT d.task_id, d.attempt FROM routing_decisions d LEFT JOIN tasks t ON t.id = d.task_id
        WHERE t.id IS NULL
        LIMIT 5
        """,
    ),
    # A decision routes an attempt that happened: never one beyond the task's current attempt.
    Invariant(
        "routing_decision_within_task_attempts",
        """
        SELECT d.task_id, d.attempt, t.attempt FROM routing_decisions d JOIN tasks t ON t.id = d.task_id
        WHERE d.attempt NOT BETWEEN 1 AND t.attempt
        LIMIT 5
        """,
    ),
    # An attempt in flight was routed: its decision names the agent that holds it.
    Invariant(
        "in_flight_attempt_has_its_routing_decision",
        """
        SELECT t.id, t.attempt, t.assigned_agent_id, d.agent_id FROM tasks t
        LEFT JOIN routing_decisions d ON d.task_id = t.id AND d.attempt = t.attempt
        WHERE t.state IN ('assigned', 'running') AND d.agent_id IS DISTINCT FROM t.assigned_agent_id
        LIMIT 5
        """,
    ),
    # An agent's numbers stay within what registration and heartbeats allow.
    Invariant(
        "agent_numbers_within_limits",
        f"""
        SELECT id, max_concurrent_tasks, active_tasks FROM agents
        WHERE NOT (max_concurrent_tasks BETWEEN 1 AND {validation.MAX_CONCURRENT_TASKS})
           OR NOT (active_tasks BETWEEN 0 AND {validation.MAX_ACTIVE_TASKS})
        LIMIT 5
        """,
    ),
    # Running totals are consistent sums: no negative count, no more successes or judged outcomes than
    # outcomes, quality sums within 0..1 per judged outcome, latencies finite and not negative (NaN is
    # larger than every number in PostgreSQL, so it fails these comparisons too).
    Invariant(
        "task_type_stats_consistent",
        """
        SELECT agent_id, task_type, outcomes, successes, quality_count, quality_sum, latency_ms_sum
        FROM agent_task_type_stats
        WHERE outcomes < 0 OR successes NOT BETWEEN 0 AND outcomes OR quality_count NOT BETWEEN 0 AND outcomes
           OR NOT (quality_sum BETWEEN 0 AND quality_count)
           OR NOT (latency_ms_sum >= 0 AND latency_ms_sum < 'Infinity')
        LIMIT 5
        """,
    ),
    Invariant(
        "outcome_minutes_consistent",
        """
        SELECT agent_id, minute, outcomes, successes, quality_count, quality_sum, latency_ms_sum
        FROM agent_outcome_minutes
        WHERE outcomes < 0 OR successes NOT BETWEEN 0 AND outcomes OR quality_count NOT BETWEEN 0 AND outcomes
           OR NOT (quality_sum BETWEEN 0 AND quality_count)
           OR NOT (latency_ms_sum >= 0 AND latency_ms_sum < 'Infinity')
        LIMIT 5
        """,
    ),
    # The minute buckets are the recent part of the totals (older buckets are deleted), never more.
    Invariant(
        "outcome_minutes_within_totals",
        """
        SELECT m.agent_id, m.outcomes, m.successes, s.outcomes, s.successes
        FROM (SELECT agent_id, sum(outcomes) AS outcomes, sum(successes) AS successes
              FROM agent_outcome_minutes GROUP BY agent_id) m
        LEFT JOIN (SELECT agent_id, sum(outcomes) AS outcomes, sum(successes) AS successes
                   FROM agent_task_type_stats GROUP BY agent_id) s ON s.agent_id = m.agent_id
        WHERE m.outcomes > COALESCE(s.outcomes, 0) OR m.successes > COALESCE(s.successes, 0)
        LIMIT 5
        """,
    ),
    # Stats are the registry's own rows for registered agents (cascading deletes; this proves it).
    Invariant(
        "no_orphan_agent_stats",
        """
        SELECT s.agent_id FROM agent_task_type_stats s LEFT JOIN agents a ON a.id = s.agent_id WHERE a.id IS NULL
        UNION ALL
        SELECT m.agent_id FROM agent_outcome_minutes m LEFT JOIN agents a ON a.id = m.agent_id WHERE a.id IS NULL
        LIMIT 5
        """,
    ),
)

SETTLING_INVARIANTS: tuple[Invariant, ...] = (
    # A stream whose agent was deregistered ends, and a closed stream forgets its row.
    Invariant(
        "streams_belong_to_registered_agents",
        """
        SELECT s.agent_id, s.stream_id FROM agent_streams s LEFT JOIN agents a ON a.id = s.agent_id
        WHERE a.id IS NULL
        LIMIT 5
        """,
    ),
    # What an agent that is gone held is released by the sweeper.
    Invariant(
        "in_flight_tasks_held_by_registered_agents",
        """
        SELECT t.id, t.assigned_agent_id FROM tasks t LEFT JOIN agents a ON a.id = t.assigned_agent_id
        WHERE t.state IN ('assigned', 'running') AND a.id IS NULL
        LIMIT 5
        """,
    ),
)


async def _violations(database_url: str, invariants: tuple[Invariant, ...]) -> list[str]:
    found: list[str] = []
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True, row_factory=dict_row) as connection:
        for invariant in invariants:
            cursor = await connection.execute(invariant.query)  # type: ignore[arg-type]
            rows = await cursor.fetchall()
            if rows:
                found.append(f"{invariant.name}: {rows}")
    return found


async def broken_invariants(database_url: str) -> list[str]:
    """Every invariant that does not hold now, with up to five offending rows each; empty when all hold."""
    return await _violations(database_url, INVARIANTS)


async def unsettled_references(database_url: str) -> list[str]:
    """References to agents that are gone which the services have not cleaned up yet; empty once settled."""
    return await _violations(database_url, SETTLING_INVARIANTS)
