"""`arbiter db check` and `arbiter db seed` against the real test PostgreSQL: some as the subprocess a
person runs, the rest through check_database itself; and the index list they rely on, against the
migrations."""

from __future__ import annotations

import json

import psycopg
import pytest

from arbiter.cli.db_check import CheckReport, PoolReport, check_database, pool_problems
from arbiter.cli.db_seed import DEMO_AGENTS, DEMO_IDEMPOTENCY_PREFIX, DEMO_LABEL_KEY, DEMO_TASKS
from shared.config import Config
from shared.database import Migration, load_migrations
from shared.migration_status import AppliedMigration, UnnamedIndex, expected_indexes, migration_level
from tests.support.processes import free_port
from tests.test_cli import arbiter, assert_one_line_error, environment, succeeded

# Indexes of the schema that no constraint made, as `arbiter db check` reads them.
_INDEXES_PRESENT = """
    SELECT index_class.relname FROM pg_index
    JOIN pg_class AS index_class ON index_class.oid = pg_index.indexrelid
    JOIN pg_namespace ON pg_namespace.oid = index_class.relnamespace
    WHERE pg_namespace.nspname = current_schema()
      AND NOT EXISTS (SELECT 1 FROM pg_constraint WHERE pg_constraint.conindid = pg_index.indexrelid)
"""

# A task `arbiter db seed` did not make.
OTHER_TASK = "INSERT INTO tasks (task_type, state, max_attempts, tenant) VALUES ('real', 'pending', 3, 'acme')"


def execute(url: str, statement: str) -> None:
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(statement.encode())


async def checked(url: str) -> CheckReport:
    return await check_database(url, Config.from_env({}))


def only_problem(report: CheckReport) -> str:
    assert len(report.problems) == 1, report.problems
    return report.problems[0]


# The expected indexes, from the migrations.


def migration(version: int, sql: str) -> Migration:
    return Migration(version, f"step_{version}", sql)


def test_expected_indexes_follow_creates_drops_and_renames_in_order() -> None:
    first = migration(
        1,
        """
        CREATE INDEX plain_one ON t (a);
        create unique index if not exists Mixed_Case ON t (b);
        CREATE INDEX CONCURRENTLY public.qualified ON t (c);
        CREATE INDEX "Quoted Name" ON t (d);
        CREATE INDEX goes_away ON t (e);
        CREATE INDEX renamed_later ON t (f);
        """,
    )
    second = migration(
        2,
        """
        DROP INDEX IF EXISTS goes_away, public.never_was;
        ALTER INDEX renamed_later RENAME TO renamed_now;
        DROP INDEX plain_one;
        CREATE INDEX plain_one ON t (a, b);
        """,
    )
    indexes = expected_indexes([first, second])
    assert set(indexes) == {"plain_one", "mixed_case", "qualified", "Quoted Name", "renamed_now"}
    assert indexes["plain_one"] is second
    assert indexes["renamed_now"] is first


def test_an_index_only_mentioned_in_a_comment_is_not_expected() -> None:
    sql = "-- CREATE INDEX in_a_line_comment ON t (a);\n/* CREATE INDEX in_a_block_comment ON t (a); */\nSELECT 1;"
    assert expected_indexes([migration(1, sql)]) == {}


def test_a_migration_creating_an_unnamed_index_is_refused_naming_it() -> None:
    with pytest.raises(UnnamedIndex, match="0003_step_3 creates an index without a name"):
        expected_indexes([migration(3, "CREATE INDEX ON t (a);")])


def test_the_expected_indexes_are_exactly_those_a_migrated_database_has(database_url: str) -> None:
    with psycopg.connect(database_url) as connection:
        present = {row[0] for row in connection.execute(_INDEXES_PRESENT).fetchall()}
    assert set(expected_indexes(load_migrations())) == present


def test_the_migration_level_sorts_pending_unknown_and_changed_migrations() -> None:
    shipped = [migration(1, "SELECT 1;"), migration(2, "SELECT 2;"), migration(3, "SELECT 3;")]
    applied = [
        AppliedMigration(1, "step_1", shipped[0].checksum),
        AppliedMigration(2, "step_2", "edited"),
        AppliedMigration(7, "from_a_newer_release", "whatever"),
    ]
    level = migration_level(applied, shipped)
    assert [item.version for item in level.pending] == [3]
    assert [item.version for item in level.changed] == [2]
    assert [item.version for item in level.unknown] == [7]
    assert not level.up_to_date
    assert migration_level(applied[:1], shipped[:1]).up_to_date


def test_a_pool_larger_than_the_server_allows_is_a_problem() -> None:
    fits = PoolReport(min_size=1, max_size=97, max_connections=100, reserved_connections=3, connections_in_use=5)
    assert pool_problems(fits) == []
    (problem,) = pool_problems(PoolReport(1, 98, 100, 3, 5))
    assert problem.startswith("ARBITER_DB_POOL_MAX_SIZE (98) is above the 97 connections the server accepts")


# db check.


async def test_db_check_passes_on_a_migrated_database(database_url: str) -> None:
    result = await arbiter(environment(ARBITER_DATABASE_URL=database_url), "db", "check")
    output = succeeded(result)
    assert result.stderr == ""
    assert "up to date" in output
    assert f"all {len(expected_indexes(load_migrations()))} the migrations make are present" in output
    assert output.splitlines()[-1].split() == ["status", "ok"]


async def test_db_check_json_reports_version_level_pool_latency_and_indexes(database_url: str) -> None:
    result = await arbiter(
        environment(ARBITER_DATABASE_URL=database_url, ARBITER_DB_POOL_MAX_SIZE="7"), "db", "check", "--json"
    )
    report = json.loads(succeeded(result))
    shipped = [item.version for item in load_migrations()]
    assert report["ok"] is True and report["problems"] == []
    assert report["server_version"][0].isdigit()
    assert report["migrations"] == {"applied": shipped, "shipped": shipped, "pending": [], "unknown": [], "changed": []}
    assert report["pool"]["max_size"] == 7 and report["pool"]["max_connections"] > 7
    assert report["latency"]["round_trips"] == 20
    assert 0 < report["latency"]["median_ms"] <= report["latency"]["max_ms"]
    assert report["indexes"]["missing"] == [] and report["indexes"]["invalid"] == []


async def test_db_check_fails_on_an_unmigrated_database_saying_to_migrate(empty_database_url: str) -> None:
    result = await arbiter(environment(ARBITER_DATABASE_URL=empty_database_url), "db", "check")
    line = assert_one_line_error(result, 1, "arbiter: db check: database not migrated")
    assert "arbiter migrate" in line


async def test_db_check_fails_on_an_unreachable_server_without_showing_the_password() -> None:
    url = f"postgresql://arbiter:s3cret-password@127.0.0.1:{free_port()}/arbiter"
    result = await arbiter(environment(ARBITER_DATABASE_URL=url), "db", "check", "--json")
    assert_one_line_error(result, 1, "arbiter: db check: database unreachable (")
    assert json.loads(result.stdout)["ok"] is False
    assert "s3cret" not in result.stdout + result.stderr


async def test_db_check_names_a_dropped_index_and_the_migration_that_makes_it(database_url: str) -> None:
    execute(database_url, "DROP INDEX tasks_listing")
    problem = only_problem(await checked(database_url))
    assert problem.startswith("index tasks_listing is missing (made by migration 0007_tenants_and_keys)")


async def test_db_check_names_an_invalid_index(database_url: str) -> None:
    # A CREATE INDEX CONCURRENTLY that fails (here on duplicates) leaves the index behind, invalid.
    execute(database_url, "DROP INDEX tasks_finished")
    execute(database_url, OTHER_TASK)
    execute(database_url, OTHER_TASK)
    with pytest.raises(psycopg.errors.UniqueViolation):
        execute(database_url, "CREATE UNIQUE INDEX CONCURRENTLY tasks_finished ON tasks (task_type)")
    assert only_problem(await checked(database_url)).startswith("index tasks_finished is invalid")


async def test_db_check_says_the_database_is_newer_than_this_code(database_url: str) -> None:
    execute(
        database_url,
        "INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'from_the_future', 'unknown')",
    )
    result = await arbiter(environment(ARBITER_DATABASE_URL=database_url), "db", "check")
    line = assert_one_line_error(result, 1, "arbiter: db check: database newer than this code: 9999_from_the_future")
    assert "run the release that does, or undo them with that release's `arbiter migrate --to N`" in line


async def test_db_check_names_a_migration_whose_checksum_changed(database_url: str) -> None:
    execute(database_url, "UPDATE schema_migrations SET checksum = 'edited' WHERE version = 3")
    problem = only_problem(await checked(database_url))
    assert problem.startswith("migration 0003_orchestrator_tasks changed after it was applied")


async def test_db_check_lists_pending_migrations(database_url: str) -> None:
    latest = load_migrations()[-1]
    execute(database_url, f"DELETE FROM schema_migrations WHERE version = {latest.version}")
    problem = only_problem(await checked(database_url))
    assert problem == (
        f"migrations pending: {latest.version:04d}_{latest.name}; run `arbiter migrate` (the services also "
        "migrate when they start)"
    )


# db seed.


def demo_rows(url: str) -> tuple[list[str], list[str]]:
    """The demo agents' ids and the demo tasks' idempotency keys in the database."""
    with psycopg.connect(url) as connection:
        agents = connection.execute("SELECT id FROM agents WHERE labels ? %s ORDER BY id", (DEMO_LABEL_KEY,)).fetchall()
        tasks = connection.execute(
            "SELECT idempotency_key FROM tasks WHERE starts_with(idempotency_key, %s) ORDER BY 1",
            (DEMO_IDEMPOTENCY_PREFIX,),
        ).fetchall()
    return [row[0] for row in agents], [row[0] for row in tasks]


async def test_db_seed_migrates_an_empty_database_and_adds_the_demo_agents_and_tasks(empty_database_url: str) -> None:
    result = await arbiter(environment(ARBITER_DATABASE_URL=empty_database_url), "db", "seed", "--json")
    seeded = json.loads(succeeded(result))
    assert seeded["migrations_applied"] == [item.version for item in load_migrations()]
    assert (seeded["agents_created"], seeded["tasks_created"]) == (len(DEMO_AGENTS), len(DEMO_TASKS))
    agents, tasks = demo_rows(empty_database_url)
    assert agents == sorted(f"default/{agent.id}" for agent in DEMO_AGENTS)
    assert tasks == sorted(DEMO_IDEMPOTENCY_PREFIX + task.key for task in DEMO_TASKS)


async def test_db_seed_run_twice_adds_nothing_the_second_time(database_url: str) -> None:
    variables = environment(ARBITER_DATABASE_URL=database_url)
    succeeded(await arbiter(variables, "db", "seed"))
    before = demo_rows(database_url)
    again = succeeded(await arbiter(variables, "db", "seed"))
    assert f"{len(DEMO_AGENTS)} agents (0 new), {len(DEMO_TASKS)} tasks (0 new)" in again
    assert demo_rows(database_url) == before


async def test_db_seed_refuses_a_database_with_other_tasks_and_says_how_to_force(database_url: str) -> None:
    execute(database_url, OTHER_TASK)
    result = await arbiter(environment(ARBITER_DATABASE_URL=database_url), "db", "seed")
    line = assert_one_line_error(result, 1, "arbiter: the database holds 1 task that `arbiter db seed` did not make")
    assert "arbiter db seed --force" in line
    assert demo_rows(database_url) == ([], [])


async def test_db_seed_with_force_adds_the_demo_rows_beside_other_data(database_url: str) -> None:
    execute(database_url, OTHER_TASK)
    succeeded(await arbiter(environment(ARBITER_DATABASE_URL=database_url), "db", "seed", "--force"))
    agents, tasks = demo_rows(database_url)
    assert (len(agents), len(tasks)) == (len(DEMO_AGENTS), len(DEMO_TASKS))


async def test_db_migrate_is_arbiter_migrate(empty_database_url: str) -> None:
    migrated = json.loads(
        succeeded(await arbiter(environment(ARBITER_DATABASE_URL=empty_database_url), "db", "migrate", "--json"))
    )
    assert migrated == {"applied": [item.version for item in load_migrations()], "reverted": [], "dry_run": False}
    assert (await checked(empty_database_url)).ok
