"""Tenants: names, and agent ids qualified by their tenant.

Inside the services (tables, notifications, in-memory maps) an agent is `tenant/agent-id`; callers only
ever see and send the plain id. Qualifying at the edge makes another tenant's agent unaddressable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.errors import InvalidArgument

DEFAULT_TENANT = "default"
# The tenant of keys that act in every tenant (the orchestrators' own key, platform admins).
ALL_TENANTS = "*"
TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
TENANT_RULE = "1-63 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit"
_SEPARATOR = "/"


def tenant(field: str, value: str) -> str:
    if not TENANT_PATTERN.match(value):
        raise InvalidArgument(field, f"{value[:80]!r} is not a tenant name: use {TENANT_RULE}")
    return value


def qualify(tenant_name: str, agent_id: str) -> str:
    return f"{tenant_name}{_SEPARATOR}{agent_id}"


def split(qualified_id: str) -> tuple[str, str]:
    """(tenant, plain id). Ids stored before tenants existed read as the default tenant's."""
    tenant_name, separator, agent_id = qualified_id.partition(_SEPARATOR)
    if not separator:
        return DEFAULT_TENANT, qualified_id
    return tenant_name, agent_id


def plain(qualified_id: str) -> str:
    return split(qualified_id)[1]


def tenant_of(qualified_id: str) -> str:
    return split(qualified_id)[0]


@dataclass(frozen=True)
class TaskScope:
    """Which tasks a caller may see and act on: those of one tenant (None: every tenant), and of
    those only the ones one key submitted (None: all of them)."""

    tenant: str | None
    submitted_by: str | None = None
