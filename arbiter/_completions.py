"""Sends an agent's results to the orchestrator, many per call when they come faster than calls do.

A result goes out at once when no call is in flight; results that arrive while one is gather and go in
the next CompleteTasks call. So a lone result waits for nothing, and under load one call, one commit and
one audit row carry many results. An orchestrator that predates CompleteTasks gets them one by one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from opentelemetry.context import Context, attach, detach, get_current

from arbiter.v1 import orchestrator_service_pb2 as opb
from arbiter.v1 import orchestrator_service_pb2_grpc as opb_grpc

# As many as the orchestrator takes in one CompleteTasks call.
MAX_BATCH = 1000
_CODES = {code.value[0]: code for code in grpc.StatusCode}

# (code, details) when the orchestrator refused a result; None when it recorded it.
Refusal = tuple[grpc.StatusCode, str] | None
# Sends one call, retrying while the orchestrator is unreachable (the agent's own retry policy).
Send = Callable[[Callable[..., Awaitable[Any]], Any], Awaitable[Any]]


class CompletionSender:
    def __init__(self, orchestrator: opb_grpc.OrchestratorServiceStub, send: Send) -> None:
        self._orchestrator = orchestrator
        self._send = send
        # Each result with the trace context it was reported in: a call carries its first result's trace.
        self._waiting: list[tuple[opb.CompleteTaskRequest, asyncio.Future[Refusal], Context]] = []
        self._sender: asyncio.Task[None] | None = None
        self._batches_supported = True

    async def complete(self, request: opb.CompleteTaskRequest) -> Refusal:
        """Sends the result (retrying while the orchestrator is unreachable); None once it is recorded."""
        future: asyncio.Future[Refusal] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future, get_current()))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_waiting())
        return await future

    async def _send_waiting(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                token = attach(batch[0][2])
                try:
                    refusals = await self._send_batch([request for request, _, _ in batch])
                except Exception as error:  # every waiting handler must hear, whatever went wrong
                    for _, future, _ in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                finally:
                    detach(token)
                for (_, future, _), refusal in zip(batch, refusals, strict=True):
                    if not future.done():
                        future.set_result(refusal)
        finally:
            self._sender = None

    async def _send_batch(self, requests: list[opb.CompleteTaskRequest]) -> list[Refusal]:
        if self._batches_supported:
            try:
                response = await self._send(
                    self._orchestrator.CompleteTasks, opb.CompleteTasksRequest(completions=requests)
                )
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                    return [(error.code(), error.details() or "") for _ in requests]
                self._batches_supported = False
            else:
                return [
                    None if result.code == 0 else (_CODES.get(result.code, grpc.StatusCode.UNKNOWN), result.message)
                    for result in response.results
                ]
        return [await self._send_one(request) for request in requests]

    async def _send_one(self, request: opb.CompleteTaskRequest) -> Refusal:
        try:
            await self._send(self._orchestrator.CompleteTask, request)
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or ""
        return None
