"""Checks on identifiers and lists that both services accept from callers."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from shared.errors import InvalidArgument

# ---- The documented limits ----
# Every limit on a request field, named once here: the services check these, the README's "Limits"
# table states them, and tests/test_limits_documented.py fails when the two disagree. Every MAX_, MIN_
# and DEFAULT_ constant of this module must appear in that table.

MAX_AGENT_ID_LENGTH = 64
MAX_NAME_LENGTH = 128
MAX_LIST_ITEMS = 64
MAX_LABELS = 64
MAX_LABEL_KEY_LENGTH = 63
MAX_LABEL_VALUE_LENGTH = 256
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# Tokens this server issues are far shorter (base64 of a small JSON position).
MAX_PAGE_TOKEN_LENGTH = 1024
MIN_PRIORITY, MAX_PRIORITY = -1000, 1000
DEFAULT_MAX_ATTEMPTS, MAX_ATTEMPTS = 3, 100
MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000
MAX_IDEMPOTENCY_KEY_LENGTH = 256
MAX_CANCEL_REASON_LENGTH = 1024
MAX_PROGRESS_MESSAGE_LENGTH = 1024
MAX_ERROR_LENGTH = 8192
# SubmitTasks: more than this in one call is refused; the gRPC message limit (8 MiB) also applies.
MAX_TASKS_PER_BATCH = 1000
MAX_OUTCOMES_PER_BATCH = 1000
MAX_CONCURRENT_TASKS = 1000
# Assignments an agent may queue beyond MAX_CONCURRENT_TASKS.
MAX_PREFETCH_TASKS = 1000
# A heartbeat's active_tasks: no agent may hold more than its running and queued tasks.
MAX_ACTIVE_TASKS = MAX_CONCURRENT_TASKS + MAX_PREFETCH_TASKS
# One attempt's latency as reported to the registry: a year. Larger values would let the running sums
# overflow double precision, which PostgreSQL refuses.
MAX_LATENCY_MS = 365 * 24 * 3600 * 1000
DEFAULT_CANDIDATE_LIMIT, MAX_CANDIDATE_LIMIT = 10, 500
# AdminService.
MAX_KEY_DESCRIPTION_LENGTH = 256
MAX_KEY_AGENT_IDS = 64
# A key's id (a UUID) or its prefix, with room to spare.
MAX_KEY_REFERENCE_LENGTH = 64
MAX_ROTATION_GRACE_MS = 7 * 24 * 3600 * 1000
MAX_AUDIT_FILTER_LENGTH = 256

AGENT_ID_PATTERN = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_AGENT_ID_LENGTH - 1}}}$")
AGENT_ID_RULE = f"1-{MAX_AGENT_ID_LENGTH} letters, digits, '.', '_' or '-', starting with a letter or digit"


def agent_id(field: str, value: str) -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    if not AGENT_ID_PATTERN.match(value):
        raise InvalidArgument(field, f"{value[:80]!r} is not a valid agent id: use {AGENT_ID_RULE}")
    return value


def agent_pattern(field: str, value: str) -> str:
    """An agent id, or a prefix of one followed by '*' (what an agent key may be bound to)."""
    agent_id(field, value[:-1] if value.endswith("*") else value)
    return value


def task_id(field: str, value: str) -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidArgument(
            field, f"{value[:80]!r} is not a task id (a UUID such as 1b4e28ba-2fa1-11d2-883f-0016d3cca427)"
        ) from None


NUL_RULE = "contains a NUL character (\\u0000), which PostgreSQL cannot store; remove it"


def _nul_path(value: Any, path: str) -> str | None:
    """Where in a JSON-like value the first NUL character is (in a key or a string), or None."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = f"{path}.{key!r}" if "\x00" in key else _nul_path(item, f"{path}.{key}")
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_path(item, f"{path}[{index}]")
            if found:
                return found
    return None


def storable_json(field: str, value: dict[str, Any]) -> dict[str, Any]:
    """A payload or result PostgreSQL's jsonb can hold: no NUL character in any key or string."""
    path = _nul_path(value, field)
    if path is not None:
        raise InvalidArgument(field, f"{path} {NUL_RULE}")
    return value


def name(field: str, value: str, *, required: bool) -> str:
    if "\x00" in value:
        raise InvalidArgument(field, NUL_RULE)
    if required and not value.strip():
        raise InvalidArgument(field, "is required")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidArgument(field, f"is {len(value)} characters; at most {MAX_NAME_LENGTH} are allowed")
    if value != value.strip():
        raise InvalidArgument(field, "must not start or end with white space")
    return value


def names(field: str, values: Iterable[str]) -> list[str]:
    """A list of short non-empty names, duplicates removed, order kept."""
    given = list(values)
    # Counted before any entry is read: an 8 MiB list of one-character names would otherwise keep the
    # event loop busy for seconds.
    if len(given) > MAX_LIST_ITEMS:
        raise InvalidArgument(field, f"has {len(given)} entries; at most {MAX_LIST_ITEMS} are allowed")
    result: list[str] = []
    for index, value in enumerate(given):
        name(f"{field}[{index}]", value, required=True)
        if value not in result:
            result.append(value)
    return result


def labels(field: str, values: Mapping[str, str]) -> dict[str, str]:
    if len(values) > MAX_LABELS:
        raise InvalidArgument(field, f"has {len(values)} labels; at most {MAX_LABELS} are allowed")
    for key, value in values.items():
        if "\x00" in key or "\x00" in value:
            raise InvalidArgument(f"{field}[{key!r}]", NUL_RULE)
        if not key or len(key) > MAX_LABEL_KEY_LENGTH:
            raise InvalidArgument(f"{field}[{key!r}]", f"label keys must be 1-{MAX_LABEL_KEY_LENGTH} characters")
        if len(value) > MAX_LABEL_VALUE_LENGTH:
            raise InvalidArgument(
                f"{field}[{key!r}]", f"label values must be at most {MAX_LABEL_VALUE_LENGTH} characters"
            )
    return dict(values)


def page_size(field: str, value: int, *, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE) -> int:
    if value == 0:
        return default
    if not 1 <= value <= maximum:
        raise InvalidArgument(field, f"must be between 1 and {maximum} (0 means {default}); got {value}")
    return value


def text(field: str, value: str, *, maximum: int) -> str:
    """Free text a caller sends (a reason, a message, a key): at most `maximum` characters and no NUL,
    which PostgreSQL cannot store."""
    if len(value) > maximum:
        raise InvalidArgument(field, f"is {len(value)} characters; at most {maximum} are allowed")
    if "\x00" in value:
        raise InvalidArgument(field, NUL_RULE)
    return value


def page_token(field: str, value: str) -> str:
    """Only its length: what it decodes to is the paging code's to judge."""
    if len(value) > MAX_PAGE_TOKEN_LENGTH:
        raise InvalidArgument(
            field, f"is {len(value)} characters; tokens are at most {MAX_PAGE_TOKEN_LENGTH}: pass next_page_token"
        )
    return value


def timestamp(field: str, value: Timestamp) -> datetime:
    """The time as an aware datetime; protobuf itself raises for one outside years 1-9999 or with nanos
    outside 0..999999999, which is the caller's mistake."""
    try:
        return value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(
            field, "is not a valid time: seconds must fall within years 1 to 9999 and nanos within 0..999999999"
        ) from None


def duration(field: str, value: Duration, *, maximum_ms: int) -> timedelta:
    """A length of time from 0 to `maximum_ms`; negative or huge ones are refused before
    anything converts them (timedelta overflows on huge ones)."""
    nanoseconds = value.seconds * 1_000_000_000 + value.nanos
    if abs(value.nanos) > 999_999_999 or not 0 <= nanoseconds <= maximum_ms * 1_000_000:
        raise InvalidArgument(field, f"must be from 0 to {maximum_ms} ms; got {value.seconds} s and {value.nanos} ns")
    return timedelta(microseconds=nanoseconds // 1000)
