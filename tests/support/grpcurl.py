"""The real grpcurl binary (from the dev install), and waiting on what it prints."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def grpcurl(key: str | None, address: str, method: str, body: dict[str, object] | None = None) -> dict[str, object]:
    """One unary call; fails the test unless it succeeds. Returns the answer as JSON."""
    command = [GRPCURL, "-plaintext"]
    if key:
        command += ["-H", f"authorization: Bearer {key}"]
    if body is not None:
        command += ["-d", json.dumps(body)]
    completed = subprocess.run([*command, address, method], capture_output=True, text=True, timeout=30)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout) if completed.stdout.strip() else {}


def json_messages(text: str) -> list[dict[str, Any]]:
    """The complete JSON objects in what a grpcurl stream printed so far (one per message, pretty-printed
    one after the other); a message still being written is left out."""
    decoder = json.JSONDecoder()
    messages, position = [], 0
    while True:
        start = text.find("{", position)
        if start < 0:
            return messages
        try:
            message, position = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            return messages
        messages.append(message)


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")
