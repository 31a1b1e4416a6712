"""`arbiter migrate`, and how the commands that work on the database directly reach it: through
ARBITER_DATABASE_URL, else the embedded PostgreSQL that `make run` uses."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psycopg

from arbiter.cli.options import Subcommands, output_options
from arbiter.cli.output import print_json
from shared.config import Config
from shared.database import Pool, migrate, open_pool
from shared.embedded_postgres import database_url

Result = TypeVar("Result")


def add_commands(commands: Subcommands) -> None:
    migrating = commands.add_parser(
        "migrate",
        parents=[output_options()],
        help="apply database migrations",
        description="Apply the database migrations not applied yet (each service also does at start). "
        "Uses ARBITER_DATABASE_URL, else the embedded PostgreSQL that `make run` uses.",
    )
    migrating.set_defaults(run=run_migrations)


def run_migrations(arguments: argparse.Namespace) -> int:
    with database_url(Config.from_env()) as url:
        applied = asyncio.run(migrate(url))
    if arguments.json:
        print_json({"applied": applied})
    else:
        print(f"applied migrations: {applied}" if applied else "database is up to date")
    return 0


def on_database(config: Config, work: Callable[[Pool], Awaitable[Result]], *, migrate_first: bool = False) -> Result:
    """Runs `work` with a one-connection pool on the configured (or embedded) database."""

    async def with_pool(url: str) -> Result:
        if migrate_first:
            await migrate(url)
        else:
            # open_pool retries a server that is down for 30 s; one plain connection fails at once, with the reason.
            await (await psycopg.AsyncConnection.connect(url)).close()
        pool = await open_pool(url, 1, 1, name="arbiter-cli")
        try:
            return await work(pool)
        finally:
            await pool.close()

    with database_url(config) as url:
        return asyncio.run(with_pool(url))
