"""The connection pool, and migrations applied in order under an advisory lock."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay

logger = logging.getLogger(__name__)

# Any fixed number works; it only has to be the same in every Arbiter process.
_MIGRATION_LOCK_KEY = 0x41524249544552  # "ARBITER"

# Every pool hands out autocommit connections whose rows are dicts.
Pool = AsyncConnectionPool[psycopg.AsyncConnection[DictRow]]

# A caller waits at most this long for a connection, then gets UNAVAILABLE: well inside the SDK's 10 s
# deadline, so while the database is down callers hear UNAVAILABLE (retry), not DEADLINE_EXCEEDED.
CONNECTION_WAIT_SECONDS = 5.0
# psycopg_pool retries a lost connection after 1, 2, 4, 8… s until it gives up: after a minute's outage it
# would not try again for another minute. Giving up after a few seconds lets the next request for a
# connection (the health check asks every 2 s) start afresh, so the pool is back soon after the database.
RECONNECT_SECONDS = 5.0
# How long a starting service waits for the database.
OPEN_TIMEOUT_SECONDS = 30.0


def create_pool(
    url: str,
    min_size: int,
    max_size: int,
    name: str,
    application_name: str = "",
    configure: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]] | None = None,
    connection_wait_seconds: float = CONNECTION_WAIT_SECONDS,
) -> Pool:
    """A pool, not yet opened, whose connections return rows as dicts. The connections carry
    `application_name` (default: the pool's name), as pg_stat_activity and the task triggers'
    notifications show it. A caller waits `connection_wait_seconds` for a connection, then gets PoolTimeout."""
    return AsyncConnectionPool(
        url,
        connection_class=psycopg.AsyncConnection[DictRow],
        min_size=min_size,
        max_size=max_size,
        kwargs={
            "row_factory": dict_row,
            "autocommit": True,
            # PostgreSQL keeps 63 bytes of it.
            "application_name": (application_name or name)[:63],
            # Short statements on small row sets: compiling them (JIT) costs far more than it saves, e.g.
            # 25 ms on a 0.1 ms claim whose plan merely looks expensive.
            "options": "-c jit=off",
        },
        name=name,
        # Run on each new connection (shared/tracing.py: a span per statement).
        configure=configure,
        timeout=connection_wait_seconds,
        reconnect_timeout=RECONNECT_SECONDS,
        open=False,
    )


async def open_pool(
    url: str,
    min_size: int,
    max_size: int,
    name: str,
    application_name: str = "",
    configure: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]] | None = None,
) -> Pool:
    """Opens a pool (see create_pool) and waits (up to 30 s) until one connection works."""
    pool = create_pool(url, min_size, max_size, name, application_name, configure)
    await pool.open()
    try:
        # Not open(wait=True): that waits on the pool's own attempts, which give up after RECONNECT_SECONDS.
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(PoolTimeout), stop=stop_after_delay(OPEN_TIMEOUT_SECONDS), reraise=True
        ):
            with attempt:
                async with pool.connection():
                    pass
    except BaseException:
        await pool.close()
        raise
    return pool


async def database_answers(pool: Pool, timeout: float = 2.0) -> bool:
    try:
        async with pool.connection(timeout=timeout) as connection:
            await connection.execute("SELECT 1")
        return True
    except (psycopg.Error, TimeoutError) as error:
        logger.warning("database check failed: %s", error)
        return False


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    """Reads shared/migrations/NNNN_name.sql in version order."""
    migrations = []
    for entry in resources.files("shared.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version_text, _, rest = entry.name.partition("_")
            migrations.append(Migration(int(version_text), rest.removesuffix(".sql"), entry.read_text()))
    migrations.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in migrations]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a version number: {versions}")
    return migrations


class MigrationError(Exception):
    pass


async def migrate(url: str) -> list[int]:
    """Applies every migration not yet applied; returns the versions applied now.

    Safe when several processes start at once: they queue on one advisory lock, and each
    migration runs in its own transaction together with its schema_migrations row.
    """
    applied_now: list[int] = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
        await connection.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK_KEY,))
        try:
            await connection.execute(
                """
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    version    integer PRIMARY KEY,
                    name       text NOT NULL,
                    checksum   text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )
                """
            )
            cursor = await connection.execute("SELECT version, checksum FROM schema_migrations")
            applied = {version: checksum for version, checksum in await cursor.fetchall()}
            for migration in load_migrations():
                if migration.version in applied:
                    if applied[migration.version] != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.version} ({migration.name}) was changed after it was applied; "
                            "add a new migration instead of editing an applied one"
                        )
                    continue
                async with connection.transaction():
                    await connection.execute(migration.sql.encode())
                    await connection.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                logger.info("applied migration %04d_%s", migration.version, migration.name)
                applied_now.append(migration.version)
        finally:
            await connection.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK_KEY,))
    return applied_now
