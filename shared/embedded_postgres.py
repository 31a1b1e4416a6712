"""The embedded PostgreSQL `make run` uses when neither ARBITER_DATABASE_URL nor libpq's PG* variables
are set (the pgserver package).

It listens on a unix socket in the data folder, never on TCP. It stops when the last process
holding it exits; one left by a killed run is found and reused on the next start.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from shared.config import Config

DATABASE_NAME = "arbiter"

logger = logging.getLogger(__name__)


class EmbeddedPostgres:
    def __init__(self, state_dir: Path) -> None:
        with warnings.catch_warnings():
            # platformdirs warns that XDG_RUNTIME_DIR is unset on servers; its /tmp fallback is fine.
            warnings.simplefilter("ignore")
            from pgserver.postgres_server import get_server

        data_dir = (state_dir / "pgdata").resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        logger.info("starting embedded PostgreSQL in %s", data_dir)
        self._server: Any = get_server(data_dir, cleanup_mode="stop")
        self.url: str = self._server.get_uri(DATABASE_NAME)
        self._create_database()

    def _create_database(self) -> None:
        with psycopg.connect(self._server.get_uri("postgres"), autocommit=True) as connection:
            exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
            if not exists:
                connection.execute(f'CREATE DATABASE "{DATABASE_NAME}"')

    def stop(self) -> None:
        """Stops the server unless another process still holds it."""
        self._server.cleanup()


@contextlib.contextmanager
def database_url(config: Config) -> Iterator[str]:
    """The configured database (ARBITER_DATABASE_URL, else the PG* variables), or the embedded one under
    ARBITER_STATE_DIR while the block runs."""
    if config.database_url:
        yield config.database_url
        return
    embedded = EmbeddedPostgres(Path(config.state_dir))
    try:
        yield embedded.url
    finally:
        embedded.stop()
