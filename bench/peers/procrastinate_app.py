"""The procrastinate application both sides use: the no-op task, and the worker process that runs it.

procrastinate's defaults except the concurrency: its PsycopgConnector (a psycopg pool of 4 connections per
process), LISTEN/NOTIFY for new jobs with the 5 s polling fallback, finished jobs kept (their events
record when each succeeded). Each of AGENT_PROCESSES processes runs one worker with concurrency
AGENT_CONCURRENCY: async jobs on one event loop, the shape of Arbiter's agents.
"""

from __future__ import annotations

import asyncio
from multiprocessing.sharedctypes import Synchronized

import procrastinate

from bench import side_channel
from bench.arbiter_bench import AGENT_CONCURRENCY
from bench.peers import harness

DATABASE = "bench_procrastinate"
DATABASE_URL = f"postgresql://postgres@127.0.0.1:5432/{DATABASE}"

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=DATABASE_URL))
# Set in each worker process before it serves.
_completed: Synchronized[int] | None = None


@app.task(name="bench_noop")
async def noop(k: str) -> None:
    assert _completed is not None, "the worker process sets the counter before it serves"
    harness.run_noop(k, _completed)


async def serve(index: int) -> None:
    async with app.open_async():
        side_channel.record("serve", str(index))
        # procrastinate's own signal handlers: SIGTERM stops fetching and waits for the jobs in hand.
        await app.run_worker_async(concurrency=AGENT_CONCURRENCY, name=f"bench-{index}")


def worker_process(index: int, record_dir: str, log_path: str, completed: Synchronized[int]) -> None:
    global _completed
    harness.begin_worker_process(index, record_dir, log_path)
    _completed = completed
    try:
        asyncio.run(serve(index))
    finally:
        side_channel.flush()
