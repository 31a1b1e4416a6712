"""API keys: creating, listing, rotating and revoking them, and finding the key behind a secret.

A secret is `arb_<43 url-safe characters>` (256 random bits). The database keeps its first 12
characters (to find it, and for people to recognise it) and an HMAC-SHA-256 of it under a server
pepper (`ARBITER_API_KEY_PEPPER`), so a stolen copy of the table is useless without the pepper. The
comparison is constant-time. Keys made before the pepper existed keep a bare SHA-256 ('sha256')
until they are rotated.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from psycopg import AsyncConnection

from shared.database import Pool

KEY_PREFIX = "arb_"
PREFIX_LENGTH = 12
HMAC_SCHEME = "hmac-sha256"
LEGACY_SCHEME = "sha256"
MIN_PEPPER_LENGTH = 32


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    SERVICE = "service"
    SUBMITTER = "submitter"
    AGENT = "agent"
    VIEWER = "viewer"


@dataclass(frozen=True)
class KeySpec:
    """What a new key may do."""

    role: Role
    tenant: str
    description: str = ""
    expires_at: datetime | None = None
    # Agent keys only: the agents it may act as, exact ids or prefixes ending in '*'; empty = any.
    agent_ids: tuple[str, ...] = ()
    # Submitter keys see only the tasks they submitted unless this is set.
    sees_tenant_tasks: bool = False


@dataclass(frozen=True)
class StoredKey:
    """What the database keeps about a key: never the secret, and here not its hash either."""

    id: str
    key_prefix: str
    role: Role
    tenant: str
    description: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    rotated_at: datetime | None
    agent_ids: tuple[str, ...]
    sees_tenant_tasks: bool


@dataclass(frozen=True)
class CreatedKey:
    key: StoredKey
    # Shown once; never readable again.
    secret: str

    @property
    def id(self) -> str:
        return self.key.id

    @property
    def role(self) -> Role:
        return self.key.role


@dataclass(frozen=True)
class Revocation:
    key: StoredKey
    # False when the key had been revoked before; its first revoked_at stands.
    revoked_now: bool


class KeyLookupError(LookupError):
    """No key, or more than one, answers to the id or prefix given."""


class MissingPepper(ValueError):
    pass


class KeyHasher:
    """Hashes secrets under the server's pepper."""

    def __init__(self, pepper: str) -> None:
        if len(pepper) < MIN_PEPPER_LENGTH:
            raise MissingPepper(
                f"ARBITER_API_KEY_PEPPER must be a secret of at least {MIN_PEPPER_LENGTH} characters "
                "(e.g. the output of `openssl rand -base64 48`), the same on every instance"
            )
        self._pepper = pepper.encode()

    def digest(self, secret: str, scheme: str = HMAC_SCHEME) -> bytes:
        if scheme == LEGACY_SCHEME:
            return hashlib.sha256(secret.encode()).digest()
        return hmac.new(self._pepper, secret.encode(), hashlib.sha256).digest()

    def matches(self, secret: str, scheme: str, stored_hash: bytes) -> bool:
        return hmac.compare_digest(self.digest(secret, scheme), stored_hash)


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


_KEY_COLUMNS = """
    id::text AS id, key_prefix, role, tenant, description, created_at, expires_at, last_used_at,
    revoked_at, rotated_at, agent_ids, sees_tenant_tasks
"""


def _stored_key(row: Mapping[str, Any]) -> StoredKey:
    return StoredKey(
        id=row["id"],
        key_prefix=row["key_prefix"],
        role=Role(row["role"]),
        tenant=row["tenant"],
        description=row["description"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
        rotated_at=row["rotated_at"],
        agent_ids=tuple(row["agent_ids"]),
        sees_tenant_tasks=row["sees_tenant_tasks"],
    )


async def create_key(pool: Pool, hasher: KeyHasher, spec: KeySpec) -> CreatedKey:
    """Stores a new key and returns its secret, which is never readable again."""
    secret = new_secret()
    async with pool.connection() as connection:
        cursor = await connection.execute(
            # create_api_key: one row; the secret itself is not stored.
            f"""
            INSERT INTO api_keys (key_prefix, key_hash, hash_scheme, role, tenant, description, expires_at,
                                  agent_ids, sees_tenant_tasks)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
            RETURNING {_KEY_COLUMNS}
            """,
            (
                secret[:PREFIX_LENGTH],
                hasher.digest(secret),
                HMAC_SCHEME,
                spec.role.value,
                spec.tenant,
                spec.description,
                spec.expires_at,
                list(spec.agent_ids),
                spec.sees_tenant_tasks,
            ),
        )
        row = await cursor.fetchone()
    assert row is not None
    return CreatedKey(_stored_key(row), secret)


async def find_key(pool: Pool, hasher: KeyHasher, secret: str) -> StoredKey | None:
    """The live key (not revoked, not expired) whose current secret, or previous secret within its
    grace period, is `secret`; None otherwise. Also marks the key as used now."""
    prefix = secret[:PREFIX_LENGTH]
    async with pool.connection() as connection:
        cursor = await connection.execute(
            # find_api_keys_by_prefix: the few live keys whose current or still-valid previous secret
            # starts like this one; the hash comparison happens in constant time below.
            f"""
            SELECT {_KEY_COLUMNS}, key_hash, hash_scheme,
                   previous_key_prefix, previous_key_hash, previous_hash_scheme
            FROM api_keys
            WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
              AND (key_prefix = %(prefix)s
                   OR (previous_key_prefix = %(prefix)s AND previous_valid_until > now()))
            """,
            {"prefix": prefix},
        )
        rows = await cursor.fetchall()
        found = next((row for row in rows if _secret_matches(hasher, secret, prefix, row)), None)
        if found is None:
            return None
        await _mark_used(connection, found["id"])
    return _stored_key(found)


def _secret_matches(hasher: KeyHasher, secret: str, prefix: str, row: Mapping[str, Any]) -> bool:
    current = row["key_prefix"] == prefix and hasher.matches(secret, row["hash_scheme"], row["key_hash"])
    previous = (
        row["previous_key_prefix"] == prefix
        and row["previous_key_hash"] is not None
        and hasher.matches(secret, row["previous_hash_scheme"], row["previous_key_hash"])
    )
    return current or previous


async def _mark_used(connection: AsyncConnection[Any], key_id: str) -> None:
    await connection.execute(
        # mark_api_key_used: one row; as often as each instance re-checks the key (its cache TTL).
        "UPDATE api_keys SET last_used_at = now() WHERE id = %s",
        (key_id,),
    )


async def list_keys(pool: Pool, tenant: str | None) -> list[StoredKey]:
    """Every key of the tenant (None: of every tenant), revoked ones included, oldest first."""
    async with pool.connection() as connection:
        cursor = await connection.execute(
            # list_api_keys: the tenant's rows; never selects a hash.
            f"""
            SELECT {_KEY_COLUMNS} FROM api_keys
            WHERE %(tenant)s::text IS NULL OR tenant = %(tenant)s
            ORDER BY created_at, id
            """,
            {"tenant": tenant},
        )
        rows = await cursor.fetchall()
    return [_stored_key(row) for row in rows]


async def _the_one_key(connection: AsyncConnection[Any], tenant: str | None, reference: str) -> StoredKey:
    cursor = await connection.execute(
        # find_api_keys_to_change: the tenant's keys with this id or prefix, locked until the change
        # commits, so a concurrent revoke or rotate waits and then sees the result.
        f"""
        SELECT {_KEY_COLUMNS} FROM api_keys
        WHERE (id::text = lower(%(reference)s) OR key_prefix = %(reference)s)
          AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
        FOR UPDATE
        """,
        {"reference": reference, "tenant": tenant},
    )
    matches = [_stored_key(row) for row in await cursor.fetchall()]
    if not matches:
        raise KeyLookupError(f"no API key has the id or prefix '{reference}'; ListApiKeys shows them")
    if len(matches) > 1:
        raise KeyLookupError(f"{len(matches)} API keys have the prefix '{reference}'; name one by its id")
    return matches[0]


async def revoke_key(pool: Pool, id_or_prefix: str, tenant: str | None = None) -> Revocation:
    """Revokes the one key of the tenant (None: any tenant) whose id or prefix (e.g. `arb_AbCdEfGh`) is
    given. Raises KeyLookupError when none or several match. Services notice within their key cache's
    lifetime (KeyCache)."""
    async with pool.connection() as connection, connection.transaction():
        key = await _the_one_key(connection, tenant, id_or_prefix.strip())
        if key.revoked_at is not None:
            return Revocation(key, revoked_now=False)
        cursor = await connection.execute(
            # revoke_api_key: one row (the id is its primary key); find_key stops returning it.
            f"UPDATE api_keys SET revoked_at = now() WHERE id = %s RETURNING {_KEY_COLUMNS}",
            (key.id,),
        )
        row = await cursor.fetchone()
    assert row is not None
    return Revocation(_stored_key(row), revoked_now=True)


class KeyNotRotatable(ValueError):
    pass


async def rotate_key(
    pool: Pool, hasher: KeyHasher, id_or_prefix: str, grace: timedelta, tenant: str | None = None
) -> CreatedKey:
    """A new secret for the same key (same id, role, tenant and tasks); the old secret keeps working for
    `grace` (zero: stops at once, within the key cache's lifetime)."""
    secret = new_secret()
    async with pool.connection() as connection, connection.transaction():
        key = await _the_one_key(connection, tenant, id_or_prefix.strip())
        if key.revoked_at is not None:
            raise KeyNotRotatable(f"API key {key.key_prefix} ({key.id}) is revoked; create a new key instead")
        cursor = await connection.execute(
            # rotate_api_key: one row; the current secret becomes the previous one until the grace ends.
            f"""
            UPDATE api_keys SET
                previous_key_prefix = key_prefix, previous_key_hash = key_hash,
                previous_hash_scheme = hash_scheme, previous_valid_until = now() + %(grace)s,
                key_prefix = %(prefix)s, key_hash = %(hash)s, hash_scheme = %(scheme)s, rotated_at = now()
            WHERE id = %(id)s
            RETURNING {_KEY_COLUMNS}
            """,
            {
                "id": key.id,
                "grace": grace,
                "prefix": secret[:PREFIX_LENGTH],
                "hash": hasher.digest(secret),
                "scheme": HMAC_SCHEME,
            },
        )
        row = await cursor.fetchone()
    assert row is not None
    return CreatedKey(_stored_key(row), secret)


def agent_pattern_matches(patterns: Sequence[str], agent_id: str) -> bool:
    """Empty patterns allow any agent; 'build-pool-*' allows every id starting with 'build-pool-'."""
    if not patterns:
        return True
    return any(
        agent_id.startswith(pattern[:-1]) if pattern.endswith("*") else agent_id == pattern for pattern in patterns
    )


class KeyCache:
    """Remembers recent key look-ups for a few seconds, so each call does not cost a query.

    The TTL bounds how long a revoked or rotated-out key keeps working. Unknown secrets are remembered
    too, so a flood of bad keys does not become a flood of queries.
    """

    def __init__(self, pool: Pool, hasher: KeyHasher, ttl_seconds: float, max_entries: int = 10_000) -> None:
        self._pool = pool
        self._hasher = hasher
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        # Keyed by the secret's HMAC so that no secret stays in memory.
        self._entries: dict[bytes, tuple[StoredKey | None, float]] = {}

    async def key_for(self, secret: str) -> StoredKey | None:
        cache_key = self._hasher.digest(secret)
        now = time.monotonic()
        cached = self._entries.get(cache_key)
        if cached is not None and cached[1] > now:
            return cached[0]
        key = await find_key(self._pool, self._hasher, secret)
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        self._entries[cache_key] = (key, now + self._lifetime(key))
        return key

    def _lifetime(self, key: StoredKey | None) -> float:
        """The TTL, cut short when the key expires sooner."""
        if key is None or key.expires_at is None:
            return self._ttl
        remaining = (key.expires_at - datetime.now(key.expires_at.tzinfo)).total_seconds()
        return max(0.0, min(self._ttl, remaining))
