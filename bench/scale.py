"""Arbiter at scale on this machine (issue 7, point 3): many agent streams on one orchestrator, and the
claim with a million pending tasks.

- streams: a fresh stack (bench.arbiter_bench.start_stack), then --agents agents simulated by
  SIMULATOR_PROCESSES spawn processes, each with one registry and one orchestrator channel and the raw
  generated stubs. Every simulated agent registers, heartbeats at the interval the registry returns and
  keeps its StreamAssignments stream open, completing (CompleteTask) whatever it is sent, as an SDK agent
  does. Once the agent_streams table holds a row for every agent (the orchestrator's own record of the
  open streams), and SETTLE_SECONDS more, the orchestrator's and the registry's RSS (VmRSS) and CPU
  (utime + stime from /proc, as % of one core) are read over IDLE_SECONDS of idle: heartbeats flow, no
  tasks. Then PROOF_TASKS no-op tasks are submitted and must all be completed by the simulated agents
  (proof_all_completed; within PROOF_TIMEOUT_SECONDS, else proof_problem says why), which shows the
  streams carry work, not just stay open.
- claims: a database of its own (CLAIMS_DATABASE, dropped afterwards), migrated, filled with PENDING
  tasks over several tenants and task types plus finished ones in one INSERT ... SELECT each, then
  VACUUM ANALYZE. The real TaskStore.dispatch claims CLAIMS times for each size in CLAIM_SIZES (one
  WorkQuery, a plan giving every candidate to one agent; fewer times when a small fill has too few tasks
  of that tenant and type, or when a size's claims pass CLAIM_BUDGET_SECONDS), and TaskStore.complete
  completes as many of the claimed tasks; each call is timed from the client, so the figures include the
  round trip.

Nothing polls the services while they are measured: the wait for the streams reads the database before
the idle window, and the proof's completions are counted in shared memory by the simulators.

    python -m bench.scale [--agents N] [--pending N] [--repetitions R] [--out F]

One JSON object per repetition on stdout (and appended to --out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import grpc
import psycopg
from google.protobuf.struct_pb2 import Struct
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay

from arbiter import ArbiterError, Client
from arbiter._grpc import is_transient, key_metadata, open_channel
from arbiter.agent import BACKOFF, DEFAULT_HEARTBEAT_SECONDS, FATAL_CODES
from arbiter.v1 import agent_pb2
from arbiter.v1 import orchestrator_service_pb2 as opb
from arbiter.v1 import orchestrator_service_pb2_grpc as opb_grpc
from arbiter.v1 import registry_service_pb2 as rpb
from arbiter.v1 import registry_service_pb2_grpc as rpb_grpc
from bench.arbiter_bench import (
    DATABASE_URL,
    ORCHESTRATOR_ADDRESS,
    REGISTRY_ADDRESS,
    SERVER_URL,
    TASK_TYPE,
    Stack,
    measure_on_fresh_stack,
    percentiles,
    stop_agents,
    submit_batches,
    wait_for_count,
)
from services.orchestrator.domain import AttemptReport, TaskRecord
from services.orchestrator.planning import WorkQuery
from services.orchestrator.routing import Decision, Strategy
from services.orchestrator.storage import TaskStore
from shared.database import migrate, open_pool

DEFAULT_AGENTS = 1_000
DEFAULT_PENDING = 1_000_000
SIMULATOR_PROCESSES = 4
# Slots each simulated agent offers, as the throughput benchmark's agents do.
SIMULATED_CONCURRENCY = 4
# After the last stream opens: the registrations' notifications and the first heartbeats pass.
SETTLE_SECONDS = 5.0
IDLE_SECONDS = 10.0
PROOF_TASKS = 2_000
PROOF_TIMEOUT_SECONDS = 120.0
CALL_TIMEOUT_SECONDS = 60.0
STREAM_POLL_SECONDS = 0.5

CLAIMS_DATABASE = "bench_scale_claims"
CLAIMS_DATABASE_URL = f"postgresql://postgres@127.0.0.1:5432/{CLAIMS_DATABASE}"
CLAIM_SIZES = (4, 32)
CLAIMS = 200
MIN_CLAIMS = 20
# A slow claim (a second each) would otherwise keep `make bench` busy for many minutes.
CLAIM_BUDGET_SECONDS = 60.0
# Claims made before the timed ones, so that the connection has its prepared statements, as a running
# orchestrator's has.
WARMUP_CLAIMS = 5
CLAIMING_AGENT = "default/bench-claimer"
FILL_TENANTS = ("default", "acme", "globex")
FILL_TASK_TYPES = (TASK_TYPE, "review", "summarize", "translate")
# One finished task for every FINISHED_EVERY pending ones.
FINISHED_EVERY = 10


# Simulated agents, inside the simulator processes.


@dataclass
class FleetCounters:
    """Shared memory the simulators count into and the driver reads, without asking the services."""

    streams_open: Synchronized[int]
    stream_reconnects: Synchronized[int]
    heartbeats: Synchronized[int]
    heartbeat_failures: Synchronized[int]
    completed: Synchronized[int]
    refused_completions: Synchronized[int]
    heartbeat_interval_seconds: Synchronized[float]

    @classmethod
    def create(cls) -> FleetCounters:
        context = multiprocessing.get_context("spawn")
        return cls(
            streams_open=context.Value("q", 0),
            stream_reconnects=context.Value("q", 0),
            heartbeats=context.Value("q", 0),
            heartbeat_failures=context.Value("q", 0),
            completed=context.Value("q", 0),
            refused_completions=context.Value("q", 0),
            heartbeat_interval_seconds=context.Value("d", 0.0),
        )


def add(counter: Synchronized[int], amount: int = 1) -> None:
    with counter.get_lock():
        counter.value += amount


class SimulatedAgent:
    """What an SDK agent does on the wire, and no more: register, heartbeat, keep the stream, complete."""

    def __init__(
        self,
        agent_id: str,
        registry: rpb_grpc.RegistryServiceStub,
        orchestrator: opb_grpc.OrchestratorServiceStub,
        api_key: str,
        counters: FleetCounters,
    ) -> None:
        self.agent_id = agent_id
        self._registry = registry
        self._orchestrator = orchestrator
        self._metadata = key_metadata(api_key)
        self._counters = counters
        self._held = 0
        # The loop keeps only weak references to tasks.
        self._completing: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        await self._register()
        heartbeats = asyncio.create_task(self._heartbeat())
        try:
            await self._keep_stream()
        finally:
            heartbeats.cancel()

    async def _register(self) -> None:
        registration = agent_pb2.Agent(
            id=self.agent_id,
            name=self.agent_id,
            capabilities=agent_pb2.AgentCapabilities(task_types=[TASK_TYPE]),
            max_concurrent_tasks=SIMULATED_CONCURRENCY,
        )
        # A thousand agents registering at once may find the registry busy: retried as the SDK does.
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(is_transient), wait=BACKOFF, stop=stop_after_delay(120), reraise=True
        ):
            with attempt:
                await self._registry.RegisterAgent(
                    rpb.RegisterAgentRequest(agent=registration), metadata=self._metadata, timeout=CALL_TIMEOUT_SECONDS
                )

    async def _heartbeat(self) -> None:
        interval = DEFAULT_HEARTBEAT_SECONDS
        # A random phase: a real fleet started over time, so its heartbeats do not come in one burst.
        await asyncio.sleep(random.uniform(0, interval))
        while True:
            try:
                response = await self._registry.Heartbeat(
                    rpb.HeartbeatRequest(
                        agent_id=self.agent_id, active_tasks=self._held, status=agent_pb2.AGENT_STATUS_ONLINE
                    ),
                    metadata=self._metadata,
                    timeout=CALL_TIMEOUT_SECONDS,
                )
                add(self._counters.heartbeats)
                if response.HasField("heartbeat_interval"):
                    interval = max(0.1, response.heartbeat_interval.ToTimedelta().total_seconds())
                    self._counters.heartbeat_interval_seconds.value = interval
            except grpc.aio.AioRpcError:
                add(self._counters.heartbeat_failures)
            await asyncio.sleep(interval)

    async def _keep_stream(self) -> None:
        """Reads the assignment stream; reconnects after a short pause when it ends, counting each. A
        refusal retrying cannot change (a bad key) ends the agent, and with it its process."""
        while True:
            call = self._orchestrator.StreamAssignments(
                opb.StreamAssignmentsRequest(agent_id=self.agent_id), metadata=self._metadata
            )
            opened = False
            try:
                await call.initial_metadata()
                opened = True
                add(self._counters.streams_open)
                async for message in call:
                    if message.WhichOneof("kind") == "assignment":
                        completing = asyncio.create_task(self._complete(message.assignment))
                        self._completing.add(completing)
                        completing.add_done_callback(self._completing.discard)
            except grpc.aio.AioRpcError as error:
                if error.code() in FATAL_CODES:
                    raise
            finally:
                call.cancel()
                if opened:
                    add(self._counters.streams_open, -1)
            add(self._counters.stream_reconnects)
            await asyncio.sleep(random.uniform(0.1, 1.0))

    async def _complete(self, assignment: opb.Assignment) -> None:
        self._held += 1
        try:
            await self._orchestrator.CompleteTask(
                opb.CompleteTaskRequest(
                    task_id=assignment.task.id, agent_id=self.agent_id, attempt=assignment.attempt, result=Struct()
                ),
                metadata=self._metadata,
                timeout=CALL_TIMEOUT_SECONDS,
            )
            add(self._counters.completed)
        except grpc.aio.AioRpcError:
            add(self._counters.refused_completions)
        finally:
            self._held -= 1


def simulator_process(index: int, agent_count: int, api_key: str, counters: FleetCounters) -> None:
    """One process's agents on one registry channel and one orchestrator channel; SIGTERM ends them."""
    asyncio.run(simulate(index, agent_count, api_key, counters))


async def simulate(index: int, agent_count: int, api_key: str, counters: FleetCounters) -> None:
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    registry_channel = open_channel(REGISTRY_ADDRESS)
    orchestrator_channel = open_channel(ORCHESTRATOR_ADDRESS)
    registry = rpb_grpc.RegistryServiceStub(registry_channel)
    orchestrator = opb_grpc.OrchestratorServiceStub(orchestrator_channel)
    agents = [
        SimulatedAgent(f"scale-{index}-{number}", registry, orchestrator, api_key, counters)
        for number in range(agent_count)
    ]
    runs = [asyncio.create_task(agent.run()) for agent in agents]
    stop = asyncio.create_task(stopping.wait())
    try:
        # An agent's run ends only when it was refused for good (a bad key): the process ends with the error.
        done, _ = await asyncio.wait({*runs, stop}, return_when=asyncio.FIRST_COMPLETED)
        for finished in done - {stop}:
            finished.result()
    finally:
        for task in [*runs, stop]:
            task.cancel()
        await asyncio.gather(*runs, stop, return_exceptions=True)
        await registry_channel.close()
        await orchestrator_channel.close()


# The streams scenario, in the driver.


def start_simulators(agents: int, api_key: str, counters: FleetCounters) -> list[SpawnProcess]:
    # spawn, not fork: gRPC channels do not survive a fork.
    context = multiprocessing.get_context("spawn")
    base, extra = divmod(agents, SIMULATOR_PROCESSES)
    shares = [base + (index < extra) for index in range(SIMULATOR_PROCESSES)]
    simulators = [
        context.Process(target=simulator_process, args=(index, share, api_key, counters), daemon=True)
        for index, share in enumerate(shares)
        if share
    ]
    for process in simulators:
        process.start()
    return simulators


async def wait_for_streams(agents: int, simulators: list[SpawnProcess]) -> None:
    """Until the orchestrator has recorded an open stream for every agent (its agent_streams rows)."""
    deadline = time.monotonic() + 120 + agents / 10
    async with await psycopg.AsyncConnection.connect(DATABASE_URL, autocommit=True) as connection:
        while True:
            cursor = await connection.execute("SELECT count(*) FROM agent_streams")
            row = await cursor.fetchone()
            if row is not None and row[0] >= agents:
                return
            dead = [process.exitcode for process in simulators if not process.is_alive()]
            if dead:
                raise RuntimeError(f"a simulator process exited (codes {dead}) before every stream opened")
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {row[0] if row else 0} of {agents} streams open in time")
            await asyncio.sleep(STREAM_POLL_SECONDS)


def service_pid(stack: Stack, module: str) -> int:
    """The pid of the stack's process running `python -m module`."""
    for process in stack.processes:
        if isinstance(process.args, list) and module in process.args:
            return process.pid
    raise RuntimeError(f"the stack runs no {module}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"process {pid} has no VmRSS: has it exited?")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time so far. The fields after the command name, which may hold spaces."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    user_ticks, system_ticks = int(fields[11]), int(fields[12])
    return (user_ticks + system_ticks) / os.sysconf("SC_CLK_TCK")


async def measure_idle(services: dict[str, int], counters: FleetCounters) -> dict[str, Any]:
    """Each service's CPU over IDLE_SECONDS (% of one core) and its RSS at the end; the heartbeat rate."""
    cpu_before = {name: cpu_seconds(pid) for name, pid in services.items()}
    heartbeats_before = counters.heartbeats.value
    started = time.monotonic()
    await asyncio.sleep(IDLE_SECONDS)
    elapsed = time.monotonic() - started
    figures: dict[str, Any] = {}
    for name, pid in services.items():
        figures[f"{name}_idle_cpu_percent"] = round(100 * (cpu_seconds(pid) - cpu_before[name]) / elapsed, 2)
        figures[f"{name}_rss_mb"] = round(rss_mb(pid), 1)
    figures["heartbeats_per_second"] = round((counters.heartbeats.value - heartbeats_before) / elapsed, 1)
    return figures


async def prove_streams_work(stack: Stack, counters: FleetCounters) -> dict[str, Any]:
    """PROOF_TASKS tasks through the simulated fleet. When they are not all done within
    PROOF_TIMEOUT_SECONDS, or a submit is refused, the figures say how far they got and why (the other
    figures are still worth having); the simulators and the database disagreeing on what was completed
    is an error."""
    problem = ""
    # A long deadline: a slow submit shows up as time, not as a refused call.
    async with Client(
        ORCHESTRATOR_ADDRESS, stack.submitter_key, registry_address=REGISTRY_ADDRESS, timeout=PROOF_TIMEOUT_SECONDS
    ) as client:
        started = time.monotonic()
        try:
            await submit_batches(client, "scale-", PROOF_TASKS)
            await wait_for_count(counters.completed, PROOF_TASKS, timeout=PROOF_TIMEOUT_SECONDS)
        except (TimeoutError, ArbiterError) as error:
            problem = str(error)
            print(f"scale: the proof did not finish: {problem}", file=sys.stderr, flush=True)
        seconds = time.monotonic() - started
        completed_by_agents = counters.completed.value
    with psycopg.connect(DATABASE_URL) as connection:
        row = connection.execute(
            "SELECT count(*), count(DISTINCT assigned_agent_id) FROM tasks WHERE state = 'completed'"
        ).fetchone()
    completed, agents_used = row if row else (0, 0)
    if completed < completed_by_agents:
        raise RuntimeError(f"the agents completed {completed_by_agents} tasks; the database shows {completed}")
    return {
        "proof_tasks": PROOF_TASKS,
        "proof_completed": completed,
        "proof_all_completed": completed == PROOF_TASKS,
        "proof_problem": problem,
        "proof_seconds": round(seconds, 3),
        "proof_tasks_per_second": round(completed / seconds, 1),
        "proof_agents_that_completed_tasks": agents_used,
    }


async def measure_streams_on(stack: Stack, agents: int) -> dict[str, Any]:
    services = {
        "orchestrator": service_pid(stack, "services.orchestrator"),
        "registry": service_pid(stack, "services.registry"),
    }
    rss_without_agents = {name: round(rss_mb(pid), 1) for name, pid in services.items()}
    counters = FleetCounters.create()
    launched = time.monotonic()
    simulators = start_simulators(agents, stack.agent_key, counters)
    try:
        await wait_for_streams(agents, simulators)
        streams_seconds = time.monotonic() - launched
        await asyncio.sleep(SETTLE_SECONDS)
        idle = await measure_idle(services, counters)
        open_after_idle = counters.streams_open.value
        proof = await prove_streams_work(stack, counters)
    finally:
        stop_agents(simulators)
    return {
        **idle,
        **proof,
        "seconds_until_all_streams_open": round(streams_seconds, 2),
        "streams_open_after_idle": open_after_idle,
        "stream_reconnects": counters.stream_reconnects.value,
        "heartbeat_failures": counters.heartbeat_failures.value,
        "refused_completions": counters.refused_completions.value,
        "heartbeat_interval_seconds": counters.heartbeat_interval_seconds.value,
        "orchestrator_rss_mb_without_agents": rss_without_agents["orchestrator"],
        "registry_rss_mb_without_agents": rss_without_agents["registry"],
    }


def measure_streams(agents: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="arbiter-bench-scale-") as scratch:
        return measure_on_fresh_stack(Path(scratch), lambda stack: measure_streams_on(stack, agents))


# The claims scenario.


def recreate_claims_database() -> None:
    with psycopg.connect(SERVER_URL, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {CLAIMS_DATABASE} WITH (FORCE)")
        connection.execute(f"CREATE DATABASE {CLAIMS_DATABASE}")


def drop_claims_database() -> None:
    with psycopg.connect(SERVER_URL, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {CLAIMS_DATABASE} WITH (FORCE)")


# Pending rows: each (tenant, type) gets an equal share; one in three with each priority; one in ten
# requires python; one in four has an idempotency key; created one millisecond apart, the newest now.
_FILL_PENDING = """
    INSERT INTO tasks (task_type, state, payload, priority, required_languages, required_specializations,
                       required_labels, max_attempts, timeout_ms, idempotency_key, schedule_to_start_timeout_ms,
                       tenant, submitted_by, created_at, updated_at)
    SELECT (%(types)s::text[])[n %% %(type_count)s + 1], 'pending', jsonb_build_object('k', n), n %% 3,
           CASE WHEN n %% 10 = 0 THEN ARRAY['python'] ELSE '{}'::text[] END, '{}', '{}', 3, 600000,
           CASE WHEN n %% 4 = 0 THEN 'fill-' || n END, NULL,
           (%(tenants)s::text[])[(n / %(type_count)s) %% %(tenant_count)s + 1], NULL,
           now() - (%(rows)s - n) * interval '1 millisecond', now() - (%(rows)s - n) * interval '1 millisecond'
    FROM generate_series(1, %(rows)s) AS n
"""
_FILL_FINISHED = """
    INSERT INTO tasks (task_type, state, payload, result, progress, max_attempts, timeout_ms, tenant,
                       assigned_agent_id, assigned_at, created_at, updated_at)
    SELECT (%(types)s::text[])[n %% %(type_count)s + 1], 'completed', jsonb_build_object('k', n), '{}', 1, 3,
           600000, (%(tenants)s::text[])[(n / %(type_count)s) %% %(tenant_count)s + 1],
           'default/bench-agent-' || n %% 8, now() - interval '2 hours', now() - interval '2 hours',
           now() - interval '2 hours' + n * interval '1 millisecond'
    FROM generate_series(1, %(rows)s) AS n
"""


def fill_tasks(pending: int) -> float:
    """Fills the tasks table; returns the seconds it took. The session skips the tasks trigger
    (session_replication_role = replica): it would write an event row and queue a notification per row,
    which the claim does not read and which would take far longer than the rows themselves."""
    shape = {
        "types": list(FILL_TASK_TYPES),
        "type_count": len(FILL_TASK_TYPES),
        "tenants": list(FILL_TENANTS),
        "tenant_count": len(FILL_TENANTS),
    }
    started = time.monotonic()
    with psycopg.connect(CLAIMS_DATABASE_URL, autocommit=True) as connection:
        connection.execute("SET session_replication_role = replica")
        connection.execute(_FILL_PENDING, {**shape, "rows": pending})
        connection.execute(_FILL_FINISHED, {**shape, "rows": pending // FINISHED_EVERY})
        # As autovacuum leaves a table at rest: hint bits set, visibility map and statistics current.
        connection.execute("VACUUM (ANALYZE) tasks")
    return time.monotonic() - started


def timing_summary(durations_ms: list[float]) -> dict[str, float]:
    ordered = sorted(durations_ms)
    return {name: round(value, 3) for name, value in {**percentiles(ordered), "max_ms": ordered[-1]}.items()}


async def time_claims(store: TaskStore, size: int, claims: int) -> tuple[list[float], list[TaskRecord]]:
    """Up to `claims` timed TaskStore.dispatch calls (after WARMUP_CLAIMS), each asking for `size` tasks
    of one tenant and type, stopping early (after MIN_CLAIMS) once CLAIM_BUDGET_SECONDS have passed; the
    tasks claimed."""
    query = WorkQuery("default", TASK_TYPE, frozenset({"python"}), frozenset(), {}, size)
    decision = Decision(CLAIMING_AGENT, Strategy.CAPABILITY, 1.0, 1.0, False, "bench: every candidate to one agent", ())

    def to_one_agent(tasks: list[TaskRecord]) -> list[tuple[TaskRecord, Decision]]:
        return [(task, decision) for task in tasks]

    durations_ms: list[float] = []
    claimed: list[TaskRecord] = []
    budget_ends = time.monotonic() + CLAIM_BUDGET_SECONDS
    for number in range(WARMUP_CLAIMS + claims):
        if len(durations_ms) >= MIN_CLAIMS and time.monotonic() > budget_ends:
            break
        started = time.perf_counter()
        dispatched = await store.dispatch(
            submissions=[],
            completions=[],
            agent_ids=[CLAIMING_AGENT],
            queries_for=lambda held: [query],
            plan=to_one_agent,
        )
        assigned = dispatched.assigned
        elapsed_ms = (time.perf_counter() - started) * 1000
        if len(assigned) != size:
            raise RuntimeError(f"a claim of {size} took {len(assigned)} tasks: is the fill too small?")
        if number >= WARMUP_CLAIMS:
            durations_ms.append(elapsed_ms)
            claimed.extend(each.task for each in assigned)
    return durations_ms, claimed


async def time_completions(store: TaskStore, tasks: list[TaskRecord]) -> list[float]:
    durations_ms = []
    for task in tasks:
        started = time.perf_counter()
        completed = await store.complete(AttemptReport(task.id, CLAIMING_AGENT, task.attempt), {})
        durations_ms.append((time.perf_counter() - started) * 1000)
        if completed is None:
            raise RuntimeError(f"completing claimed task {task.id} was refused as stale")
    return durations_ms


async def measure_claims(pending: int) -> dict[str, Any]:
    claimed_kind = pending // (len(FILL_TASK_TYPES) * len(FILL_TENANTS))
    # A small fill (a quick run) holds too few tasks of the claimed kind for every claim: fewer are timed.
    claims = min(CLAIMS, claimed_kind // sum(CLAIM_SIZES) - WARMUP_CLAIMS)
    if claims < MIN_CLAIMS:
        raise ValueError(
            f"--pending {pending} leaves {claimed_kind} tasks of the claimed tenant and type, too few for "
            f"{MIN_CLAIMS} claims of each size: ask for at least "
            f"{(MIN_CLAIMS + WARMUP_CLAIMS) * sum(CLAIM_SIZES) * len(FILL_TASK_TYPES) * len(FILL_TENANTS)}"
        )
    recreate_claims_database()
    try:
        await migrate(CLAIMS_DATABASE_URL)
        fill_seconds = fill_tasks(pending)
        pool = await open_pool(CLAIMS_DATABASE_URL, 1, 2, name="bench-scale-claims")
        try:
            store = TaskStore(pool, lease_seconds=30.0)
            figures: dict[str, Any] = {}
            claimed: list[TaskRecord] = []
            for size in CLAIM_SIZES:
                durations_ms, tasks = await time_claims(store, size, claims)
                figures[f"claim_{size}"] = {**timing_summary(durations_ms), "claims": len(durations_ms)}
                claimed.extend(tasks)
            completions_ms = await time_completions(store, claimed[:claims])
            figures["complete"] = {**timing_summary(completions_ms), "completions": len(completions_ms)}
        finally:
            await pool.close()
    finally:
        drop_claims_database()
    return {
        **figures,
        "pending_rows": pending,
        "finished_rows": pending // FINISHED_EVERY,
        "pending_rows_of_the_claimed_tenant_and_type": claimed_kind,
        "fill_seconds": round(fill_seconds, 1),
        "claims_per_size_at_most": claims,
    }


# Both, as one result.


def run_scale(agents: int = DEFAULT_AGENTS, pending: int = DEFAULT_PENDING) -> dict[str, Any]:
    """One repetition of both parts. Headline figures at the top level (units in the names), the rest
    in `extra`."""
    streams = measure_streams(agents)
    # On stderr at once, so a run stopped during the claims still leaves these figures.
    print(f"scale streams: {json.dumps(streams)}", file=sys.stderr, flush=True)
    claims = asyncio.run(measure_claims(pending))
    headline = {
        "orchestrator_rss_mb": streams["orchestrator_rss_mb"],
        "orchestrator_idle_cpu_percent": streams["orchestrator_idle_cpu_percent"],
        "registry_rss_mb": streams["registry_rss_mb"],
        "registry_idle_cpu_percent": streams["registry_idle_cpu_percent"],
        "proof_all_completed": streams["proof_all_completed"],
        "proof_tasks_per_second": streams["proof_tasks_per_second"],
        **{
            f"claim_{size}_{name}": value
            for size in CLAIM_SIZES
            for name, value in claims[f"claim_{size}"].items()
            if name.endswith("_ms")
        },
        **{f"complete_{name}": value for name, value in claims["complete"].items() if name.endswith("_ms")},
    }
    return {
        "system": "arbiter",
        "scenario": "scale",
        "agents": agents,
        "pending_tasks": pending,
        **headline,
        "extra": {
            "cpus": os.cpu_count(),
            "simulator_processes": SIMULATOR_PROCESSES,
            "idle_seconds": IDLE_SECONDS,
            "streams": streams,
            "claims": claims,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=DEFAULT_AGENTS, help="simulated agent streams")
    parser.add_argument("--pending", type=int, default=DEFAULT_PENDING, help="pending rows for the claim timing")
    parser.add_argument("--repetitions", type=int, default=1)
    parser.add_argument("--out", type=Path, help="also append each result line to this file")
    arguments = parser.parse_args()
    for repetition in range(1, arguments.repetitions + 1):
        result = {**run_scale(arguments.agents, arguments.pending), "repetition": repetition}
        line = json.dumps(result)
        print(line, flush=True)
        if arguments.out:
            with arguments.out.open("a") as out:
                out.write(line + "\n")


if __name__ == "__main__":
    main()
