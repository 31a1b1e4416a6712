"""Arbiter end to end on this machine (issue 7, points 1–2): throughput, drain and open-loop latency.

Each repetition gets a fresh database (bench_arbiter, dropped and made again), fresh keys, a fresh
registry and orchestrator (subprocesses, production settings but logging at WARNING and no rate
limits) and AGENT_PROCESSES agent processes × AGENT_CONCURRENCY with a no-op handler. Timestamps go
through bench.side_channel: the agents record handler start and end in memory and write one file each
at exit; the driver keeps each scheduled send time in memory. The driver learns that the work is done from a
counter in shared memory, so nothing polls the system under test while it runs.

- throughput: TASKS no-op tasks submitted in batches of BATCH_SIZE (SubmitTasks) as fast as the client
  can while the agents run; completed tasks/s from the first submit to the last handler end.
- drain: the backlog of TASKS first, then the agents start; tasks/s from the agents' start (the earliest
  moment an agent process calls serve(), so interpreter start-up is left out) to the last handler end.
- latency: open-loop, RATE tasks/s (one SubmitTask each at its scheduled time, sends may overlap) for
  TASKS / RATE seconds; p50/p95/p99 from each task's scheduled time to its handler start (the headline
  p*_ms fields), and to its completion as the orchestrator recorded it (tasks.updated_at, read after
  the run). A system that cannot keep up shows it as latency growing over the run, not as a lower rate.

    python -m bench.arbiter_bench --scenario throughput|drain|latency|all [--tasks N] [--repetitions R]
        [--rate T] [--out F]

One JSON object per repetition on stdout (and appended to --out), then a summary line per scenario
(median [min–max]) on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from bench import side_channel

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVER_URL = "postgresql://postgres@127.0.0.1:5432/test"
# Overridable, so that two runs (say a profile beside a test of the harness) need not share them.
DATABASE = os.environ.get("ARBITER_BENCH_DATABASE", "bench_arbiter")
DATABASE_URL = f"postgresql://postgres@127.0.0.1:5432/{DATABASE}"
REGISTRY_ADDRESS = os.environ.get("ARBITER_BENCH_REGISTRY_ADDR", "127.0.0.1:50161")
ORCHESTRATOR_ADDRESS = os.environ.get("ARBITER_BENCH_ORCHESTRATOR_ADDR", "127.0.0.1:50162")
TASK_TYPE = "bench-noop"

AGENT_PROCESSES = 2
AGENT_CONCURRENCY = 4
# Tasks each worker process holds at once, running or queued: Arbiter agents prefetch this less
# AGENT_CONCURRENCY, Celery workers reserve it (worker_prefetch_multiplier = it ÷ AGENT_CONCURRENCY).
# 16 is what Celery's default prefetch (4 × concurrency 4) reserves; `make bench BENCH_ARGS=
# "--held-per-worker N"` sets it for both through the environment, which the worker processes inherit.
DEFAULT_HELD_PER_WORKER = 16
HELD_PER_WORKER_VARIABLE = "ARBITER_BENCH_HELD_PER_WORKER"
BATCH_SIZE = 500


def held_per_worker() -> int:
    held = int(os.environ.get(HELD_PER_WORKER_VARIABLE, DEFAULT_HELD_PER_WORKER))
    if held < AGENT_CONCURRENCY or held % AGENT_CONCURRENCY:
        raise ValueError(f"held per worker must be a multiple of {AGENT_CONCURRENCY}; got {held}")
    return held


DEFAULT_TASKS = {"throughput": 20_000, "drain": 20_000, "latency": 4_000}
LATENCY_RATE = 200.0
LATENCY_SUBMIT_TIMEOUT = 120.0
# Tasks run before a throughput or latency measurement, so that connections, prepared statements and
# the agents' streams are warm; they are not counted.
WARMUP_TASKS = 50
RUN_TIMEOUT_SECONDS = 600.0


@dataclass
class Stack:
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    agent_key: str = ""
    submitter_key: str = ""
    log_dir: Path = Path()


# The database and the services, fresh for each repetition.


def recreate_database() -> None:
    with psycopg.connect(SERVER_URL, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        connection.execute(f"CREATE DATABASE {DATABASE}")


async def create_keys(database_url: str, pepper: str, specs: dict[str, Any]) -> dict[str, str]:
    """Migrations, then one key per entry of `specs` (name → shared.api_keys.KeySpec); their secrets by name."""
    from shared.api_keys import KeyHasher, create_key
    from shared.database import migrate, open_pool

    await migrate(database_url)
    pool = await open_pool(database_url, 1, 1, name="bench")
    try:
        hasher = KeyHasher(pepper)
        return {name: (await create_key(pool, hasher, spec)).secret for name, spec in specs.items()}
    finally:
        await pool.close()


async def prepare_database(pepper: str) -> dict[str, str]:
    """Migrations and one key per role the benchmark uses."""
    from shared.api_keys import KeySpec, Role

    specs = {
        "service": KeySpec(Role.SERVICE, "*", "bench orchestrator"),
        "submitter": KeySpec(Role.SUBMITTER, "default", "bench submitter"),
        "agent": KeySpec(Role.AGENT, "default", "bench agents"),
    }
    return await create_keys(DATABASE_URL, pepper, specs)


def start_services(
    log_dir: Path, environment: dict[str, str], per_service: dict[str, dict[str, str]]
) -> list[subprocess.Popen[bytes]]:
    """The registry, then the orchestrator, as subprocesses logging into `log_dir`, each returning once it
    serves. `per_service` maps each module to its own variables, ARBITER_<NAME>_ADDR among them."""
    from shared.devstack import stop_all, wait_until_serving

    processes: list[subprocess.Popen[bytes]] = []
    try:
        for module in ("services.registry", "services.orchestrator"):
            own = per_service[module]
            with (log_dir / f"{module}.log").open("ab") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", module],
                    cwd=REPO_ROOT,
                    env={**environment, **own},
                    stdout=log,
                    stderr=log,
                )
            processes.append(process)
            wait_until_serving(own[f"ARBITER_{module.rsplit('.', 1)[1].upper()}_ADDR"], process)
    except BaseException:
        stop_all(processes)
        raise
    return processes


def start_stack(log_dir: Path) -> Stack:
    recreate_database()
    pepper = secrets.token_urlsafe(48)
    keys = asyncio.run(prepare_database(pepper))
    environment = {
        **os.environ,
        "ARBITER_DATABASE_URL": DATABASE_URL,
        "ARBITER_REGISTRY_ADDR": REGISTRY_ADDRESS,
        "ARBITER_ORCHESTRATOR_ADDR": ORCHESTRATOR_ADDRESS,
        "ARBITER_SERVICE_KEY": keys["service"],
        "ARBITER_API_KEY_PEPPER": pepper,
        "ARBITER_ALLOW_INSECURE": "true",
        "ARBITER_RATE_LIMITS": "agent=unlimited,submitter=unlimited,service=unlimited,admin=unlimited",
        "ARBITER_LOG_LEVEL": "WARNING",
    }
    processes = start_services(
        log_dir,
        environment,
        {
            "services.registry": {"ARBITER_REGISTRY_ADDR": REGISTRY_ADDRESS},
            "services.orchestrator": {"ARBITER_ORCHESTRATOR_ADDR": ORCHESTRATOR_ADDRESS},
        },
    )
    return Stack(processes=processes, agent_key=keys["agent"], submitter_key=keys["submitter"], log_dir=log_dir)


def stop_stack(stack: Stack) -> None:
    """The orchestrator before the registry it calls."""
    for process in reversed(stack.processes):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# Where the CPU goes: read from /proc (no call to the system under test), per process kind.


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backends_of(database: str) -> list[int]:
    """The PostgreSQL server processes serving this database (the services' pools and listeners)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if command.startswith("postgres:") and f" {database} " in command:
                pids.append(int(entry.name))
    return pids


def cpu_seconds(stack: Stack) -> dict[str, float]:
    registry, orchestrator = stack.processes
    return {
        "registry": process_cpu_seconds(registry.pid),
        "orchestrator": process_cpu_seconds(orchestrator.pid),
        "postgres": sum(process_cpu_seconds(pid) for pid in backends_of(DATABASE)),
    }


def cpu_ms_per_task(
    before: dict[str, float], after: dict[str, float], record_dir: Path, tasks: int
) -> dict[str, float]:
    """CPU per task over the measured window, per process kind; the agents' from serve() to exit (their
    own process_time, recorded through the side channel), warm-up and idle included."""
    used = {kind: after[kind] - before[kind] for kind in after}
    events = side_channel.merge(record_dir)
    served, exited = events.get("cpu_at_serve", {}), events.get("cpu_at_exit", {})
    used["agents"] = sum(exited[index] - served[index] for index in exited if index in served) / 1e9
    return {kind: round(seconds / tasks * 1000, 3) for kind, seconds in used.items()}


def database_figures() -> dict[str, Any]:
    """After the run: task states and the orchestrator's own last completion time, as a cross-check on
    the side channel (updated_at is set when a task completes)."""
    with psycopg.connect(DATABASE_URL) as connection:
        states: dict[str, int] = dict(connection.execute("SELECT state, count(*) FROM tasks GROUP BY state").fetchall())
        row = connection.execute(
            "SELECT extract(epoch FROM max(updated_at)) FROM tasks WHERE state = 'completed'"
        ).fetchone()
    return {"states": states, "last_completed_epoch": float(row[0]) if row and row[0] is not None else None}


def completion_times_ns() -> dict[str, int]:
    """After the run: when the orchestrator recorded each task COMPLETED (its updated_at), by task key.
    Read once at the end, so it does not load the run; same machine, so the clocks agree."""
    with psycopg.connect(DATABASE_URL) as connection:
        rows = connection.execute(
            "SELECT payload->>'k', (extract(epoch FROM updated_at) * 1e6)::bigint FROM tasks WHERE state = 'completed'"
        ).fetchall()
    return {key: microseconds * 1000 for key, microseconds in rows}


# The agent processes.


def agent_process(index: int, agent_key: str, record_dir: str, completed: Synchronized[int]) -> None:
    """One agent process: a no-op handler recording its start and end; SIGTERM drains and exits."""
    from arbiter import Agent, Task

    side_channel.start(record_dir, f"agent-{index}")
    agent = Agent(
        f"bench-agent-{index}",
        registry=REGISTRY_ADDRESS,
        orchestrator=ORCHESTRATOR_ADDRESS,
        api_key=agent_key,
        max_concurrent_tasks=AGENT_CONCURRENCY,
        prefetch_tasks=held_per_worker() - AGENT_CONCURRENCY,
    )

    @agent.handler(TASK_TYPE)
    async def noop(task: Task) -> dict[str, Any]:
        key = task.payload["k"]
        side_channel.record("start", key)
        side_channel.record("end", key)
        with completed.get_lock():
            completed.value += 1
        return {}

    async def serve() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, agent.drain)
        side_channel.record("serve", str(index))
        side_channel.record("cpu_at_serve", str(index), time.process_time_ns())
        await agent.serve()

    asyncio.run(serve())
    side_channel.record("cpu_at_exit", str(index), time.process_time_ns())
    side_channel.flush()


def start_agents(agent_key: str, record_dir: Path, completed: Synchronized[int]) -> list[BaseProcess]:
    # spawn, not fork: the driver holds gRPC channels, which do not survive a fork.
    context = multiprocessing.get_context("spawn")
    agents: list[BaseProcess] = [
        context.Process(target=agent_process, args=(index, agent_key, str(record_dir), completed), daemon=True)
        for index in range(AGENT_PROCESSES)
    ]
    for process in agents:
        process.start()
    return agents


def stop_agents(agents: Sequence[BaseProcess]) -> None:
    for process in agents:
        if process.is_alive():
            os.kill(process.pid, signal.SIGTERM)  # type: ignore[arg-type]
    for process in agents:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
            process.join()


async def wait_for_count(completed: Synchronized[int], target: int, timeout: float = RUN_TIMEOUT_SECONDS) -> None:
    """Reads shared memory every 5 ms: costs the system under test nothing."""
    deadline = time.monotonic() + timeout
    while completed.value < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {completed.value} of {target} tasks completed within {timeout:.0f} s")
        await asyncio.sleep(0.005)


# The scenarios.


def specs(prefix: str, count: int) -> list[Any]:
    from arbiter import TaskSpec

    return [TaskSpec(TASK_TYPE, {"k": f"{prefix}{number}"}) for number in range(count)]


async def submit_batches(client: Any, prefix: str, count: int) -> None:
    batch = specs(prefix, count)
    for begin in range(0, count, BATCH_SIZE):
        await client.submit_many(batch[begin : begin + BATCH_SIZE])


async def warm_up(client: Any, completed: Synchronized[int]) -> None:
    await submit_batches(client, "warm-", WARMUP_TASKS)
    await wait_for_count(completed, WARMUP_TASKS, timeout=60)


async def run_throughput(stack: Stack, tasks: int, record_dir: Path) -> dict[str, Any]:
    from arbiter import Client

    completed = multiprocessing.get_context("spawn").Value("q", 0)
    agents = start_agents(stack.agent_key, record_dir, completed)
    try:
        async with Client(ORCHESTRATOR_ADDRESS, stack.submitter_key, registry_address=REGISTRY_ADDRESS) as client:
            await warm_up(client, completed)
            cpu_before = cpu_seconds(stack)
            first_submit_ns = time.time_ns()
            await submit_batches(client, "", tasks)
            submitted_ns = time.time_ns()
            await wait_for_count(completed, WARMUP_TASKS + tasks)
            cpu_after = cpu_seconds(stack)
    finally:
        stop_agents(agents)
    ends = measured(side_channel.merge(record_dir).get("end", {}), tasks)
    last_end_ns = max(ends.values())
    return {
        "seconds": (last_end_ns - first_submit_ns) / 1e9,
        "extra": {
            "submit_seconds": (submitted_ns - first_submit_ns) / 1e9,
            "database": with_database_seconds(first_submit_ns),
            "cpu_ms_per_task": cpu_ms_per_task(cpu_before, cpu_after, record_dir, tasks),
        },
    }


async def run_drain(stack: Stack, tasks: int, record_dir: Path) -> dict[str, Any]:
    from arbiter import Client

    async with Client(ORCHESTRATOR_ADDRESS, stack.submitter_key, registry_address=REGISTRY_ADDRESS) as client:
        backlog_started = time.monotonic()
        await submit_batches(client, "", tasks)
        backlog_seconds = time.monotonic() - backlog_started
    completed = multiprocessing.get_context("spawn").Value("q", 0)
    cpu_before = cpu_seconds(stack)
    launched_ns = time.time_ns()
    agents = start_agents(stack.agent_key, record_dir, completed)
    try:
        await wait_for_count(completed, tasks)
        cpu_after = cpu_seconds(stack)
    finally:
        stop_agents(agents)
    events = side_channel.merge(record_dir)
    serving_ns = min(events["serve"].values())
    last_end_ns = max(measured(events.get("end", {}), tasks).values())
    return {
        "seconds": (last_end_ns - serving_ns) / 1e9,
        "extra": {
            "backlog_submit_seconds": backlog_seconds,
            "seconds_from_process_launch": (last_end_ns - launched_ns) / 1e9,
            "database": with_database_seconds(serving_ns),
            "cpu_ms_per_task": cpu_ms_per_task(cpu_before, cpu_after, record_dir, tasks),
        },
    }


async def run_latency(stack: Stack, tasks: int, record_dir: Path, rate: float = LATENCY_RATE) -> dict[str, Any]:
    from arbiter import ArbiterError, Client

    completed = multiprocessing.get_context("spawn").Value("q", 0)
    agents = start_agents(stack.agent_key, record_dir, completed)
    failed: dict[str, str] = {}
    try:
        # A long deadline: when the system falls behind the schedule, its queue shows up as latency
        # rather than as refused calls.
        async with Client(
            ORCHESTRATOR_ADDRESS, stack.submitter_key, registry_address=REGISTRY_ADDRESS, timeout=LATENCY_SUBMIT_TIMEOUT
        ) as client:
            await warm_up(client, completed)
            cpu_before = cpu_seconds(stack)

            async def submit(key: str) -> None:
                try:
                    await client.submit(TASK_TYPE, {"k": key})
                except ArbiterError as error:
                    failed[key] = str(error)

            scheduled_ns, late_sends = await send_open_loop(tasks, rate, submit)
            # A refused submit may still have stored its task, so wait for those that surely were.
            await wait_for_count(completed, WARMUP_TASKS + tasks - len(failed))
            cpu_after = cpu_seconds(stack)
    finally:
        stop_agents(agents)
    figures = latency_figures(scheduled_ns, failed, late_sends, rate, record_dir, completion_times_ns())
    figures["extra"]["cpu_ms_per_task"] = cpu_ms_per_task(cpu_before, cpu_after, record_dir, tasks)
    return figures


async def send_open_loop(
    tasks: int, rate: float, submit: Callable[[str], Coroutine[Any, Any, None]]
) -> tuple[dict[str, int], int]:
    """Sends tasks "0", "1", … at `rate` per second on a fixed schedule, whether or not earlier sends
    returned (open loop: no coordinated omission); waits for every send. Returns each task's scheduled
    time (wall-clock ns) and how many sends left over 1 ms late."""
    loop = asyncio.get_running_loop()
    scheduled_ns: dict[str, int] = {}
    late_sends = 0
    sends: set[asyncio.Task[None]] = set()
    origin_ns, origin = time.time_ns() + 50_000_000, loop.time() + 0.05
    for number in range(tasks):
        offset = number / rate
        delay = origin + offset - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.001:
            late_sends += 1
        key = str(number)
        # Latency counts from the scheduled time, so a late send is charged to the system.
        scheduled_ns[key] = origin_ns + int(offset * 1e9)
        send = asyncio.create_task(submit(key))
        sends.add(send)
        send.add_done_callback(sends.discard)
    await asyncio.gather(*list(sends))
    return scheduled_ns, late_sends


def latency_figures(
    scheduled_ns: dict[str, int],
    failed: dict[str, str],
    late_sends: int,
    rate: float,
    record_dir: Path,
    completion_times: dict[str, int],
) -> dict[str, Any]:
    """Percentiles from each task's scheduled time to its handler's start (side channel) and to its
    completion as the system recorded it; refused submits are left out and counted."""
    for key in failed:
        scheduled_ns.pop(key)
    starts = measured(side_channel.merge(record_dir)["start"], scheduled_ns)
    completions = measured(completion_times, scheduled_ns)
    to_start = sorted((starts[key] - at) / 1e6 for key, at in scheduled_ns.items())
    to_end = sorted((completions[key] - at) / 1e6 for key, at in scheduled_ns.items())
    return {
        "seconds": (max(completions.values()) - min(scheduled_ns.values())) / 1e9,
        **percentiles(to_start),
        "extra": {
            "rate": rate,
            "sends_late_by_over_1ms": late_sends,
            "failed_submits": len(failed),
            "failed_submit_example": next(iter(failed.values()), ""),
            "schedule_to_start_ms": {**percentiles(to_start), "max_ms": to_start[-1]},
            "submit_to_completion_ms": {**percentiles(to_end), "max_ms": to_end[-1]},
        },
    }


def measured(by_key: dict[str, int], expected: int | dict[str, int]) -> dict[str, int]:
    """The measured tasks' records: warm-up tasks left out, or only the `expected` keys; every one must
    be there."""
    if isinstance(expected, dict):
        selected = {key: by_key[key] for key in expected if key in by_key}
        wanted = len(expected)
    else:
        selected = {key: at for key, at in by_key.items() if not key.startswith("warm-")}
        wanted = expected
    if len(selected) != wanted:
        raise RuntimeError(f"the records hold {len(selected)} of {wanted} tasks")
    return selected


def with_database_seconds(start_ns: int) -> dict[str, Any]:
    figures = database_figures()
    last = figures.pop("last_completed_epoch")
    figures["seconds_to_last_completed_in_database"] = None if last is None else last - start_ns / 1e9
    return figures


def percentiles(sorted_values: list[float]) -> dict[str, float]:
    def at(fraction: float) -> float:
        return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]

    return {"p50_ms": at(0.50), "p95_ms": at(0.95), "p99_ms": at(0.99)}


SCENARIOS: dict[str, Callable[[Stack, int, Path], Any]] = {
    "throughput": run_throughput,
    "drain": run_drain,
    "latency": run_latency,
}


Figures = TypeVar("Figures")


def measure_on_fresh_stack(scratch_dir: Path, measure: Callable[[Stack], Coroutine[Any, Any, Figures]]) -> Figures:
    """Starts both services, runs `measure` against them and stops them; when it fails, the end of each
    service's log goes to stderr first."""
    stack = start_stack(scratch_dir)
    try:
        figures = asyncio.run(measure(stack))
    except BaseException:
        stop_stack(stack)
        for log in sorted(scratch_dir.glob("*.log")):
            sys.stderr.write(f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}\n")
        raise
    stop_stack(stack)
    return figures


def run_repetition(scenario: str, repetition: int, tasks: int, rate: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"arbiter-bench-{scenario}-") as scratch:
        scratch_dir = Path(scratch)
        record_dir = scratch_dir / "records"
        record_dir.mkdir()
        run = partial(run_latency, rate=rate) if scenario == "latency" else SCENARIOS[scenario]
        figures = measure_on_fresh_stack(scratch_dir, lambda stack: run(stack, tasks, record_dir))
    seconds = figures.pop("seconds")
    return {
        "system": "arbiter",
        "scenario": scenario,
        "repetition": repetition,
        "tasks": tasks,
        "seconds": round(seconds, 4),
        "tasks_per_second": round(tasks / seconds, 1),
        **{name: round(value, 3) for name, value in figures.items() if name.endswith("_ms")},
        "extra": {"cpus": os.cpu_count(), **figures["extra"]},
    }


def summary(results: list[dict[str, Any]]) -> str:
    def spread(name: str) -> str:
        values = [result[name] for result in results]
        return f"{name} {statistics.median(values):g} [{min(values):g}–{max(values):g}]"

    names = ["tasks_per_second"] + [name for name in ("p50_ms", "p95_ms", "p99_ms") if name in results[0]]
    return f"arbiter {results[0]['scenario']}: " + ", ".join(spread(name) for name in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--tasks", type=int, help="tasks per repetition (default: 20,000; latency 4,000 = 20 s)")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--rate", type=float, default=LATENCY_RATE, help="latency: tasks per second offered")
    parser.add_argument("--out", type=Path, help="also append each result line to this file")
    arguments = parser.parse_args()
    scenarios = list(SCENARIOS) if arguments.scenario == "all" else [arguments.scenario]
    for scenario in scenarios:
        tasks = arguments.tasks or DEFAULT_TASKS[scenario]
        results = []
        for repetition in range(1, arguments.repetitions + 1):
            result = run_repetition(scenario, repetition, tasks, arguments.rate)
            results.append(result)
            line = json.dumps(result)
            print(line, flush=True)
            if arguments.out:
                with arguments.out.open("a") as out:
                    out.write(line + "\n")
        print(summary(results), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
