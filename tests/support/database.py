"""Which PostgreSQL the tests use, and one fresh database per test cloned from a migrated template."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from shared.database import migrate

LOCAL_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


class PostgresForTests:
    """ARBITER_TEST_DATABASE_URL if set, else the machine's server on 127.0.0.1:5432, else an
    embedded one (pgserver) in a temporary folder."""

    def __init__(self) -> None:
        self._embedded: Any = None
        url = os.environ.get("ARBITER_TEST_DATABASE_URL")
        if not url:
            if _answers(LOCAL_SERVER_URL):
                url = LOCAL_SERVER_URL
            else:
                from shared.embedded_postgres import EmbeddedPostgres

                self._embedded = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="arbiter-test-pg-")))
                url = self._embedded.url
        self.admin_url = url
        self.template = f"arbiter_template_{uuid.uuid4().hex[:12]}"
        self._execute(f'CREATE DATABASE "{self.template}"')
        asyncio.run(migrate(self.url_for(self.template)))

    def url_for(self, database: str) -> str:
        return make_conninfo(self.admin_url, dbname=database)

    def _execute(self, statement: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            connection.execute(statement)

    def create_database(self, *, migrated: bool = True) -> str:
        """A new database, migrated (a copy of the template) or empty; returns its URL."""
        name = f"arbiter_test_{uuid.uuid4().hex[:12]}"
        template = self.template if migrated else "template0"
        self._execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.url_for(name)

    def drop_database(self, url: str) -> None:
        name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
        self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        self._execute(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')
        if self._embedded is not None:
            self._embedded.stop()
