"""`arbiter keys`: create, list and revoke API keys, on the database directly."""

from __future__ import annotations

import argparse

from arbiter.cli.database import on_database
from arbiter.cli.options import Subcommands, output_options
from arbiter.cli.output import format_time, note, print_json, print_table
from shared.api_keys import Role, create_key, list_keys, revoke_key
from shared.config import Config


def add_commands(commands: Subcommands) -> None:
    keys = commands.add_parser(
        "keys",
        help="create, list and revoke API keys",
        description="Create, list and revoke API keys. These work on the database directly: "
        "ARBITER_DATABASE_URL, else the embedded PostgreSQL that `make run` uses.",
    )
    key_commands = keys.add_subparsers(dest="keys_command", required=True, title="commands", metavar="COMMAND")

    create = key_commands.add_parser(
        "create", parents=[output_options()], help="create an API key and print it once (on stdout)"
    )
    create.add_argument("--role", required=True, choices=[role.value for role in Role])
    create.add_argument("--description", default="", help="who or what the key is for")
    create.set_defaults(run=create_api_key)

    listing = key_commands.add_parser(
        "list", parents=[output_options()], help="list keys: id, prefix, role, description, when created and revoked"
    )
    listing.set_defaults(run=list_api_keys)

    revoke = key_commands.add_parser(
        "revoke",
        parents=[output_options()],
        help="revoke a key by its id or prefix",
        description="Revoke a key. The services trust a key they checked for ARBITER_AUTH_CACHE_SECONDS (5 s), "
        "so they refuse it within that time.",
    )
    revoke.add_argument("id_or_prefix", metavar="ID_OR_PREFIX", help="as `arbiter keys list` shows, e.g. arb_AbCdEfGh")
    revoke.set_defaults(run=revoke_api_key)


def create_api_key(arguments: argparse.Namespace) -> int:
    role = Role(arguments.role)
    created = on_database(
        Config.from_env(), lambda pool: create_key(pool, role, arguments.description), migrate_first=True
    )
    note(f"created a key with role '{role}'; it is shown only this once:")
    if arguments.json:
        print_json({"id": created.id, "role": role, "description": arguments.description, "secret": created.secret})
    else:
        print(created.secret)
    return 0


def list_api_keys(arguments: argparse.Namespace) -> int:
    keys = on_database(Config.from_env(), list_keys)
    if arguments.json:
        print_json(keys)
        return 0
    print_table(
        ["ID", "PREFIX", "ROLE", "DESCRIPTION", "CREATED", "REVOKED"],
        (
            [
                key.id,
                key.key_prefix,
                key.role.value,
                key.description,
                format_time(key.created_at),
                format_time(key.revoked_at),
            ]
            for key in keys
        ),
        empty="no API keys: create one with `arbiter keys create --role ROLE`",
    )
    return 0


def revoke_api_key(arguments: argparse.Namespace) -> int:
    config = Config.from_env()
    revocation = on_database(config, lambda pool: revoke_key(pool, arguments.id_or_prefix))
    key = revocation.key
    if arguments.json:
        print_json(revocation)
    elif revocation.revoked_now:
        print(
            f"revoked key {key.key_prefix} (role {key.role.value}, id {key.id}); takes effect within "
            f"{config.auth_cache_seconds:g} s, as the services trust a checked key for ARBITER_AUTH_CACHE_SECONDS"
        )
    else:
        print(
            f"key {key.key_prefix} (id {key.id}) was already revoked at {format_time(key.revoked_at)}; nothing changed"
        )
    return 0
