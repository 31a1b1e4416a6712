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


# The first line of a down script that cannot undo its migration, followed by why and the forward fix.
IRREVERSIBLE_MARKER = "-- arbiter:irreversible:"
DOWN_SUFFIX = ".down.sql"


@dataclass(frozen=True)
class Migration:
    """shared/migrations/NNNN_name.sql, and its down script NNNN_name.down.sql (None: there is none)."""

    version: int
    name: str
    sql: str
    down_sql: str | None = None

    @property
    def checksum(self) -> str:
        # Of the up script alone: adding or editing a down script changes no applied migration.
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def label(self) -> str:
        """As the file is named, e.g. 0007_tenants_and_keys."""
        return f"{self.version:04d}_{self.name}"

    @property
    def irreversible_reason(self) -> str | None:
        """Why this migration cannot be undone (None when its down script undoes it): the marker's text,
        which runs on over the comment lines that follow it."""
        if self.down_sql is None:
            return f"it has no down script ({self.label}{DOWN_SUFFIX})"
        lines = self.down_sql.lstrip().splitlines()
        if not lines or not lines[0].startswith(IRREVERSIBLE_MARKER):
            return None
        reason = [lines[0].removeprefix(IRREVERSIBLE_MARKER).strip()]
        for line in lines[1:]:
            if not line.startswith("--"):
                break
            reason.append(line.removeprefix("--").strip())
        return " ".join(part for part in reason if part)


def load_migrations() -> list[Migration]:
    """Reads shared/migrations/NNNN_name.sql in version order, each with its NNNN_name.down.sql."""
    ups: dict[str, str] = {}
    downs: dict[str, str] = {}
    for entry in resources.files("shared.migrations").iterdir():
        if entry.name.endswith(DOWN_SUFFIX):
            downs[entry.name.removesuffix(DOWN_SUFFIX)] = entry.read_text()
        elif entry.name.endswith(".sql"):
            ups[entry.name.removesuffix(".sql")] = entry.read_text()
    orphans = sorted(set(downs) - set(ups))
    if orphans:
        raise RuntimeError(f"down scripts without a migration: {[name + DOWN_SUFFIX for name in orphans]}")
    migrations = []
    for stem, sql in ups.items():
        version_text, _, name = stem.partition("_")
        migrations.append(Migration(int(version_text), name, sql, downs.get(stem)))
    migrations.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in migrations]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a version number: {versions}")
    return migrations


class MigrationError(Exception):
    pass


class MigrationRefused(MigrationError):
    """`migrate --to` cannot get there; nothing was changed."""


@dataclass(frozen=True)
class MigrationPlan:
    """What moving a database to a target version takes: migrations to undo (newest first), then to apply."""

    revert: list[Migration]
    apply: list[Migration]


def plan_migration(applied: dict[int, str], shipped: list[Migration], target: int | None) -> MigrationPlan:
    """Pure. `applied` maps each version in schema_migrations to its checksum; `target` None means the newest.

    Raises MigrationError for an applied migration whose file changed, and MigrationRefused when a migration
    above the target cannot be undone (unknown to this release, or irreversible), naming it and why."""
    by_version = {migration.version: migration for migration in shipped}
    for version, checksum in applied.items():
        migration = by_version.get(version)
        if migration is not None and migration.checksum != checksum:
            raise MigrationError(
                f"migration {migration.label} was changed after it was applied; "
                "add a new migration instead of editing an applied one"
            )
    revert: list[Migration] = []
    if target is not None:
        for version in sorted((version for version in applied if version > target), reverse=True):
            migration = by_version.get(version)
            if migration is None:
                raise MigrationRefused(
                    f"cannot move the database down to {target}: migration {version:04d} was applied by a newer "
                    f"release and this one has no down script for it; run `arbiter migrate --to {target}` with the "
                    "release that added it. Nothing was changed."
                )
            reason = migration.irreversible_reason
            if reason is not None:
                raise MigrationRefused(
                    f"cannot move the database down to {target}: migration {migration.label} is irreversible: "
                    f"{reason.rstrip('.')}. Nothing was changed."
                )
            revert.append(migration)
    apply = [
        migration
        for migration in shipped
        if migration.version not in applied and (target is None or migration.version <= target)
    ]
    return MigrationPlan(revert, apply)


async def migrate(url: str) -> list[int]:
    """Applies every migration not yet applied; returns the versions applied now.

    Safe when several processes start at once: they queue on one advisory lock, and each
    migration runs in its own transaction together with its schema_migrations row. A database that a newer
    release migrated further is left as it is, with a warning: services keep serving on it after a rollback.
    """
    return (await migrate_to(url, None)).applied


@dataclass(frozen=True)
class MigrationOutcome:
    applied: list[int]
    reverted: list[int]


async def migrate_to(url: str, target: int | None, *, dry_run: bool = False) -> MigrationOutcome:
    """Moves the database to migration `target` (None: the newest this release ships): undoes the applied
    migrations above it newest first with their down scripts, then applies the missing ones up to it.

    Everything happens under the advisory lock the services take to migrate, so concurrent runs queue and each
    sees what the previous one did; each migration, up or down, is one transaction with its schema_migrations
    row. The whole plan is checked before the first change: a migration that cannot be undone refuses it all.
    With `dry_run`, returns what it would undo and apply, or refuses the same way, and changes nothing.
    """
    shipped = load_migrations()
    outcome = MigrationOutcome([], [])
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
        await connection.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK_KEY,))
        try:
            rows = await _read_schema_migrations(connection, create=not dry_run)
            applied = {version: checksum for version, _, checksum in rows}
            plan = plan_migration(applied, shipped, target)
            if dry_run:
                return MigrationOutcome(
                    [migration.version for migration in plan.apply], [migration.version for migration in plan.revert]
                )
            if target is None:
                _warn_of_newer_migrations(rows, shipped)
            for migration in plan.revert:
                assert migration.down_sql is not None
                async with connection.transaction():
                    await connection.execute(migration.down_sql.encode())
                    await connection.execute("DELETE FROM schema_migrations WHERE version = %s", (migration.version,))
                logger.info("reverted migration %s", migration.label)
                outcome.reverted.append(migration.version)
            for migration in plan.apply:
                async with connection.transaction():
                    await connection.execute(migration.sql.encode())
                    await connection.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                logger.info("applied migration %s", migration.label)
                outcome.applied.append(migration.version)
        finally:
            await connection.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK_KEY,))
    return outcome


async def _read_schema_migrations(
    connection: psycopg.AsyncConnection[Any], *, create: bool
) -> list[tuple[int, str, str]]:
    """(version, name, checksum) of each applied migration; makes the table first when `create`."""
    if create:
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
    else:
        cursor = await connection.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
        exists = await cursor.fetchone()
        if exists is None or not exists[0]:
            return []
    cursor = await connection.execute("SELECT version, name, checksum FROM schema_migrations")
    return [(int(version), str(name), str(checksum)) for version, name, checksum in await cursor.fetchall()]


def _warn_of_newer_migrations(rows: list[tuple[int, str, str]], shipped: list[Migration]) -> None:
    shipped_versions = {migration.version for migration in shipped}
    newer = sorted((version, name) for version, name, _ in rows if version not in shipped_versions)
    if newer:
        logger.warning(
            "the database holds migrations this release does not ship (%s): a newer release migrated it. Serving "
            "on it, as after a rollback (docs/operations.md, Rolling back); `arbiter migrate --to N` run with that "
            "release undoes them",
            ", ".join(f"{version:04d}_{name}" for version, name in newer),
        )
