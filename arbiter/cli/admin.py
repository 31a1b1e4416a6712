"""`arbiter admin`: API keys and the audit log through AdminService, with an admin key.

Unlike `arbiter keys` (the database itself, for the first admin key of a tenant), these need no
database access: they act within the admin key's tenant, as any admin's calls do.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

from arbiter.cli.options import (
    Connection,
    Subcommands,
    calls_services,
    positive_int,
    positive_number,
    service_options,
)
from arbiter.cli.output import format_list, format_time, note, print_json, print_table
from arbiter.models import ApiKeyInfo

ROLES = ["admin", "operator", "service", "submitter", "agent", "viewer"]


def _non_negative_seconds(text: str) -> float:
    seconds = float(text)
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds of 0 or more; got {text}")
    return seconds


def add_commands(commands: Subcommands) -> None:
    admin = commands.add_parser(
        "admin",
        help="manage API keys and read the audit log (AdminService, admin key)",
        description="Manage API keys and read the audit log through AdminService, within the admin key's tenant.",
    )
    admin_commands = admin.add_subparsers(dest="admin_command", required=True, title="commands", metavar="COMMAND")

    create = admin_commands.add_parser(
        "create-key", parents=[service_options()], help="create a key and print its secret once (on stdout)"
    )
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--description", default="", help="who or what the key is for")
    create.add_argument(
        "--expires-in-hours", type=positive_number, metavar="H", help="the key stops working after H hours"
    )
    create.add_argument(
        "--agent-id",
        dest="agent_ids",
        action="append",
        default=[],
        metavar="ID",
        help="agent keys: an agent id the key may act as, or a prefix ending in '*' (repeatable; none = any)",
    )
    create.add_argument(
        "--sees-tenant-tasks",
        action="store_true",
        help="submitter keys: see every task of the tenant, not only its own",
    )
    create.add_argument("--tenant", default="", help="another tenant (only with a key that acts in every tenant)")
    create.set_defaults(run=calls_services(create_key))

    listing = admin_commands.add_parser("keys", parents=[service_options()], help="list the tenant's keys")
    listing.add_argument("--include-revoked", action="store_true")
    listing.set_defaults(run=calls_services(list_keys))

    rotate = admin_commands.add_parser(
        "rotate-key", parents=[service_options()], help="a new secret for a key (same id, role and tasks), printed once"
    )
    rotate.add_argument("key_id", metavar="ID_OR_PREFIX")
    rotate.add_argument(
        "--grace-seconds",
        type=_non_negative_seconds,
        default=0.0,
        metavar="S",
        help="how long the old secret keeps working (default 0, at most 7 days)",
    )
    rotate.set_defaults(run=calls_services(rotate_key))

    revoke = admin_commands.add_parser("revoke-key", parents=[service_options()], help="revoke a key")
    revoke.add_argument("key_id", metavar="ID_OR_PREFIX")
    revoke.set_defaults(run=calls_services(revoke_key))

    audit = admin_commands.add_parser(
        "audit", parents=[service_options()], help="audited calls, newest first: every change and every refusal"
    )
    audit.add_argument("--rpc", default="", help="a method name, e.g. SubmitTask")
    audit.add_argument("--status", default="", type=str.upper, help="a status code name, e.g. PERMISSION_DENIED")
    audit.add_argument("--key-id", default="", help="calls made with this key (its id)")
    audit.add_argument("--resource", default="", help="calls about this task, agent or key id")
    audit.add_argument("--since-minutes", type=positive_number, metavar="M", help="only the last M minutes")
    audit.add_argument("--limit", type=positive_int, default=50, metavar="N", help="at most N events (default: 50)")
    audit.set_defaults(run=calls_services(list_audit_events))


def _key_row(key: ApiKeyInfo) -> list[str]:
    return [
        key.id,
        key.prefix,
        key.role,
        key.description,
        format_list(key.agent_ids) or "-",
        format_time(key.created_at),
        format_time(key.last_used_at),
        format_time(key.expires_at),
        format_time(key.revoked_at),
    ]


KEY_HEADERS = ["ID", "PREFIX", "ROLE", "DESCRIPTION", "AGENTS", "CREATED", "LAST USED", "EXPIRES", "REVOKED"]


async def create_key(arguments: argparse.Namespace, connection: Connection) -> int:
    expires_at = datetime.now(UTC) + timedelta(hours=arguments.expires_in_hours) if arguments.expires_in_hours else None
    async with connection.client() as client:
        created = await client.create_api_key(
            arguments.role,
            description=arguments.description,
            expires_at=expires_at,
            agent_ids=arguments.agent_ids,
            sees_tenant_tasks=arguments.sees_tenant_tasks,
            tenant=arguments.tenant,
        )
    note(f"created a key with role '{created.key.role}' in tenant '{created.key.tenant}'; it is shown only this once:")
    if arguments.json:
        print_json(created)
    else:
        print(created.secret)
    return 0


async def list_keys(arguments: argparse.Namespace, connection: Connection) -> int:
    async with connection.client() as client:
        keys = await client.list_api_keys(include_revoked=arguments.include_revoked)
    if arguments.json:
        print_json(keys)
        return 0
    print_table(KEY_HEADERS, (_key_row(key) for key in keys), empty="no API keys")
    return 0


async def rotate_key(arguments: argparse.Namespace, connection: Connection) -> int:
    async with connection.client() as client:
        rotated = await client.rotate_api_key(arguments.key_id, grace=arguments.grace_seconds)
    note(
        f"rotated key {rotated.key.id}; the old secret works {arguments.grace_seconds:g} s more; "
        "the new one is shown only this once:"
    )
    if arguments.json:
        print_json(rotated)
    else:
        print(rotated.secret)
    return 0


async def revoke_key(arguments: argparse.Namespace, connection: Connection) -> int:
    async with connection.client() as client:
        key, revoked_now = await client.revoke_api_key(arguments.key_id)
    if arguments.json:
        print_json({"key": key, "revoked_now": revoked_now})
    elif revoked_now:
        print(f"revoked key {key.prefix} (role {key.role}, id {key.id}); every instance refuses it within seconds")
    else:
        print(f"key {key.prefix} (id {key.id}) was already revoked at {format_time(key.revoked_at)}; nothing changed")
    return 0


async def list_audit_events(arguments: argparse.Namespace, connection: Connection) -> int:
    since = datetime.now(UTC) - timedelta(minutes=arguments.since_minutes) if arguments.since_minutes else None
    async with connection.client() as client:
        events = await client.audit_events(
            since=since,
            rpc=arguments.rpc,
            status=arguments.status,
            key_id=arguments.key_id,
            resource_id=arguments.resource,
            limit=arguments.limit,
        )
    if arguments.json:
        print_json(events)
        return 0
    print_table(
        ["TIME", "RPC", "STATUS", "ROLE", "KEY", "RESOURCE", "PEER"],
        (
            [
                format_time(event.at),
                event.rpc.rsplit("/", 1)[-1],
                event.status,
                event.role or "-",
                event.key_id[:8] or "-",
                event.resource_id or "-",
                event.peer,
            ]
            for event in events
        ),
        empty="no audit events match",
    )
    return 0
