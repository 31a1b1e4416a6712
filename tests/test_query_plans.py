"""The hot paths' SQL uses the index meant for it, and never scans the whole tasks table.

Each test runs the real TaskStore method against a database holding enough rows that the planner has a
real choice (pending work over several tenants and types, finished and in-flight tasks, ANALYZEd),
records the statements the method sent (a cursor class that notes each query and its parameters), then
EXPLAINs each one with the same parameters. The SQL is never copied here, so a change to it is checked
as it is.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import AsyncCursor
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from services.orchestrator.domain import AttemptReport, Completion, NewTask, TaskRecord, TaskRequirements
from services.orchestrator.planning import WorkQuery
from services.orchestrator.routing import Decision, Strategy
from services.orchestrator.storage import Assigned, Submission, TaskStore
from tests.support.database import PostgresForTests

TENANTS = ("default", "acme", "globex")
TASK_TYPES = ("review", "summarize", "translate", "test", "lint")
PENDING_ROWS = 30_000
FINISHED_ROWS = 15_000
IN_FLIGHT_ROWS = 2_000
AGENTS_HOLDING = 100
CLAIMING_AGENT = "default/plan-agent"

# One worker fills one database for the whole module (make test runs pytest-xdist with --dist loadgroup).
pytestmark = pytest.mark.xdist_group("query_plans")


# The rows: one statement each, so the whole fill takes a few seconds.
FILL = [
    f"""
    INSERT INTO tasks (task_type, state, priority, max_attempts, idempotency_key, tenant, created_at)
    SELECT (ARRAY{list(TASK_TYPES)})[n % {len(TASK_TYPES)} + 1], 'pending', n % 3, 3,
           CASE WHEN n % 2 = 0 THEN 'key-' || n END, (ARRAY{list(TENANTS)})[n % {len(TENANTS)} + 1],
           now() - n * interval '10 ms'
    FROM generate_series(1, {PENDING_ROWS}) AS n
    """,
    f"""
    INSERT INTO tasks (task_type, state, result, progress, max_attempts, tenant, assigned_agent_id,
                       assigned_at, created_at, updated_at)
    SELECT (ARRAY{list(TASK_TYPES)})[n % {len(TASK_TYPES)} + 1], 'completed', '{{}}', 1, 3,
           (ARRAY{list(TENANTS)})[n % {len(TENANTS)} + 1], 'default/agent-' || n % {AGENTS_HOLDING},
           now() - interval '1 hour', now() - interval '1 hour', now() - interval '1 hour' + n * interval '1 ms'
    FROM generate_series(1, {FINISHED_ROWS}) AS n
    """,
    # Leases from 20 s ago to 40 s ahead: a third of them have expired.
    f"""
    INSERT INTO tasks (task_type, state, max_attempts, tenant, assigned_agent_id, assigned_at,
                       lease_expires_at)
    SELECT (ARRAY{list(TASK_TYPES)})[n % {len(TASK_TYPES)} + 1], 'running', 3, 'default',
           'default/agent-' || n % {AGENTS_HOLDING}, now() - interval '1 minute',
           now() + (n % 60 - 20) * interval '1 second'
    FROM generate_series(1, {IN_FLIGHT_ROWS}) AS n
    """,
    "ANALYZE tasks",
]


@pytest.fixture(scope="module")
def planned_database_url(test_postgres: PostgresForTests) -> Iterator[str]:
    """One filled database for the module: filling takes seconds, and the tests only change a few rows."""
    url = test_postgres.create_database()
    with psycopg.connect(url, autocommit=True) as connection:
        for statement in FILL:
            connection.execute(statement)
    yield url
    test_postgres.drop_database(url)


# Recording what TaskStore sends.


@dataclass(frozen=True)
class Statement:
    query: str
    parameters: Any


def recording_cursor(statements: list[Statement]) -> type[AsyncCursor[DictRow]]:
    """A cursor class that notes every statement (an executemany once, with its first parameters)."""

    class RecordingCursor(AsyncCursor[DictRow]):
        async def execute(self, query: Any, params: Any = None, **options: Any) -> RecordingCursor:
            statements.append(Statement(str(query), params))
            await super().execute(query, params, **options)
            return self

        async def executemany(self, query: Any, params_seq: Any, **options: Any) -> None:
            every = list(params_seq)
            if every:
                statements.append(Statement(str(query), every[0]))
            await super().executemany(query, every, **options)

    return RecordingCursor


@dataclass
class RecordedStore:
    store: TaskStore
    statements: list[Statement]


@pytest.fixture
async def recorded(planned_database_url: str) -> AsyncIterator[RecordedStore]:
    """A TaskStore on a pool like the services' (dict rows, autocommit) whose cursors record."""
    statements: list[Statement] = []
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        planned_database_url,
        min_size=1,
        max_size=2,
        kwargs={"row_factory": dict_row, "autocommit": True, "cursor_factory": recording_cursor(statements)},
        open=False,
    )
    await pool.open(wait=True, timeout=30)
    try:
        yield RecordedStore(TaskStore(pool, lease_seconds=30), statements)
    finally:
        await pool.close()


# Reading plans.


@dataclass(frozen=True)
class Scan:
    node: str
    relation: str | None
    index: str | None


def scans(plan: dict[str, Any]) -> list[Scan]:
    """Every node of the plan tree that reads a relation or an index."""
    found = []
    if "Relation Name" in plan or "Index Name" in plan:
        found.append(Scan(plan["Node Type"], plan.get("Relation Name"), plan.get("Index Name")))
    for child in plan.get("Plans", []):
        found.extend(scans(child))
    return found


def planned_scans(connection: psycopg.Connection[Any], statements: Sequence[Statement]) -> list[Scan]:
    """The scans of every statement's plan, planned with the parameters it was sent with."""
    assert statements, "the method sent no SQL: nothing was checked"
    found = []
    for statement in statements:
        row = connection.execute(f"EXPLAIN (FORMAT JSON) {statement.query}", statement.parameters).fetchone()
        assert row is not None
        document = row[0] if isinstance(row[0], list) else json.loads(row[0])
        found.extend(scans(document[0]["Plan"]))
    return found


def explain(database_url: str, statements: Sequence[Statement]) -> list[Scan]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        return planned_scans(connection, statements)


def assert_uses_index(found: list[Scan], index: str) -> None:
    whole_table = [scan for scan in found if scan.node == "Seq Scan" and scan.relation == "tasks"]
    assert not whole_table, f"a sequential scan of tasks: {found}"
    assert any(scan.index == index for scan in found), f"no scan uses {index}: {found}"


async def in_flight(database_url: str, count: int) -> list[AttemptReport]:
    """Running attempts whose leases the sweeper test leaves alone."""
    async with await psycopg.AsyncConnection.connect(database_url) as connection:
        cursor = await connection.execute(
            "SELECT id::text, assigned_agent_id, attempt FROM tasks WHERE state = 'running' "
            "AND lease_expires_at > now() + interval '10 seconds' ORDER BY random() LIMIT %s",
            (count,),
        )
        rows = await cursor.fetchall()
    assert len(rows) == count, "the fill made too few running tasks with a lease"
    return [AttemptReport(task_id=task_id, agent_id=agent_id, attempt=attempt) for task_id, agent_id, attempt in rows]


def assign_all_to_one_agent(tasks: list[TaskRecord]) -> list[tuple[TaskRecord, Decision]]:
    decision = Decision(CLAIMING_AGENT, Strategy.CAPABILITY, 1.0, 1.0, False, "query-plan test", ())
    return [(task, decision) for task in tasks]


def review_query(max_tasks: int) -> WorkQuery:
    return WorkQuery("default", "review", frozenset(), frozenset(), {}, max_tasks)


async def claim_reviews(store: TaskStore, max_tasks: int) -> list[Assigned]:
    """One dispatch round for one agent that holds nothing and asks for `max_tasks` reviews."""
    dispatched = await store.dispatch(
        submissions=[],
        completions=[],
        agent_ids=[CLAIMING_AGENT],
        queries_for=lambda held: [review_query(max_tasks)],
        plan=assign_all_to_one_agent,
    )
    return dispatched.assigned


# The hot paths.


async def test_the_dispatchers_claim_reads_tasks_pending_by_type(
    recorded: RecordedStore, planned_database_url: str
) -> None:
    assigned = await claim_reviews(recorded.store, 4)

    assert len(assigned) == 4
    assert_uses_index(explain(planned_database_url, recorded.statements), "tasks_pending_by_type")


async def test_the_dispatchers_claim_reads_tasks_pending_by_type_in_claim_order(
    recorded: RecordedStore, planned_database_url: str
) -> None:
    """An index scan returns rows in the index's order, so the LIMIT stops it after a few rows; a bitmap
    scan reads every pending row of the type and sorts them all, which grows with the backlog."""
    await claim_reviews(recorded.store, 4)

    found = explain(planned_database_url, recorded.statements)
    claim_scans = [scan for scan in found if scan.index == "tasks_pending_by_type"]
    assert claim_scans, f"no scan uses tasks_pending_by_type: {found}"
    assert all(scan.node in ("Index Scan", "Index Only Scan") for scan in claim_scans), (
        f"tasks_pending_by_type is not read in order (a bitmap scan then a sort of every pending row): {found}"
    )


async def test_completing_an_attempt_finds_it_by_primary_key(
    recorded: RecordedStore, planned_database_url: str
) -> None:
    [report] = await in_flight(planned_database_url, 1)

    assert await recorded.store.complete(report, {"ok": True}) is not None
    assert_uses_index(explain(planned_database_url, recorded.statements), "tasks_pkey")


async def test_completing_a_batch_finds_each_attempt_by_primary_key(
    recorded: RecordedStore, planned_database_url: str
) -> None:
    reports = await in_flight(planned_database_url, 20)

    completed = await recorded.store.complete_many([Completion(report, {"ok": True}, None) for report in reports])

    assert len(completed) == 20
    assert_uses_index(explain(planned_database_url, recorded.statements), "tasks_pkey")


async def test_recording_progress_finds_the_attempt_by_primary_key(
    recorded: RecordedStore, planned_database_url: str
) -> None:
    [report] = await in_flight(planned_database_url, 1)

    assert await recorded.store.record_progress(report, 0.5, "halfway") is not None
    assert_uses_index(explain(planned_database_url, recorded.statements), "tasks_pkey")


async def test_the_sweepers_lease_expiry_reads_tasks_lease_expiry(
    recorded: RecordedStore, planned_database_url: str
) -> None:
    expired = await recorded.store.expire_leases(limit=10)

    assert len(expired) == 10
    assert_uses_index(explain(planned_database_url, recorded.statements), "tasks_lease_expiry")


async def test_the_dispatchers_held_counts_read_tasks_in_flight_by_agent(
    recorded: RecordedStore, planned_database_url: str
) -> None:
    holders = ["default/agent-1", "default/agent-2", "default/agent-3"]
    seen: list[dict[str, int]] = []

    def nothing_to_look_for(held: dict[str, int]) -> list[WorkQuery]:
        seen.append(held)
        return []

    await recorded.store.dispatch(
        submissions=[],
        completions=[],
        agent_ids=holders,
        queries_for=nothing_to_look_for,
        plan=assign_all_to_one_agent,
    )

    assert [set(held) for held in seen] == [set(holders)]
    assert_uses_index(explain(planned_database_url, recorded.statements), "tasks_in_flight_by_agent")


async def test_a_taken_idempotency_key_is_looked_up_through_tasks_idempotency_key(
    recorded: RecordedStore, planned_database_url: str
) -> None:
    again = NewTask(
        task_type="review",
        payload={},
        priority=0,
        requirements=TaskRequirements(),
        max_attempts=3,
        timeout_ms=None,
        # Row 6 of the fill: an even number has a key, and 6 % 3 puts it in tenant 'default'.
        idempotency_key="key-6",
        tenant="default",
    )

    submission = Submission.of([again])
    [submitted] = await recorded.store.submitted(submission, await recorded.store.insert_many(submission))

    assert not submitted.created
    lookups = [statement for statement in recorded.statements if not statement.query.lstrip().startswith("INSERT")]
    assert_uses_index(explain(planned_database_url, lookups), "tasks_idempotency_key")


# The check itself: it must fail when the index is missing, or it proves nothing.


async def test_the_claim_check_fails_when_tasks_pending_by_type_is_gone(
    recorded: RecordedStore, planned_database_url: str
) -> None:
    await claim_reviews(recorded.store, 4)

    with psycopg.connect(planned_database_url) as connection:
        # Dropped inside a transaction that is rolled back: the other tests keep the index.
        connection.execute("DROP INDEX tasks_pending_by_type")
        found = planned_scans(connection, recorded.statements)
        connection.rollback()

    with pytest.raises(AssertionError, match=r"tasks_pending_by_type|sequential scan"):
        assert_uses_index(found, "tasks_pending_by_type")
