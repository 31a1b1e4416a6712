"""`arbiter migrate` and `arbiter db`, and how the commands that work on the database directly reach it:
through ARBITER_DATABASE_URL, else libpq's PG* variables, else the embedded PostgreSQL that `make run` uses."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psycopg

from arbiter.cli.db_check import ROUND_TRIPS, run_check
from arbiter.cli.db_seed import run_seed
from arbiter.cli.options import Subcommands, UsageError, output_options
from arbiter.cli.output import print_json
from shared.config import Config
from shared.database import Pool, load_migrations, migrate, migrate_to, open_pool
from shared.embedded_postgres import database_url

Result = TypeVar("Result")


def add_commands(commands: Subcommands) -> None:
    migrating = commands.add_parser(
        "migrate",
        parents=[migrate_options()],
        help="apply (or with --to, undo) database migrations",
        description="Apply the database migrations not applied yet (each service also does at start). "
        "With --to N, move the database to migration N: down by the down scripts of the newer ones, newest first "
        "(refused, changing nothing, when one of them is irreversible), or up to N. "
        "Uses ARBITER_DATABASE_URL, else libpq's PG* variables, else the embedded PostgreSQL that `make run` uses.",
    )
    migrating.set_defaults(run=run_migrations)

    database = commands.add_parser(
        "db",
        help="check, seed or migrate the database",
        description="Work on the database directly: ARBITER_DATABASE_URL, else libpq's PG* variables, else the "
        "embedded PostgreSQL that `make run` uses.",
    )
    actions = database.add_subparsers(dest="db_command", required=True, title="commands", metavar="COMMAND")
    checking = actions.add_parser(
        "check",
        parents=[output_options()],
        help="is the database fit for this release?",
        description="Connect and report the server's version, the migration level (pending migrations, ones "
        "newer than this release, changed checksums), the pool settings against the server's max_connections, "
        f"the latency of {ROUND_TRIPS} round trips (SELECT 1), and whether every index the migrations make "
        "exists. Exit 0 when all is well; 1 with one line on stderr per problem otherwise.",
    )
    checking.set_defaults(run=run_check)
    seeding = actions.add_parser(
        "seed",
        parents=[output_options()],
        help="fill a dev database with demo agents and tasks",
        description="Migrate if needed, then add demo agents (demo-*, label arbiter-demo=seed) and demo tasks "
        "(idempotency keys arbiter-demo-seed-*, requiring that label) in the default tenant. Running it again "
        "adds nothing. A database holding agents or tasks it did not make is refused unless --force.",
    )
    seeding.add_argument(
        "--force", action="store_true", help="seed even though the database holds other agents or tasks"
    )
    seeding.set_defaults(run=run_seed)
    actions.add_parser(
        "migrate", parents=[migrate_options()], help="the same as `arbiter migrate`", description=migrating.description
    ).set_defaults(run=run_migrations)


def migrate_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False, parents=[output_options()])
    options.add_argument(
        "--to",
        type=migration_version,
        metavar="N",
        help="the migration to move to (e.g. 10 for 0010_*); default: the newest this release ships",
    )
    options.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be undone and applied (or why it is refused), and change nothing",
    )
    return options


def migration_version(text: str) -> int:
    try:
        version = int(text)
    except ValueError:
        version = -1
    if version < 0:
        raise argparse.ArgumentTypeError(f"expected a migration number such as 10 (for 0010_*); got {text!r}")
    return version


def run_migrations(arguments: argparse.Namespace) -> int:
    target: int | None = arguments.to
    newest = load_migrations()[-1]
    if target is not None and target > newest.version:
        raise UsageError(
            f"--to {target}: there is no such migration; this release's newest is {newest.version} ({newest.label})"
        )
    with database_url(Config.from_env()) as url:
        outcome = asyncio.run(migrate_to(url, target, dry_run=arguments.dry_run))
    applied, reverted = outcome.applied, outcome.reverted
    if arguments.json:
        print_json({"applied": applied, "reverted": reverted, "dry_run": arguments.dry_run})
    elif not (applied or reverted):
        print("database is up to date" if target is None else f"database is at migration {target} already")
    else:
        if reverted:
            print(f"{'would revert' if arguments.dry_run else 'reverted'} migrations: {reverted}")
        if applied:
            print(f"{'would apply' if arguments.dry_run else 'applied'} migrations: {applied}")
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
