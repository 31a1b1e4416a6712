from __future__ import annotations

import os
import subprocess
import sys

from shared.api_keys import Role, find_role, hash_secret
from shared.database import open_pool
from tests.support.processes import REPO_ROOT


def arbiter(database_url: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "ARBITER_DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *arguments],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_keys_create_prints_a_working_key_once_and_stores_only_its_hash(database_url: str) -> None:
    created = arbiter(database_url, "keys", "create", "--role", "viewer", "--description", "dashboards")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("arb_")
    pool = await open_pool(database_url, 1, 1, name="test")
    try:
        assert await find_role(pool, hash_secret(secret)) == Role.VIEWER
        async with pool.connection() as connection:
            cursor = await connection.execute("SELECT * FROM api_keys WHERE description = 'dashboards'")
            row = await cursor.fetchone()
        assert row is not None
        assert secret not in {str(value) for value in row.values()}
    finally:
        await pool.close()


def test_keys_create_refuses_an_unknown_role(database_url: str) -> None:
    refused = arbiter(database_url, "keys", "create", "--role", "root")
    assert refused.returncode == 2
    assert "invalid choice: 'root'" in refused.stderr


def test_migrate_on_an_up_to_date_database_says_so(database_url: str) -> None:
    migrated = arbiter(database_url, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "up to date" in migrated.stdout


def test_an_unreachable_database_is_reported_plainly() -> None:
    failed = arbiter("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2", "migrate")
    assert failed.returncode == 1
    assert "cannot reach PostgreSQL" in failed.stderr
