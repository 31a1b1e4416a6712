"""Checks on identifiers and lists that both services accept from callers."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from shared.errors import InvalidArgument

AGENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
AGENT_ID_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"

MAX_NAME_LENGTH = 128
MAX_LIST_ITEMS = 64
MAX_LABELS = 64
MAX_LABEL_KEY_LENGTH = 63
MAX_LABEL_VALUE_LENGTH = 256


def agent_id(field: str, value: str) -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    if not AGENT_ID_PATTERN.match(value):
        raise InvalidArgument(field, f"{value[:80]!r} is not a valid agent id: use {AGENT_ID_RULE}")
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
    result: list[str] = []
    for index, value in enumerate(values):
        name(f"{field}[{index}]", value, required=True)
        if value not in result:
            result.append(value)
    if len(result) > MAX_LIST_ITEMS:
        raise InvalidArgument(field, f"has {len(result)} entries; at most {MAX_LIST_ITEMS} are allowed")
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


def page_size(field: str, value: int, *, default: int = 50, maximum: int = 500) -> int:
    if value == 0:
        return default
    if not 1 <= value <= maximum:
        raise InvalidArgument(field, f"must be between 1 and {maximum} (0 means {default}); got {value}")
    return value
