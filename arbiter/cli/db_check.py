"""`arbiter db check`: whether a database is fit for this code to run on. It reaches the server, then
reports its version, its migration level against the migrations shipped here, the pool's room among
the server's connections, the latency of a round trip, and whether every index the migrations make
exists. Each problem is one line on stderr; the exit code is 0 only when there is none."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row

from arbiter.cli.output import one_line, print_fields, print_json
from shared.config import Config
from shared.database import Migration, load_migrations
from shared.embedded_postgres import database_url
from shared.libpq_environment import without_password
from shared.migration_status import AppliedMigration, MigrationLevel, expected_indexes, migration_label, migration_level

ROUND_TRIPS = 20
# Unless the connection string or PGCONNECT_TIMEOUT says otherwise: a server that never answers (packets
# dropped, not refused) must not hang the check.
CONNECT_TIMEOUT_SECONDS = 10
APPLICATION_NAME = "arbiter-db-check"
MIGRATE_HINT = "run `arbiter migrate` (the services also migrate when they start)"

Connection = psycopg.AsyncConnection[DictRow]

# Indexes of this schema that constraints did not make (those come and go with their tables), and whether
# each is usable: a CREATE INDEX CONCURRENTLY that failed leaves an invalid one behind.
_INDEXES = """
    SELECT index_class.relname AS name, pg_index.indisvalid AS valid
    FROM pg_index
    JOIN pg_class AS index_class ON index_class.oid = pg_index.indexrelid
    JOIN pg_namespace ON pg_namespace.oid = index_class.relnamespace
    WHERE pg_namespace.nspname = current_schema()
      AND NOT EXISTS (SELECT 1 FROM pg_constraint WHERE pg_constraint.conindid = pg_index.indexrelid)
"""
_CONNECTIONS = """
    SELECT current_setting('max_connections')::int AS max_connections,
           current_setting('superuser_reserved_connections')::int AS reserved_connections,
           (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int AS connections_in_use
"""
_APPLIED_MIGRATIONS = """
    SELECT version, name, checksum FROM schema_migrations ORDER BY version
"""


@dataclass(frozen=True)
class MigrationReport:
    applied: list[int]
    shipped: list[int]
    # As their files are named, e.g. 0007_tenants_and_keys.
    pending: list[str]
    unknown: list[str]
    changed: list[str]


@dataclass(frozen=True)
class PoolReport:
    min_size: int
    max_size: int
    max_connections: int
    reserved_connections: int
    connections_in_use: int

    @property
    def available_connections(self) -> int:
        return self.max_connections - self.reserved_connections


@dataclass(frozen=True)
class LatencyReport:
    round_trips: int
    median_ms: float
    max_ms: float


@dataclass(frozen=True)
class IndexReport:
    expected: int
    missing: list[str]
    invalid: list[str]


@dataclass
class CheckReport:
    # Without its password.
    database: str
    server_version: str | None = None
    # None when the database could not be reached or has no schema_migrations table.
    migrations: MigrationReport | None = None
    pool: PoolReport | None = None
    latency: LatencyReport | None = None
    # None when there is no migration level to expect indexes from.
    indexes: IndexReport | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def run_check(arguments: argparse.Namespace) -> int:
    config = Config.from_env()
    with database_url(config) as url:
        report = asyncio.run(check_database(url, config))
    if arguments.json:
        print_json({"ok": report.ok, **vars(report)})
    else:
        print_report(report)
    for problem in report.problems:
        print(f"arbiter: db check: {problem}", file=sys.stderr)
    return 0 if report.ok else 1


def connect_options(url: str, environ: Mapping[str, str]) -> dict[str, Any]:
    if "connect_timeout" in conninfo_to_dict(url) or environ.get("PGCONNECT_TIMEOUT"):
        return {}
    return {"connect_timeout": CONNECT_TIMEOUT_SECONDS}


async def check_database(url: str, config: Config) -> CheckReport:
    report = CheckReport(database=without_password(url))
    try:
        connection = await psycopg.AsyncConnection.connect(
            url,
            autocommit=True,
            row_factory=dict_row,
            application_name=APPLICATION_NAME,
            **connect_options(url, os.environ),
        )
    except psycopg.OperationalError as error:
        report.problems.append(f"database unreachable ({report.database}): {one_line(str(error))}")
        return report
    async with connection:
        report.server_version = connection.info.parameter_status("server_version")
        applied = await read_applied_migrations(connection)
        report.pool = await read_pool(connection, config)
        report.latency = await measure_latency(connection)
        present = await read_indexes(connection)
    report.problems.extend(pool_problems(report.pool))
    shipped = load_migrations()
    if applied is None:
        report.problems.append(f"database not migrated: it has no schema_migrations table; {MIGRATE_HINT}")
        return report
    level = migration_level(applied, shipped)
    report.migrations = migration_report(level)
    report.problems.extend(migration_problems(level))
    report.indexes, index_problems = check_indexes(level, shipped, present)
    report.problems.extend(index_problems)
    return report


async def read_applied_migrations(connection: Connection) -> list[AppliedMigration] | None:
    """schema_migrations' rows; None when there is no such table (never migrated)."""
    cursor = await connection.execute("SELECT to_regclass('schema_migrations') IS NOT NULL AS migrated")
    row = await cursor.fetchone()
    if row is None or not row["migrated"]:
        return None
    cursor = await connection.execute(_APPLIED_MIGRATIONS)
    return [AppliedMigration(row["version"], row["name"], row["checksum"]) for row in await cursor.fetchall()]


async def read_pool(connection: Connection, config: Config) -> PoolReport:
    row = await (await connection.execute(_CONNECTIONS)).fetchone()
    assert row is not None
    return PoolReport(
        min_size=config.db_pool_min_size,
        max_size=config.db_pool_max_size,
        max_connections=row["max_connections"],
        reserved_connections=row["reserved_connections"],
        connections_in_use=row["connections_in_use"],
    )


async def measure_latency(connection: Connection, round_trips: int = ROUND_TRIPS) -> LatencyReport:
    """`SELECT 1` `round_trips` times on one open connection: the network and the server's own overhead."""
    milliseconds = []
    for _ in range(round_trips):
        started = time.perf_counter()
        await connection.execute("SELECT 1")
        milliseconds.append((time.perf_counter() - started) * 1000)
    return LatencyReport(round_trips, round(statistics.median(milliseconds), 3), round(max(milliseconds), 3))


async def read_indexes(connection: Connection) -> dict[str, bool]:
    """Each index of the schema that no constraint made, and whether it is valid."""
    cursor = await connection.execute(_INDEXES)
    return {row["name"]: row["valid"] for row in await cursor.fetchall()}


def migration_report(level: MigrationLevel) -> MigrationReport:
    return MigrationReport(
        applied=level.applied,
        shipped=level.shipped,
        pending=[migration_label(migration.version, migration.name) for migration in level.pending],
        unknown=[migration_label(migration.version, migration.name) for migration in level.unknown],
        changed=[migration_label(migration.version, migration.name) for migration in level.changed],
    )


def migration_problems(level: MigrationLevel) -> list[str]:
    report = migration_report(level)
    problems = []
    if report.pending:
        problems.append(f"migrations pending: {', '.join(report.pending)}; {MIGRATE_HINT}")
    if report.unknown:
        problems.append(
            f"database newer than this code: {', '.join(report.unknown)} applied, but this release does not ship "
            "them; run the release that does, or undo them with that release's `arbiter migrate --to N` "
            "(docs/operations.md, Rolling back)"
        )
    problems.extend(
        f"migration {label} changed after it was applied (its checksum differs from the one recorded): restore "
        "the file and put the change in a new migration"
        for label in report.changed
    )
    return problems


def check_indexes(
    level: MigrationLevel, shipped: list[Migration], present: dict[str, bool]
) -> tuple[IndexReport, list[str]]:
    """The indexes the applied migrations make, against those present: the report, and a problem per
    index missing or invalid."""
    applied = set(level.applied)
    expected = expected_indexes(migration for migration in shipped if migration.version in applied)
    missing = sorted(name for name in expected if name not in present)
    invalid = sorted(name for name in expected if present.get(name) is False)
    problems = []
    for name in missing:
        label = migration_label(expected[name].version, expected[name].name)
        problems.append(
            f"index {name} is missing (made by migration {label}): create it again with the statement in "
            f"shared/migrations/{label}.sql"
        )
    problems.extend(
        f"index {name} is invalid (a CREATE INDEX CONCURRENTLY that failed?): run REINDEX INDEX {name}"
        for name in invalid
    )
    return IndexReport(expected=len(expected), missing=missing, invalid=invalid), problems


def pool_problems(pool: PoolReport | None) -> list[str]:
    if pool is None or pool.max_size <= pool.available_connections:
        return []
    return [
        f"ARBITER_DB_POOL_MAX_SIZE ({pool.max_size}) is above the {pool.available_connections} connections the "
        f"server accepts (max_connections {pool.max_connections} minus {pool.reserved_connections} reserved): "
        "lower it or raise max_connections"
    ]


def describe_migrations(report: CheckReport) -> str:
    migrations = report.migrations
    if migrations is None:
        return "not migrated"
    summary = f"{len(migrations.applied)} applied, {len(migrations.shipped)} shipped with this release"
    details = [
        *([f"{len(migrations.pending)} pending"] if migrations.pending else []),
        *([f"{len(migrations.unknown)} unknown to this release"] if migrations.unknown else []),
        *([f"{len(migrations.changed)} changed since applied"] if migrations.changed else []),
    ]
    return f"{summary}: {', '.join(details) or 'up to date'}"


def describe_indexes(indexes: IndexReport | None) -> str:
    if indexes is None:
        return "not checked (no migration level)"
    if not indexes.missing and not indexes.invalid:
        return f"all {indexes.expected} the migrations make are present"
    faults = [f"{len(indexes.missing)} missing"] if indexes.missing else []
    faults += [f"{len(indexes.invalid)} invalid"] if indexes.invalid else []
    return f"{indexes.expected} expected: {', '.join(faults)}"


def print_report(report: CheckReport) -> None:
    fields = [("database", report.database)]
    if report.server_version is not None:
        fields.append(("server", f"PostgreSQL {report.server_version}"))
        fields.append(("migrations", describe_migrations(report)))
    if report.pool is not None:
        pool = report.pool
        fields.append(
            (
                "pool",
                f"{pool.min_size} to {pool.max_size} connections per service process (ARBITER_DB_POOL_MIN_SIZE, "
                f"ARBITER_DB_POOL_MAX_SIZE); the server: max_connections {pool.max_connections}, "
                f"{pool.reserved_connections} reserved, {pool.connections_in_use} in use",
            )
        )
    if report.latency is not None:
        latency = report.latency
        fields.append(
            (
                "round trip",
                f"median {latency.median_ms:.2f} ms, max {latency.max_ms:.2f} ms ({latency.round_trips} × SELECT 1)",
            )
        )
    if report.server_version is not None:
        fields.append(("indexes", describe_indexes(report.indexes)))
    problems = len(report.problems)
    fields.append(("status", "ok" if report.ok else f"{problems} problem{'s' if problems > 1 else ''} (on stderr)"))
    print_fields(fields)
