"""ARBITER_LOG_FORMAT=json: each service writes one JSON object per line, every line, and the lines about
an agent name it (agent_id, tenant). Both services run as subprocesses while an SDK agent takes a task."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from shared.logs import JsonFormatter, about
from tests.support.processes import ServiceProcesses
from tests.support.stack import DEFAULT_TENANT, create_keys
from tests.test_secrets_in_logs import run_a_task

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]


def json_lines(path: Path) -> list[dict[str, Any]]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    assert lines, f"{path.name} is empty"
    return [json.loads(line) for line in lines]


async def test_json_logs_are_one_object_per_line_naming_the_agent_they_are_about(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARBITER_LOG_FORMAT", "json")
    services = ServiceProcesses(database_url, await create_keys(database_url), tmp_path)
    try:
        services.start()
        await run_a_task(services)
    finally:
        codes = services.stop()
    assert codes == {"orchestrator": 0, "registry": 0}, services.logs()
    registry, orchestrator = json_lines(tmp_path / "registry.log"), json_lines(tmp_path / "orchestrator.log")
    for entry in registry + orchestrator:
        assert {"time", "level", "logger", "message"} <= entry.keys(), entry
    about_the_agent = [entry for entry in registry + orchestrator if entry.get("agent_id") == "secret-keeper"]
    messages = {entry["message"] for entry in about_the_agent}
    assert any("registered" in message for message in messages), messages
    assert any("connected" in message for message in messages), messages
    assert all(entry["tenant"] == DEFAULT_TENANT for entry in about_the_agent)


def test_a_json_line_carries_the_exception_and_leaves_out_empty_fields() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("test").makeRecord(
            "test",
            logging.ERROR,
            __file__,
            1,
            "failed %s",
            ("here",),
            exc_info=sys.exc_info(),
            extra=about(task_id="t-1", agent_id=""),
        )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "failed here"
    assert entry["task_id"] == "t-1" and "agent_id" not in entry
    assert "ValueError: boom" in entry["exception"]


def test_a_json_line_written_inside_a_span_names_its_trace() -> None:
    provider = TracerProvider()
    with provider.get_tracer("test").start_as_current_span("work") as span:
        record = logging.getLogger("test").makeRecord("test", logging.INFO, __file__, 1, "inside", (), None)
        entry = json.loads(JsonFormatter().format(record))
    assert entry["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert entry["span_id"] == format(span.get_span_context().span_id, "016x")
    outside = logging.getLogger("test").makeRecord("test", logging.INFO, __file__, 1, "outside", (), None)
    assert "trace_id" not in json.loads(JsonFormatter().format(outside))
