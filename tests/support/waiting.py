"""Waiting on a condition with a bounded timeout, never a bare sleep."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

Found = TypeVar("Found")

POLL_SECONDS = 0.02


async def eventually(check: Callable[[], Awaitable[Found] | Found], what: str, timeout: float = 10.0) -> Found:
    """Calls `check` until it returns something truthy and returns that; fails naming `what` after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if inspect.isawaitable(found):
            found = await found
        if found:
            return found  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        await asyncio.sleep(POLL_SECONDS)
