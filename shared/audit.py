"""The audit log: who did what, to which resource, with what outcome. All of its SQL is here.

The API-key interceptor builds an AuditEvent after every mutating call and every denied call and awaits
`AuditLog.record` before the response goes out. Events that arrive together share one INSERT (group
commit), so a call waits about one round trip to PostgreSQL, not a transaction of its own.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from shared import validation
from shared.database import Pool
from shared.errors import InvalidArgument
from shared.pagination import decode_page_token, encode_page_token
from shared.server import cancel_and_wait

logger = logging.getLogger(__name__)

# Free-text fields are cut to these lengths: a denied call may carry any resource id its caller made up.
MAX_RPC_LENGTH = 256
MAX_RESOURCE_ID_LENGTH = 256
MAX_MESSAGE_LENGTH = 512
MAX_PEER_LENGTH = 256
MAX_LABEL_LENGTH = 128  # tenant, role, status
# How many events may wait for a batch before `record` makes its callers wait for room.
DEFAULT_MAX_QUEUED = 5000

_UNAVAILABLE_MESSAGE = "the audit log cannot be written (database unavailable), so the call is refused; retry shortly"


@dataclass(frozen=True)
class AuditEvent:
    at: datetime  # when the call was decided, timezone-aware
    tenant: str
    key_id: str | None  # None when the key was missing or unknown
    role: str | None
    rpc: str  # full method name, e.g. /arbiter.v1.OrchestratorService/SubmitTask
    resource_id: str  # the task or agent the call names; '' when none
    status: str  # gRPC code name: OK, PERMISSION_DENIED, …
    message: str  # the status message, cut to MAX_MESSAGE_LENGTH
    peer: str
    trace_id: str  # from the caller's W3C traceparent; '' when none


@dataclass(frozen=True)
class StoredAuditEvent(AuditEvent):
    id: int  # increases with insertion; a stable reference to one event


@dataclass(frozen=True)
class AuditPage:
    events: list[StoredAuditEvent]
    next_page_token: str  # '' on the last page


class AuditUnavailable(Exception):
    """The event could not be written; the call it records must fail (UNAVAILABLE), never go unrecorded."""


def _storable(text: str, limit: int) -> str:
    """Text PostgreSQL accepts (no NUL, valid UTF-8) of at most `limit` characters: one hostile value must
    not fail the INSERT it shares with other callers' events."""
    cleaned = text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def _storable_event(event: AuditEvent) -> AuditEvent:
    """The event as it will be stored; ValueError for what only a programming error produces."""
    if event.at.tzinfo is None:
        raise ValueError("AuditEvent.at must be timezone-aware")
    if event.key_id is not None:
        uuid.UUID(event.key_id)  # ValueError when it is not a key id
    return replace(
        event,
        tenant=_storable(event.tenant, MAX_LABEL_LENGTH),
        role=None if event.role is None else _storable(event.role, MAX_LABEL_LENGTH),
        rpc=_storable(event.rpc, MAX_RPC_LENGTH),
        resource_id=_storable(event.resource_id, MAX_RESOURCE_ID_LENGTH),
        status=_storable(event.status, MAX_LABEL_LENGTH),
        message=_storable(event.message, MAX_MESSAGE_LENGTH),
        peer=_storable(event.peer, MAX_PEER_LENGTH),
        trace_id=_storable(event.trace_id, 32),
    )


# insert_audit_events: the whole batch in one statement, so every row of it commits or none does.
# One JSON document for the whole batch: psycopg turns one jsonb parameter into text far faster than ten
# arrays, whose element types it inspects one by one.
_INSERT_AUDIT_EVENTS = """
    INSERT INTO audit_events (at, tenant, key_id, role, rpc, resource_id, status, message, peer, trace_id)
    SELECT at, tenant, key_id, role, rpc, resource_id, status, message, peer, trace_id
    FROM jsonb_to_recordset(%(events)s) AS event(at timestamptz, tenant text, key_id uuid, role text, rpc text,
                                                 resource_id text, status text, message text, peer text, trace_id text)
"""


def _insert_parameters(events: list[AuditEvent]) -> dict[str, Jsonb]:
    return {
        "events": Jsonb(
            [
                {
                    "at": event.at.isoformat(),
                    "tenant": event.tenant,
                    "key_id": event.key_id,
                    "role": event.role,
                    "rpc": event.rpc,
                    "resource_id": event.resource_id,
                    "status": event.status,
                    "message": event.message,
                    "peer": event.peer,
                    "trace_id": event.trace_id,
                }
                for event in events
            ]
        )
    }


@dataclass
class _Pending:
    event: AuditEvent
    written: asyncio.Future[None]  # done when the batch holding the event committed or failed


def _settle(batch: list[_Pending], failure: BaseException | None) -> None:
    """Tells each waiting caller how its event's batch ended (a cancelled caller's future is done already:
    its event was written, or not, all the same)."""
    for pending in batch:
        if pending.written.done():
            continue
        if failure is None:
            pending.written.set_result(None)
        else:
            unavailable = AuditUnavailable(_UNAVAILABLE_MESSAGE)
            unavailable.__cause__ = failure
            pending.written.set_exception(unavailable)


class AuditLog:
    """Writes audit events in batches from one background task (`start` … `close`).

    A failed batch fails only its own callers (AuditUnavailable); the next batch tries afresh.
    """

    def __init__(
        self,
        pool: Pool,
        *,
        flush_interval_seconds: float = 0.01,
        max_batch: int = 500,
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> None:
        if max_batch < 1 or max_queued < 1 or flush_interval_seconds < 0:
            raise ValueError("max_batch and max_queued must be at least 1, flush_interval_seconds 0 or more")
        self._pool = pool
        self._flush_interval_seconds = flush_interval_seconds
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=max_queued)
        self._flusher: asyncio.Task[None] | None = None
        self._accepting = False
        # Counters for tests and metrics.
        self.events_taken = 0  # accepted by record: written, failed, or still to be written
        self.batches_written = 0
        self.events_written = 0
        self.batches_failed = 0

    async def start(self) -> None:
        if self._flusher is not None:
            raise RuntimeError("this AuditLog was started already")
        self._flusher = asyncio.create_task(self._flush_continuously(), name="audit-log-flusher")
        self._accepting = True

    async def close(self) -> None:
        """Takes no more events, writes (or fails) every event already taken, then stops the flusher."""
        self._accepting = False
        if self._flusher is None:
            return
        try:
            await self._queue.join()
        finally:
            await cancel_and_wait([self._flusher])
            self._fail_queued()

    async def record(self, event: AuditEvent) -> None:
        """Returns once the event is committed; raises AuditUnavailable when it could not be written.

        Events arriving together share one INSERT. When `max_queued` events wait already, this waits for
        room (backpressure) rather than dropping the event.
        """
        if not self._accepting:
            raise AuditUnavailable("the audit log is not running (the service is starting or stopping); retry")
        pending = _Pending(_storable_event(event), asyncio.get_running_loop().create_future())
        self.events_taken += 1
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            # Shielded: the call being recorded has happened, so its event is written even if the caller is
            # cancelled while waiting for room.
            put = asyncio.shield(self._queue.put(pending))
            try:
                await put
            except asyncio.CancelledError:
                pending.written.cancel()  # nobody waits for the outcome any more
                raise
        await pending.written

    async def _flush_continuously(self) -> None:
        while True:
            batch = [await self._queue.get()]
            try:
                # Linger briefly so events from concurrent calls join this batch; not when a full one waits.
                if self._flush_interval_seconds > 0 and self._queue.qsize() < self._max_batch - 1:
                    await asyncio.sleep(self._flush_interval_seconds)
                while len(batch) < self._max_batch and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                await self._write(batch)
            except asyncio.CancelledError as cancelled:
                _settle(batch, cancelled)
                raise
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write(self, batch: list[_Pending]) -> None:
        """One INSERT for the batch; any failure (database down, pool timeout, …) fails this batch's callers
        and leaves the flusher running for the next one."""
        try:
            async with self._pool.connection() as connection:
                await connection.execute(_INSERT_AUDIT_EVENTS, _insert_parameters([p.event for p in batch]))
        except Exception as error:
            self.batches_failed += 1
            logger.warning("%d audit events could not be written, their calls fail: %s", len(batch), error)
            _settle(batch, error)
            return
        self.batches_written += 1
        self.events_written += len(batch)
        _settle(batch, None)

    def _fail_queued(self) -> None:
        """After the flusher stopped: nothing should be left, but no caller may wait forever."""
        left: list[_Pending] = []
        while not self._queue.empty():
            left.append(self._queue.get_nowait())
            self._queue.task_done()
        _settle(left, RuntimeError("the audit log closed before the event was written"))


# --- W3C trace context ---------------------------------------------------------------------------------

# version-traceid-parentid-flags, lowercase hex; versions after 00 may append fields.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[^\s]*)?")
_MAX_TRACEPARENT_LENGTH = 512


def trace_id_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The trace id of the call's W3C `traceparent` header, '' when there is none or it is invalid."""
    values = [value for key, value in metadata or () if key.lower() == "traceparent"]
    # Two traceparent headers name no single trace; neither is trusted.
    if len(values) != 1:
        return ""
    value = values[0]
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    if len(text) > _MAX_TRACEPARENT_LENGTH:
        return ""
    match = _TRACEPARENT.fullmatch(text.strip())
    if match is None:
        return ""
    version, trace_id, parent_id, _flags, extra = match.groups()
    if version == "ff" or (version == "00" and extra) or trace_id == "0" * 32 or parent_id == "0" * 16:
        return ""
    return trace_id


# --- Listing and retention -----------------------------------------------------------------------------

_PAGE_KEYS = frozenset({"at", "id"})
MAX_FILTER_LENGTH = validation.MAX_AUDIT_FILTER_LENGTH  # README, "Limits"

_AUDIT_COLUMNS = "id, at, tenant, key_id::text AS key_id, role, rpc, resource_id, status, message, peer, trace_id"

# list_audit_events: up to %(limit)s events matching every condition given, newest first by (at, id).
# (at, id) is unique and never changes, so paging by it repeats or skips no row that existed when paging
# began, however many are inserted meanwhile. `tenant` is a condition whenever a tenant is given: the only
# listing across tenants is an explicit None. The conditions are these fixed strings; only values vary.
_LIST_AUDIT_EVENTS = "SELECT {columns} FROM audit_events WHERE {conditions} ORDER BY at DESC, id DESC LIMIT %(limit)s"
_LIST_CONDITIONS = {
    "tenant": "tenant = %(tenant)s",
    "since": "at >= %(since)s",
    "until": "at < %(until)s",
    "rpc": "rpc = %(rpc)s",
    "key_id": "key_id = %(key_id)s",
    "status": "status = %(status)s",
    "resource_id": "resource_id = %(resource_id)s",
    "after": "(at, id) < (%(after_at)s, %(after_id)s)",
}


def _filter_text(field: str, value: str | None) -> str | None:
    """None (no condition) for None or ''; the value when it could match a stored one."""
    if not value:
        return None
    if "\x00" in value:
        raise InvalidArgument(field, validation.NUL_RULE)
    if len(value) > MAX_FILTER_LENGTH:
        raise InvalidArgument(field, f"is {len(value)} characters; at most {MAX_FILTER_LENGTH} are allowed")
    return value


def _filter_key_id(value: str | None) -> uuid.UUID | None:
    if not value:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument("key_id", f"{value[:80]!r} is not a key id (a UUID)") from None


def _page_position(page_token: str) -> tuple[datetime, int] | None:
    position = decode_page_token("page_token", page_token, _PAGE_KEYS)
    if position is None:
        return None
    try:
        at = datetime.fromisoformat(position["at"])
        event_id = position["id"]
        if at.tzinfo is None or not isinstance(event_id, int):
            raise ValueError("not a position this server makes")
    except (TypeError, ValueError):
        raise InvalidArgument("page_token", "is not a token from a previous page") from None
    return at, event_id


def _stored_event(row: DictRow) -> StoredAuditEvent:
    return StoredAuditEvent(
        id=row["id"],
        at=row["at"],
        tenant=row["tenant"],
        key_id=row["key_id"],
        role=row["role"],
        rpc=row["rpc"],
        resource_id=row["resource_id"],
        status=row["status"],
        message=row["message"],
        peer=row["peer"],
        trace_id=row["trace_id"],
    )


async def list_audit_events(
    pool: Pool,
    tenant: str | None,
    *,
    since: datetime | None,
    until: datetime | None,
    rpc: str | None,
    key_id: str | None,
    status: str | None,
    resource_id: str | None,
    page_size: int,
    page_token: str,
) -> AuditPage:
    """One page of a tenant's events (every tenant's for tenant=None), newest first, `since` inclusive and
    `until` exclusive. Empty strings mean "no filter" (proto3 defaults), except `tenant`: '' matches nothing.
    Raises InvalidArgument naming the field for a bad page size, token, key id or filter."""
    for field, moment in (("since", since), ("until", until)):
        if moment is not None and moment.tzinfo is None:
            raise ValueError(f"{field} must be timezone-aware")
    if since is not None and until is not None and since >= until:
        raise InvalidArgument("until", "must be after since")
    limit = validation.page_size("page_size", page_size)
    position = _page_position(page_token)
    values: dict[str, Any] = {
        "tenant": tenant,
        "since": since,
        "until": until,
        "rpc": _filter_text("rpc", rpc),
        "key_id": _filter_key_id(key_id),
        "status": _filter_text("status", status),
        "resource_id": _filter_text("resource_id", resource_id),
        "after": position,
    }
    conditions = [_LIST_CONDITIONS[name] for name, value in values.items() if value is not None] or ["true"]
    parameters = {name: value for name, value in values.items() if name != "after"}
    if position is not None:
        parameters["after_at"], parameters["after_id"] = position
    parameters["limit"] = limit + 1
    query = _LIST_AUDIT_EVENTS.format(columns=_AUDIT_COLUMNS, conditions=" AND ".join(conditions))
    async with pool.connection() as connection:
        cursor = await connection.execute(query, parameters)  # fixed fragments only, see above
        rows = await cursor.fetchall()
    events = [_stored_event(row) for row in rows[:limit]]
    if len(rows) <= limit:
        return AuditPage(events, "")
    last = events[-1]
    return AuditPage(events, encode_page_token({"at": last.at.isoformat(), "id": last.id}))


# prune_audit_events: deletes up to %(batch_size)s events older than %(cutoff)s, oldest first. SKIP LOCKED:
# two services pruning at once share the work instead of waiting on each other (nothing else locks rows).
_PRUNE_AUDIT_EVENTS = """
    DELETE FROM audit_events WHERE id IN (
        SELECT id FROM audit_events WHERE at < %(cutoff)s
        ORDER BY at
        LIMIT %(batch_size)s
        FOR UPDATE SKIP LOCKED
    )
"""


async def prune_audit_events(pool: Pool, retention_days: int, batch_size: int = 5000) -> int:
    """Deletes events older than `retention_days`, a batch per statement (short transactions, no long lock on
    a table every call writes to); returns how many."""
    if retention_days < 1 or batch_size < 1:
        raise ValueError("retention_days and batch_size must be at least 1")
    # One cutoff for the whole run: events keep arriving, and they are all newer than it.
    cutoff = datetime.now(UTC) - timedelta(days=retention_days)
    pruned = 0
    while True:
        async with pool.connection() as connection:
            cursor = await connection.execute(_PRUNE_AUDIT_EVENTS, {"cutoff": cutoff, "batch_size": batch_size})
        pruned += cursor.rowcount
        if cursor.rowcount < batch_size:
            return pruned
