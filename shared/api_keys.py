"""API keys: creating them, and finding the role behind a presented secret.

A key is `arb_<43 url-safe characters>` (256 random bits); only its SHA-256 is stored, which is
enough for a secret with that much entropy (no salt or slow hash needed).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum

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
