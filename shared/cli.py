"""`arbiter`: operator commands that work on the database directly.

    arbiter migrate                      apply migrations
    arbiter keys create --role ROLE      create an API key and print it once

Without ARBITER_DATABASE_URL they use the embedded PostgreSQL that `make run` uses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg

from shared.api_keys import Role, create_key
from shared.config import Config, ConfigError
from shared.database import migrate, open_pool


@contextlib.contextmanager
def database_url(config: Config) -> Iterator[str]:
    """The configured database, or the embedded one under ARBITER_STATE_DIR while the block runs."""
    if config.database_url:
        yield config.database_url
        return
    from shared.embedded_postgres import EmbeddedPostgres

    embedded = EmbeddedPostgres(Path(config.state_dir))
    try:
        yield embedded.url
    finally:
        embedded.stop()


async def _create_key(url: str, role: Role, description: str) -> str:
    await migrate(url)
    pool = await open_pool(url, 1, 1, name="cli")
    try:
        return (await create_key(pool, role, description)).secret
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="arbiter", description="Arbiter operator commands.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="apply database migrations")
    keys = commands.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create an API key and print it once")
    create.add_argument("--role", required=True, choices=[role.value for role in Role])
    create.add_argument("--description", default="", help="who or what the key is for")
    arguments = parser.parse_args(argv)

    try:
        config = Config.from_env()
        with database_url(config) as url:
            if arguments.command == "migrate":
                applied = asyncio.run(migrate(url))
                print(f"applied migrations: {applied}" if applied else "database is up to date")
            else:
                secret = asyncio.run(_create_key(url, Role(arguments.role), arguments.description))
                print(f"created a key with role '{arguments.role}'; it is shown only this once:", file=sys.stderr)
                print(secret)
    except ConfigError as error:
        print(f"arbiter: {error}", file=sys.stderr)
        return 2
    except psycopg.OperationalError as error:
        print(f"arbiter: cannot reach PostgreSQL: {str(error).strip()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
