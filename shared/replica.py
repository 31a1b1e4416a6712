"""Read replicas (ARBITER_DATABASE_READ_URL): where the read-only RPCs read.

Only reads that need not see the caller's own writes come through `Reads` (GetTask, ListTasks,
GetTaskHistory, ListAgents, ListAuditEvents); everything else uses the primary pool directly. A replica
that does not answer, at start or later, never fails a call: the read runs on the primary instead,
counted in arbiter_database_replica_fallbacks_total, and a check every REPLICA_CHECK_SECONDS sends reads
back to the replica once it answers again (arbiter_database_replica_up).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any, Generic, TypeVar

import psycopg

from shared.config import Config
from shared.database import Pool, create_pool
from shared.libpq_environment import without_password
from shared.metrics import DATABASE_POOLS, DATABASE_REPLICA_FALLBACKS, DATABASE_REPLICA_UP

logger = logging.getLogger(__name__)

# How often a replica's health is checked: the longest reads stay on the primary after it is back.
REPLICA_CHECK_SECONDS = 2.0
# A read waits at most this long for a replica connection before it runs on the primary instead.
REPLICA_CONNECTION_WAIT_SECONDS = 1.0
# How long a starting service tries the replica once: start-up never waits longer for it.
START_CONNECT_TIMEOUT_SECONDS = 2

Source = TypeVar("Source")
Result = TypeVar("Result")


class FallbackReason(StrEnum):
    REPLICA_DOWN = "replica_down"
    QUERY_FAILED = "query_failed"
    NOT_FOUND = "not_found"


class Replica:
    """The replica's pool and whether it answered last: reads are sent to it only while it did."""

    def __init__(self, pool: Pool, service: str, shown_url: str) -> None:
        self.pool = pool
        self.service = service
        # The URL without its password, for log lines.
        self.shown_url = shown_url
        # None until the first check at start.
        self.up: bool | None = None
        self._checking: asyncio.Task[None] | None = None

    def start_checking(self) -> None:
        self._checking = asyncio.create_task(self._check_periodically())

    async def close(self) -> None:
        if self._checking is not None:
            self._checking.cancel()
            await asyncio.gather(self._checking, return_exceptions=True)
        DATABASE_POOLS.remove(self.pool)
        # Another app of the same service in this process (tests) may have removed it already.
        with contextlib.suppress(KeyError):
            DATABASE_REPLICA_UP.remove(self.service)
        await self.pool.close()

    def mark(self, up: bool, why: str = "") -> None:
        """Records whether the replica answers, logging only the changes (not every failed read)."""
        if up and self.up is not True:
            logger.info("read replica %s answers: the read-only calls read from it", self.shown_url)
        elif not up and self.up is not False:
            logger.warning(
                "read replica %s does not answer (%s): the read-only calls read from the primary until it does",
                self.shown_url,
                why,
            )
        self.up = up
        DATABASE_REPLICA_UP.labels(self.service).set(1 if up else 0)

    def count_fallback(self, reason: FallbackReason) -> None:
        DATABASE_REPLICA_FALLBACKS.labels(self.service, reason.value).inc()

    async def check(self) -> None:
        try:
            # Bounded as a whole: a connection to a host that vanished can wait minutes for TCP to give up.
            async with asyncio.timeout(REPLICA_CHECK_SECONDS), self.pool.connection() as connection:
                await connection.execute("SELECT 1")
        except TimeoutError:
            self.mark(False, f"no answer within {REPLICA_CHECK_SECONDS:g} s")
        except psycopg.Error as error:
            self.mark(False, _reason(error))
        else:
            self.mark(True)

    async def _check_periodically(self) -> None:
        while True:
            await asyncio.sleep(REPLICA_CHECK_SECONDS)
            await self.check()


def _reason(error: BaseException) -> str:
    return str(error).strip() or type(error).__name__


async def _first_answer(url: str) -> str | None:
    """None when the replica answers a query now; else why not."""
    try:
        async with asyncio.timeout(START_CONNECT_TIMEOUT_SECONDS):
            async with await psycopg.AsyncConnection.connect(
                url, autocommit=True, connect_timeout=START_CONNECT_TIMEOUT_SECONDS
            ) as connection:
                await connection.execute("SELECT 1")
    except TimeoutError:
        return f"no answer within {START_CONNECT_TIMEOUT_SECONDS} s"
    except psycopg.Error as error:
        return _reason(error)
    return None


async def open_replica(
    config: Config,
    service: str,
    application_name: str = "",
    configure: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]] | None = None,
) -> Replica | None:
    """The replica of ARBITER_DATABASE_READ_URL, None when it is unset. Never waits long for it, nor fails
    when it does not answer (that is logged): its reads go to the primary until it does."""
    url = config.database_read_url
    if url is None:
        return None
    replica = Replica(
        create_pool(
            url,
            config.db_pool_min_size,
            config.db_pool_max_size,
            name=f"{service}-replica",
            application_name=application_name or f"arbiter-{service} reads",
            configure=configure,
            connection_wait_seconds=REPLICA_CONNECTION_WAIT_SECONDS,
        ),
        service,
        without_password(url),
    )
    why_not = await _first_answer(url)
    replica.mark(why_not is None, why_not or "")
    await replica.pool.open()
    DATABASE_POOLS.add(service, replica.pool, "replica")
    replica.start_checking()
    return replica


class Reads(Generic[Source]):
    """Runs read-only operations on a Source over the replica (a store, or the pool itself) while there is
    a replica that answers, else on the same Source over the primary."""

    def __init__(self, primary: Source, replica: tuple[Replica, Source] | None = None) -> None:
        self._primary = primary
        self._replica = replica

    @classmethod
    def over(cls, primary: Source, replica: Replica | None, make: Callable[[Pool], Source]) -> Reads[Source]:
        """Reads of `primary`, and of a Source `make` builds over the replica's pool when there is one."""
        return cls(primary) if replica is None else cls(primary, (replica, make(replica.pool)))

    async def run(
        self,
        read: Callable[[Source], Awaitable[Result]],
        *,
        missing: Callable[[Result], bool] | None = None,
    ) -> Result:
        """`read` on the replica, or on the primary when there is no replica, it is down, `read` fails on
        it, or `missing(result)` says the replica lacks what was asked (it lags behind the primary: a task
        submitted a moment ago is answered from the primary, not as NOT_FOUND)."""
        if self._replica is None:
            return await read(self._primary)
        replica, on_replica = self._replica
        if not replica.up:
            replica.count_fallback(FallbackReason.REPLICA_DOWN)
            return await read(self._primary)
        try:
            result = await read(on_replica)
        except psycopg.Error as error:
            # Unreachable, restarting, a query cancelled by recovery: the primary answers instead.
            replica.mark(False, _reason(error))
            replica.count_fallback(FallbackReason.QUERY_FAILED)
            return await read(self._primary)
        if missing is not None and missing(result):
            replica.count_fallback(FallbackReason.NOT_FOUND)
            return await read(self._primary)
        return result
