"""The Celery application both sides use: the no-op task, and the worker process that runs it.

Celery's defaults except where said: the Redis broker, no result backend (ignore_result), and, for the
acks-late variant, task_acks_late. The worker is the threads pool with concurrency AGENT_CONCURRENCY in
each of AGENT_PROCESSES OS processes: the same shape as Arbiter's agents (one process, that many tasks at
once in it); prefork would fork a child per slot, 8 processes plus 2 parents on 2 cores. The prefetch
multiplier is held_per_worker() ÷ AGENT_CONCURRENCY: Celery's default (4, so each worker reserves up to 16
messages) unless the run asks for another figure, which Arbiter's agents then hold too.
"""

from __future__ import annotations

from multiprocessing.sharedctypes import Synchronized
from typing import Any

from celery import Celery
from celery.signals import worker_ready

from bench import side_channel
from bench.arbiter_bench import AGENT_CONCURRENCY, held_per_worker
from bench.peers import harness

TASK_NAME = "bench.noop"
POOL = "threads"

app = Celery("arbiter-bench")
# Set in each worker process before it serves.
_completed: Synchronized[int] | None = None


def configure(broker_url: str, acks_late: bool) -> None:
    app.conf.update(
        broker_url=broker_url,
        task_ignore_result=True,
        task_acks_late=acks_late,
        worker_prefetch_multiplier=held_per_worker() // AGENT_CONCURRENCY,
        # Celery's default, said out loud so that it does not warn at every start.
        broker_connection_retry_on_startup=True,
    )


@app.task(name=TASK_NAME, ignore_result=True)  # type: ignore[untyped-decorator]
def noop(key: str) -> None:
    assert _completed is not None, "the worker process sets the counter before it serves"
    harness.run_noop(key, _completed)


@worker_ready.connect  # type: ignore[untyped-decorator]
def record_serve(**_: Any) -> None:
    # The moment the worker consumes: after it connected to the broker and synchronised with the others
    # (mingle), which Arbiter's agents have no counterpart for.
    side_channel.record("serve", "celery")


def worker_process(
    index: int, record_dir: str, log_path: str, completed: Synchronized[int], broker_url: str, acks_late: bool
) -> None:
    """One Celery worker (threads pool × AGENT_CONCURRENCY); SIGTERM is Celery's warm shutdown: it finishes
    the tasks in hand and exits."""
    global _completed
    harness.begin_worker_process(index, record_dir, log_path)
    _completed = completed
    configure(broker_url, acks_late)
    side_channel.record("launch", str(index))
    worker = app.Worker(
        hostname=f"bench-{index}@localhost",
        pool_cls=POOL,
        concurrency=AGENT_CONCURRENCY,
        loglevel="WARNING",
        quiet=True,
    )
    try:
        worker.start()
    finally:
        side_channel.flush()
