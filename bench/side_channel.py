"""Task timestamps recorded beside the system under test, so that measuring does not load it.

Each process appends `(event, task_key, time.time_ns())` to a list in memory (no I/O, no lock: one
append per event) and writes one file when it ends; the driver merges the files afterwards. Wall-clock
nanoseconds, so that records from different processes on this machine compare.

    from bench import side_channel
    side_channel.start("/tmp/run-1", "worker-1")   # flushes at exit
    side_channel.record("start", "17")
    ...
    events = side_channel.merge("/tmp/run-1")      # {"start": {"17": ns, ...}, ...}
"""

from __future__ import annotations

import atexit
import json
import time
from pathlib import Path

_records: list[tuple[str, str, int]] = []
_path: Path | None = None


def start(directory: str | Path, process_name: str) -> None:
    """Records go to DIRECTORY/PROCESS_NAME.jsonl, written by flush() or at interpreter exit."""
    global _path
    _path = Path(directory) / f"{process_name}.jsonl"
    atexit.register(flush)


def record(event: str, task_key: str, at_ns: int | None = None) -> None:
    _records.append((event, task_key, time.time_ns() if at_ns is None else at_ns))


def flush() -> None:
    """Writes what was recorded (once; later calls write what came since) and empties the buffer."""
    if _path is None or not _records:
        return
    with _path.open("a") as file:
        file.writelines(f"{json.dumps(entry)}\n" for entry in _records)
    _records.clear()


def merge(directory: str | Path) -> dict[str, dict[str, int]]:
    """Every process's records: event -> task key -> nanoseconds. A key recorded twice for one event
    (a task run again after a retry) keeps the earliest time."""
    merged: dict[str, dict[str, int]] = {}
    for path in sorted(Path(directory).glob("*.jsonl")):
        for line in path.read_text().splitlines():
            event, key, at_ns = json.loads(line)
            by_key = merged.setdefault(event, {})
            if key not in by_key or at_ns < by_key[key]:
                by_key[key] = at_ns
    return merged
