"""The audit log against a real PostgreSQL: group commit, failing loudly while the database is unreachable,
listing with filters and keyset paging, tenant scoping, retention, and W3C trace ids."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from shared.audit import (
    AuditEvent,
    AuditLog,
    AuditUnavailable,
    StoredAuditEvent,
    list_audit_events,
    prune_audit_events,
    trace_id_from_metadata,
)
from shared.database import Pool, open_pool
from shared.errors import InvalidArgument
from tests.support.database import PostgresForTests
from tests.support.waiting import eventually

SUBMIT = "/arbiter.v1.OrchestratorService/SubmitTask"
CANCEL = "/arbiter.v1.OrchestratorService/CancelTask"
HEARTBEAT = "/arbiter.v1.RegistryService/Heartbeat"
KEY_A, KEY_B = str(uuid.uuid4()), str(uuid.uuid4())
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def make_event(**changes: Any) -> AuditEvent:
    event = AuditEvent(
        at=datetime.now(UTC),
        tenant="acme",
        key_id=KEY_A,
        role="submitter",
        rpc=SUBMIT,
        resource_id="",
        status="OK",
        message="",
        peer="ipv4:127.0.0.1:40000",
        trace_id="",
    )
    return replace(event, **changes)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Pool]:
    opened = await open_pool(database_url, 1, 4, "audit-test")
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def audit_log(pool: Pool) -> AsyncIterator[AuditLog]:
    log = AuditLog(pool)
    await log.start()
    try:
        yield log
    finally:
        await log.close()


def stored_rows(database_url: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url, row_factory=dict_row) as connection:
        return connection.execute("SELECT * FROM audit_events ORDER BY id").fetchall()


def block_connections(postgres: PostgresForTests, database_url: str, blocked: bool) -> None:
    """The database goes away for this test alone: open sessions are ended and new ones refused."""
    name = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    with psycopg.connect(postgres.admin_url, autocommit=True) as connection:
        connection.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"false" if blocked else "true"}')
        if blocked:
            connection.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


async def list_all(pool: Pool, tenant: str | None, **filters: Any) -> list[StoredAuditEvent]:
    """Every event matching, read page by page."""
    arguments: dict[str, Any] = {
        "since": None,
        "until": None,
        "rpc": None,
        "key_id": None,
        "status": None,
        "resource_id": None,
        **filters,
    }
    events: list[StoredAuditEvent] = []
    token = ""
    while True:
        page = await list_audit_events(pool, tenant, page_size=7, page_token=token, **arguments)
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            return events


# --- Writing ---------------------------------------------------------------------------------------------


async def test_concurrent_records_land_as_every_row_in_far_fewer_inserts(
    audit_log: AuditLog, database_url: str
) -> None:
    await asyncio.gather(*(audit_log.record(make_event(resource_id=f"task-{n}")) for n in range(200)))
    rows = stored_rows(database_url)
    assert sorted(row["resource_id"] for row in rows) == sorted(f"task-{n}" for n in range(200))
    assert audit_log.events_written == 200
    assert audit_log.batches_written <= 5


async def test_a_recorded_event_is_stored_as_given(audit_log: AuditLog, database_url: str) -> None:
    event = make_event(
        key_id=KEY_B, role="agent", rpc=HEARTBEAT, resource_id="worker-1", status="PERMISSION_DENIED",
        message="role agent may not call Heartbeat for worker-2", trace_id=TRACE_ID,
    )  # fmt: skip
    await audit_log.record(event)
    [row] = stored_rows(database_url)
    assert {name: row[name] for name in AuditEvent.__dataclass_fields__} == {
        **event.__dict__,
        "key_id": uuid.UUID(KEY_B),
    }


async def test_an_unknown_key_is_recorded_without_key_or_role(audit_log: AuditLog, database_url: str) -> None:
    await audit_log.record(make_event(key_id=None, role=None, status="UNAUTHENTICATED"))
    [row] = stored_rows(database_url)
    assert (row["key_id"], row["role"], row["status"]) == (None, None, "UNAUTHENTICATED")


async def test_hostile_text_is_stored_cleaned_without_failing_the_batch(audit_log: AuditLog, database_url: str) -> None:
    hostile = make_event(resource_id="task\x00" + "x" * 5000, message="bad\x00message")
    await asyncio.gather(audit_log.record(hostile), audit_log.record(make_event(resource_id="innocent")))
    rows = {row["resource_id"][:4]: row for row in stored_rows(database_url)}
    assert rows.keys() == {"task", "inno"}
    assert rows["task"]["resource_id"].startswith("task\ufffdxxx")
    assert len(rows["task"]["resource_id"]) == 256
    assert rows["task"]["message"] == "bad\ufffdmessage"


async def test_a_full_queue_makes_callers_wait_and_drops_nothing(pool: Pool, database_url: str) -> None:
    log = AuditLog(pool, max_batch=3, max_queued=4)
    await log.start()
    try:
        await asyncio.gather(*(log.record(make_event(resource_id=f"task-{n}")) for n in range(60)))
    finally:
        await log.close()
    assert len(stored_rows(database_url)) == 60
    assert log.batches_written >= 20  # never more than 3 to a batch


async def test_a_caller_cancelled_while_waiting_for_room_still_has_its_event_written(
    pool: Pool, database_url: str
) -> None:
    # One batch lingers while the queue is full, so later callers wait for room; then they all give up.
    log = AuditLog(pool, flush_interval_seconds=0.3, max_batch=3, max_queued=1)
    await log.start()
    recording = [asyncio.create_task(log.record(make_event(resource_id=f"task-{n}"))) for n in range(5)]
    await eventually(lambda: log.events_taken == 5, "every caller to be waiting")
    for task in recording:
        task.cancel()
    await asyncio.gather(*recording, return_exceptions=True)
    await log.close()
    assert sorted(row["resource_id"] for row in stored_rows(database_url)) == [f"task-{n}" for n in range(5)]


async def test_close_writes_the_events_already_taken(pool: Pool, database_url: str) -> None:
    log = AuditLog(pool, flush_interval_seconds=0.5)
    await log.start()
    recording = [asyncio.create_task(log.record(make_event(resource_id=f"task-{n}"))) for n in range(10)]
    await eventually(lambda: log.events_taken == 10, "every event to be queued")
    await log.close()
    await asyncio.gather(*recording)
    assert len(stored_rows(database_url)) == 10


async def test_record_after_close_is_refused(pool: Pool) -> None:
    log = AuditLog(pool)
    await log.start()
    await log.close()
    with pytest.raises(AuditUnavailable):
        await log.record(make_event())


async def test_every_caller_of_a_failed_batch_hears_unavailable_and_later_batches_succeed(
    test_postgres: PostgresForTests, database_url: str
) -> None:
    # A pool that gives up quickly, so the outage is heard in about a second rather than five.
    pool: Pool = AsyncConnectionPool(
        database_url,
        connection_class=psycopg.AsyncConnection[DictRow],
        min_size=1,
        max_size=2,
        kwargs={"row_factory": dict_row, "autocommit": True},
        timeout=1.0,
        reconnect_timeout=1.0,
        open=False,
    )
    await pool.open(wait=True)
    log = AuditLog(pool)
    await log.start()
    try:
        await log.record(make_event(resource_id="before"))
        block_connections(test_postgres, database_url, blocked=True)
        try:
            outcomes = await asyncio.gather(
                *(log.record(make_event(resource_id=f"during-{n}")) for n in range(20)), return_exceptions=True
            )
            assert all(isinstance(outcome, AuditUnavailable) for outcome in outcomes), outcomes
            assert log.batches_failed >= 1
        finally:
            block_connections(test_postgres, database_url, blocked=False)

        async def recorded_again() -> bool:
            try:
                await log.record(make_event(resource_id="after"))
            except AuditUnavailable:
                return False
            return True

        await eventually(recorded_again, "an event to be recorded once the database is back", timeout=20)
    finally:
        await log.close()
        await pool.close()
    stored = [row["resource_id"] for row in stored_rows(database_url)]
    assert stored[0] == "before" and stored[-1] == "after"
    assert not [resource for resource in stored if resource.startswith("during")]


# --- Listing ---------------------------------------------------------------------------------------------

BASE = datetime(2030, 1, 1, tzinfo=UTC)


def dataset() -> list[AuditEvent]:
    """Forty events a second apart over two tenants, two keys, three RPCs, two outcomes and four tasks."""
    return [
        make_event(
            at=BASE + timedelta(seconds=n),
            tenant="acme" if n % 4 else "globex",
            key_id=KEY_A if n % 3 else KEY_B,
            rpc=(SUBMIT, CANCEL, HEARTBEAT)[n % 3],
            status="OK" if n % 5 else "PERMISSION_DENIED",
            resource_id=f"task-{n % 4}",
        )
        for n in range(40)
    ]


@pytest.fixture
async def recorded(audit_log: AuditLog) -> list[AuditEvent]:
    events = dataset()
    for event in events:  # one at a time, so ids follow time as in production
        await audit_log.record(event)
    return events


def without_id(event: StoredAuditEvent) -> AuditEvent:
    return AuditEvent(**{name: getattr(event, name) for name in AuditEvent.__dataclass_fields__})


@pytest.mark.parametrize(
    ("filters", "matches"),
    [
        ({}, lambda event: True),
        ({"since": BASE + timedelta(seconds=10)}, lambda event: event.at >= BASE + timedelta(seconds=10)),
        ({"until": BASE + timedelta(seconds=10)}, lambda event: event.at < BASE + timedelta(seconds=10)),
        ({"rpc": CANCEL}, lambda event: event.rpc == CANCEL),
        ({"key_id": KEY_B}, lambda event: event.key_id == KEY_B),
        ({"status": "PERMISSION_DENIED"}, lambda event: event.status == "PERMISSION_DENIED"),
        ({"resource_id": "task-1"}, lambda event: event.resource_id == "task-1"),
        (
            {"rpc": SUBMIT, "status": "OK", "since": BASE + timedelta(seconds=5)},
            lambda event: event.rpc == SUBMIT and event.status == "OK" and event.at >= BASE + timedelta(seconds=5),
        ),
        ({"rpc": "", "key_id": "", "status": "", "resource_id": ""}, lambda event: True),
    ],
    ids=["none", "since", "until", "rpc", "key_id", "status", "resource_id", "combined", "empty-means-none"],
)
async def test_listing_returns_exactly_the_tenants_matching_events_newest_first(
    pool: Pool, recorded: list[AuditEvent], filters: dict[str, Any], matches: Any
) -> None:
    listed = await list_all(pool, "acme", **filters)
    expected = [event for event in reversed(recorded) if event.tenant == "acme" and matches(event)]
    assert expected, "the filter should match something"
    assert [without_id(event) for event in listed] == expected


async def test_a_tenant_never_sees_another_tenants_events(pool: Pool, recorded: list[AuditEvent]) -> None:
    globex_resources = {event.resource_id for event in recorded if event.tenant == "globex"}
    for filters in ({}, {"key_id": KEY_B}, *({"resource_id": resource} for resource in globex_resources)):
        assert {event.tenant for event in await list_all(pool, "acme", **filters)} <= {"acme"}
        assert {event.tenant for event in await list_all(pool, "globex", **filters)} <= {"globex"}
    assert await list_all(pool, "") == []
    assert await list_all(pool, "initech") == []


async def test_listing_without_a_tenant_shows_every_tenant(pool: Pool, recorded: list[AuditEvent]) -> None:
    listed = await list_all(pool, None)
    assert [without_id(event) for event in listed] == list(reversed(recorded))


async def test_paging_repeats_and_skips_nothing_while_events_are_recorded(
    pool: Pool, audit_log: AuditLog, recorded: list[AuditEvent]
) -> None:
    existing_before = {event.id for event in await list_all(pool, "acme")}
    seen: list[int] = []
    token = ""
    newcomer = 0
    while True:
        page = await list_audit_events(
            pool, "acme", since=None, until=None, rpc=None, key_id=None, status=None, resource_id=None,
            page_size=4, page_token=token,
        )  # fmt: skip
        seen.extend(event.id for event in page.events)
        # Between pages: events newer than everything, and one as old as the page just read.
        newcomer += 1
        await asyncio.gather(
            audit_log.record(make_event(at=BASE + timedelta(hours=1, seconds=newcomer))),
            audit_log.record(make_event(at=BASE + timedelta(seconds=-newcomer))),
        )
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)), "an event was listed twice"
    assert existing_before <= set(seen), "an event that existed before paging began was skipped"


async def test_a_page_token_from_elsewhere_is_refused_naming_the_field(pool: Pool) -> None:
    with pytest.raises(InvalidArgument, match="page_token"):
        await list_audit_events(
            pool, "acme", since=None, until=None, rpc=None, key_id=None, status=None, resource_id=None,
            page_size=10, page_token="not-a-token",
        )  # fmt: skip


async def test_a_malformed_key_id_filter_is_refused_naming_the_field(pool: Pool) -> None:
    with pytest.raises(InvalidArgument, match="key_id"):
        await list_all(pool, "acme", key_id="not-a-uuid")


# --- Retention -------------------------------------------------------------------------------------------


async def test_pruning_deletes_only_events_older_than_the_retention(
    pool: Pool, audit_log: AuditLog, database_url: str
) -> None:
    now = datetime.now(UTC)
    for age_days, resource in ((200, "old"), (91, "old"), (90.01, "old"), (89.9, "kept"), (0, "kept")):
        await audit_log.record(make_event(at=now - timedelta(days=age_days), resource_id=resource))
    assert await prune_audit_events(pool, retention_days=90, batch_size=2) == 3
    assert [row["resource_id"] for row in stored_rows(database_url)] == ["kept", "kept"]
    assert await prune_audit_events(pool, retention_days=90) == 0


# --- Trace ids -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "trace_id"),
    [
        ((("traceparent", f"00-{TRACE_ID}-00f067aa0ba902b7-01"),), TRACE_ID),
        ((("authorization", "Bearer x"), ("traceparent", f" 00-{TRACE_ID}-00f067aa0ba902b7-00 ")), TRACE_ID),
        ((("traceparent", f"01-{TRACE_ID}-00f067aa0ba902b7-01-future"),), TRACE_ID),  # later versions may add
        ((("traceparent", f"00-{TRACE_ID}-00f067aa0ba902b7-01".encode()),), TRACE_ID),
        ((), ""),
        (None, ""),
        ((("traceparent", f"00-{TRACE_ID}-00f067aa0ba902b7-01-extra"),), ""),  # version 00 has four fields
        ((("traceparent", f"ff-{TRACE_ID}-00f067aa0ba902b7-01"),), ""),  # ff is forbidden
        ((("traceparent", f"00-{TRACE_ID.upper()}-00f067aa0ba902b7-01"),), ""),  # lowercase only
        ((("traceparent", f"00-{'0' * 32}-00f067aa0ba902b7-01"),), ""),  # all-zero trace id
        ((("traceparent", f"00-{TRACE_ID}-{'0' * 16}-01"),), ""),  # all-zero parent id
        ((("traceparent", f"00-{TRACE_ID[:-1]}-00f067aa0ba902b7-01"),), ""),
        ((("traceparent", "garbage"),), ""),
        ((("traceparent", f"00-{TRACE_ID}-00f067aa0ba902b7-01"),) * 2, ""),  # two headers: which trace?
    ],
)
def test_the_trace_id_comes_from_a_valid_traceparent_only(
    metadata: tuple[tuple[str, str | bytes], ...] | None, trace_id: str
) -> None:
    assert trace_id_from_metadata(metadata) == trace_id
