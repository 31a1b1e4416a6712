"""procrastinate on the same PostgreSQL, by the method of bench.arbiter_bench (see bench.peers.harness).

Its own database (bench_procrastinate), dropped and made again for each repetition, with procrastinate's
schema applied through its own API (SchemaManager.apply_schema_async).

- Submission: `batch_defer_async` per batch of BATCH_SIZE (one call of its procrastinate_defer_jobs_v1
  function); the latency scenario defers each task alone with `defer_async`.
- Completion: the time of the job's `succeeded` event (procrastinate_events.at, written by its trigger in
  the transaction that finishes the job), read after the run.
- Workers: see bench.peers.procrastinate_app (2 processes, concurrency 4, otherwise its defaults).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import procrastinate
import psycopg
from procrastinate.types import JSONDict

from bench.arbiter_bench import SERVER_URL
from bench.peers import harness, procrastinate_app


async def apply_schema() -> None:
    async with procrastinate_app.app.open_async():
        await procrastinate_app.app.schema_manager.apply_schema_async()


class ProcrastinateSubmitter:
    async def submit_batch(self, keys: list[str]) -> None:
        arguments: list[JSONDict] = [{"k": key} for key in keys]
        await procrastinate_app.noop.batch_defer_async(*arguments)

    async def submit(self, key: str) -> None:
        await procrastinate_app.noop.defer_async(k=key)


class ProcrastinateSystem:
    name = "procrastinate"
    scenarios: tuple[str, ...] = ("throughput", "drain", "latency")

    def unavailable_reason(self) -> str | None:
        try:
            with psycopg.connect(SERVER_URL, connect_timeout=5):
                pass
        except psycopg.OperationalError as error:
            return f"PostgreSQL at {SERVER_URL} did not answer ({error})"
        return None

    def prepare(self) -> None:
        with psycopg.connect(SERVER_URL, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {procrastinate_app.DATABASE} WITH (FORCE)")
            connection.execute(f"CREATE DATABASE {procrastinate_app.DATABASE}")
        asyncio.run(apply_schema())

    def start_workers(self, record_dir: Path, log_dir: Path, completed: Synchronized[int]) -> list[BaseProcess]:
        return harness.start_worker_processes(procrastinate_app.worker_process, record_dir, log_dir, completed)

    @contextlib.asynccontextmanager
    async def submitter(self) -> AsyncIterator[ProcrastinateSubmitter]:
        async with procrastinate_app.app.open_async():
            yield ProcrastinateSubmitter()

    def completion_times_ns(self, record_dir: Path) -> dict[str, int]:
        with psycopg.connect(procrastinate_app.DATABASE_URL) as connection:
            rows = connection.execute(
                """
                SELECT job.args->>'k', (extract(epoch FROM event.at) * 1e6)::bigint
                FROM procrastinate_events event JOIN procrastinate_jobs job ON job.id = event.job_id
                WHERE event.type = 'succeeded'
                """
            ).fetchall()
        return {key: microseconds * 1000 for key, microseconds in rows}

    def after_run(self, start_ns: int) -> dict[str, Any]:
        return harness.database_figures(
            procrastinate_app.DATABASE_URL,
            "SELECT status::text, count(*) FROM procrastinate_jobs GROUP BY 1",
            "SELECT extract(epoch FROM max(at)) FROM procrastinate_events WHERE type = 'succeeded'",
            start_ns,
        )

    def details(self) -> dict[str, Any]:
        return {
            "version": procrastinate.__version__,
            "database_name": procrastinate_app.DATABASE,
            "connections_per_process": "psycopg_pool default (4)",
            "settings": "procrastinate's defaults but concurrency (LISTEN/NOTIFY, 5 s polling fallback, jobs kept)",
            "submission": "batch_defer_async per batch; defer_async per task in the latency scenario",
            "completion_recorded": "the job's 'succeeded' event (procrastinate_events.at)",
            "serve_moment": "app opened, just before run_worker_async",
        }
