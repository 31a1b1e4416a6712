"""A stub worker agent, run as a real subprocess by end-to-end tests:

    python -m tests.support.stub_agent --registry ADDR --orchestrator ADDR --agent-id ID \
        --task-type T [--task-type T2 ...] --concurrency N --work-ms MIN:MAX --events PATH

It speaks to the services only through the generated stubs in arbiter.v1 (grpc.aio), with the API
key in ARBITER_AGENT_KEY. It registers with max_concurrent_tasks=N, opens StreamAssignments, and for
every assignment sleeps a random MIN..MAX ms, then completes the task with {"agent": ID}.

It is a witness, not a well-behaved client: it never limits itself to N. It runs whatever the
orchestrator sends and writes what it saw to PATH, one JSON object per line, flushed at once (tests
read the file while the agent runs):

    {"event": "assigned", "task_id", "attempt", "priority", "in_flight", "time"}
    {"event": "completed", "task_id", "attempt", "ok": true, "time"}
    {"event": "complete_rejected", "task_id", "attempt", "code", "details", "time"}
    {"event": "redelivered", "task_id", "attempt", "time"}     (an attempt it had already started)
    {"event": "registered" | "stream_opened" | "stream_ended" | "stream_lost" | "stopped" | "fatal", ...}

`in_flight` counts the attempts received and not yet handed back with CompleteTask, this one
included. An attempt counts as handed back the moment CompleteTask is sent, not when it is answered:
the orchestrator frees the slot (and may stream the next assignment) before the answer arrives, so
counting until the answer would see N+1 where the orchestrator did nothing wrong. Counted this way,
in_flight is never more than the orchestrator's own count, so in_flight > N proves it over-assigned.

When the services restart it keeps going: UNAVAILABLE (and a stream that ends) leads to backoff,
registering again and reopening the stream; a CompleteTask that fails with UNAVAILABLE is retried
until it succeeds or gets another code. An attempt sent again after a reconnect is not started
twice. SIGTERM stops it: events are flushed and it exits 0.

The bottom of this file holds the test-side helpers that start these processes and read their events.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import grpc
from google.protobuf.struct_pb2 import Struct
from tenacity import AsyncRetrying, retry_if_exception, wait_exponential_jitter

from arbiter.v1 import (
    agent_pb2,
    orchestrator_service_pb2,
    orchestrator_service_pb2_grpc,
    registry_service_pb2,
    registry_service_pb2_grpc,
    task_pb2,
)

if TYPE_CHECKING:
    from shared.api_keys import Role
    from tests.support.processes import ServiceProcesses

HEARTBEAT_SECONDS = 2.0
CALL_TIMEOUT_SECONDS = 5.0
# Reconnect quickly once a restarted service listens again (gRPC's default backoff reaches minutes).
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 500),
)
# Codes after which the agent reconnects: the services are restarting, or this stream was replaced.
_RECONNECT_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED, grpc.StatusCode.NOT_FOUND}
)
# Codes after which a CompleteTask is sent again; anything else is the orchestrator's final word.
_RESEND_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class StreamEnded(Exception):
    """The orchestrator closed the assignment stream cleanly (e.g. it is shutting down)."""


def _reconnectable(error: BaseException) -> bool:
    if isinstance(error, StreamEnded):
        return True
    return isinstance(error, grpc.aio.AioRpcError) and error.code() in _RECONNECT_CODES


def _resendable(error: BaseException) -> bool:
    return isinstance(error, grpc.aio.AioRpcError) and error.code() in _RESEND_CODES


def _backoff() -> wait_exponential_jitter:
    return wait_exponential_jitter(multiplier=0.05, max=0.5, jitter=0.05)


class EventLog:
    def __init__(self, path: str, agent_id: str) -> None:
        self._file: TextIO = open(path, "a", encoding="utf-8")
        self._agent_id = agent_id

    def record(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "agent": self._agent_id, **fields, "time": time.time()})
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


class StubAgent:
    def __init__(self, options: argparse.Namespace, key: str, events: EventLog) -> None:
        self.options = options
        self.events = events
        self.metadata = (("authorization", f"Bearer {key}"),)
        self.registry_channel = grpc.aio.insecure_channel(options.registry, options=CHANNEL_OPTIONS)
        self.orchestrator_channel = grpc.aio.insecure_channel(options.orchestrator, options=CHANNEL_OPTIONS)
        self.registry = registry_service_pb2_grpc.RegistryServiceStub(self.registry_channel)
        self.orchestrator = orchestrator_service_pb2_grpc.OrchestratorServiceStub(self.orchestrator_channel)
        # Every attempt ever started, so that a re-delivery does not start it twice.
        self.started: set[tuple[str, int]] = set()
        # Attempts received whose CompleteTask has not been sent yet.
        self.holding: set[tuple[str, int]] = set()
        self.handlers: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        await self.registry_channel.close()
        await self.orchestrator_channel.close()

    async def register(self) -> None:
        agent = agent_pb2.Agent(
            id=self.options.agent_id,
            name=f"stub {self.options.agent_id}",
            model_family="stub",
            capabilities=agent_pb2.AgentCapabilities(task_types=self.options.task_type),
            max_concurrent_tasks=self.options.concurrency,
        )
        async for attempt in AsyncRetrying(retry=retry_if_exception(_resendable), wait=_backoff(), reraise=True):
            with attempt:
                await self.registry.RegisterAgent(
                    registry_service_pb2.RegisterAgentRequest(agent=agent),
                    metadata=self.metadata,
                    timeout=CALL_TIMEOUT_SECONDS,
                )
        self.events.record("registered")

    async def run(self) -> None:
        """Registers and consumes the assignment stream, again and again while the services restart."""
        async for attempt in AsyncRetrying(retry=retry_if_exception(_reconnectable), wait=_backoff(), reraise=True):
            with attempt:
                await self.register()
                await self.consume_stream()

    async def consume_stream(self) -> None:
        call = self.orchestrator.StreamAssignments(
            orchestrator_service_pb2.StreamAssignmentsRequest(agent_id=self.options.agent_id), metadata=self.metadata
        )
        self.events.record("stream_opened")
        try:
            async for message in call:
                if message.WhichOneof("kind") == "assignment":
                    self.receive(message.assignment)
        except grpc.aio.AioRpcError as error:
            self.events.record("stream_lost", code=error.code().name, details=error.details())
            raise
        finally:
            call.cancel()
        self.events.record("stream_ended")
        raise StreamEnded

    def receive(self, assignment: orchestrator_service_pb2.Assignment) -> None:
        key = (assignment.task.id, assignment.attempt)
        if key in self.started:
            self.events.record("redelivered", task_id=key[0], attempt=key[1], still_held=key in self.holding)
            return
        self.started.add(key)
        self.holding.add(key)
        self.events.record(
            "assigned",
            task_id=key[0],
            attempt=key[1],
            priority=assignment.task.priority,
            in_flight=len(self.holding),
        )
        handler = asyncio.create_task(self.handle(key))
        self.handlers.add(handler)
        handler.add_done_callback(self.handlers.discard)

    async def handle(self, key: tuple[str, int]) -> None:
        task_id, attempt_number = key
        low, high = self.options.work_ms
        await asyncio.sleep(random.uniform(low, high) / 1000)
        result = Struct()
        result.update({"agent": self.options.agent_id})
        request = orchestrator_service_pb2.CompleteTaskRequest(
            task_id=task_id, agent_id=self.options.agent_id, attempt=attempt_number, result=result
        )
        self.holding.discard(key)  # handed back from here on; see the module docstring
        try:
            async for attempt in AsyncRetrying(retry=retry_if_exception(_resendable), wait=_backoff(), reraise=True):
                with attempt:
                    await self.orchestrator.CompleteTask(request, metadata=self.metadata, timeout=CALL_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as error:
            self.events.record(
                "complete_rejected",
                task_id=task_id,
                attempt=attempt_number,
                code=error.code().name,
                details=error.details(),
            )
            return
        self.events.record("completed", task_id=task_id, attempt=attempt_number, ok=True)

    async def heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self.registry.Heartbeat(
                    registry_service_pb2.HeartbeatRequest(
                        agent_id=self.options.agent_id, active_tasks=len(self.handlers)
                    ),
                    metadata=self.metadata,
                    timeout=HEARTBEAT_SECONDS,
                )


async def _main(options: argparse.Namespace) -> int:
    key = os.environ.get("ARBITER_AGENT_KEY", "")
    if not key:
        print("stub_agent: ARBITER_AGENT_KEY is not set", file=sys.stderr)
        return 2
    events = EventLog(options.events, options.agent_id)
    agent = StubAgent(options, key, events)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    runner = asyncio.create_task(agent.run())
    heartbeat = asyncio.create_task(agent.heartbeat())
    stopping = asyncio.create_task(stop.wait())
    exit_code = 0
    try:
        await asyncio.wait({runner, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if runner.done() and runner.exception() is not None:
            error = runner.exception()
            code = error.code().name if isinstance(error, grpc.aio.AioRpcError) else type(error).__name__
            events.record("fatal", code=code, details=str(error))
            print(f"stub_agent: giving up: {error!r}", file=sys.stderr)
            exit_code = 3
    finally:
        pending = [runner, heartbeat, stopping, *agent.handlers]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        events.record("stopped")
        events.close()
        await agent.close()
    return exit_code


def _work_ms(value: str) -> tuple[float, float]:
    low, _, high = value.partition(":")
    bounds = (float(low), float(high or low))
    if not 0 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError("expected MIN:MAX with 0 <= MIN <= MAX")
    return bounds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.support.stub_agent", description=__doc__.split("\n")[0])
    parser.add_argument("--registry", required=True, help="registry HOST:PORT")
    parser.add_argument("--orchestrator", required=True, help="orchestrator HOST:PORT")
    parser.add_argument("--agent-id", required=True)
    parser.add_argument("--task-type", action="append", required=True, help="repeatable")
    parser.add_argument("--concurrency", type=int, required=True, help="max_concurrent_tasks to register")
    parser.add_argument("--work-ms", type=_work_ms, default=(0.0, 0.0), help="MIN:MAX sleep per task")
    parser.add_argument("--events", required=True, help="JSON-lines file to append events to")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(_main(parse_args(argv)))


# Test-side helpers: both services and a few stub agents as subprocesses, and what the agents recorded.
# (Imports the test process needs are made inside these functions, so the agent itself stays light.)

REPO_ROOT = Path(__file__).resolve().parents[2]


def read_events(path: Path) -> list[dict[str, Any]]:
    """The complete lines written so far (a line being written is skipped)."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    return [json.loads(line) for line in lines if line.endswith("\n")]


@dataclass
class AgentProcess:
    agent_id: str
    concurrency: int
    events_path: Path
    stderr_path: Path
    process: subprocess.Popen[bytes]
    # Set by kill(): the test ended this agent on purpose.
    killed: bool = False

    def events(self) -> list[dict[str, Any]]:
        return read_events(self.events_path)

    def check_alive(self) -> None:
        if not self.killed and self.process.poll() is not None:
            raise AssertionError(f"stub agent {self.agent_id} exited with {self.process.returncode}:\n{self.report()}")

    def kill(self) -> int:
        """SIGKILL, as a crash would; returns the exit code."""
        self.killed = True
        self.process.kill()
        return self.process.wait()

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within the timeout; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def report(self) -> str:
        stderr = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        tail = self.events_path.read_text(errors="replace").splitlines()[-20:] if self.events_path.exists() else []
        return f"--- agent {self.agent_id} stderr\n{stderr}\n--- agent {self.agent_id} last events\n" + "\n".join(tail)


@dataclass
class Fleet:
    """Both services (tests.support.processes.ServiceProcesses) and the stub agents started so far."""

    services: ServiceProcesses
    keys: dict[Role, str]
    directory: Path
    agents: list[AgentProcess] = field(default_factory=list)

    def start_agent(
        self,
        agent_id: str,
        concurrency: int,
        work_ms: str,
        task_types: tuple[str, ...] = ("work",),
        files: str | None = None,
    ) -> AgentProcess:
        """Starts a stub agent; its events and stderr go to <files or agent_id>.events.jsonl / .stderr."""
        from shared.api_keys import Role

        events_path = self.directory / f"{files or agent_id}.events.jsonl"
        stderr_path = self.directory / f"{files or agent_id}.stderr"
        command = [
            sys.executable,
            "-m",
            "tests.support.stub_agent",
            "--registry",
            self.services.registry_address,
            "--orchestrator",
            self.services.orchestrator_address,
            "--agent-id",
            agent_id,
            "--concurrency",
            str(concurrency),
            "--work-ms",
            work_ms,
            "--events",
            str(events_path),
        ]
        for task_type in task_types:
            command += ["--task-type", task_type]
        with stderr_path.open("wb") as stderr:
            process = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env={**os.environ, "ARBITER_AGENT_KEY": self.keys[Role.AGENT]},
                stdout=stderr,
                stderr=stderr,
            )
        agent = AgentProcess(agent_id, concurrency, events_path, stderr_path, process)
        self.agents.append(agent)
        return agent

    def check_agents_alive(self) -> None:
        for agent in self.agents:
            agent.check_alive()

    def all_events(self) -> list[dict[str, Any]]:
        return [event for agent in self.agents for event in agent.events()]

    def submit(self, priorities: list[int], chunk: int = 50) -> list[str]:
        """Submits one "work" task per priority, `chunk` at a time concurrently (chunk=1: in order);
        returns the task ids in input order."""
        from shared.api_keys import Role

        ids: list[str] = []
        with grpc.insecure_channel(self.services.orchestrator_address) as channel:
            stub = orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel)
            for start in range(0, len(priorities), chunk):
                futures = [
                    stub.SubmitTask.future(
                        orchestrator_service_pb2.SubmitTaskRequest(task_type="work", priority=priority),
                        metadata=(("authorization", f"Bearer {self.keys[Role.SUBMITTER]}"),),
                        timeout=10,
                    )
                    for priority in priorities[start : start + chunk]
                ]
                ids += [future.result().task.id for future in futures]
        return ids

    def completed_count(self) -> int:
        """How many tasks ListTasks says are COMPLETED (at most 500)."""
        from shared.api_keys import Role

        with grpc.insecure_channel(self.services.orchestrator_address) as channel:
            page = orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel).ListTasks(
                orchestrator_service_pb2.ListTasksRequest(state=task_pb2.TASK_STATE_COMPLETED, page_size=500),
                metadata=(("authorization", f"Bearer {self.keys[Role.VIEWER]}"),),
                timeout=5,
            )
        return len(page.tasks)

    def finished_task_ids(self) -> set[str]:
        """Tasks for which some agent has recorded the outcome of its CompleteTask."""
        return {event["task_id"] for event in self.all_events() if event["event"] in ("completed", "complete_rejected")}

    def wait_until_all_completed(self, count: int, timeout: float = 40.0) -> None:
        """Waits until ListTasks shows `count` COMPLETED tasks and the agents have recorded the outcome of
        each (an agent writes its event after the orchestrator answers, so after the state changed).
        Fails at once if an agent died."""
        deadline = time.monotonic() + timeout
        completed, finished = -1, -1
        while time.monotonic() < deadline:
            self.check_agents_alive()
            try:
                completed = self.completed_count()
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
            finished = len(self.finished_task_ids())
            if completed >= count and finished >= count:
                return
            time.sleep(0.1)
        raise AssertionError(
            f"after {timeout} s: {completed} of {count} tasks COMPLETED, agents recorded {finished} outcomes"
        )

    def wait_for_events(self, event: str, count: int, timeout: float = 30.0) -> None:
        """Waits until the agents have recorded `count` events of this kind."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            self.check_agents_alive()
            seen = sum(1 for recorded in self.all_events() if recorded["event"] == event)
            if seen >= count:
                return
            time.sleep(0.02)
        raise AssertionError(f"only {seen} of {count} {event!r} events after {timeout} s")


@contextlib.contextmanager
def fleet(database_url: str, directory: Path) -> Iterator[Fleet]:
    """Starts both services; on the way out stops every agent (SIGTERM, then SIGKILL) and both services.
    On failure prints the service logs and each agent's stderr and last events."""
    from tests.support.processes import ServiceProcesses
    from tests.support.stack import create_keys

    keys = asyncio.run(create_keys(database_url))
    services = ServiceProcesses(database_url, keys, directory)
    running = Fleet(services, keys, directory)
    try:
        services.start()
        yield running
    except BaseException:
        print(services.logs())
        for agent in running.agents:
            print(agent.report())
        raise
    finally:
        for agent in running.agents:
            agent.stop()
        services.stop()


if __name__ == "__main__":
    sys.exit(main())
