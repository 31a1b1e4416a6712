"""A worker agent built only with the SDK (`arbiter.Agent`), run as a real subprocess by tests/test_sdk.py:

    python -m tests.support.sdk_agent --registry ADDR --orchestrator ADDR --agent-id ID \
        --concurrency N --events PATH

with the API key in ARBITER_AGENT_KEY. The orchestrator may be any gRPC target, e.g.
`ipv4:127.0.0.1:PORT_A,127.0.0.1:PORT_B` for several orchestrators, the first preferred (pick_first).
It ends in `agent.run()`, so SIGTERM or SIGINT drains (no new work, held tasks finish) and a second
signal stops at once. Its handlers:

    work       payload {"ms": int, "fail_first": bool?, "value": any}: reports progress 0.5 "halfway",
               sleeps ms, returns {"agent": ID, "value": value}; with fail_first, attempt 1 raises
               RuntimeError (retryable).
    block      awaits forever, until the SDK cancels it.
    permanent  raises PermanentError("bad input: ...").
    slow       sleeps payload ms, then returns {"agent": ID}.

What they do goes to PATH, one JSON object per line, flushed at once (tests read the file while the
agent runs), each with "agent", "time", and for a handler "task_id", "task_type", "attempt" and
"running" (handlers running in this process at that moment, this one included):

    {"event": "started" | "finished" | "raised" | "cancelled", ...}   every handler
    {"event": "progress_reported", ...}                                  work, once report_progress returned
    {"event": "exited"}                                                  agent.run() returned

The bottom of this file holds the test-side helpers that start this agent and wait on what it did.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from arbiter import Agent, PermanentError, Task
from tests.support.stub_agent import REPO_ROOT, AgentProcess, EventLog

if TYPE_CHECKING:
    from tests.support.processes import ServiceProcesses
    from tests.support.stack import Stack


def build_agent(options: argparse.Namespace, key: str, events: EventLog) -> Agent:
    agent = Agent(
        options.agent_id,
        name=f"sdk {options.agent_id}",
        model_family="sdk-test",
        max_concurrent_tasks=options.concurrency,
        registry=options.registry,
        orchestrator=options.orchestrator,
        api_key=key,
    )
    running = 0

    @asynccontextmanager
    async def recorded(task: Task) -> AsyncIterator[Callable[[str], None]]:
        """Counts the handler as running and records how it ends; yields a way to record more events."""
        nonlocal running

        def record(event: str) -> None:
            events.record(event, task_id=task.id, task_type=task.task_type, attempt=task.attempt, running=running)

        running += 1
        record("started")
        try:
            yield record
        except asyncio.CancelledError:
            record("cancelled")
            raise
        except Exception:
            record("raised")
            raise
        else:
            record("finished")
        finally:
            running -= 1

    @agent.handler("work")
    async def work(task: Task) -> dict[str, Any]:
        async with recorded(task) as record:
            if task.payload.get("fail_first") and task.attempt == 1:
                raise RuntimeError("failing the first attempt on purpose")
            await task.report_progress(0.5, "halfway")
            record("progress_reported")
            await asyncio.sleep(task.payload.get("ms", 0) / 1000)
            return {"agent": options.agent_id, "value": task.payload.get("value")}

    @agent.handler("block")
    async def block(task: Task) -> dict[str, Any]:
        async with recorded(task):
            await asyncio.Event().wait()  # only cancellation ends this
        return {}

    @agent.handler("permanent")
    async def permanent(task: Task) -> dict[str, Any]:
        async with recorded(task):
            raise PermanentError(f"bad input: task {task.id} can never succeed")

    @agent.handler("slow")
    async def slow(task: Task) -> dict[str, Any]:
        async with recorded(task):
            await asyncio.sleep(task.payload.get("ms", 2000) / 1000)
            return {"agent": options.agent_id}

    return agent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.support.sdk_agent", description=__doc__.split("\n")[0])
    parser.add_argument("--registry", required=True, help="registry HOST:PORT")
    parser.add_argument(
        "--orchestrator", required=True, help="orchestrator HOST:PORT, or ipv4:HOST:PORT,HOST:PORT for several"
    )
    parser.add_argument("--agent-id", required=True)
    parser.add_argument("--concurrency", type=int, required=True, help="max_concurrent_tasks")
    parser.add_argument("--events", required=True, help="JSON-lines file to append events to")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    key = os.environ.get("ARBITER_AGENT_KEY", "")
    if not key:
        print("sdk_agent: ARBITER_AGENT_KEY is not set", file=sys.stderr)
        return 2
    events = EventLog(options.events, options.agent_id)
    try:
        build_agent(options, key, events).run()
        events.record("exited")
    finally:
        events.close()
    return 0


# Test-side helpers: start this agent against ServiceProcesses, and wait on what it recorded.

WAIT_SECONDS = 20.0
Found = TypeVar("Found")


def start_sdk_agent(
    services: ServiceProcesses | Stack,
    agent_id: str,
    concurrency: int,
    directory: Path,
    orchestrator: str | None = None,
) -> AgentProcess:
    """Starts the agent against `orchestrator` (a gRPC target; services.orchestrator_address if None), with
    the services as subprocesses or in the test's event loop; its
    events go to <agent_id>.events.jsonl and its stdout and stderr to <agent_id>.log."""
    from shared.api_keys import Role

    events_path = directory / f"{agent_id}.events.jsonl"
    log_path = directory / f"{agent_id}.log"
    command = [
        sys.executable,
        "-m",
        "tests.support.sdk_agent",
        "--registry",
        services.registry_address,
        "--orchestrator",
        orchestrator or services.orchestrator_address,
        "--agent-id",
        agent_id,
        "--concurrency",
        str(concurrency),
        "--events",
        str(events_path),
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env={**os.environ, "ARBITER_AGENT_KEY": services.keys[Role.AGENT]},
            stdout=log,
            stderr=log,
        )
    return AgentProcess(agent_id, concurrency, events_path, log_path, process)


async def wait_for(
    check: Callable[[], Awaitable[Found]],
    what: str,
    *,
    agent: AgentProcess | None = None,
    timeout: float = WAIT_SECONDS,
) -> Found:
    """Polls `check` until it returns something truthy, and returns that. Fails naming `what` after
    `timeout` seconds, or at once if `agent` exits. Sleeps with asyncio, so servers running in this
    event loop keep serving."""
    deadline = time.monotonic() + timeout
    while True:
        if agent is not None:
            agent.check_alive()
        found = await check()
        if found:
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        await asyncio.sleep(0.02)


def events_of(agent: AgentProcess, event: str, task_id: str | None = None) -> list[dict[str, Any]]:
    """The agent's events of one kind so far, for one task if `task_id` is given."""
    return [
        recorded
        for recorded in agent.events()
        if recorded["event"] == event and (task_id is None or recorded.get("task_id") == task_id)
    ]


async def wait_for_event(
    agent: AgentProcess, event: str, task_id: str | None = None, timeout: float = WAIT_SECONDS
) -> dict[str, Any]:
    """The agent's first event of this kind (for this task), once it is written."""

    async def written() -> list[dict[str, Any]]:
        return events_of(agent, event, task_id)

    return (await wait_for(written, f"event {event!r} for task {task_id}", agent=agent, timeout=timeout))[0]


async def wait_for_exit(agent: AgentProcess, timeout: float = WAIT_SECONDS) -> int:
    """The agent's exit code, once it has exited by itself."""

    async def exited() -> bool:
        return agent.process.poll() is not None

    await wait_for(exited, f"agent {agent.agent_id} to exit", timeout=timeout)
    return agent.process.returncode


if __name__ == "__main__":
    sys.exit(main())
