"""Opaque page tokens: the position after the last row of a page, as base64 JSON."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from shared import validation
from shared.errors import InvalidArgument


def encode_page_token(position: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(position, separators=(",", ":")).encode()).decode()


def decode_page_token(field: str, token: str, expected_keys: frozenset[str]) -> dict[str, Any] | None:
    """None for the first page; the position for a token this server issued."""
    if not token:
        return None
    validation.page_token(field, token)
    try:
        position = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        position = None
    if not isinstance(position, dict) or set(position) != expected_keys:
        raise InvalidArgument(field, "is not a token from a previous page: pass next_page_token unchanged")
    return position
