"""The client side of a load test: processes each running many concurrent clients on one asyncio loop.

Three kinds of client, each in a closed loop with a pause (`think_seconds`) between calls:
- submitter: SubmitTask and SubmitTasks (a batch of `batch_size`) in turn; keeps every task id it is given.
- watcher: WatchTask on a task submitted lately, read to its end (the task finished); the latency counted
  is the time to the stream's first message, the task as it is now.
- reader: GetTask, GetTaskHistory, ListTasks, ListAgents and GetQueueStats in turn.

The calls go through the raw generated stubs, one try each and a deadline, so every refusal and error
is seen (the SDK would retry them away). Each process writes what it measured to one JSON file.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.struct_pb2 import Struct

from arbiter._grpc import key_metadata, open_channel
from arbiter.v1 import orchestrator_service_pb2 as opb
from arbiter.v1 import orchestrator_service_pb2_grpc as opb_grpc
from arbiter.v1 import registry_service_pb2 as rpb
from arbiter.v1 import registry_service_pb2_grpc as rpb_grpc

TASK_TYPE = "loadtest-noop"
KINDS = ("submitter", "watcher", "reader")
# Task ids each process keeps for its watchers and readers to pick from: the latest ones.
RECENT_IDS = 1000
LIST_PAGE_SIZE = 50
# In-flight calls at the end of the run get this long to finish; streams still open are then closed.
END_GRACE_SECONDS = 10.0

Response = TypeVar("Response")


@dataclass(frozen=True)
class ClientPlan:
    """What one client process runs."""

    process_index: int
    clients: dict[str, int]
    orchestrator: str
    registry: str
    key: str
    start_at: float
    duration: float
    think_seconds: float
    batch_size: int
    call_timeout: float
    out_path: str


def split_clients(total: int, processes: int, shares: dict[str, float]) -> list[dict[str, int]]:
    """`total` clients into kinds by `shares` (each kind at least one), dealt out over `processes` one
    client at a time, so that each process gets some of every kind when there are enough."""
    kinds = list(shares)
    counts = {kind: max(1, round(total * shares[kind])) for kind in kinds}
    # Rounding may miss the total by a client or two: the largest share takes up the difference.
    largest = max(kinds, key=lambda kind: shares[kind])
    counts[largest] += total - sum(counts.values())
    plans: list[dict[str, int]] = [dict.fromkeys(kinds, 0) for _ in range(processes)]
    dealt = itertools.count()
    for kind in kinds:
        for _ in range(counts[kind]):
            plans[next(dealt) % processes][kind] += 1
    return [plan for plan in plans if sum(plan.values())]


@dataclass
class Recorder:
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    codes: dict[str, Counter[str]] = field(default_factory=dict)
    submitted: list[str] = field(default_factory=list)
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_IDS))
    watches_open_at_end: int = 0

    def record(self, rpc: str, started: float, code: str) -> None:
        self.latencies_ms.setdefault(rpc, []).append((time.perf_counter() - started) * 1000)
        self.codes.setdefault(rpc, Counter())[code] += 1

    def took(self, task_ids: list[str]) -> None:
        self.submitted.extend(task_ids)
        self.recent.extend(task_ids)

    def result(self) -> dict[str, Any]:
        return {
            "latencies_ms": self.latencies_ms,
            "codes": {rpc: dict(counter) for rpc, counter in self.codes.items()},
            "submitted": self.submitted,
            "watches_open_at_end": self.watches_open_at_end,
        }


class LoadClient:
    """One client: its own channels, the process's recorder, and the loop of its kind."""

    def __init__(self, plan: ClientPlan, recorder: Recorder, number: int) -> None:
        self._plan = plan
        self._recorder = recorder
        self._metadata = key_metadata(plan.key)
        self._orchestrator_channel = open_channel(plan.orchestrator)
        self._registry_channel = open_channel(plan.registry)
        self._orchestrator = opb_grpc.OrchestratorServiceStub(self._orchestrator_channel)
        self._registry = rpb_grpc.RegistryServiceStub(self._registry_channel)
        self._end_at = plan.start_at + plan.duration
        self._random = random.Random(plan.process_index * 100_003 + number)
        self._sequence = itertools.count()
        self._prefix = f"p{plan.process_index}c{number}-"

    async def close(self) -> None:
        await self._orchestrator_channel.close()
        await self._registry_channel.close()

    def running(self) -> bool:
        return time.time() < self._end_at

    async def _call(self, rpc: str, method: Callable[..., Awaitable[Response]], request: Any) -> Response | None:
        started = time.perf_counter()
        try:
            response = await method(request, metadata=self._metadata, timeout=self._plan.call_timeout)
        except grpc.aio.AioRpcError as error:
            self._recorder.record(rpc, started, error.code().name)
            return None
        self._recorder.record(rpc, started, "OK")
        return response

    async def _pause(self) -> None:
        # Jittered, so that the clients do not march in step.
        await asyncio.sleep(self._plan.think_seconds * self._random.uniform(0.5, 1.5))

    def _payload(self) -> Struct:
        payload = Struct()
        payload.update({"k": f"{self._prefix}{next(self._sequence)}"})
        return payload

    def _some_task(self) -> str | None:
        recent = self._recorder.recent
        return recent[self._random.randrange(len(recent))] if recent else None

    async def submit_loop(self) -> None:
        for turn in itertools.count():
            if not self.running():
                return
            if turn % 2 == 0:
                response = await self._call(
                    "SubmitTask",
                    self._orchestrator.SubmitTask,
                    opb.SubmitTaskRequest(task_type=TASK_TYPE, payload=self._payload()),
                )
                if response is not None:
                    self._recorder.took([response.task.id])
            else:
                request = opb.SubmitTasksRequest(
                    tasks=[
                        opb.SubmitTaskRequest(task_type=TASK_TYPE, payload=self._payload())
                        for _ in range(self._plan.batch_size)
                    ]
                )
                batch = await self._call("SubmitTasks", self._orchestrator.SubmitTasks, request)
                if batch is not None:
                    self._recorder.took([task.id for task in batch.tasks])
            await self._pause()

    async def watch_loop(self) -> None:
        while self.running():
            recent = self._recorder.recent
            task_id = recent[-1] if recent else None
            if task_id is not None:
                await self._watch(task_id)
            await self._pause()

    async def _watch(self, task_id: str) -> None:
        started = time.perf_counter()
        call = self._orchestrator.WatchTask(opb.WatchTaskRequest(task_id=task_id), metadata=self._metadata)
        first_message_ms: float | None = None
        try:
            async for _ in call:
                if first_message_ms is None:
                    first_message_ms = (time.perf_counter() - started) * 1000
            code = "OK"
        except grpc.aio.AioRpcError as error:
            code = error.code().name
        except asyncio.CancelledError:
            # Still open when the run ended: the stream was healthy up to here.
            self._recorder.watches_open_at_end += 1
            code = "OK"
            raise
        finally:
            call.cancel()
            latency = first_message_ms if first_message_ms is not None else (time.perf_counter() - started) * 1000
            self._recorder.latencies_ms.setdefault("WatchTask", []).append(latency)
            self._recorder.codes.setdefault("WatchTask", Counter())[code] += 1

    async def read_loop(self) -> None:
        for turn in itertools.count():
            if not self.running():
                return
            what = turn % 5
            task_id = self._some_task()
            if what == 0 and task_id is not None:
                await self._call("GetTask", self._orchestrator.GetTask, opb.GetTaskRequest(task_id=task_id))
            elif what == 1 and task_id is not None:
                await self._call(
                    "GetTaskHistory", self._orchestrator.GetTaskHistory, opb.GetTaskHistoryRequest(task_id=task_id)
                )
            elif what == 2:
                await self._call(
                    "ListTasks", self._orchestrator.ListTasks, opb.ListTasksRequest(page_size=LIST_PAGE_SIZE)
                )
            elif what == 3:
                await self._call(
                    "ListAgents", self._registry.ListAgents, rpb.ListAgentsRequest(page_size=LIST_PAGE_SIZE)
                )
            elif what == 4:
                await self._call("GetQueueStats", self._orchestrator.GetQueueStats, opb.GetQueueStatsRequest())
            await self._pause()


async def run_clients(plan: ClientPlan) -> dict[str, Any]:
    recorder = Recorder()
    clients = [LoadClient(plan, recorder, number) for number in range(sum(plan.clients.values()))]
    kinds = [kind for kind in KINDS for _ in range(plan.clients.get(kind, 0))]
    loops = {"submitter": LoadClient.submit_loop, "watcher": LoadClient.watch_loop, "reader": LoadClient.read_loop}
    await asyncio.sleep(max(0.0, plan.start_at - time.time()))
    tasks = [asyncio.create_task(loops[kind](client)) for client, kind in zip(clients, kinds, strict=True)]
    await asyncio.sleep(max(0.0, plan.start_at + plan.duration - time.time()))
    _done, still_running = await asyncio.wait(tasks, timeout=END_GRACE_SECONDS)
    for task in still_running:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    await asyncio.gather(*(client.close() for client in clients))
    return recorder.result()


def client_process(plan: ClientPlan) -> None:
    """The target of one client process: runs its clients, then writes what they measured."""
    result = asyncio.run(run_clients(plan))
    Path(plan.out_path).write_text(json.dumps({"plan": {**asdict(plan), "key": "…"}, **result}))
