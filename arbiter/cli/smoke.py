"""`arbiter smoke`: the post-deploy check. Against any deployment it checks health and reflection on both
services, registers a throwaway SDK agent (`smoke-<hex>`, with a task type of its own so no real agent
takes its task), runs one task through it, reads the result back, checks both metrics endpoints counted
the calls, and removes what it made, even when a step fails. Exit 0 all passed, 1 a step failed (named
on stderr), 2 bad usage."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import grpc

from arbiter._grpc import open_channel
from arbiter.agent import Agent, Task
from arbiter.cli.options import Connection, Subcommands, UsageError, calls_services, service_options
from arbiter.cli.output import agent_logs_to, print_json
from arbiter.cli.smoke_probes import (
    Call,
    CheckFailed,
    Samples,
    check_calls_counted,
    check_health,
    check_reflection,
    scrape_quietly,
)
from arbiter.cli.smoke_steps import Outcome, StepResult, Steps, step_line
from arbiter.client import Client
from arbiter.errors import ArbiterError, WaitTimeout
from arbiter.models import TaskInfo, TaskState
from arbiter.settings import transport_credentials
from arbiter.v1 import admin_service_pb2, orchestrator_service_pb2, registry_service_pb2

REGISTRY_SERVICES = (
    registry_service_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)
ORCHESTRATOR_SERVICES = (orchestrator_service_pb2.DESCRIPTOR.services_by_name["OrchestratorService"].full_name,)
# Calls the smoke itself makes, which each service's metrics must have counted.
ORCHESTRATOR_CALLS = (Call(ORCHESTRATOR_SERVICES[0], "SubmitTask"),)
REGISTRY_CALLS = (Call(REGISTRY_SERVICES[0], "RegisterAgent"),)
CLEANUP_REASON = "arbiter smoke: cleaning up"
METRICS_USAGE = (
    "give --orchestrator-metrics URL and --registry-metrics URL (each service's http://HOST:PORT/metrics, "
    "ARBITER_METRICS_ADDR), or --skip-metrics to skip checking them"
)


def add_commands(commands: Subcommands) -> None:
    smoke = commands.add_parser(
        "smoke",
        parents=[service_options(timeout_help="deadline of each step")],
        help="post-deploy check: health, reflection, one task through a throwaway agent, metrics",
        description="Check a deployment end to end, printing each step as it passes: health (overall and per "
        "service) and reflection on both services; register a throwaway agent smoke-<hex> with a task type "
        "of its own, open its assignment stream, submit one task, see it completed with the expected result; "
        "each service's /metrics counted the calls; then deregister the agent (and cancel the task if it did "
        "not finish), even after a failure. --key must be able to register an agent and submit (an admin "
        "key), or give the submitting key as --key and an agent key (bound to 'smoke-*' if you like) as "
        "--agent-key. Exit codes: 0 every step passed; 1 a step failed (stderr names it and why); 2 bad usage.",
    )
    smoke.add_argument(
        "--agent-key", metavar="KEY", help="the throwaway agent's key (default: the --key one); also deregisters it"
    )
    smoke.add_argument("--orchestrator-metrics", metavar="URL", help="the orchestrator's http://HOST:PORT/metrics")
    smoke.add_argument("--registry-metrics", metavar="URL", help="the registry's http://HOST:PORT/metrics")
    smoke.add_argument("--skip-metrics", action="store_true", help="do not check the metrics endpoints")
    smoke.set_defaults(run=calls_services(run_smoke))


@dataclass(frozen=True)
class MetricsTargets:
    orchestrator: str
    registry: str


def metrics_targets(arguments: argparse.Namespace) -> MetricsTargets | None:
    """Both URLs, or None with --skip-metrics; a UsageError for anything else, before any call is made."""
    given = {"--orchestrator-metrics": arguments.orchestrator_metrics, "--registry-metrics": arguments.registry_metrics}
    if arguments.skip_metrics:
        named = [flag for flag, url in given.items() if url]
        if named:
            raise UsageError(f"--skip-metrics skips the metrics check: drop it or {' and '.join(named)}")
        return None
    missing = [flag for flag, url in given.items() if not url]
    if len(missing) == len(given):
        raise UsageError(f"no metrics to check: {METRICS_USAGE}")
    if missing:
        raise UsageError(f"{missing[0]} is missing: {METRICS_USAGE}")
    for flag, url in given.items():
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UsageError(f"{flag} takes an http(s) URL such as http://127.0.0.1:9464/metrics; got {url!r}")
    return MetricsTargets(arguments.orchestrator_metrics, arguments.registry_metrics)


@dataclass
class SmokeRun:
    """What one run made, so cleanup knows what to undo."""

    agent_id: str
    task_type: str
    nonce: str
    agent: Agent | None = None
    serving: asyncio.Task[None] | None = None
    task: TaskInfo | None = None
    finished: bool = False
    # The agent has a key of its own (--agent-key), perhaps of another tenant than the submitting one.
    separate_agent_key: bool = False
    # The agent's latest warning (e.g. why it keeps retrying the registry), for a step that times out.
    agent_warnings: list[str] = field(default_factory=list)

    @property
    def expected_result(self) -> dict[str, Any]:
        return {"nonce": self.nonce, "agent_id": self.agent_id}


def new_run() -> SmokeRun:
    suffix = secrets.token_hex(4)
    return SmokeRun(agent_id=f"smoke-{suffix}", task_type=f"arbiter-smoke-{suffix}", nonce=secrets.token_hex(8))


async def run_smoke(arguments: argparse.Namespace, connection: Connection) -> int:
    metrics = metrics_targets(arguments)
    agent_key = arguments.agent_key or connection.key
    run = new_run()
    run.separate_agent_key = agent_key != connection.key
    steps = Steps(connection.call_timeout, show=None if arguments.json else show_step)
    with agent_warnings_kept(run.agent_warnings):
        async with connection.client() as client, agent_client(connection, agent_key) as agent_side:
            try:
                await check_deployment(steps, run, connection, client, agent_key, metrics)
            finally:
                await clean_up(steps, run, client, agent_side or client)
    failure = steps.first_failure
    if arguments.json:
        print_json(report(steps, run, connection))
    elif failure is None:
        total = sum(result.milliseconds for result in steps.results)
        print(f"smoke passed: {len(steps.results)} steps in {total:.0f} ms (agent {run.agent_id})")
    if failure is None:
        return 0
    message = f'arbiter: smoke failed at "{failure.name}": {failure.detail}'
    later = [result for result in steps.results if result.outcome == Outcome.FAILED and result is not failure]
    if later:
        message += f'; cleanup failed too at "{later[0].name}": {later[0].detail}'
    print(message, file=sys.stderr)
    return 1


def show_step(result: StepResult) -> None:
    print(step_line(result), flush=True)


@contextlib.asynccontextmanager
async def agent_client(connection: Connection, agent_key: str) -> AsyncIterator[Client | None]:
    """A client with the agent's key when it differs from --key (to deregister the agent), else None."""
    if agent_key == connection.key:
        yield None
        return
    async with Client(
        connection.orchestrator,
        agent_key,
        registry_address=connection.registry,
        timeout=connection.call_timeout,
        **connection.tls_options(),
    ) as client:
        yield client


async def check_deployment(
    steps: Steps,
    run: SmokeRun,
    connection: Connection,
    client: Client,
    agent_key: str,
    metrics: MetricsTargets | None,
) -> None:
    """The checks in order; the first that fails ends them (cleanup follows in the caller)."""
    timeout = connection.call_timeout
    credentials = transport_credentials(**connection.tls_options())
    # The registry first: the orchestrator depends on it.
    services = (
        ("registry", connection.registry, REGISTRY_SERVICES),
        ("orchestrator", connection.orchestrator, ORCHESTRATOR_SERVICES),
    )
    for name, address, service_names in services:
        if not await check_service(steps, name, address, service_names, credentials, timeout):
            return
    before = await metrics_now(metrics, timeout)
    agent = run.agent = throwaway_agent(run, connection, agent_key)
    run.serving = asyncio.create_task(agent.serve())
    if not await steps.run(
        "register agent", lambda: agent_reaches(run, agent.registered.wait()), hint=lambda: last_warning(run)
    ):
        return
    if not await steps.run(
        "open assignment stream", lambda: agent_reaches(run, agent.connected.wait()), hint=lambda: last_warning(run)
    ):
        return
    if not await steps.run("submit task", lambda: submit(run, client, timeout)):
        return
    if not await steps.run("run one task", lambda: run_one_task(run, client, timeout)):
        return
    if not await steps.run("read result", lambda: read_result(run, client)):
        return
    if metrics is None:
        for name in ("orchestrator metrics", "registry metrics"):
            steps.skip(name, "skipped (--skip-metrics)")
        return
    if not await steps.run(
        "orchestrator metrics",
        lambda: check_calls_counted(metrics.orchestrator, before[0], ORCHESTRATOR_CALLS, timeout),
    ):
        return
    await steps.run(
        "registry metrics", lambda: check_calls_counted(metrics.registry, before[1], REGISTRY_CALLS, timeout)
    )


async def check_service(
    steps: Steps,
    name: str,
    address: str,
    service_names: tuple[str, ...],
    credentials: grpc.ChannelCredentials | None,
    timeout: float,
) -> bool:
    """Health, then reflection, of one service; True when both held."""
    channel = open_channel(address, credentials)
    try:
        return await steps.run(
            f"{name} health", lambda: check_health(channel, address, service_names, timeout)
        ) and await steps.run(f"{name} reflection", lambda: check_reflection(channel, address, service_names, timeout))
    finally:
        await channel.close()


async def metrics_now(metrics: MetricsTargets | None, timeout: float) -> tuple[Samples, Samples]:
    """The counters before the smoke's own calls, so the metrics steps see those calls counted."""
    if metrics is None:
        return {}, {}
    orchestrator, registry = await asyncio.gather(
        scrape_quietly(metrics.orchestrator, timeout), scrape_quietly(metrics.registry, timeout)
    )
    return orchestrator, registry


def throwaway_agent(run: SmokeRun, connection: Connection, agent_key: str) -> Agent:
    agent = Agent(
        run.agent_id,
        name="arbiter smoke test",
        model_family="smoke",
        labels={"arbiter-smoke": "true"},
        registry=connection.registry,
        orchestrator=connection.orchestrator,
        api_key=agent_key,
        **connection.tls_options(),
    )

    @agent.handler(run.task_type)
    async def answer(task: Task) -> dict[str, Any]:
        return {"nonce": task.payload.get("nonce"), "agent_id": agent.id}

    return agent


async def agent_reaches(run: SmokeRun, milestone: Awaitable[Any]) -> str:
    """Waits for the agent to reach `milestone` while watching that it has not stopped."""
    assert run.serving is not None
    waiting = asyncio.ensure_future(milestone)
    try:
        await asyncio.wait({waiting, run.serving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
    if not waiting.done() or waiting.cancelled():
        raise_why_the_agent_stopped(run)
    return f"agent {run.agent_id}"


def last_warning(run: SmokeRun) -> str:
    """What the agent last ran into (e.g. why it keeps retrying the registry), for a step that timed out."""
    return f"the agent's last warning: {run.agent_warnings[-1]}" if run.agent_warnings else ""


def raise_why_the_agent_stopped(run: SmokeRun) -> None:
    assert run.serving is not None
    error = run.serving.exception() if not run.serving.cancelled() else None
    if isinstance(error, ArbiterError):
        raise error
    raise CheckFailed(f"STOPPED: the agent stopped: {error or 'without an error'}")


async def submit(run: SmokeRun, client: Client, timeout: float) -> str:
    run.task = await client.submit(
        run.task_type,
        {"nonce": run.nonce},
        max_attempts=1,
        timeout=timeout,
        # Should this run die before it cancels the task, the orchestrator fails it on its own.
        schedule_to_start_timeout=timeout,
    )
    return f"task {run.task.id} ({run.task_type})"


async def run_one_task(run: SmokeRun, client: Client, timeout: float) -> str:
    """The agent takes the task and the orchestrator records it finished."""
    assert run.task is not None and run.serving is not None
    waiting = asyncio.ensure_future(client.wait(run.task.id, timeout=timeout * 0.9))
    try:
        await asyncio.wait({waiting, run.serving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not waiting.done():
            waiting.cancel()
    if not waiting.done() or waiting.cancelled():
        raise_why_the_agent_stopped(run)
    try:
        task = waiting.result()
    except WaitTimeout:
        now = await client.get(run.task.id)
        why = f": {now.pending_reason}" if now.pending_reason else ""
        if now.state == TaskState.PENDING and run.separate_agent_key:
            why += " (are --key and --agent-key keys of one tenant?)"
        raise CheckFailed(
            f"DEADLINE_EXCEEDED: the task is still {now.state.name} after {timeout * 0.9:g} s{why}"
        ) from None
    run.finished = True
    if task.state != TaskState.COMPLETED:
        raise CheckFailed(f"{task.state.name}: the task ended {task.state.name}: {task.error or 'no reason given'}")
    return f"{task.state.name} by {task.assigned_agent_id or '?'}"


async def read_result(run: SmokeRun, client: Client) -> str:
    assert run.task is not None
    task = await client.get(run.task.id)
    if task.state != TaskState.COMPLETED:
        raise CheckFailed(f"{task.state.name}: GetTask says {task.state.name}, not COMPLETED")
    if task.result != run.expected_result:
        raise CheckFailed(f"WRONG_RESULT: the result is {task.result}, not {run.expected_result}")
    if task.assigned_agent_id != run.agent_id:
        raise CheckFailed(f"WRONG_AGENT: agent {task.assigned_agent_id!r} ran it, not {run.agent_id!r}")
    return "COMPLETED with the expected result"


async def clean_up(steps: Steps, run: SmokeRun, client: Client, agent_side: Client) -> None:
    """Cancels the task if it did not finish, stops the agent, and removes it from the registry."""
    if run.task is not None and not run.finished:
        await steps.run("cancel task", lambda: cancel(run, client))
    if run.agent is None or run.serving is None:
        return
    await stop_agent(run.agent, run.serving, steps.timeout)
    if not run.agent.registered.is_set() and refused_for_good(run.serving):
        steps.skip("deregister agent", "skipped (the agent was never registered)")
        return
    await steps.run("deregister agent", lambda: deregister(run, agent_side))


async def cancel(run: SmokeRun, client: Client) -> str:
    assert run.task is not None
    try:
        task = await client.cancel(run.task.id, CLEANUP_REASON)
    except ArbiterError as refused:
        now = await client.get(run.task.id)
        if now.state.is_terminal:
            return f"task already {now.state.name}"
        raise refused from None
    return f"task {task.id} {task.state.name}"


async def stop_agent(agent: Agent, serving: asyncio.Task[None], timeout: float) -> None:
    """Drains the agent (it holds nothing by now), or stops it when draining takes longer than `timeout`."""
    agent.drain()
    await asyncio.wait({serving}, timeout=timeout)
    if not serving.done():
        agent.stop()
        serving.cancel()
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await serving


def refused_for_good(serving: asyncio.Task[None]) -> bool:
    """The agent stopped on a refusal (e.g. its key), so the registry never took it."""
    return serving.done() and not serving.cancelled() and isinstance(serving.exception(), ArbiterError)


async def deregister(run: SmokeRun, agent_side: Client) -> str:
    try:
        await agent_side.deregister(run.agent_id)
    except ArbiterError as refused:
        if refused.code == grpc.StatusCode.NOT_FOUND:
            return f"agent {run.agent_id} was not registered"
        raise
    return f"agent {run.agent_id} removed"


def report(steps: Steps, run: SmokeRun, connection: Connection) -> dict[str, Any]:
    failure = steps.first_failure
    return {
        "passed": failure is None,
        "failed_step": failure.name if failure else None,
        "error": failure.detail if failure else None,
        "orchestrator": connection.orchestrator,
        "registry": connection.registry,
        "agent_id": run.agent_id,
        "task_type": run.task_type,
        "task_id": run.task.id if run.task else None,
        "steps": [step_json(result) for result in steps.results],
    }


def step_json(result: StepResult) -> dict[str, Any]:
    return {
        "name": result.name,
        "outcome": result.outcome.value,
        "milliseconds": round(result.milliseconds, 1),
        "detail": result.detail,
    }


class _KeepMessages(logging.Handler):
    def __init__(self, messages: list[str]) -> None:
        super().__init__(logging.WARNING)
        self._messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self._messages.append(record.getMessage())


def agent_warnings_kept(messages: list[str]) -> contextlib.AbstractContextManager[None]:
    """The agent's warnings go into `messages` (a step that times out quotes the last), not to stderr."""
    return agent_logs_to(_KeepMessages(messages))
