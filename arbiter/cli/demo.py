"""`arbiter demo`: a batch of tasks through SDK agents running in this process, with a live progress
bar and a summary of throughput and latency."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.progress import Task as ProgressTask
from rich.text import Text

from arbiter.agent import Agent, Task
from arbiter.cli.options import Connection, Subcommands, calls_services, positive_int, service_options
from arbiter.cli.output import agent_logs_to, print_json, print_table
from arbiter.client import Client
from arbiter.errors import ArbiterError
from arbiter.models import TaskInfo, TaskSpec, TaskState

# Not a service setting: `make run` writes it to dev-keys.env beside ARBITER_API_KEY.
AGENT_KEY_VARIABLE = "ARBITER_AGENT_KEY"
# How often the tasks' states are read; never more than a third of the time, so big batches poll less often.
POLL_SECONDS = 0.25
# How many GetTask calls run at once for tasks the listing did not show.
MAX_CONCURRENT_GETS = 20


@dataclass(frozen=True)
class DemoSummary:
    tasks: int
    completed: int
    # FAILED or CANCELLED.
    failed: int
    # From the batch's submission to the last task's end, as the orchestrator recorded them.
    wall_seconds: float
    throughput_per_second: float
    # Submission to completion of each completed task; None when none completed.
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None


def add_commands(commands: Subcommands) -> None:
    demo = commands.add_parser(
        "demo",
        parents=[service_options()],
        help="a batch of tasks through in-process agents: throughput, latency",
        description="Start --agents SDK agents in this process (demo-agent-1..N, each running up to --concurrency "
        "tasks that sleep 10-100 ms), submit --tasks tasks of --task-type in one batch, show their progress, then "
        "a summary: wall time, throughput, and p50/p95/p99 latency from submission to completion as the "
        "orchestrator recorded them. The agents drain before the command exits. Exit code 0 when every task "
        "completed. Tasks an interrupted demo leaves unfinished stay queued for the next demo's agents.",
    )
    demo.add_argument("--agents", type=positive_int, default=3, metavar="N", help="agents to start (default: 3)")
    demo.add_argument(
        "--concurrency", type=positive_int, default=4, metavar="N", help="tasks each agent runs at once (default: 4)"
    )
    demo.add_argument("--tasks", type=positive_int, default=200, metavar="N", help="tasks to submit (default: 200)")
    demo.add_argument("--task-type", default="demo", metavar="T", help="their task type (default: demo)")
    demo.add_argument(
        "--agent-key", metavar="KEY", help=f"the agents' API key (default: {AGENT_KEY_VARIABLE}, else the --key one)"
    )
    demo.set_defaults(run=calls_services(run_demo))


def demo_agent(number: int, task_type: str, concurrency: int, connection: Connection, agent_key: str) -> Agent:
    agent = Agent(
        f"demo-agent-{number}",
        model_family="demo",
        max_concurrent_tasks=concurrency,
        registry=connection.registry,
        orchestrator=connection.orchestrator,
        api_key=agent_key,
        **connection.tls_options(),
    )

    @agent.handler(task_type)
    async def pretend_to_work(task: Task) -> dict[str, Any]:
        seconds = random.uniform(0.010, 0.100)
        await asyncio.sleep(seconds / 2)
        await task.report_progress(0.5, "halfway")
        await asyncio.sleep(seconds / 2)
        return {"agent": agent.id, "slept_ms": round(seconds * 1000)}

    return agent


async def run_demo(arguments: argparse.Namespace, connection: Connection) -> int:
    agent_key = arguments.agent_key or os.environ.get(AGENT_KEY_VARIABLE) or connection.key
    agents = [
        demo_agent(number, arguments.task_type, arguments.concurrency, connection, agent_key)
        for number in range(1, arguments.agents + 1)
    ]
    stderr = Console(stderr=True)
    with agent_warnings_on(stderr):
        async with connection.client() as client:
            # The agents retry an unreachable registry for ever; this says at once what is wrong.
            await client.list_agents(limit=1)
            finished = await run_batch(client, agents, arguments, stderr)
    summary = summarize(finished)
    if arguments.json:
        print_json(summary)
    else:
        print_summary(summary)
    return 0 if summary.completed == summary.tasks else 1


async def run_batch(
    client: Client, agents: list[Agent], arguments: argparse.Namespace, stderr: Console
) -> list[TaskInfo]:
    """Serves the agents while the batch is submitted and followed to its end; drains them after."""
    serving = {agent.id: asyncio.create_task(agent.serve()) for agent in agents}
    try:
        with progress_bar(arguments.tasks, stderr, shown=not arguments.json) as show_finished:
            submitted = await client.submit_many(
                TaskSpec(arguments.task_type, {"index": index}) for index in range(arguments.tasks)
            )
            return await follow_until_finished(client, arguments.task_type, submitted, serving, show_finished)
    finally:
        for agent in agents:
            agent.drain()
        await asyncio.gather(*serving.values(), return_exceptions=True)


async def follow_until_finished(
    client: Client,
    task_type: str,
    submitted: list[TaskInfo],
    serving: dict[str, asyncio.Task[None]],
    show_finished: Callable[[int], None],
) -> list[TaskInfo]:
    """Reads the tasks' states until every one is finished; returns them as they ended."""
    unfinished = {task.id for task in submitted}
    finished: dict[str, TaskInfo] = {}
    while True:
        raise_if_an_agent_stopped(serving)
        polled_at = time.monotonic()
        for task in await current_tasks(client, task_type, unfinished, len(submitted)):
            if task.state.is_terminal:
                unfinished.discard(task.id)
                finished[task.id] = task
        show_finished(len(finished))
        if not unfinished:
            return list(finished.values())
        await asyncio.sleep(max(POLL_SECONDS, 2 * (time.monotonic() - polled_at)))


async def current_tasks(client: Client, task_type: str, wanted: set[str], batch_size: int) -> list[TaskInfo]:
    """The wanted tasks as they are now. The batch is the newest `batch_size` tasks of its type, so one
    listing shows them all, unless someone submitted more of that type since: those are asked one by one."""
    listed = [task for task in await client.list_tasks(task_type=task_type, limit=batch_size) if task.id in wanted]
    missing = wanted - {task.id for task in listed}
    calls = asyncio.Semaphore(MAX_CONCURRENT_GETS)

    async def get(task_id: str) -> TaskInfo:
        async with calls:
            return await client.get(task_id)

    return listed + list(await asyncio.gather(*(get(task_id) for task_id in missing)))


def raise_if_an_agent_stopped(serving: dict[str, asyncio.Task[None]]) -> None:
    """An agent stops early only when the services refuse it for good (e.g. its key): say which and why."""
    for agent_id, task in serving.items():
        if not task.done():
            continue
        error = task.exception()
        if isinstance(error, ArbiterError):
            raise ArbiterError(error.code, f"agent {agent_id} stopped: {error.message} (its key: --agent-key)")
        if error is not None:
            raise error
        raise RuntimeError(f"agent {agent_id} stopped before the tasks were finished")


class OneLineFormatter(logging.Formatter):
    def formatException(self, exc_info: Any) -> str:
        return ""


def agent_warnings_on(console: Console) -> AbstractContextManager[None]:
    """The agents' warnings, one line each without tracebacks, printed above the progress bar."""
    handler = RichHandler(console=console, level=logging.WARNING, show_time=False, show_path=False)
    handler.setFormatter(OneLineFormatter("%(message)s"))
    return agent_logs_to(handler)


class RateColumn(ProgressColumn):
    def render(self, task: ProgressTask) -> Text:
        return Text(f"{task.speed:.0f} tasks/s" if task.speed else "- tasks/s")


@contextmanager
def progress_bar(total: int, console: Console, *, shown: bool) -> Iterator[Callable[[int], None]]:
    """Yields a function taking how many tasks are finished; draws a bar on stderr when `shown`."""
    if not shown:
        yield lambda finished: None
        return
    columns = (TextColumn("tasks"), BarColumn(), MofNCompleteColumn(), RateColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("tasks", total=total)
        yield lambda finished: progress.update(bar, completed=finished)


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest rank: the smallest value with at least `fraction` of all values at or below it."""
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def summarize(tasks: list[TaskInfo]) -> DemoSummary:
    completed = [task for task in tasks if task.state == TaskState.COMPLETED]
    latencies = sorted(
        (task.updated_at - task.created_at).total_seconds() * 1000
        for task in completed
        if task.created_at and task.updated_at
    )
    created = [task.created_at for task in tasks if task.created_at]
    ended = [task.updated_at for task in tasks if task.updated_at]
    wall_seconds = (max(ended) - min(created)).total_seconds() if created and ended else 0.0

    def latency(fraction: float) -> float | None:
        return round(percentile(latencies, fraction), 1) if latencies else None

    return DemoSummary(
        tasks=len(tasks),
        completed=len(completed),
        failed=len(tasks) - len(completed),
        wall_seconds=round(wall_seconds, 3),
        throughput_per_second=round(len(completed) / wall_seconds, 1) if wall_seconds > 0 else 0.0,
        latency_p50_ms=latency(0.50),
        latency_p95_ms=latency(0.95),
        latency_p99_ms=latency(0.99),
    )


def print_summary(summary: DemoSummary) -> None:
    def milliseconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f} ms"

    print_table(
        ["TASKS", "COMPLETED", "FAILED", "WALL TIME", "THROUGHPUT", "P50", "P95", "P99"],
        [
            [
                str(summary.tasks),
                str(summary.completed),
                str(summary.failed),
                f"{summary.wall_seconds:.2f} s",
                f"{summary.throughput_per_second:.1f} tasks/s",
                milliseconds(summary.latency_p50_ms),
                milliseconds(summary.latency_p95_ms),
                milliseconds(summary.latency_p99_ms),
            ]
        ],
        empty="no tasks",
    )
