"""`arbiter keys`: create, list, rotate and revoke API keys, on the database directly.

This is how the first admin key of a tenant, and the orchestrators' every-tenant service key, are
made: only someone with database access (and the pepper) can. Afterwards admins use AdminService.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

from arbiter.cli.database import on_database
from arbiter.cli.options import Subcommands, output_options, positive_number
from arbiter.cli.output import format_time, note, print_json, print_table
from shared import tenancy, validation
from shared.api_keys import KeySpec, Role, create_key, list_keys, revoke_key, rotate_key
from shared.config import Config
from shared.errors import InvalidArgument


def _tenant(value: str) -> str:
    if value == tenancy.ALL_TENANTS:
        return value
    try:
        return tenancy.tenant("--tenant", value)
    except InvalidArgument as error:
        raise argparse.ArgumentTypeError(error.description) from None


def _agent_pattern(value: str) -> str:
    try:
        return validation.agent_pattern("--agent-id", value)
    except InvalidArgument as error:
        raise argparse.ArgumentTypeError(error.description) from None


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
    create.add_argument(
        "--tenant",
        type=_tenant,
        default=tenancy.DEFAULT_TENANT,
        help=f"the tenant the key acts in (default {tenancy.DEFAULT_TENANT}); '*' = every tenant, for the "
        "orchestrators' service key (ARBITER_SERVICE_KEY) or a platform admin",
    )
    create.add_argument("--description", default="", help="who or what the key is for")
    create.add_argument("--expires-in-hours", type=positive_number, help="the key stops working after this long")
    create.add_argument(
        "--agent-id",
        dest="agent_ids",
        action="append",
        default=[],
        type=_agent_pattern,
        help="agent keys: an agent id the key may act as, or a prefix ending in '*' (repeatable; none = any)",
    )
    create.add_argument(
        "--sees-tenant-tasks",
        action="store_true",
        help="submitter keys: see every task of the tenant, not only those the key submitted",
    )
    create.set_defaults(run=create_api_key)

    listing = key_commands.add_parser(
        "list",
        parents=[output_options()],
        help="list keys: id, prefix, role, tenant, description, when created, last used, expiring, revoked",
    )
    listing.add_argument("--tenant", type=_tenant, help="only this tenant's keys")
    listing.set_defaults(run=list_api_keys)

    rotate = key_commands.add_parser(
        "rotate",
        parents=[output_options()],
        help="give a key a new secret (same id, role and tasks) and print it once",
    )
    rotate.add_argument("id_or_prefix", metavar="ID_OR_PREFIX", help="as `arbiter keys list` shows, e.g. arb_AbCdEfGh")
    rotate.add_argument(
        "--grace-seconds", type=float, default=0.0, help="how long the old secret keeps working (default 0)"
    )
    rotate.set_defaults(run=rotate_api_key)

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
    config = Config.from_env()
    hasher = config.key_hasher()
    role = Role(arguments.role)
    if arguments.agent_ids and role != Role.AGENT:
        raise SystemExit("arbiter keys create: --agent-id is for agent keys (--role agent)")
    spec = KeySpec(
        role=role,
        tenant=arguments.tenant,
        description=arguments.description,
        expires_at=(
            datetime.now(UTC) + timedelta(hours=arguments.expires_in_hours) if arguments.expires_in_hours else None
        ),
        agent_ids=tuple(arguments.agent_ids),
        sees_tenant_tasks=arguments.sees_tenant_tasks,
    )
    created = on_database(config, lambda pool: create_key(pool, hasher, spec), migrate_first=True)
    note(f"created a key with role '{role}' in tenant '{spec.tenant}'; it is shown only this once:")
    if arguments.json:
        print_json({"key": created.key, "secret": created.secret})
    else:
        print(created.secret)
    return 0


def rotate_api_key(arguments: argparse.Namespace) -> int:
    config = Config.from_env()
    hasher = config.key_hasher()
    grace = timedelta(seconds=max(0.0, arguments.grace_seconds))
    rotated = on_database(config, lambda pool: rotate_key(pool, hasher, arguments.id_or_prefix, grace))
    note(
        f"rotated key {rotated.key.id}; the old secret works for {grace.total_seconds():g} s more; "
        "the new one is shown only this once:"
    )
    if arguments.json:
        print_json({"key": rotated.key, "secret": rotated.secret})
    else:
        print(rotated.secret)
    return 0


def list_api_keys(arguments: argparse.Namespace) -> int:
    keys = on_database(Config.from_env(), lambda pool: list_keys(pool, arguments.tenant))
    if arguments.json:
        print_json(keys)
        return 0
    print_table(
        ["ID", "PREFIX", "ROLE", "TENANT", "DESCRIPTION", "CREATED", "LAST USED", "EXPIRES", "REVOKED"],
        (
            [
                key.id,
                key.key_prefix,
                key.role.value,
                key.tenant,
                key.description,
                format_time(key.created_at),
                format_time(key.last_used_at),
                format_time(key.expires_at),
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
