from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.database import PostgresForTests
from tests.support.processes import ServiceProcesses, running_services
from tests.support.stack import Stack, running_stack


@pytest.fixture(scope="session")
def test_postgres() -> Iterator[PostgresForTests]:
    postgres = PostgresForTests()
    yield postgres
    postgres.close()


@pytest.fixture
def database_url(test_postgres: PostgresForTests) -> Iterator[str]:
    """A fresh, migrated database for this test alone."""
    url = test_postgres.create_database()
    yield url
    test_postgres.drop_database(url)


@pytest.fixture
def empty_database_url(test_postgres: PostgresForTests) -> Iterator[str]:
    """A fresh database with no tables, for migration tests."""
    url = test_postgres.create_database(migrated=False)
    yield url
    test_postgres.drop_database(url)


@pytest.fixture
async def stack(database_url: str) -> AsyncIterator[Stack]:
    """Registry and orchestrator running in this test's event loop, with a key per role."""
    async with running_stack(database_url) as running:
        yield running


@pytest.fixture
async def services(database_url: str, tmp_path: Path) -> AsyncIterator[ServiceProcesses]:
    """Both services as real subprocesses on free ports, with a key per role. They must stop cleanly
    (exit 0 on SIGTERM); their logs are shown when they do not."""
    async with running_services(database_url, tmp_path / "service-logs") as processes:
        yield processes
