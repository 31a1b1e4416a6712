"""Every agent as this registry process knows it, kept current from PostgreSQL LISTEN/NOTIFY, and the
WatchAgents streams that follow it.

The agents table's trigger notifies channel `arbiter_agent` with the id of every row inserted, updated
or deleted (migration 0006). One connection per process listens; the ids heard are collected for a few
milliseconds and re-read in one query, and each re-read record is compared with the cache: what differs
is sent to every subscriber. Silence turns an agent UNHEALTHY, then OFFLINE, with no row changing, so
once a second the feed also reads every agent's effective status and re-reads the ones that flipped.
When the connection is lost the feed reconnects with backoff and reads everything again; compared with
the cache, that gives subscribers whatever changed while the feed was not listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from services.registry.domain import AgentChanges, AgentRecord
from services.registry.storage import AgentStore
from shared.errors import Unavailable

logger = logging.getLogger(__name__)

CHANNEL = "arbiter_agent"
# Named so that operators (and the tests) can find the listening connection in pg_stat_activity.
APPLICATION_NAME = "arbiter-registry-agent-feed"
# Ids heard within this long of the first are read together: one query for a burst of heartbeats.
COALESCE_SECONDS = 0.03
# How often every agent's effective status is checked (no more often than heartbeats are due, since
# statuses change no faster).
STATUS_CHECK_SECONDS = 1.0
# At most this many agents per message, snapshot or change, to stay far below the gRPC message limit.
PAGE_SIZE = 500
# A subscriber with this many messages unsent has fallen behind and is dropped; it can reconnect and
# start again from a fresh snapshot.
SUBSCRIBER_QUEUE_MESSAGES = 1000


class _StreamEnd(enum.Enum):
    FELL_BEHIND = "fell behind the agent feed; reconnect to resynchronise"
    SHUTTING_DOWN = "the registry is shutting down; reconnect to resynchronise"


Item = TypeVar("Item")


def _chunks(items: Sequence[Item]) -> list[tuple[Item, ...]]:
    """`items` in runs of at most PAGE_SIZE; none when empty."""
    return [tuple(items[start : start + PAGE_SIZE]) for start in range(0, len(items), PAGE_SIZE)]


def _pages(upserted: list[AgentRecord], removed_ids: list[str]) -> list[AgentChanges]:
    """The changes split into messages of at most PAGE_SIZE agents; the removals ride on the first."""
    chunks = _chunks(upserted) or [()]
    return [AgentChanges(tuple(chunk), tuple(removed_ids) if index == 0 else ()) for index, chunk in enumerate(chunks)]


def _log_reconnect(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    if isinstance(error, psycopg.Error):
        logger.warning("agent feed lost the database; reconnecting: %s", error)
    else:
        logger.error("agent feed failed; starting again", exc_info=error)


class Subscription:
    """One WatchAgents stream's view of the feed: a snapshot, then the changes after it."""

    def __init__(self, snapshot: list[AgentRecord], queue_messages: int) -> None:
        self._snapshot = snapshot
        self._queue: asyncio.Queue[AgentChanges | _StreamEnd] = asyncio.Queue(queue_messages)

    def snapshot_pages(self) -> list[AgentChanges]:
        """Every agent at subscription time, in id order; the last page (there is one even with no agents)
        says the snapshot is complete."""
        pages = [AgentChanges(chunk) for chunk in _chunks(self._snapshot)] or [AgentChanges()]
        pages[-1] = AgentChanges(pages[-1].upserted, snapshot_complete=True)
        return pages

    async def changes(self) -> AsyncIterator[AgentChanges]:
        """The changes since the snapshot, until the subscriber falls behind or the feed closes (both end
        the stream with UNAVAILABLE, so the caller reconnects and resynchronises)."""
        while True:
            item = await self._queue.get()
            if isinstance(item, _StreamEnd):
                raise Unavailable(item.value)
            yield item

    def deliver(self, changes: AgentChanges) -> bool:
        """False when the queue is full: the subscriber has fallen behind."""
        try:
            self._queue.put_nowait(changes)
        except asyncio.QueueFull:
            return False
        return True

    def end(self, reason: _StreamEnd) -> None:
        """Drops what is queued (the stream will not send it) and ends the stream after what it is sending."""
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(reason)


class AgentFeed:
    def __init__(
        self,
        database_url: str,
        store: AgentStore,
        heartbeat_interval_seconds: float,
        subscriber_queue_messages: int = SUBSCRIBER_QUEUE_MESSAGES,
    ) -> None:
        self._database_url = database_url
        self._store = store
        self._status_check_seconds = min(STATUS_CHECK_SECONDS, heartbeat_interval_seconds)
        self._subscriber_queue_messages = subscriber_queue_messages
        self._cache: dict[str, AgentRecord] = {}
        self._subscriptions: set[Subscription] = set()
        self._closed = False
        # Ids heard (or seen to flip status) and not yet re-read.
        self._pending: set[str] = set()
        self._pending_added = asyncio.Event()
        # Set once the first full read is in the cache; stays set while reconnecting (the cache is then
        # stale but complete, and the re-read on reconnect sends what changed).
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[Subscription]:
        """A subscription whose snapshot is the cache now: taken and registered in one step of the event
        loop, so no change can fall between the snapshot and the changes."""
        if self._closed:
            raise Unavailable(_StreamEnd.SHUTTING_DOWN.value)
        subscription = Subscription(
            sorted(self._cache.values(), key=lambda record: record.registration.id), self._subscriber_queue_messages
        )
        self._subscriptions.add(subscription)
        try:
            yield subscription
        finally:
            self._subscriptions.discard(subscription)

    def close(self) -> None:
        """Ends every open stream now and refuses new ones (the app is stopping)."""
        self._closed = True
        for subscription in self._subscriptions:
            subscription.end(_StreamEnd.SHUTTING_DOWN)
        self._subscriptions.clear()

    async def run(self) -> None:
        """Follows the agents table until cancelled, reconnecting with backoff whenever the database is lost
        (or anything else fails: a dead feed would leave every WatchAgents stream silently stale)."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(Exception),
            wait=wait_exponential_jitter(multiplier=0.1, max=5.0, jitter=0.25),
            before_sleep=_log_reconnect,
        ):
            with attempt:
                await self._follow()

    async def _follow(self) -> None:
        connection = await psycopg.AsyncConnection.connect(
            self._database_url, autocommit=True, application_name=APPLICATION_NAME
        )
        try:
            await connection.execute(f"LISTEN {CHANNEL}")
            # Listening before reading: a change after the read is heard, one before it is in the read.
            self._replace_all(await self._store.all_agents())
            self.ready.set()
            workers = [
                asyncio.create_task(self._hear(connection)),
                asyncio.create_task(self._reread_pending()),
                asyncio.create_task(self._check_statuses()),
            ]
            try:
                done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_COMPLETED)
                for worker in done:
                    worker.result()
                raise psycopg.OperationalError("the agent feed stopped listening")
            finally:
                for worker in workers:
                    worker.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
        finally:
            await connection.close()

    async def _hear(self, connection: psycopg.AsyncConnection[Any]) -> None:
        async for notification in connection.notifies():
            self._mark_pending([notification.payload])

    async def _reread_pending(self) -> None:
        while True:
            await self._pending_added.wait()
            await asyncio.sleep(COALESCE_SECONDS)
            self._pending_added.clear()
            agent_ids, self._pending = self._pending, set()
            # A failed read loses these ids; the full read after reconnecting covers them.
            self._apply(agent_ids, await self._store.agents_by_ids(sorted(agent_ids)))

    async def _check_statuses(self) -> None:
        while True:
            await asyncio.sleep(self._status_check_seconds)
            statuses = await self._store.effective_statuses()
            flipped = [
                agent_id
                for agent_id, status in statuses.items()
                if agent_id not in self._cache or self._cache[agent_id].status != status
            ]
            # Also catches a row change whose notification went astray.
            self._mark_pending([*flipped, *(self._cache.keys() - statuses.keys())])

    def _mark_pending(self, agent_ids: Iterable[str]) -> None:
        before = len(self._pending)
        self._pending.update(agent_ids)
        if len(self._pending) > before:
            self._pending_added.set()

    def _replace_all(self, records: list[AgentRecord]) -> None:
        self._apply(self._cache.keys() | {record.registration.id for record in records}, records)

    def _apply(self, agent_ids: Iterable[str], records: list[AgentRecord]) -> None:
        """Brings the cache entries of `agent_ids` up to `records` (an id without a record has been
        deregistered) and sends subscribers what differed."""
        fresh = {record.registration.id: record for record in records}
        upserted: list[AgentRecord] = []
        removed_ids: list[str] = []
        for agent_id in sorted(agent_ids):
            record = fresh.get(agent_id)
            if record is None:
                if self._cache.pop(agent_id, None) is not None:
                    removed_ids.append(agent_id)
            elif self._cache.get(agent_id) != record:
                self._cache[agent_id] = record
                upserted.append(record)
        if upserted or removed_ids:
            self._publish(_pages(upserted, removed_ids))

    def _publish(self, messages: list[AgentChanges]) -> None:
        for subscription in list(self._subscriptions):
            if not all(subscription.deliver(message) for message in messages):
                logger.warning("a WatchAgents stream fell behind the agent feed; ending it")
                self._subscriptions.discard(subscription)
                subscription.end(_StreamEnd.FELL_BEHIND)
