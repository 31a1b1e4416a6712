"""Celery with a Redis broker, by the method of bench.arbiter_bench (see bench.peers.harness).

Two systems: `celery-redis` (Celery's default acks: a message is acknowledged when a worker takes it, so
a worker that dies loses the tasks it holds) and `celery-redis-acks-late` (acknowledged after the task
ran). The broker is Redis database REDIS_DB, flushed before each repetition.

- Submission: `apply_async` in a loop over one producer (one broker connection) kept for the whole
  scenario, in batches of BATCH_SIZE. Celery has no multi-message publish: a group's apply_async runs the
  same loop (one LPUSH per task). The latency scenario calls apply_async at each scheduled time; it
  blocks the event loop for the publish, and a send that starts late is counted and charged to Celery.
- Completion: Celery keeps no durable record of completion without a result backend, so a task's
  completion is its handler's end (side channel), the same moment the throughput figures use.
- Workers: see bench.peers.celery_app (threads pool × 4 in each of 2 processes, default prefetch).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import redis

from bench import side_channel
from bench.peers import celery_app, harness

REDIS_DB = 9
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
# The Redis list Celery's default queue lives in.
QUEUE = "celery"


class CelerySubmitter:
    def __init__(self, producer: Any) -> None:
        self._producer = producer

    async def submit_batch(self, keys: list[str]) -> None:
        for key in keys:
            celery_app.noop.apply_async((key,), producer=self._producer)

    async def submit(self, key: str) -> None:
        celery_app.noop.apply_async((key,), producer=self._producer)


class CelerySystem:
    scenarios: tuple[str, ...] = ("throughput", "drain", "latency")

    def __init__(self, acks_late: bool) -> None:
        self.acks_late = acks_late
        self.name = "celery-redis-acks-late" if acks_late else "celery-redis"

    def _redis(self) -> redis.Redis:
        return redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=5)

    def unavailable_reason(self) -> str | None:
        try:
            with self._redis() as client:
                client.ping()
        except redis.RedisError as error:
            return f"Redis at {REDIS_URL} did not answer ({error}); start redis-server to measure Celery"
        return None

    def prepare(self) -> None:
        with self._redis() as client:
            client.flushdb()

    def start_workers(self, record_dir: Path, log_dir: Path, completed: Synchronized[int]) -> list[BaseProcess]:
        return harness.start_worker_processes(
            celery_app.worker_process, record_dir, log_dir, completed, REDIS_URL, self.acks_late
        )

    @contextlib.asynccontextmanager
    async def submitter(self) -> AsyncIterator[CelerySubmitter]:
        celery_app.configure(REDIS_URL, self.acks_late)
        with celery_app.app.producer_or_acquire() as producer:
            yield CelerySubmitter(producer)

    def completion_times_ns(self, record_dir: Path) -> dict[str, int]:
        return side_channel.merge(record_dir).get("end", {})

    def after_run(self, start_ns: int) -> dict[str, Any]:
        with self._redis() as client:
            return {"messages_left_in_queue": client.llen(QUEUE)}

    def details(self) -> dict[str, Any]:
        with self._redis() as client:
            persistence = client.config_get("appendonly") | client.config_get("save")
        return {
            "broker": REDIS_URL,
            "redis_persistence": persistence,
            "pool": celery_app.POOL,
            "acks_late": self.acks_late,
            "prefetch_multiplier": celery_app.app.conf.worker_prefetch_multiplier,
            "settings": "Celery's defaults otherwise (prefetch, mingle, gossip, heartbeats, visibility timeout)",
            "submission": "apply_async in a loop over one producer (one LPUSH per task)",
            "completion_recorded": "handler end (side channel): no result backend, so no durable completion record",
            "serve_moment": "worker_ready signal (after broker connection and mingle)",
        }
