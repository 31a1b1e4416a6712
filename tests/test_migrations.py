from __future__ import annotations

import asyncio

import psycopg
import pytest

from shared.database import MigrationError, load_migrations, migrate


async def test_two_instances_migrating_at_once_apply_each_migration_once(empty_database_url: str) -> None:
    first, second = await asyncio.gather(migrate(empty_database_url), migrate(empty_database_url))
    versions = [migration.version for migration in load_migrations()]
    assert sorted(first + second) == versions
    async with await psycopg.AsyncConnection.connect(empty_database_url) as connection:
        cursor = await connection.execute("SELECT version FROM schema_migrations ORDER BY version")
        assert [row[0] for row in await cursor.fetchall()] == versions


async def test_migrating_an_up_to_date_database_changes_nothing(database_url: str) -> None:
    assert await migrate(database_url) == []


async def test_an_applied_migration_edited_afterwards_is_refused(database_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as connection:
        await connection.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(database_url)


@pytest.mark.parametrize(
    ("state", "agent", "allowed"),
    [
        ("pending", None, True),
        ("pending", "agent-1", False),
        ("assigned", None, False),
        ("running", None, False),
        ("running", "agent-1", True),
        ("completed", "agent-1", True),
        ("failed", None, True),
    ],
)
def test_the_schema_ties_a_tasks_agent_to_its_state(
    database_url: str, state: str, agent: str | None, allowed: bool
) -> None:
    insert = (
        "INSERT INTO tasks (task_type, state, max_attempts, assigned_agent_id, tenant) "
        "VALUES ('echo', %s, 1, %s, 'default')"
    )
    with psycopg.connect(database_url, autocommit=True) as connection:
        if allowed:
            connection.execute(insert, (state, agent))
        else:
            with pytest.raises(psycopg.errors.CheckViolation):
                connection.execute(insert, (state, agent))
