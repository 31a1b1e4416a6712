"""API keys: creating, listing and revoking them, and finding the role behind a presented secret.

A key is `arb_<43 url-safe characters>` (256 random bits); only its SHA-256 is stored, which is
enough for a secret with that much entropy (no salt or slow hash needed).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from shared.database import Pool

KEY_PREFIX = "arb_"


class Role(StrEnum):
    ADMIN = "admin"
    SERVICE = "service"
    SUBMITTER = "submitter"
    AGENT = "agent"
    VIEWER = "viewer"


@dataclass(frozen=True)
class CreatedKey:
    id: str
    role: Role
    secret: str


@dataclass(frozen=True)
class StoredKey:
    """What the database keeps about a key: never the secret, and here not its hash either."""

    id: str
    key_prefix: str
    role: Role
    description: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class Revocation:
    key: StoredKey
    # False when the key had been revoked before; its first revoked_at stands.
    revoked_now: bool


class KeyLookupError(LookupError):
    """No key, or more than one, answers to the id or prefix given."""


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


async def create_key(pool: Pool, role: Role, description: str = "") -> CreatedKey:
    """Stores a new key for the role and returns its secret, which is never readable again."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    async with pool.connection() as connection:
        cursor = await connection.execute(
            # create_api_key: one row; the secret itself is not stored.
            """
            INSERT INTO api_keys (key_prefix, key_hash, role, description)
            VALUES (%s, %s, %s, %s)
            RETURNING id::text AS id
            """,
            (secret[:12], hash_secret(secret), role.value, description),
        )
        row = await cursor.fetchone()
    assert row is not None
    return CreatedKey(id=row["id"], role=role, secret=secret)


async def find_role(pool: Pool, key_hash: bytes) -> Role | None:
    """The role of an unrevoked key with this hash, or None."""
    async with pool.connection() as connection:
        cursor = await connection.execute(
            # find_api_key_role: at most one row (key_hash is unique).
            "SELECT role FROM api_keys WHERE key_hash = %s AND revoked_at IS NULL",
            (key_hash,),
        )
        row = await cursor.fetchone()
    return Role(row["role"]) if row else None


def _stored_key(row: Mapping[str, Any]) -> StoredKey:
    return StoredKey(
        id=row["id"],
        key_prefix=row["key_prefix"],
        role=Role(row["role"]),
        description=row["description"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


async def list_keys(pool: Pool) -> list[StoredKey]:
    """Every key, revoked ones included, oldest first."""
    async with pool.connection() as connection:
        cursor = await connection.execute(
            # list_api_keys: every row; never selects key_hash.
            """
            SELECT id::text AS id, key_prefix, role, description, created_at, revoked_at
            FROM api_keys
            ORDER BY created_at, id
            """
        )
        rows = await cursor.fetchall()
    return [_stored_key(row) for row in rows]


async def revoke_key(pool: Pool, id_or_prefix: str) -> Revocation:
    """Revokes the one key whose id or prefix (e.g. `arb_AbCdEfGh`) is given. Raises KeyLookupError
    when none or several match. Services notice within their key cache's lifetime (KeyCache)."""
    reference = id_or_prefix.strip()
    async with pool.connection() as connection, connection.transaction():
        cursor = await connection.execute(
            # find_api_keys_to_revoke: the keys with this id or prefix, locked until the revocation
            # commits, so a concurrent revoke waits and then reports "already revoked".
            """
            SELECT id::text AS id, key_prefix, role, description, created_at, revoked_at
            FROM api_keys
            WHERE id::text = lower(%(reference)s) OR key_prefix = %(reference)s
            FOR UPDATE
            """,
            {"reference": reference},
        )
        matches = [_stored_key(row) for row in await cursor.fetchall()]
        if not matches:
            raise KeyLookupError(f"no API key has the id or prefix '{reference}'; `arbiter keys list` shows them")
        if len(matches) > 1:
            raise KeyLookupError(f"{len(matches)} API keys have the prefix '{reference}'; revoke one by its id")
        key = matches[0]
        if key.revoked_at is not None:
            return Revocation(key, revoked_now=False)
        cursor = await connection.execute(
            # revoke_api_key: one row (the id is its primary key); find_role stops returning it.
            """
            UPDATE api_keys SET revoked_at = now()
            WHERE id = %s
            RETURNING id::text AS id, key_prefix, role, description, created_at, revoked_at
            """,
            (key.id,),
        )
        row = await cursor.fetchone()
    assert row is not None
    return Revocation(_stored_key(row), revoked_now=True)


class KeyCache:
    """Remembers recent key look-ups for a few seconds, so each call does not cost a query.

    The TTL bounds how long a revoked key keeps working. Unknown keys are remembered too, so a
    flood of bad keys does not become a flood of queries.
    """

    def __init__(self, pool: Pool, ttl_seconds: float, max_entries: int = 10_000) -> None:
        self._pool = pool
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        # Keyed by hash so that no secret stays in memory.
        self._entries: dict[bytes, tuple[Role | None, float]] = {}

    async def role_for(self, secret: str) -> Role | None:
        key_hash = hash_secret(secret)
        now = time.monotonic()
        cached = self._entries.get(key_hash)
        if cached is not None and cached[1] > now:
            return cached[0]
        role = await find_role(self._pool, key_hash)
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        self._entries[key_hash] = (role, now + self._ttl)
        return role
