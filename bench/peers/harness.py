"""The method of bench.arbiter_bench, for any task system: the scenarios, their timing and the result dict.

A system under test (a `PeerSystem`) provides its own fresh state, its worker processes, a client that
submits tasks, and when it recorded each task complete. Everything else is here and is the same for every
peer: AGENT_PROCESSES worker processes × AGENT_CONCURRENCY, a no-op handler that records `start` and
`end` through bench.side_channel and then bumps a counter in shared memory (so the driver learns that
the work is done without polling the system), WARMUP_TASKS uncounted tasks before a throughput or
latency measurement, batches of BATCH_SIZE, and the same three scenarios:

- throughput: the tasks submitted in batches as fast as the client can while the workers run; tasks/s
  from the first submit to the last handler end.
- drain: the backlog first, then the workers start; tasks/s from the first worker's serve moment (the
  `serve` event its process records when it is about to take work) to the last handler end.
- latency: open loop at `rate` tasks/s, one submit per task at its scheduled time (sends may overlap);
  p50/p95/p99 from each task's scheduled time to its handler start (the headline p*_ms), and to its
  completion as the system recorded it.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any, Protocol

import psycopg

from bench import side_channel
from bench.arbiter_bench import (
    AGENT_CONCURRENCY,
    AGENT_PROCESSES,
    BATCH_SIZE,
    LATENCY_RATE,
    LATENCY_SUBMIT_TIMEOUT,
    WARMUP_TASKS,
    latency_figures,
    measured,
    send_open_loop,
    stop_agents,
    wait_for_count,
)

# What a worker process target is given: its index, where records and logs go, and the counter.
WorkerTarget = Callable[..., None]


class Submitter(Protocol):
    """A client of the system under test, open for one scenario."""

    async def submit_batch(self, keys: list[str]) -> None:
        """One batch, the fastest way the system's client offers."""

    async def submit(self, key: str) -> None:
        """One task, as a client submits a single task."""


class PeerSystem(Protocol):
    name: str
    scenarios: tuple[str, ...]

    def unavailable_reason(self) -> str | None:
        """Why the system cannot be measured here (its server does not answer), or None."""

    def prepare(self) -> None:
        """Fresh state for one repetition: an empty broker or a new database."""

    def start_workers(self, record_dir: Path, log_dir: Path, completed: Synchronized[int]) -> list[BaseProcess]:
        """AGENT_PROCESSES worker processes × AGENT_CONCURRENCY, started; each records a `serve` event."""

    def submitter(self) -> AbstractAsyncContextManager[Submitter]: ...

    def completion_times_ns(self, record_dir: Path) -> dict[str, int]:
        """After the run: when the system recorded each task complete, by task key."""

    def after_run(self, start_ns: int) -> dict[str, Any]:
        """After the run: figures that explain the result (e.g. states counted in its database)."""

    def details(self) -> dict[str, Any]:
        """How the system was set up and measured, for the result's `extra`."""


# The worker side.


def new_counter() -> Synchronized[int]:
    return multiprocessing.get_context("spawn").Value("q", 0)


def count_completion(completed: Synchronized[int]) -> None:
    with completed.get_lock():
        completed.value += 1


def run_noop(key: str, completed: Synchronized[int]) -> None:
    """The handler's whole work, the same in every system: two records and the counter."""
    side_channel.record("start", key)
    side_channel.record("end", key)
    count_completion(completed)


def start_worker_processes(
    target: WorkerTarget, record_dir: Path, log_dir: Path, completed: Synchronized[int], *arguments: Any
) -> list[BaseProcess]:
    # spawn, not fork: the driver holds connections and event loops that do not survive a fork.
    context = multiprocessing.get_context("spawn")
    processes: list[BaseProcess] = [
        context.Process(
            target=target,
            args=(index, str(record_dir), str(log_dir / f"worker-{index}.log"), completed, *arguments),
            daemon=True,
        )
        for index in range(AGENT_PROCESSES)
    ]
    for process in processes:
        process.start()
    return processes


def begin_worker_process(index: int, record_dir: str, log_path: str) -> None:
    """In a worker process, first: records go to the side channel; its output goes to its own log, so
    that the driver's output stays the results."""
    side_channel.start(record_dir, f"worker-{index}")
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)


def database_figures(url: str, states_query: str, last_completed_query: str, start_ns: int) -> dict[str, Any]:
    """After the run, as a cross-check on the side channel: tasks by state, and the seconds from the
    measurement's start to the last completion the database recorded (epoch seconds from the query)."""
    with psycopg.connect(url) as connection:
        states: dict[str, int] = dict(connection.execute(states_query).fetchall())
        row = connection.execute(last_completed_query).fetchone()
    last = float(row[0]) if row and row[0] is not None else None
    return {
        "database": {
            "states": states,
            "seconds_to_last_completed_in_database": None if last is None else last - start_ns / 1e9,
        }
    }


# The scenarios.


async def submit_batches(submitter: Submitter, prefix: str, count: int) -> None:
    keys = [f"{prefix}{number}" for number in range(count)]
    for begin in range(0, count, BATCH_SIZE):
        await submitter.submit_batch(keys[begin : begin + BATCH_SIZE])


async def warm_up(submitter: Submitter, completed: Synchronized[int]) -> None:
    await submit_batches(submitter, "warm-", WARMUP_TASKS)
    await wait_for_count(completed, WARMUP_TASKS, timeout=60)


async def run_throughput(system: PeerSystem, tasks: int, record_dir: Path, log_dir: Path) -> dict[str, Any]:
    completed = new_counter()
    workers = system.start_workers(record_dir, log_dir, completed)
    try:
        async with system.submitter() as submitter:
            await warm_up(submitter, completed)
            first_submit_ns = time.time_ns()
            await submit_batches(submitter, "", tasks)
            submitted_ns = time.time_ns()
            await wait_for_count(completed, WARMUP_TASKS + tasks)
    finally:
        stop_agents(workers)
    ends = measured(side_channel.merge(record_dir).get("end", {}), tasks)
    return {
        "seconds": (max(ends.values()) - first_submit_ns) / 1e9,
        "extra": {"submit_seconds": (submitted_ns - first_submit_ns) / 1e9, **system.after_run(first_submit_ns)},
    }


async def run_drain(system: PeerSystem, tasks: int, record_dir: Path, log_dir: Path) -> dict[str, Any]:
    async with system.submitter() as submitter:
        backlog_started = time.monotonic()
        await submit_batches(submitter, "", tasks)
        backlog_seconds = time.monotonic() - backlog_started
    completed = new_counter()
    launched_ns = time.time_ns()
    workers = system.start_workers(record_dir, log_dir, completed)
    try:
        await wait_for_count(completed, tasks)
    finally:
        stop_agents(workers)
    events = side_channel.merge(record_dir)
    serving_ns = min(events["serve"].values())
    last_end_ns = max(measured(events.get("end", {}), tasks).values())
    return {
        "seconds": (last_end_ns - serving_ns) / 1e9,
        "extra": {
            "backlog_submit_seconds": backlog_seconds,
            "seconds_from_process_launch": (last_end_ns - launched_ns) / 1e9,
            "first_start_after_serve_ms": (min(events["start"].values()) - serving_ns) / 1e6,
            **system.after_run(serving_ns),
        },
    }


async def run_latency(
    system: PeerSystem, tasks: int, record_dir: Path, log_dir: Path, rate: float = LATENCY_RATE
) -> dict[str, Any]:
    completed = new_counter()
    workers = system.start_workers(record_dir, log_dir, completed)
    failed: dict[str, str] = {}
    try:
        async with system.submitter() as submitter:
            await warm_up(submitter, completed)

            async def submit(key: str) -> None:
                try:
                    await asyncio.wait_for(submitter.submit(key), LATENCY_SUBMIT_TIMEOUT)
                except Exception as error:  # a refused submit is counted and shown, not fatal
                    failed[key] = f"{type(error).__name__}: {error}"

            scheduled_ns, late_sends = await send_open_loop(tasks, rate, submit)
            await wait_for_count(completed, WARMUP_TASKS + tasks - len(failed))
    finally:
        stop_agents(workers)
    return latency_figures(scheduled_ns, failed, late_sends, rate, record_dir, system.completion_times_ns(record_dir))


SCENARIOS = {"throughput": run_throughput, "drain": run_drain, "latency": run_latency}


@contextlib.contextmanager
def scratch_directories(system: str, scenario: str) -> Iterator[tuple[Path, Path]]:
    """A records directory and a logs directory, removed afterwards; the logs' tails reach stderr when
    the repetition fails."""
    with tempfile.TemporaryDirectory(prefix=f"{system}-bench-{scenario}-") as scratch:
        record_dir, log_dir = Path(scratch) / "records", Path(scratch) / "logs"
        record_dir.mkdir()
        log_dir.mkdir()
        try:
            yield record_dir, log_dir
        except BaseException:
            for log in sorted(log_dir.glob("*.log")):
                sys.stderr.write(f"--- {system} {log.name}\n{log.read_text(errors='replace')[-4000:]}\n")
            raise


def run_repetition(system: PeerSystem, scenario: str, repetition: int, tasks: int, rate: float) -> dict[str, Any]:
    """One repetition of one scenario on fresh state, as a result dict shaped like
    bench.arbiter_bench.run_repetition's."""
    if scenario not in system.scenarios:
        raise ValueError(f"{system.name} does not measure {scenario}; it measures {', '.join(system.scenarios)}")
    with scratch_directories(system.name, scenario) as (record_dir, log_dir):
        system.prepare()
        if scenario == "latency":
            figures = asyncio.run(run_latency(system, tasks, record_dir, log_dir, rate))
        else:
            figures = asyncio.run(SCENARIOS[scenario](system, tasks, record_dir, log_dir))
    seconds = figures.pop("seconds")
    return {
        "system": system.name,
        "scenario": scenario,
        "repetition": repetition,
        "tasks": tasks,
        "seconds": round(seconds, 4),
        "tasks_per_second": round(tasks / seconds, 1),
        **{name: round(value, 3) for name, value in figures.items() if name.endswith("_ms")},
        "extra": {
            "cpus": os.cpu_count(),
            "worker_processes": AGENT_PROCESSES,
            "concurrency_per_process": AGENT_CONCURRENCY,
            "batch_size": BATCH_SIZE,
            "warmup_tasks": WARMUP_TASKS if scenario != "drain" else 0,
            **system.details(),
            **figures["extra"],
        },
    }


def skipped(system: str, reason: str) -> dict[str, Any]:
    """How a system that cannot be measured here is reported: never dropped."""
    return {"system": system, "skipped": reason}
