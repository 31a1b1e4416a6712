"""Logging for the services: plain text for a terminal, or one JSON object per line
(ARBITER_LOG_FORMAT=json) for a log pipeline, with the task, agent and trace a line is about (the
trace and span ids of the span current when the line was logged, when tracing is on).

A log call names what it is about with `extra=about(task_id=..., agent_id=...)`; the JSON line carries
those as fields. Secrets never reach a log line: keys, payloads and database URLs are not logged."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

from shared import tenancy

# Fields a record may carry (through `extra`) that a JSON line shows by name.
CONTEXT_FIELDS = ("task_id", "agent_id", "tenant", "rpc", "trace_id", "span_id")
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def about(**fields: str | None) -> dict[str, str]:
    """`extra` for a log call: the task, agent… it is about (empty values left out)."""
    return {name: value for name, value in fields.items() if value}


def about_agent(qualified_id: str) -> dict[str, str]:
    """`extra` for a log call about an agent, named by its tenant-qualified id."""
    return about(agent_id=tenancy.plain(qualified_id), tenant=tenancy.tenant_of(qualified_id))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, the context fields
    present, and the exception's traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value:
                entry[name] = value
        # The trace the event happened in (shared/tracing.py), so a log line leads to its trace.
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid and "trace_id" not in entry:
            entry["trace_id"] = format(span_context.trace_id, "032x")
            entry["span_id"] = format(span_context.span_id, "016x")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: str, log_format: str = "text") -> None:
    """The root logger at `level`, writing to stderr in `log_format` (text or json)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # pgserver narrates every command it runs at INFO.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
