"""All of the orchestrator's SQL: the tasks table.

Every change to a task that an agent reports is a compare-and-set on (id, attempt, agent, state),
so a stale or foreign report updates nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from services.orchestrator.domain import (
    AgentProfile,
    AttemptReport,
    NewTask,
    Submitted,
    TaskCount,
    TaskRecord,
    TaskRequirements,
    TaskState,
    state_after_failure,
)
from shared.database import Pool

_TASK_COLUMNS = """
    id::text AS id, task_type, state, payload, result, error, priority, required_languages,
    required_specializations, required_labels, attempt, max_attempts, timeout_ms, idempotency_key,
    assigned_agent_id, progress, progress_message, lease_expires_at, created_at, updated_at
"""
# The same columns where another table in the statement has an id too.
_QUALIFIED_TASK_COLUMNS = ", ".join(f"t.{column.strip()}" for column in _TASK_COLUMNS.split(","))

_IN_FLIGHT = "('assigned', 'running')"


# insert_task: a new PENDING row, or nothing when the idempotency key is taken (the caller reads that row).
_INSERT_TASK = f"""
    INSERT INTO tasks (task_type, state, payload, priority, required_languages, required_specializations,
                       required_labels, max_attempts, timeout_ms, idempotency_key)
    VALUES (%(task_type)s, 'pending', %(payload)s, %(priority)s, %(languages)s, %(specializations)s,
            %(labels)s, %(max_attempts)s, %(timeout_ms)s, %(idempotency_key)s)
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING {_TASK_COLUMNS}
"""


def _insert_parameters(task: NewTask) -> dict[str, Any]:
    return {
        "task_type": task.task_type,
        "payload": Jsonb(task.payload),
        "priority": task.priority,
        "languages": task.requirements.languages,
        "specializations": task.requirements.specializations,
        "labels": Jsonb(task.requirements.labels),
        "max_attempts": task.max_attempts,
        "timeout_ms": task.timeout_ms,
        "idempotency_key": task.idempotency_key,
    }


def _record(row: dict[str, Any]) -> TaskRecord:
    return TaskRecord(
        id=row["id"],
        task_type=row["task_type"],
        state=TaskState(row["state"]),
        payload=row["payload"],
        result=row["result"],
        error=row["error"],
        priority=row["priority"],
        requirements=TaskRequirements(
            languages=list(row["required_languages"]),
            specializations=list(row["required_specializations"]),
            labels=dict(row["required_labels"]),
        ),
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        timeout_ms=row["timeout_ms"],
        idempotency_key=row["idempotency_key"],
        assigned_agent_id=row["assigned_agent_id"],
        progress=row["progress"],
        progress_message=row["progress_message"],
        lease_expires_at=row["lease_expires_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


@dataclass(frozen=True)
class Cancellation:
    task: TaskRecord
    released_agent_id: str | None


class TaskStore:
    def __init__(self, pool: Pool, lease_seconds: float) -> None:
        self._pool = pool
        self._lease_seconds = lease_seconds

    async def insert(self, task: NewTask) -> Submitted:
        """insert_task: one new PENDING row, or, when the idempotency key is taken, the existing row.
        Concurrent inserts with one key wait on the unique index, so only one row is made."""
        return (await self.insert_many([task]))[0]

    async def insert_many(self, tasks: list[NewTask]) -> list[Submitted]:
        """insert_tasks: all rows in one transaction (all or none), in order. A task whose idempotency
        key is taken, by an earlier submit or earlier in this batch, resolves to the existing row."""
        async with self._pool.connection() as connection, connection.transaction(), connection.cursor() as cursor:
            await cursor.executemany(_INSERT_TASK, [_insert_parameters(task) for task in tasks], returning=True)
            inserted: list[TaskRecord | None] = []
            async for _ in cursor.results():
                row = await cursor.fetchone()
                inserted.append(_record(row) if row else None)
            taken_keys = [task.idempotency_key for task, record in zip(tasks, inserted, strict=True) if record is None]
            existing: dict[str, TaskRecord] = {}
            if taken_keys:
                await cursor.execute(
                    f"SELECT {_TASK_COLUMNS} FROM tasks WHERE idempotency_key = ANY(%s)", (taken_keys,)
                )
                existing = {row["idempotency_key"]: _record(row) for row in await cursor.fetchall()}
        submitted = []
        for task, record in zip(tasks, inserted, strict=True):
            if record is not None:
                submitted.append(Submitted(record, created=True))
            else:
                assert task.idempotency_key in existing, "a conflicting idempotency key must name an existing task"
                submitted.append(Submitted(existing[task.idempotency_key], created=False))
        return submitted

    async def count_by_type_and_state(self) -> list[TaskCount]:
        """count_tasks: one row per (type, state) that has tasks, with its oldest submission time."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                """
                SELECT task_type, state, count(*) AS count, min(created_at) AS oldest_created_at
                FROM tasks
                GROUP BY task_type, state
                ORDER BY task_type, state
                """
            )
            rows = await cursor.fetchall()
        return [
            TaskCount(row["task_type"], TaskState(row["state"]), row["count"], row["oldest_created_at"]) for row in rows
        ]

    async def get(self, task_id: str) -> TaskRecord | None:
        async with self._pool.connection() as connection:
            cursor = await connection.execute(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = %s", (task_id,))
            row = await cursor.fetchone()
        return _record(row) if row else None

    async def list_page(
        self, before: tuple[datetime, str] | None, limit: int, state: TaskState | None, task_type: str | None
    ) -> list[TaskRecord]:
        """list_tasks: up to `limit` tasks older than `before`, newest first (keyset paging)."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                f"""
                SELECT {_TASK_COLUMNS} FROM tasks
                WHERE (%(before_at)s::timestamptz IS NULL OR (created_at, id) < (%(before_at)s, %(before_id)s::uuid))
                  AND (%(state)s::text IS NULL OR state = %(state)s)
                  AND (%(task_type)s::text IS NULL OR task_type = %(task_type)s)
                ORDER BY created_at DESC, id DESC
                LIMIT %(limit)s
                """,
                {
                    "before_at": before[0] if before else None,
                    "before_id": before[1] if before else None,
                    "state": state.value if state else None,
                    "task_type": task_type,
                    "limit": limit,
                },
            )
            rows = await cursor.fetchall()
        return [_record(row) for row in rows]

    async def cancel(self, task_id: str, reason: str) -> Cancellation | None:
        """cancel_task: moves one unfinished task to CANCELLED and says which agent held it;
        None when the task is unknown or already finished."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                f"""
                WITH previous AS (
                    SELECT id, assigned_agent_id FROM tasks
                    WHERE id = %(id)s AND state IN ('pending', 'assigned', 'running')
                    FOR UPDATE
                )
                UPDATE tasks t
                SET state = 'cancelled', error = %(reason)s,
                    lease_expires_at = NULL, updated_at = now()
                FROM previous
                WHERE t.id = previous.id
                RETURNING {_QUALIFIED_TASK_COLUMNS}, previous.assigned_agent_id AS released_agent_id
                """,
                {"id": task_id, "reason": reason},
            )
            row = await cursor.fetchone()
        return Cancellation(_record(row), row["released_agent_id"]) if row else None

    async def claim(self, agent: AgentProfile) -> list[TaskRecord]:
        """claim_tasks_for_agent: assigns to the agent at most (its concurrency - what it holds) PENDING
        tasks it is capable of, highest priority then oldest. SKIP LOCKED means a row another claim
        holds is skipped, never taken twice. Returned in claim order."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                f"""
                WITH held AS (
                    SELECT count(*) AS n FROM tasks
                    WHERE assigned_agent_id = %(agent_id)s AND state IN {_IN_FLIGHT}
                ), candidate AS (
                    SELECT id FROM tasks
                    WHERE state = 'pending'
                      AND task_type = ANY(%(task_types)s)
                      AND required_languages <@ %(languages)s
                      AND required_specializations <@ %(specializations)s
                      AND required_labels <@ %(labels)s
                    ORDER BY priority DESC, created_at, id
                    LIMIT GREATEST(0, %(capacity)s - (SELECT n FROM held))
                    FOR UPDATE SKIP LOCKED
                )
                UPDATE tasks t
                SET state = 'assigned', assigned_agent_id = %(agent_id)s, assigned_at = clock_timestamp(),
                    lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
                    progress = 0, progress_message = '', updated_at = now()
                FROM candidate
                WHERE t.id = candidate.id
                RETURNING {_QUALIFIED_TASK_COLUMNS}
                """,
                {
                    "agent_id": agent.id,
                    "task_types": agent.task_types,
                    "languages": agent.languages,
                    "specializations": agent.specializations,
                    "labels": Jsonb(agent.labels),
                    "capacity": agent.max_concurrent_tasks,
                    "lease_seconds": self._lease_seconds,
                },
            )
            rows = await cursor.fetchall()
        tasks = [_record(row) for row in rows]
        tasks.sort(key=lambda task: (-task.priority, task.created_at, task.id))
        return tasks

    async def renew_held(self, agent_id: str) -> list[TaskRecord]:
        """renew_held_tasks: the tasks an agent holds, with fresh leases, oldest assignment first.
        Sent again when the agent reconnects, since an assignment may have been lost with the old stream."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                f"""
                UPDATE tasks
                SET lease_expires_at = now() + make_interval(secs => %(lease_seconds)s), updated_at = now()
                WHERE assigned_agent_id = %(agent_id)s AND state IN {_IN_FLIGHT}
                RETURNING {_TASK_COLUMNS}, assigned_at
                """,
                {"agent_id": agent_id, "lease_seconds": self._lease_seconds},
            )
            rows = await cursor.fetchall()
        rows.sort(key=lambda row: row["assigned_at"])
        return [_record(row) for row in rows]

    async def record_progress(self, report: AttemptReport, progress: float, message: str) -> TaskRecord | None:
        """record_progress: compare-and-set on the attempt; moves ASSIGNED to RUNNING and extends the lease."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                f"""
                UPDATE tasks
                SET state = 'running', progress = %(progress)s, progress_message = %(message)s,
                    lease_expires_at = now() + make_interval(secs => %(lease_seconds)s), updated_at = now()
                WHERE id = %(id)s AND attempt = %(attempt)s AND assigned_agent_id = %(agent_id)s
                  AND state IN {_IN_FLIGHT}
                RETURNING {_TASK_COLUMNS}
                """,
                {
                    "id": report.task_id,
                    "attempt": report.attempt,
                    "agent_id": report.agent_id,
                    "progress": progress,
                    "message": message,
                    "lease_seconds": self._lease_seconds,
                },
            )
            row = await cursor.fetchone()
        return _record(row) if row else None

    async def complete(self, report: AttemptReport, result: dict[str, Any]) -> TaskRecord | None:
        """complete_task: compare-and-set on the attempt; None when the report is stale or foreign."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                f"""
                UPDATE tasks
                SET state = 'completed', result = %(result)s, progress = 1,
                    lease_expires_at = NULL, updated_at = now()
                WHERE id = %(id)s AND attempt = %(attempt)s AND assigned_agent_id = %(agent_id)s
                  AND state IN {_IN_FLIGHT}
                RETURNING {_TASK_COLUMNS}
                """,
                {"id": report.task_id, "attempt": report.attempt, "agent_id": report.agent_id, "result": Jsonb(result)},
            )
            row = await cursor.fetchone()
        return _record(row) if row else None

    async def fail(self, report: AttemptReport, error: str, retryable: bool) -> TaskRecord | None:
        """fail_task: under a row lock, checks the attempt, then either puts the task back to PENDING
        with the next attempt or marks it FAILED (the domain decides); None when the report is stale."""
        async with self._pool.connection() as connection, connection.transaction():
            cursor = await connection.execute(
                f"""
                SELECT {_TASK_COLUMNS} FROM tasks
                WHERE id = %(id)s AND attempt = %(attempt)s AND assigned_agent_id = %(agent_id)s
                  AND state IN {_IN_FLIGHT}
                FOR UPDATE
                """,
                {"id": report.task_id, "attempt": report.attempt, "agent_id": report.agent_id},
            )
            row = await cursor.fetchone()
            if row is None:
                return None
            next_state = state_after_failure(_record(row), retryable)
            cursor = await connection.execute(
                f"""
                UPDATE tasks
                SET state = %(state)s, error = %(error)s, lease_expires_at = NULL,
                    -- A retried task is nobody's until claimed again; a failed one shows who failed it.
                    assigned_agent_id = CASE WHEN %(state)s = 'pending' THEN NULL ELSE assigned_agent_id END,
                    attempt = attempt + %(attempt_increment)s, updated_at = now()
                WHERE id = %(id)s
                RETURNING {_TASK_COLUMNS}
                """,
                {
                    "id": report.task_id,
                    "state": next_state.value,
                    "error": error,
                    "attempt_increment": 1 if next_state == TaskState.PENDING else 0,
                },
            )
            row = await cursor.fetchone()
        assert row is not None
        return _record(row)
