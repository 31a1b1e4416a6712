"""Undoing migrations: every migration has a down script that undoes it exactly or says why it cannot;
`arbiter migrate --to N` goes down (and up) under the migration lock, and refuses before changing anything."""

from __future__ import annotations

import asyncio
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import psycopg
import pytest

from shared.database import IRREVERSIBLE_MARKER, Migration, MigrationRefused, load_migrations, migrate, migrate_to
from tests.support.processes import REPO_ROOT, ServiceProcesses
from tests.support.schema import applied_versions, read_schema, schema_differences
from tests.support.stack import create_keys
from tests.test_cli import arbiter, assert_one_line_error, environment, succeeded

MIGRATIONS = load_migrations()
NEWEST = MIGRATIONS[-1].version
REVERSIBLE = [migration for migration in MIGRATIONS if migration.irreversible_reason is None]
IRREVERSIBLE = [migration for migration in MIGRATIONS if migration.irreversible_reason is not None]
# The lowest version `migrate --to` can reach from the newest: just below the newest irreversible migration.
LOWEST_REACHABLE = max(migration.version for migration in IRREVERSIBLE)


def _statements(sql: str) -> list[str]:
    """The lines of `sql` that are not comments or blank."""
    return [line for line in sql.splitlines() if line.strip() and not line.lstrip().startswith("--")]


@pytest.mark.parametrize("migration", MIGRATIONS, ids=lambda migration: migration.label)
def test_every_migration_has_a_down_script_that_undoes_it_or_says_why_not(migration: Migration) -> None:
    assert migration.down_sql is not None, (
        f"shared/migrations/{migration.label}.down.sql is missing: write the SQL that undoes the migration, or a "
        f"first line '{IRREVERSIBLE_MARKER} <why, and the forward fix>'"
    )
    if migration.irreversible_reason is None:
        assert _statements(migration.down_sql), f"{migration.label}.down.sql holds no SQL and no irreversible marker"
    else:
        assert len(migration.irreversible_reason) > 20, f"{migration.label}: say why it is irreversible"
        assert not _statements(migration.down_sql), f"{migration.label}.down.sql is marked irreversible but holds SQL"


def test_a_migration_without_a_down_script_counts_as_irreversible() -> None:
    migration = Migration(99, "no_way_back", "ALTER TABLE tasks ADD COLUMN x int;")
    assert migration.irreversible_reason == "it has no down script (0099_no_way_back.down.sql)"


def test_the_irreversible_reason_runs_on_over_the_comment_lines_after_the_marker() -> None:
    down = f"{IRREVERSIBLE_MARKER} it drops\n-- every row.\n\nSELECT 1;\n-- not this\n"
    assert Migration(1, "x", "", down).irreversible_reason == "it drops every row."


def test_the_package_data_ships_the_down_scripts() -> None:
    """A wheel (the image installs one) holds shared/ files matching pyproject's package-data globs."""
    globs = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["shared"]
    for migration in MIGRATIONS:
        path = f"migrations/{migration.label}.down.sql"
        assert any(fnmatch(path, pattern) for pattern in globs), f"pyproject's package-data misses {path}"


def test_the_loader_takes_down_scripts_as_no_migrations_of_their_own() -> None:
    folder = REPO_ROOT / "shared" / "migrations"
    up_files = [path for path in folder.glob("*.sql") if not path.name.endswith(".down.sql")]
    assert [migration.label for migration in MIGRATIONS] == sorted(path.stem for path in up_files)
    assert all(migration.down_sql is not None for migration in MIGRATIONS)


@pytest.mark.parametrize("migration", REVERSIBLE, ids=lambda migration: migration.label)
async def test_a_reversible_migration_undone_leaves_the_schema_it_found_and_applies_again(
    empty_database_url: str, migration: Migration
) -> None:
    await migrate_to(empty_database_url, migration.version - 1)
    before = read_schema(empty_database_url)
    assert (await migrate_to(empty_database_url, migration.version)).applied == [migration.version]
    after_up = read_schema(empty_database_url)

    assert (await migrate_to(empty_database_url, migration.version - 1)).reverted == [migration.version]
    assert schema_differences(before, read_schema(empty_database_url)) == []
    assert applied_versions(empty_database_url) == list(range(1, migration.version))

    assert (await migrate_to(empty_database_url, migration.version)).applied == [migration.version]
    assert schema_differences(after_up, read_schema(empty_database_url)) == []


async def test_going_down_keeps_the_rows_and_the_older_schema_records_task_events(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(
            "INSERT INTO tasks (task_type, state, max_attempts, tenant, trace_context) "
            "VALUES ('echo', 'pending', 1, 'default', '{\"traceparent\": \"00-x\"}')"
        )
    outcome = await migrate_to(database_url, LOWEST_REACHABLE)
    assert outcome.reverted == list(range(NEWEST, LOWEST_REACHABLE, -1))
    with psycopg.connect(database_url, autocommit=True) as connection:
        assert connection.execute("SELECT count(*) FROM tasks").fetchone() == (1,)
        # The row-level trigger 0009's down script brings back records a state change as before.
        connection.execute("UPDATE tasks SET state = 'cancelled'")
        events = connection.execute("SELECT from_state, to_state FROM task_events ORDER BY id").fetchall()
        assert events == [(None, "pending"), ("pending", "cancelled")]


async def test_a_refused_move_down_changes_nothing(database_url: str) -> None:
    """The reversible migrations above the irreversible one are not undone either: the plan is checked first."""
    irreversible = IRREVERSIBLE[-1]
    before = read_schema(database_url)
    result = await arbiter(
        environment(ARBITER_DATABASE_URL=database_url), "migrate", "--to", str(irreversible.version - 1)
    )
    line = assert_one_line_error(result, 1, "arbiter: cannot move the database down")
    assert irreversible.label in line and "Nothing was changed" in line
    assert str(irreversible.irreversible_reason).rstrip(".") in line
    assert applied_versions(database_url) == [migration.version for migration in MIGRATIONS]
    assert schema_differences(before, read_schema(database_url)) == []


async def test_moving_below_a_migration_a_newer_release_applied_is_refused(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, 'from_the_future', 'x')",
            (NEWEST + 1,),
        )
    with pytest.raises(MigrationRefused, match=f"migration {NEWEST + 1:04d} was applied by a newer release"):
        await migrate_to(database_url, NEWEST)
    assert applied_versions(database_url)[-1] == NEWEST + 1


async def test_arbiter_migrate_to_goes_down_and_back_up(database_url: str) -> None:
    variables = environment(ARBITER_DATABASE_URL=database_url)
    down = succeeded(await arbiter(variables, "migrate", "--to", str(LOWEST_REACHABLE)))
    assert down.strip() == f"reverted migrations: {list(range(NEWEST, LOWEST_REACHABLE, -1))}"
    assert applied_versions(database_url)[-1] == LOWEST_REACHABLE
    again = succeeded(await arbiter(variables, "db", "migrate", "--to", str(LOWEST_REACHABLE)))
    assert again.strip() == f"database is at migration {LOWEST_REACHABLE} already"
    up = succeeded(await arbiter(variables, "migrate"))
    assert up.strip() == f"applied migrations: {list(range(LOWEST_REACHABLE + 1, NEWEST + 1))}"


async def test_a_dry_run_says_what_it_would_do_and_changes_nothing(database_url: str) -> None:
    variables = environment(ARBITER_DATABASE_URL=database_url)
    before = read_schema(database_url)
    planned = succeeded(await arbiter(variables, "migrate", "--to", str(LOWEST_REACHABLE), "--dry-run"))
    assert planned.strip() == f"would revert migrations: {list(range(NEWEST, LOWEST_REACHABLE, -1))}"
    refused = await arbiter(variables, "migrate", "--to", str(LOWEST_REACHABLE - 1), "--dry-run")
    assert IRREVERSIBLE[-1].label in assert_one_line_error(refused, 1, "arbiter: cannot move the database down")
    assert applied_versions(database_url)[-1] == NEWEST
    assert schema_differences(before, read_schema(database_url)) == []


async def test_a_dry_run_on_a_database_never_migrated_leaves_it_empty(empty_database_url: str) -> None:
    outcome = await migrate_to(empty_database_url, None, dry_run=True)
    assert outcome.applied == [migration.version for migration in MIGRATIONS]
    assert read_schema(empty_database_url)["relations"] == []


@pytest.mark.parametrize("target", [str(NEWEST + 1), "-1", "ten"])
async def test_migrate_to_a_version_that_does_not_exist_is_a_usage_error(database_url: str, target: str) -> None:
    result = await arbiter(environment(ARBITER_DATABASE_URL=database_url), "migrate", "--to", target)
    assert result.returncode == 2, result.stderr
    assert "--to" in result.stderr
    assert applied_versions(database_url)[-1] == NEWEST


async def test_concurrent_moves_down_undo_each_migration_once(database_url: str) -> None:
    outcomes = await asyncio.gather(*(migrate_to(database_url, LOWEST_REACHABLE) for _ in range(3)))
    reverted = sorted(version for outcome in outcomes for version in outcome.reverted)
    assert reverted == list(range(LOWEST_REACHABLE + 1, NEWEST + 1))
    assert [outcome.applied for outcome in outcomes] == [[], [], []]
    assert applied_versions(database_url)[-1] == LOWEST_REACHABLE


async def test_a_move_down_racing_a_move_up_leaves_a_schema_matching_its_recorded_version(
    database_url: str, empty_database_url: str
) -> None:
    await asyncio.gather(migrate_to(database_url, LOWEST_REACHABLE), migrate(database_url))
    level = applied_versions(database_url)[-1]
    assert level in (LOWEST_REACHABLE, NEWEST)
    await migrate_to(empty_database_url, level)
    assert schema_differences(read_schema(empty_database_url), read_schema(database_url)) == []


async def test_a_service_on_a_database_a_newer_release_migrated_warns_and_serves(
    database_url: str, tmp_path: Path
) -> None:
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, 'from_the_next_release', 'x')",
            (NEWEST + 1,),
        )
    processes = ServiceProcesses(database_url, await create_keys(database_url), tmp_path)
    try:
        processes.start()  # returns once both are SERVING
    finally:
        codes = processes.stop()
    assert codes == {"orchestrator": 0, "registry": 0}, processes.logs()
    warning = f"the database holds migrations this release does not ship ({NEWEST + 1:04d}_from_the_next_release)"
    for name in ("registry", "orchestrator"):
        assert warning in (tmp_path / f"{name}.log").read_text(), processes.logs()
