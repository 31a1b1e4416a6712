"""The floor of the database (issue 7, point 5): Arbiter's task lifecycle as bare SQL, no services.

What it does, per repetition: a fresh database (bench_floor) migrated with Arbiter's own migrations
(shared.database.migrate), so the table, its CHECKs, every index and its row trigger (a task_events
row and a NOTIFY per change) are the real ones. Then the harness's throughput and drain scenarios with
the same tasks, batch size and worker shape as every other system (bench.peers.harness):

- submit: one INSERT of BATCH_SIZE rows per batch (psycopg 3, unnest of the payloads) into the columns
  Arbiter's insert fills (_INSERT_TASK in services/orchestrator/storage.py): tenant 'default', the task
  type, PENDING, payload {"k": key}, priority 0, no requirements, 3 attempts, a submitting key's id.
- claim (CLAIM_TASKS): each of AGENT_PROCESSES worker processes takes as many PENDING tasks as it has free
  slots in one statement, highest priority then oldest, FOR UPDATE SKIP LOCKED, marking them ASSIGNED to
  it with assigned_at and a lease, as Arbiter's dispatch does. The no-op handler returns at once, so all
  AGENT_CONCURRENCY slots are free at every claim.
- run: the same no-op handler as every system (side-channel start and end, the shared counter).
- complete (COMPLETE_TASKS): the claimed tasks in one statement, each a compare-and-set on id, attempt,
  agent and in-flight state, as Arbiter's complete does.
- wait: a worker that finds nothing waits for the trigger's NOTIFY on arbiter_work (a second connection
  LISTENs), so an idle worker costs the database nothing, as Arbiter's dispatcher does.

Why it is the floor: it is the least work this schema allows for one task's life (one row inserted, two
row updates, three task_events rows, their index entries and WAL, with fsync and synchronous_commit as
the server has them), done in the fewest statements the worker shape allows and on one connection per
worker with nothing else in between: no RPC, no routing, no registry, no serialization beyond psycopg's.
Arbiter cannot go faster than this with this schema on this machine; the gap is what its services cost.

    python -m bench.sql_floor [--scenario throughput|drain|all] [--tasks N] [--repetitions R]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import uuid
from collections.abc import AsyncIterator
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from bench import side_channel
from bench.arbiter_bench import AGENT_CONCURRENCY, DEFAULT_TASKS, SERVER_URL, TASK_TYPE
from bench.peers import harness

DATABASE = "bench_floor"
DATABASE_URL = f"postgresql://postgres@127.0.0.1:5432/{DATABASE}"
TENANT = "default"
MAX_ATTEMPTS = 3
# Arbiter's default lease (ARBITER_LEASE_SECONDS).
LEASE_SECONDS = 30.0
# Stands for the submitter key's id that Arbiter stores with every task (an entry in its own index).
SUBMITTED_BY = uuid.UUID("00000000-0000-4000-8000-00000000f100")
# A missed NOTIFY costs at most this long.
IDLE_WAIT_SECONDS = 1.0

# insert_tasks: one row per payload, in one statement; the trigger records each and NOTIFYs arbiter_work
# (once per transaction: PostgreSQL folds equal notifications).
INSERT_TASKS = """
    INSERT INTO tasks (task_type, state, payload, priority, required_languages, required_specializations,
                       required_labels, max_attempts, timeout_ms, idempotency_key, schedule_to_start_timeout_ms,
                       tenant, submitted_by)
    SELECT %(task_type)s, 'pending', payload, 0, '{}', '{}', '{}', %(max_attempts)s, NULL, NULL, NULL,
           %(tenant)s, %(submitted_by)s
    FROM unnest(%(payloads)s::jsonb[]) AS payload
    RETURNING id
"""

# claim_tasks: at most %(limit)s PENDING tasks of the type whose backoff is over, highest priority then
# oldest, never a row another transaction holds (SKIP LOCKED); they become ASSIGNED to the agent.
CLAIM_TASKS = """
    UPDATE tasks t
    SET state = 'assigned', assigned_agent_id = %(agent_id)s, assigned_at = clock_timestamp(),
        lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
        progress = 0, progress_message = '', not_before = NULL, error = '', updated_at = now()
    FROM (
        SELECT id FROM tasks
        WHERE state = 'pending' AND tenant = %(tenant)s AND task_type = %(task_type)s
          AND (not_before IS NULL OR not_before <= now())
        ORDER BY priority DESC, created_at, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) picked
    WHERE t.id = picked.id
    RETURNING t.id, t.attempt, t.payload->>'k'
"""

# complete_tasks: each (id, attempt) only if that attempt is still this agent's and in flight
# (compare-and-set); a stale one changes nothing.
COMPLETE_TASKS = """
    UPDATE tasks t
    SET state = 'completed', result = '{}', progress = 1, lease_expires_at = NULL, updated_at = now()
    FROM unnest(%(ids)s::uuid[], %(attempts)s::int[]) AS done(id, attempt)
    WHERE t.id = done.id AND t.attempt = done.attempt AND t.assigned_agent_id = %(agent_id)s
      AND t.state IN ('assigned', 'running')
"""


# The worker processes.


async def wake_on_notify(listener: psycopg.AsyncConnection[Any], work_arrived: asyncio.Event) -> None:
    async for _ in listener.notifies():
        work_arrived.set()


async def work(index: int, completed: Synchronized[int]) -> None:
    """Claims, runs and completes until SIGTERM; then finishes what it holds and returns."""
    agent_id = f"{TENANT}/floor-{index}"
    stopping = asyncio.Event()
    work_arrived = asyncio.Event()

    def stop() -> None:
        stopping.set()
        work_arrived.set()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop)
    async with (
        await psycopg.AsyncConnection.connect(DATABASE_URL, autocommit=True) as connection,
        await psycopg.AsyncConnection.connect(DATABASE_URL, autocommit=True) as listener,
    ):
        await listener.execute("LISTEN arbiter_work")
        listening = asyncio.create_task(wake_on_notify(listener, work_arrived))
        parameters: dict[str, Any] = {
            "agent_id": agent_id,
            "tenant": TENANT,
            "task_type": TASK_TYPE,
            "lease_seconds": LEASE_SECONDS,
            "limit": AGENT_CONCURRENCY,
        }
        side_channel.record("serve", str(index))
        while not stopping.is_set():
            # Cleared before the claim, so a NOTIFY that comes during it is not lost.
            work_arrived.clear()
            claimed = await (await connection.execute(CLAIM_TASKS, parameters)).fetchall()
            if not claimed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(work_arrived.wait(), IDLE_WAIT_SECONDS)
                continue
            for _, _, key in claimed:
                harness.run_noop(key, completed)
            cursor = await connection.execute(
                COMPLETE_TASKS,
                {"agent_id": agent_id, "ids": [row[0] for row in claimed], "attempts": [row[1] for row in claimed]},
            )
            if cursor.rowcount != len(claimed):
                raise RuntimeError(f"{agent_id} completed {cursor.rowcount} of the {len(claimed)} tasks it claimed")
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening


def worker_process(index: int, record_dir: str, log_path: str, completed: Synchronized[int]) -> None:
    harness.begin_worker_process(index, record_dir, log_path)
    try:
        asyncio.run(work(index, completed))
    finally:
        side_channel.flush()


# The system, for the harness.


class FloorSubmitter:
    def __init__(self, connection: psycopg.AsyncConnection[Any]) -> None:
        self._connection = connection

    async def submit_batch(self, keys: list[str]) -> None:
        await self._connection.execute(
            INSERT_TASKS,
            {
                "task_type": TASK_TYPE,
                "max_attempts": MAX_ATTEMPTS,
                "tenant": TENANT,
                "submitted_by": SUBMITTED_BY,
                "payloads": [Jsonb({"k": key}) for key in keys],
            },
        )

    async def submit(self, key: str) -> None:
        await self.submit_batch([key])


class SqlFloorSystem:
    name = "sql-floor"
    # The floor of the end-to-end figures; latency is a property of the services, not of the schema.
    scenarios: tuple[str, ...] = ("throughput", "drain")

    def unavailable_reason(self) -> str | None:
        try:
            with psycopg.connect(SERVER_URL, connect_timeout=5):
                pass
        except psycopg.OperationalError as error:
            return f"PostgreSQL at {SERVER_URL} did not answer ({error})"
        return None

    def prepare(self) -> None:
        from shared.database import migrate

        with psycopg.connect(SERVER_URL, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
            connection.execute(f"CREATE DATABASE {DATABASE}")
        asyncio.run(migrate(DATABASE_URL))

    def start_workers(self, record_dir: Path, log_dir: Path, completed: Synchronized[int]) -> list[BaseProcess]:
        return harness.start_worker_processes(worker_process, record_dir, log_dir, completed)

    @contextlib.asynccontextmanager
    async def submitter(self) -> AsyncIterator[FloorSubmitter]:
        async with await psycopg.AsyncConnection.connect(DATABASE_URL, autocommit=True) as connection:
            yield FloorSubmitter(connection)

    def completion_times_ns(self, record_dir: Path) -> dict[str, int]:
        with psycopg.connect(DATABASE_URL) as connection:
            rows = connection.execute(
                "SELECT payload->>'k', (extract(epoch FROM updated_at) * 1e6)::bigint FROM tasks "
                "WHERE state = 'completed'"
            ).fetchall()
        return {key: microseconds * 1000 for key, microseconds in rows}

    def after_run(self, start_ns: int) -> dict[str, Any]:
        return harness.database_figures(
            DATABASE_URL,
            "SELECT state, count(*) FROM tasks GROUP BY state",
            "SELECT extract(epoch FROM max(updated_at)) FROM tasks WHERE state = 'completed'",
            start_ns,
        )

    def details(self) -> dict[str, Any]:
        return {
            "database_name": DATABASE,
            "schema": "Arbiter's migrations (shared.database.migrate)",
            "statements": "one INSERT per batch; per worker loop one claim (≤ concurrency rows) and one complete",
            "connections_per_process": 2,
            "completion_recorded": "handler end (side channel); tasks.updated_at in the database as a cross-check",
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=[*SqlFloorSystem.scenarios, "all"], default="all")
    parser.add_argument("--tasks", type=int, help="tasks per repetition (default: 20,000)")
    parser.add_argument("--repetitions", type=int, default=3)
    arguments = parser.parse_args()
    system = SqlFloorSystem()
    scenarios = list(system.scenarios) if arguments.scenario == "all" else [arguments.scenario]
    for scenario in scenarios:
        for repetition in range(1, arguments.repetitions + 1):
            tasks = arguments.tasks or DEFAULT_TASKS[scenario]
            print(json.dumps(harness.run_repetition(system, scenario, repetition, tasks, rate=0.0)), flush=True)


if __name__ == "__main__":
    main()
