"""How results look: rich tables for people, JSON for programs (--json)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

from rich import box
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

UNWRAPPED_WIDTH = 10_000


# Doubles up to here hold every whole number exactly.
LARGEST_EXACT_INTEGER = 2**53


def to_json(value: Any) -> Any:
    """Plain JSON values: enums as lowercase names, datetimes as ISO-8601, durations as seconds, and
    whole numbers without `.0` (protobuf stores every payload number as a double: 7 comes back 7.0)."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= LARGEST_EXACT_INTEGER:
        return int(value)
    if isinstance(value, Enum):
        return value.name.lower()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: to_json(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    return value


def print_json(value: Any) -> None:
    print(json.dumps(to_json(value), indent=2, ensure_ascii=False))


def print_json_line(value: Any) -> None:
    """One compact document per line (JSON Lines), flushed at once, for output that streams."""
    print(json.dumps(to_json(value), ensure_ascii=False), flush=True)


def compact_json(value: Any) -> str:
    return json.dumps(to_json(value), ensure_ascii=False, separators=(", ", ": "))


def one_line(text: str) -> str:
    return " ".join(text.split())


def note(message: str) -> None:
    """A remark for the person at the terminal, on stderr so stdout stays the result alone."""
    print(message, file=sys.stderr)


def _print_rich(renderable: RenderableType) -> None:
    # markup off: descriptions, payloads and messages are user text, never rich markup.
    if sys.stdout.isatty():
        Console(highlight=False, markup=False, emoji=False).print(renderable)
        return
    # Off a terminal rows are never wrapped, so each stays one line for grep and friends, and the
    # padding rich adds to the last column goes.
    console = Console(highlight=False, markup=False, emoji=False, width=UNWRAPPED_WIDTH)
    with console.capture() as captured:
        console.print(renderable)
    print("\n".join(line.rstrip() for line in captured.get().splitlines()))


def print_table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, empty: str) -> None:
    """A table with one row per item, or the sentence `empty` (on stderr) when there is none."""
    materialized = [list(row) for row in rows]
    if not materialized:
        note(empty)
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for header in headers:
        table.add_column(header, overflow="fold")
    for row in materialized:
        table.add_row(*(Text(cell) for cell in row))
    _print_rich(table)


def print_section(
    title: str, headers: Sequence[str], rows: Iterable[Sequence[str]], *, empty: str | None = None
) -> None:
    """After what came before, a blank line, `title` and a table under it; when there is no row, nothing
    on stdout, and the sentence `empty` (if any) on stderr."""
    materialized = [list(row) for row in rows]
    if not materialized:
        if empty:
            note(empty)
        return
    print()
    print(title)
    print_table(headers, materialized, empty="")


def print_fields(fields: Sequence[tuple[str, str]]) -> None:
    """One item as `name  value` lines."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in fields:
        table.add_row(name, Text(value))
    _print_rich(table)


def format_time(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def format_duration(seconds: float) -> str:
    """`850ms`, `42s`, `3m05s`, `2h07m`, `3d04h`."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def format_clock(moment: datetime | None) -> str:
    """Local time of day to the millisecond, e.g. `12:00:03.214`; `-` when unknown."""
    return "-" if moment is None else moment.astimezone().strftime("%H:%M:%S.%f")[:-3]


def format_age(moment: datetime | None) -> str:
    """How long ago, e.g. `3m05s ago`; `-` when unknown."""
    if moment is None:
        return "-"
    return format_duration(max(0.0, (datetime.now(UTC) - moment).total_seconds())) + " ago"


def format_list(items: Iterable[str]) -> str:
    return ", ".join(items) or "-"


def format_labels(labels: dict[str, str]) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(labels.items())) or "-"


def format_percent(fraction: float) -> str:
    return f"{fraction:.0%}"


def format_score(score: float) -> str:
    return f"{score:.2f}"


def format_milliseconds(milliseconds: float) -> str:
    return format_duration(milliseconds / 1000)


def format_window(length: timedelta) -> str:
    """`5 min`, `1 h`, `24 h`."""
    minutes = round(length.total_seconds() / 60)
    return f"{minutes // 60} h" if minutes and minutes % 60 == 0 else f"{minutes} min"


@contextlib.contextmanager
def agent_logs_to(handler: logging.Handler) -> Iterator[None]:
    """The SDK agent's log records go to `handler` only (not to the root logger's stderr) meanwhile."""
    agent_logger = logging.getLogger("arbiter.agent")
    agent_logger.addHandler(handler)
    agent_logger.propagate = False
    try:
        yield
    finally:
        agent_logger.removeHandler(handler)
        agent_logger.propagate = True
