"""All of the orchestrator's SQL: the tasks table.

Every change to a task that an agent reports is a compare-and-set on (id, attempt, agent, state),
so a stale or foreign report updates nothing.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from services.orchestrator import metrics
from services.orchestrator.domain import (
    MAX_ERROR_LENGTH,
    AttemptReport,
    CompletedAttempt,
    Completion,
    NewTask,
    RecordedDecision,
    Submitted,
    TaskCount,
    TaskEvent,
    TaskRecord,
    TaskRequirements,
    TaskState,
    end_of_attempt,
    seconds_text,
)
from services.orchestrator.planning import WorkQuery
from services.orchestrator.routing import Decision, ScoredAgent, Strategy
from shared import tenancy
from shared.database import Pool
from shared.tenancy import TaskScope

_TASK_COLUMNS = """
    id::text AS id, task_type, state, payload, result, error, priority, required_languages,
    required_specializations, required_labels, attempt, max_attempts, timeout_ms, idempotency_key,
    assigned_agent_id, progress, progress_message, lease_expires_at, created_at, updated_at, not_before,
    schedule_to_start_timeout_ms, assigned_at, tenant, submitted_by::text AS submitted_by, trace_context
"""
# The same columns where another table in the statement has an id too.
_QUALIFIED_TASK_COLUMNS = ", ".join(f"t.{column.strip()}" for column in _TASK_COLUMNS.split(","))
# Which tasks a caller may reach (shared.tenancy.TaskScope): its tenant's, and perhaps only its own.
_IN_SCOPE = """
    (%(scope_tenant)s::text IS NULL OR tenant = %(scope_tenant)s)
    AND (%(scope_submitter)s::uuid IS NULL OR submitted_by = %(scope_submitter)s::uuid)
"""


def _scope(scope: TaskScope) -> dict[str, Any]:
    return {"scope_tenant": scope.tenant, "scope_submitter": scope.submitted_by}


_IN_FLIGHT = "('assigned', 'running')"


# insert_tasks: new PENDING rows in one statement, in the order given, with the ids given; a row whose
# idempotency key is taken in its tenant (by an earlier submit, or earlier in this statement) is not made,
# and is missing from what comes back (the caller reads that row).
_INSERT_TASKS = f"""
    INSERT INTO tasks (id, task_type, state, payload, priority, required_languages, required_specializations,
                       required_labels, max_attempts, timeout_ms, idempotency_key, schedule_to_start_timeout_ms,
                       tenant, submitted_by, trace_context)
    SELECT new.id, new.task_type, 'pending', new.payload, new.priority,
           ARRAY(SELECT jsonb_array_elements_text(new.languages)),
           ARRAY(SELECT jsonb_array_elements_text(new.specializations)),
           new.labels, new.max_attempts, new.timeout_ms, new.idempotency_key, new.schedule_to_start_timeout_ms,
           %(tenant)s, %(submitted_by)s::uuid, %(trace_context)s::jsonb
    FROM ROWS FROM (
        jsonb_to_recordset(%(tasks)s)
            AS (id uuid, task_type text, payload jsonb, priority int, languages jsonb, specializations jsonb,
                labels jsonb, max_attempts int, timeout_ms bigint, idempotency_key text,
                schedule_to_start_timeout_ms bigint)
    ) WITH ORDINALITY AS new(id, task_type, payload, priority, languages, specializations, labels, max_attempts,
                             timeout_ms, idempotency_key, schedule_to_start_timeout_ms, position)
    ORDER BY new.position
    ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING {_TASK_COLUMNS}
"""


@dataclass(frozen=True)
class Submission:
    """Tasks to insert in one statement (all or none), with the ids they get: made here, so that each row
    that comes back is known to be its task's without relying on order. One tenant's, one submitter's."""

    tasks: list[NewTask]
    ids: list[str]
    # The submitting call's trace context, stored with each task (empty: untraced).
    trace_context: dict[str, str] = field(default_factory=dict)

    def tasks_by_id(self) -> list[tuple[str, NewTask]]:
        return list(zip(self.ids, self.tasks, strict=True))

    @classmethod
    def of(cls, tasks: list[NewTask], trace_context: dict[str, str] | None = None) -> Submission:
        assert len({(task.tenant, task.submitted_by) for task in tasks}) == 1, "a batch is one submitter's"
        return cls(tasks, [str(uuid.uuid4()) for _ in tasks], trace_context or {})


def _insert_parameters(submission: Submission) -> dict[str, Any]:
    tasks = submission.tasks
    return {
        "tasks": Jsonb(
            [
                {
                    "id": task_id,
                    "task_type": task.task_type,
                    "payload": task.payload,
                    "priority": task.priority,
                    "languages": task.requirements.languages,
                    "specializations": task.requirements.specializations,
                    "labels": task.requirements.labels,
                    "max_attempts": task.max_attempts,
                    "timeout_ms": task.timeout_ms,
                    "idempotency_key": task.idempotency_key,
                    "schedule_to_start_timeout_ms": task.schedule_to_start_timeout_ms,
                }
                for task_id, task in zip(submission.ids, tasks, strict=True)
            ]
        ),
        "tenant": tasks[0].tenant,
        "submitted_by": tasks[0].submitted_by,
        "trace_context": Jsonb(submission.trace_context) if submission.trace_context else None,
    }


_DECISION_COLUMNS = """
    task_id::text AS task_id, attempt, agent_id, strategy, confidence, score, explored, reason, alternatives,
    decided_at
"""


# count_held_by_agent: in-flight attempts per agent, for the agents given (absent means none).
_HELD_COUNTS = f"""
    SELECT assigned_agent_id, count(*) AS held FROM tasks
    WHERE assigned_agent_id = ANY(%s) AND state IN {_IN_FLIGHT}
    GROUP BY assigned_agent_id
"""

# pending_candidates: for each query, up to max_tasks PENDING tasks of its tenant and type whose backoff is
# over and that its agents can take, highest priority then oldest, locked; rows another transaction holds
# are skipped (SKIP LOCKED), never waited for or taken twice. A task may answer several queries; each row
# says which (query_index, from 1).
_PENDING_CANDIDATES = f"""
    SELECT q.query_index, {_QUALIFIED_TASK_COLUMNS}
    FROM ROWS FROM (
        jsonb_to_recordset(%(queries)s)
            AS (tenant text, task_type text, languages text[], specializations text[], labels jsonb, max_tasks int)
    ) WITH ORDINALITY AS q(tenant, task_type, languages, specializations, labels, max_tasks, query_index)
    CROSS JOIN LATERAL (
        SELECT * FROM tasks
        WHERE state = 'pending' AND tenant = q.tenant AND task_type = q.task_type
          AND (not_before IS NULL OR not_before <= now())
          -- Most tasks require nothing, and saying so first lets the planner see how many rows qualify:
          -- it reads the index in claim order and stops at the LIMIT. With the containment tests alone
          -- (which it cannot estimate) it expected one row, and read and sorted every pending row.
          AND (required_languages = '{{}}' OR required_languages <@ q.languages)
          AND (required_specializations = '{{}}' OR required_specializations <@ q.specializations)
          AND (required_labels = '{{}}' OR required_labels <@ q.labels)
        ORDER BY priority DESC, created_at, id
        LIMIT q.max_tasks
        FOR UPDATE SKIP LOCKED
    ) t
"""

# assign_tasks: the locked tasks become ASSIGNED to the chosen agents with fresh leases, and each attempt's
# routing decision is recorded (replacing one left by an attempt that was rolled back), in one statement.
_ASSIGN = f"""
    WITH chosen AS (
        SELECT * FROM jsonb_to_recordset(%(chosen)s)
            AS c(id uuid, agent_id text, strategy text, confidence float8, score float8, explored bool, reason text,
                 alternatives jsonb)
    ), assigned AS (
        UPDATE tasks t
        SET state = 'assigned', assigned_agent_id = chosen.agent_id, assigned_at = clock_timestamp(),
            lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
            progress = 0, progress_message = '', not_before = NULL, error = '', updated_at = now()
        FROM chosen
        WHERE t.id = chosen.id
        RETURNING {_QUALIFIED_TASK_COLUMNS}
    ), decided AS (
        INSERT INTO routing_decisions (task_id, attempt, agent_id, strategy, confidence, score, explored, reason,
                                       alternatives)
        SELECT a.id::uuid, a.attempt, c.agent_id, c.strategy, c.confidence, c.score, c.explored, c.reason,
               c.alternatives
        FROM assigned a JOIN chosen c ON c.id = a.id::uuid
        ON CONFLICT (task_id, attempt) DO UPDATE
        SET agent_id = excluded.agent_id, strategy = excluded.strategy, confidence = excluded.confidence,
            score = excluded.score, explored = excluded.explored, reason = excluded.reason,
            alternatives = excluded.alternatives, decided_at = now()
    )
    SELECT * FROM assigned
"""


# complete_tasks: compare-and-set on each attempt, all in one statement; returns those recorded, by (task
# id, attempt); the others were stale or foreign and are unchanged. Rows are locked in id order, as every
# statement that locks several tasks does, so two such statements cannot deadlock. One (task id,
# attempt) per statement.
_COMPLETE_TASKS = f"""
    WITH reported AS (
        SELECT * FROM jsonb_to_recordset(%(reported)s) AS r(id uuid, attempt int, agent_id text, result jsonb)
    ), locked AS (
        SELECT t.id FROM tasks t JOIN reported r USING (id)
        WHERE t.attempt = r.attempt AND t.assigned_agent_id = r.agent_id AND t.state IN {_IN_FLIGHT}
        ORDER BY t.id
        FOR UPDATE OF t
    )
    UPDATE tasks t
    SET state = 'completed', result = r.result, progress = 1, lease_expires_at = NULL, updated_at = now()
    FROM reported r JOIN locked USING (id)
    WHERE t.id = r.id AND t.attempt = r.attempt AND t.assigned_agent_id = r.agent_id AND t.state IN {_IN_FLIGHT}
    RETURNING t.id::text AS id, t.attempt, t.task_type, t.assigned_at
"""


def _completion_parameters(completions: list[Completion]) -> dict[str, Any]:
    return {
        "reported": Jsonb(
            [
                {
                    "id": completion.report.task_id,
                    "attempt": completion.report.attempt,
                    "agent_id": completion.report.agent_id,
                    "result": completion.result,
                }
                for completion in completions
            ]
        )
    }


def _completed(rows: list[DictRow]) -> dict[tuple[str, int], CompletedAttempt]:
    return {
        (row["id"], row["attempt"]): CompletedAttempt(row["id"], row["attempt"], row["task_type"], row["assigned_at"])
        for row in rows
    }


async def _queue_inserts_and_completions(
    connection: AsyncConnection[DictRow], submissions: list[Submission], completions: list[Completion]
) -> tuple[list[AsyncCursor[DictRow]], AsyncCursor[DictRow] | None]:
    """In a pipeline: queues insert_tasks per submission and complete_tasks for the completions, without
    waiting for their rows."""
    inserting = [await connection.execute(_INSERT_TASKS, _insert_parameters(submission)) for submission in submissions]
    completing = await connection.execute(_COMPLETE_TASKS, _completion_parameters(completions)) if completions else None
    return inserting, completing


def _submitted_record(task_id: str, task: NewTask) -> TaskRecord:
    """A submitted task as its row will read once inserted, as far as routing looks at it."""
    now = datetime.now(UTC)
    return TaskRecord(
        id=task_id,
        task_type=task.task_type,
        state=TaskState.PENDING,
        payload=task.payload,
        result=None,
        error="",
        priority=task.priority,
        requirements=task.requirements,
        attempt=1,
        max_attempts=task.max_attempts,
        timeout_ms=task.timeout_ms,
        idempotency_key=task.idempotency_key,
        assigned_agent_id=None,
        progress=0.0,
        progress_message="",
        lease_expires_at=None,
        created_at=now,
        updated_at=now,
        schedule_to_start_timeout_ms=task.schedule_to_start_timeout_ms,
        tenant=task.tenant,
        submitted_by=task.submitted_by,
    )


async def _assigned(cursor: AsyncCursor[DictRow], planned: list[tuple[TaskRecord, Decision]]) -> list[Assigned]:
    """The rows _ASSIGN returned, each with its decision, in the planned order (a task whose row was not
    there to update is left out)."""
    rows = {row["id"]: _record(row) for row in await cursor.fetchall()}
    return [Assigned(rows[task.id], decision) for task, decision in planned if task.id in rows]


@dataclass(frozen=True)
class Assigned:
    """A task just assigned by the dispatcher, and why to that agent."""

    task: TaskRecord
    decision: Decision


@dataclass(frozen=True)
class Round:
    """What one dispatch round committed: the rows it inserted (by id), the completions it recorded and the
    tasks it assigned."""

    inserted: dict[str, TaskRecord]
    completed: dict[tuple[str, int], CompletedAttempt]
    assigned: list[Assigned]
    # Some query found as many PENDING tasks as it asked for: more of them may be waiting.
    limit_reached: bool


# Given the locked PENDING candidates, which to assign to whom (the rest stay PENDING).
AssignmentPlanner = Callable[[list[TaskRecord]], list[tuple[TaskRecord, Decision]]]


def _alternatives_json(decision: Decision) -> list[dict[str, Any]]:
    return [
        {"agent_id": alternative.agent_id, "score": alternative.score, "reason": alternative.reason}
        for alternative in decision.alternatives
    ]


def _decision(row: dict[str, Any]) -> RecordedDecision:
    return RecordedDecision(
        attempt=row["attempt"],
        decided_at=row["decided_at"],
        decision=Decision(
            agent_id=row["agent_id"],
            strategy=Strategy(row["strategy"]),
            score=row["score"],
            confidence=row["confidence"],
            explored=row["explored"],
            reason=row["reason"],
            alternatives=tuple(
                ScoredAgent(each["agent_id"], each["score"], each.get("reason", "")) for each in row["alternatives"]
            ),
        ),
    )


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
        not_before=row["not_before"],
        schedule_to_start_timeout_ms=row["schedule_to_start_timeout_ms"],
        assigned_at=row["assigned_at"],
        tenant=row["tenant"],
        submitted_by=row["submitted_by"],
        trace_context=row["trace_context"] or {},
    )


class TaskStore:
    def __init__(
        self,
        pool: Pool,
        lease_seconds: float,
        agents_failed: Callable[[list[TaskRecord]], None] = lambda tasks: None,
    ) -> None:
        self._pool = pool
        self._lease_seconds = lease_seconds
        # Told, after commit, of attempts taken back from their agents (lease expired, timed out, agent
        # gone), as they were before: these count against the agent's track record.
        self._agents_failed = agents_failed

    async def insert_many(self, submission: Submission) -> dict[str, TaskRecord]:
        """insert_tasks on its own (the dispatcher inserts submissions within its rounds instead): the rows
        made, by id; a task whose idempotency key was taken has none (see `submitted`)."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(_INSERT_TASKS, _insert_parameters(submission))
            return {row["id"]: _record(row) for row in await cursor.fetchall()}

    async def submitted(self, submission: Submission, inserted: dict[str, TaskRecord]) -> list[Submitted]:
        """Each task of an inserted submission, in order: its new row, or for one whose idempotency key was
        taken in its tenant (by an earlier submit or earlier in the batch), the row that holds the key."""
        tasks = submission.tasks
        taken_keys = [
            task.idempotency_key for task, task_id in zip(tasks, submission.ids, strict=True) if task_id not in inserted
        ]
        existing: dict[str, TaskRecord] = {}
        if taken_keys:
            async with self._pool.connection() as connection:
                cursor = await connection.execute(
                    f"SELECT {_TASK_COLUMNS} FROM tasks WHERE tenant = %s AND idempotency_key = ANY(%s)",
                    (tasks[0].tenant, taken_keys),
                )
                existing = {row["idempotency_key"]: _record(row) for row in await cursor.fetchall()}
        submitted = []
        for task, task_id in zip(tasks, submission.ids, strict=True):
            if task_id in inserted:
                submitted.append(Submitted(inserted[task_id], created=True))
            else:
                assert task.idempotency_key in existing, "a conflicting idempotency key must name an existing task"
                submitted.append(Submitted(existing[task.idempotency_key], created=False))
        return submitted

    async def count_by_type_and_state(self, scope: TaskScope) -> list[TaskCount]:
        """count_tasks: one row per (type, state) that has tasks in scope, with its oldest submission time."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                f"""
                SELECT task_type, state, count(*) AS count, min(created_at) AS oldest_created_at
                FROM tasks
                WHERE {_IN_SCOPE}
                GROUP BY task_type, state
                ORDER BY task_type, state
                """,
                _scope(scope),
            )
            rows = await cursor.fetchall()
        return [
            TaskCount(row["task_type"], TaskState(row["state"]), row["count"], row["oldest_created_at"]) for row in rows
        ]

    async def get(self, task_id: str, scope: TaskScope) -> TaskRecord | None:
        """get_task: the task, or None when it is unknown or out of the caller's scope (the same answer)."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = %(id)s AND {_IN_SCOPE}", {"id": task_id, **_scope(scope)}
            )
            row = await cursor.fetchone()
        return _record(row) if row else None

    async def list_page(
        self,
        scope: TaskScope,
        before: tuple[datetime, str] | None,
        limit: int,
        state: TaskState | None,
        task_type: str | None,
    ) -> list[TaskRecord]:
        """list_tasks: up to `limit` tasks in scope older than `before`, newest first (keyset paging)."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                f"""
                SELECT {_TASK_COLUMNS} FROM tasks
                WHERE {_IN_SCOPE}
                  AND (%(before_at)s::timestamptz IS NULL OR (created_at, id) < (%(before_at)s, %(before_id)s::uuid))
                  AND (%(state)s::text IS NULL OR state = %(state)s)
                  AND (%(task_type)s::text IS NULL OR task_type = %(task_type)s)
                ORDER BY created_at DESC, id DESC
                LIMIT %(limit)s
                """,
                {
                    **_scope(scope),
                    "before_at": before[0] if before else None,
                    "before_id": before[1] if before else None,
                    "state": state.value if state else None,
                    "task_type": task_type,
                    "limit": limit,
                },
            )
            rows = await cursor.fetchall()
        return [_record(row) for row in rows]

    async def cancel(self, task_id: str, reason: str, scope: TaskScope) -> TaskRecord | None:
        """cancel_task: moves one unfinished task in scope to CANCELLED (a held one keeps its agent, whose
        stream the trigger's NOTIFY tells); None when the task is unknown, out of scope or finished."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                f"""
                UPDATE tasks
                SET state = 'cancelled', error = %(reason)s, lease_expires_at = NULL, updated_at = now()
                WHERE id = %(id)s AND state IN ('pending', 'assigned', 'running') AND {_IN_SCOPE}
                RETURNING {_TASK_COLUMNS}
                """,
                {"id": task_id, "reason": reason, **_scope(scope)},
            )
            row = await cursor.fetchone()
        return _record(row) if row else None

    async def dispatch(
        self,
        submissions: list[Submission],
        completions: list[Completion],
        agent_ids: list[str],
        queries_for: Callable[[dict[str, int]], list[WorkQuery]],
        plan: AssignmentPlanner,
    ) -> Round:
        """dispatch_round: in one transaction, inserts the submissions (as insert_tasks), records the
        completions (as complete_tasks), reads what the agents hold (`queries_for` turns that into the work
        to look for), then locks PENDING tasks whose backoff is over, for each query up to its limit of the
        given type that its agents can take, highest priority then oldest (SKIP LOCKED: a row another
        orchestrator is dispatching is skipped, never taken twice); `plan` picks an agent for some of them;
        those become ASSIGNED to it with their routing decisions. The rest stay PENDING, untouched. A task
        submitted in the round can be assigned in it: a free agent gets new work with one commit. Pipelined:
        at most three round trips to the database, whatever the number of tasks."""
        async with self._pool.connection() as connection, connection.pipeline(), connection.transaction():
            inserting, completing = await _queue_inserts_and_completions(connection, submissions, completions)
            cursor = await connection.execute(_HELD_COUNTS, (agent_ids,))
            held = {row["assigned_agent_id"]: row["held"] for row in await cursor.fetchall()}
            inserted = {row["id"]: _record(row) for each in inserting for row in await each.fetchall()}
            completed = _completed(await completing.fetchall()) if completing else {}
            queries = queries_for(held)
            if not queries:
                return Round(inserted, completed, [], False)
            cursor = await connection.execute(
                _PENDING_CANDIDATES, {"queries": Jsonb([query.as_json() for query in queries])}
            )
            rows = await cursor.fetchall()
            unique = {row["id"]: _record(row) for row in rows}
            found = Counter(row["query_index"] for row in rows)
            limit_reached = any(found[index] >= query.max_tasks for index, query in enumerate(queries, start=1))
            planned = plan(list(unique.values()))
            if not planned:
                return Round(inserted, completed, [], limit_reached)
            cursor = await connection.execute(_ASSIGN, self._assign_parameters(planned))
        # The rows arrived with the commit (the pipeline syncs when the transaction ends).
        return Round(inserted, completed, await _assigned(cursor, planned), limit_reached)

    async def dispatch_new(
        self, submissions: list[Submission], completions: list[Completion], plan: AssignmentPlanner
    ) -> Round:
        """dispatch_new_round: for when no PENDING task can be waiting for the agents (the dispatcher knows
        when, see Dispatcher): the only work to route is the submitted tasks, so they are routed before they
        exist, then inserted (as insert_tasks), the completions recorded (as complete_tasks) and the routed
        tasks assigned with their decisions (as in dispatch_round), in one transaction and one round trip to
        the database. A submitted task that was not inserted (its idempotency key was taken) is not
        assigned; one left unrouted stays PENDING."""
        submitted = [_submitted_record(task_id, task) for each in submissions for task_id, task in each.tasks_by_id()]
        planned = plan(submitted)
        async with self._pool.connection() as connection, connection.pipeline(), connection.transaction():
            inserting, completing = await _queue_inserts_and_completions(connection, submissions, completions)
            assigning = await connection.execute(_ASSIGN, self._assign_parameters(planned)) if planned else None
        # Every row arrived with the commit.
        inserted = {row["id"]: _record(row) for each in inserting for row in await each.fetchall()}
        completed = _completed(await completing.fetchall()) if completing else {}
        assigned = await _assigned(assigning, planned) if assigning else []
        return Round(inserted, completed, assigned, False)

    def _assign_parameters(self, planned: list[tuple[TaskRecord, Decision]]) -> dict[str, Any]:
        return {
            "chosen": Jsonb(
                [
                    {
                        "id": task.id,
                        "agent_id": decision.agent_id,
                        "strategy": decision.strategy.value,
                        "confidence": decision.confidence,
                        "score": decision.score,
                        "explored": decision.explored,
                        "reason": decision.reason,
                        "alternatives": _alternatives_json(decision),
                    }
                    for task, decision in planned
                ]
            ),
            "lease_seconds": self._lease_seconds,
        }

    async def with_routing(self, records: list[TaskRecord]) -> list[TaskRecord]:
        """latest_routing_decisions: each task with the decision for its latest routed attempt, if any."""
        if not records:
            return records
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                f"""
                SELECT DISTINCT ON (task_id) {_DECISION_COLUMNS} FROM routing_decisions
                WHERE task_id = ANY(%s::uuid[])
                ORDER BY task_id, attempt DESC
                """,
                ([record.id for record in records],),
            )
            latest = {row["task_id"]: _decision(row) for row in await cursor.fetchall()}
        return [replace(record, routing=latest.get(record.id)) for record in records]

    async def routing_decisions(self, task_id: str) -> list[RecordedDecision]:
        """routing_decisions: every decision for the task, oldest attempt first."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                f"SELECT {_DECISION_COLUMNS} FROM routing_decisions WHERE task_id = %s ORDER BY attempt",
                (task_id,),
            )
            return [_decision(row) for row in await cursor.fetchall()]

    async def renew_held(self, agent_id: str) -> list[TaskRecord]:
        """renew_held_tasks: the tasks an agent holds, with fresh leases, oldest assignment first.
        Sent again when the agent reconnects, since an assignment may have been lost with the old stream."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                f"""
                UPDATE tasks
                SET lease_expires_at = now() + make_interval(secs => %(lease_seconds)s), updated_at = now()
                WHERE assigned_agent_id = %(agent_id)s AND state IN {_IN_FLIGHT}
                RETURNING {_TASK_COLUMNS}
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

    async def complete_many(self, completions: list[Completion]) -> dict[tuple[str, int], CompletedAttempt]:
        """complete_tasks on its own (the dispatcher records completions within its rounds instead)."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(_COMPLETE_TASKS, _completion_parameters(completions))
            return _completed(await cursor.fetchall())

    async def fail(self, report: AttemptReport, error: str, retryable: bool) -> TaskRecord | None:
        """fail_task: under a row lock, checks the attempt, then either puts the task back to PENDING
        with the next attempt after a backoff, or marks it FAILED (the domain decides); None when the
        report is stale."""
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
            # The agent itself ended the attempt: no cancellation goes back to it (see migration 0005).
            await connection.execute("SET LOCAL arbiter.reported_by_agent = 'on'")
            ended = await _end_attempts(
                connection, [_record(row)], lambda task: error, retryable=retryable, backoff=True
            )
        return ended[0]

    # Attempts that end without their agent's report. Each selection locks with SKIP LOCKED, so every
    # orchestrator can sweep at once: a row is handled by exactly one of them, and a row an agent's
    # report holds is left for the next sweep.

    async def expire_leases(self, limit: int) -> list[TaskRecord]:
        """expire_leases: in-flight attempts whose lease ran out end as retryable failures (backoff)."""
        return await self._sweep(
            f"""
            SELECT {_TASK_COLUMNS} FROM tasks
            WHERE state IN {_IN_FLIGHT} AND lease_expires_at < now()
            ORDER BY lease_expires_at
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
            """,
            {"limit": limit},
            lambda task: (
                f"lease expired: no progress from agent '{tenancy.plain(task.assigned_agent_id or '')}' in time"
            ),
            retryable=True,
            backoff=True,
            agents_failed=True,
        )

    async def time_out_attempts(self, limit: int) -> list[TaskRecord]:
        """time_out_attempts: in-flight attempts past the task's timeout end as retryable failures."""
        return await self._sweep(
            f"""
            SELECT {_TASK_COLUMNS} FROM tasks
            WHERE state IN {_IN_FLIGHT} AND timeout_ms IS NOT NULL
              AND assigned_at + timeout_ms * interval '1 millisecond' < now()
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
            """,
            {"limit": limit},
            lambda task: f"attempt {task.attempt} timed out after {seconds_text(task.timeout_ms or 0)}",
            retryable=True,
            backoff=True,
            agents_failed=True,
        )

    async def fail_unstarted(self, limit: int) -> list[TaskRecord]:
        """fail_unstarted: PENDING tasks no agent took within their schedule_to_start_timeout are FAILED.
        The wait counts from when the task became PENDING, or from the end of its backoff."""
        return await self._sweep(
            f"""
            SELECT {_TASK_COLUMNS} FROM tasks
            WHERE state = 'pending' AND schedule_to_start_timeout_ms IS NOT NULL
              AND GREATEST(updated_at, COALESCE(not_before, updated_at))
                  + schedule_to_start_timeout_ms * interval '1 millisecond' < now()
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
            """,
            {"limit": limit},
            lambda task: (
                f"no agent started the task within its schedule_to_start_timeout of "
                f"{seconds_text(task.schedule_to_start_timeout_ms or 0)}: check that an agent offering "
                f"task type '{task.task_type}' with the required capabilities is connected"
            ),
            retryable=False,
            backoff=False,
            agents_failed=False,
        )

    async def _sweep(
        self,
        select: str,
        parameters: dict[str, Any],
        reason: Callable[[TaskRecord], str],
        *,
        retryable: bool,
        backoff: bool,
        agents_failed: bool,
    ) -> list[TaskRecord]:
        async with self._pool.connection() as connection, connection.transaction():
            cursor = await connection.execute(select, parameters)
            tasks = [_record(row) for row in await cursor.fetchall()]
            ended = await _end_attempts(connection, tasks, reason, retryable=retryable, backoff=backoff)
        if agents_failed and tasks:
            self._agents_failed(tasks)
        return ended

    async def release_agent(self, agent_id: str, reason: str) -> list[TaskRecord]:
        """release_agent_tasks: every attempt the agent holds ends at once (no backoff), attempt bumped,
        for another agent to take; FAILED where no attempts are left."""
        return await self._sweep(
            f"""
            SELECT {_TASK_COLUMNS} FROM tasks
            WHERE assigned_agent_id = %(agent_id)s AND state IN {_IN_FLIGHT}
            ORDER BY id
            FOR UPDATE
            """,
            {"agent_id": agent_id},
            lambda task: reason,
            retryable=True,
            backoff=False,
            agents_failed=True,
        )

    async def count_held(self, agent_ids: list[str]) -> int:
        """count_held_tasks: in-flight attempts held by any of these agents."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                f"SELECT count(*) AS n FROM tasks WHERE assigned_agent_id = ANY(%s) AND state IN {_IN_FLIGHT}",
                (agent_ids,),
            )
            row = await cursor.fetchone()
        return int(row["n"]) if row else 0

    async def holders(self) -> list[str]:
        """holding_agents: the agents that hold in-flight attempts now."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                f"SELECT DISTINCT assigned_agent_id FROM tasks WHERE state IN {_IN_FLIGHT}"
            )
            return [row["assigned_agent_id"] for row in await cursor.fetchall()]

    async def types_ready_since(self, since: datetime) -> list[str]:
        """backoffs_ended: task types with PENDING tasks whose backoff ended after `since`."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                """
                SELECT DISTINCT task_type FROM tasks
                WHERE state = 'pending' AND not_before > %(since)s AND not_before <= now()
                """,
                {"since": since},
            )
            return [row["task_type"] for row in await cursor.fetchall()]

    async def prune_finished(self, older_than: timedelta, batch_size: int) -> int:
        """prune_finished_tasks: deletes up to `batch_size` COMPLETED, FAILED or CANCELLED tasks last
        changed before now - `older_than`, with their events (ON DELETE CASCADE)."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                """
                DELETE FROM tasks WHERE id IN (
                    SELECT id FROM tasks
                    WHERE state IN ('completed', 'failed', 'cancelled') AND updated_at < now() - %(older_than)s
                    LIMIT %(batch_size)s
                    FOR UPDATE SKIP LOCKED
                )
                """,
                {"older_than": older_than, "batch_size": batch_size},
            )
            return cursor.rowcount

    # Which stream each agent has open, across orchestrators.

    async def open_stream(self, agent_id: str, stream_id: str, instance_id: str) -> None:
        """open_agent_stream: this stream is now the agent's; any older one (here or elsewhere) is not."""
        async with self._pool.connection() as connection:
            await connection.execute(
                """
                INSERT INTO agent_streams (agent_id, stream_id, instance_id) VALUES (%s, %s, %s)
                ON CONFLICT (agent_id) DO UPDATE
                SET stream_id = excluded.stream_id, instance_id = excluded.instance_id, opened_at = now()
                """,
                (agent_id, stream_id, instance_id),
            )

    async def close_stream(
        self,
        agent_id: str,
        stream_id: str,
        release_reason: str | None,
        *,
        agent_failed: bool = True,
        only: Collection[tuple[str, int]] | None = None,
    ) -> list[TaskRecord]:
        """close_agent_stream: forgets the stream if it is still the agent's latest and, given a reason,
        releases what the agent holds in the same transaction (given `only`, just those attempts).
        A stream a newer one replaced releases nothing: the agent is connected again."""
        async with self._pool.connection() as connection, connection.transaction():
            cursor = await connection.execute(
                "DELETE FROM agent_streams WHERE agent_id = %s AND stream_id = %s RETURNING agent_id",
                (agent_id, stream_id),
            )
            if await cursor.fetchone() is None or release_reason is None:
                return []
            cursor = await connection.execute(
                f"""
                SELECT {_TASK_COLUMNS} FROM tasks
                WHERE assigned_agent_id = %s AND state IN {_IN_FLIGHT}
                ORDER BY id
                FOR UPDATE
                """,
                (agent_id,),
            )
            tasks = [_record(row) for row in await cursor.fetchall()]
            if only is not None:
                tasks = [task for task in tasks if (task.id, task.attempt) in only]
            ended = await _end_attempts(connection, tasks, lambda task: release_reason, retryable=True, backoff=False)
        if tasks and agent_failed:
            self._agents_failed(tasks)
        return ended

    async def history(self, task_id: str) -> list[TaskEvent]:
        """task_history: the task's state changes, oldest first."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                """
                SELECT at, from_state, to_state, attempt, agent_id, reason FROM task_events
                WHERE task_id = %s ORDER BY id
                """,
                (task_id,),
            )
            rows = await cursor.fetchall()
        return [
            TaskEvent(
                at=row["at"],
                from_state=TaskState(row["from_state"]) if row["from_state"] else None,
                to_state=TaskState(row["to_state"]),
                attempt=row["attempt"],
                agent_id=row["agent_id"],
                reason=row["reason"],
            )
            for row in rows
        ]


async def _end_attempts(
    connection: AsyncConnection[DictRow],
    tasks: list[TaskRecord],
    reason: Callable[[TaskRecord], str],
    *,
    retryable: bool,
    backoff: bool,
) -> list[TaskRecord]:
    """Ends each locked task's current attempt as the domain decides: PENDING again with the next attempt
    (after a backoff for failures and timeouts, at once for releases), or FAILED."""
    now = datetime.now(UTC)
    ended: list[TaskRecord] = []
    for task in tasks:
        end = end_of_attempt(
            task, reason(task), retryable=retryable, backoff=backoff, now=now, random_fraction=random.random()
        )
        cursor = await connection.execute(
            f"""
            UPDATE tasks
            SET state = %(state)s, error = %(error)s, lease_expires_at = NULL, not_before = %(not_before)s,
                attempt = attempt + %(attempt_increment)s, updated_at = now(),
                -- A retried task is nobody's until claimed again; a failed one shows who failed it.
                assigned_agent_id = CASE WHEN %(state)s = 'pending' THEN NULL ELSE assigned_agent_id END
            WHERE id = %(id)s
            RETURNING {_TASK_COLUMNS}
            """,
            {
                "id": task.id,
                "state": end.state.value,
                "error": end.error[:MAX_ERROR_LENGTH],
                "not_before": end.not_before,
                "attempt_increment": 1 if end.state == TaskState.PENDING else 0,
            },
        )
        row = await cursor.fetchone()
        assert row is not None, "the row is locked by this transaction"
        ended.append(_record(row))
    metrics.record_attempt_ends(ended)
    return ended
