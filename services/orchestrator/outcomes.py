"""Sends every finished attempt's outcome to the registry, batched, so agents' track records (and so
routing) learn from what they did without a registry call per task.

Outcomes wait in memory for at most FLUSH_SECONDS (or until BATCH_SIZE are waiting) and go in one
RecordOutcomes call. While the registry is unreachable they are kept and retried, up to MAX_WAITING;
beyond that the oldest are dropped and counted, since a track record is statistics and must never hold
up the tasks themselves. Outcomes still waiting when the process dies are lost the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from opentelemetry.context import Context, attach, detach, get_current

from services.orchestrator.registry_client import Outcome, RegistryClient
from shared.errors import ArbiterError

logger = logging.getLogger(__name__)

# A quarter second: the registry does a fixed amount of work per call (totals, windows, the agents feed),
# so fewer, larger calls cost it far less, and a track record a moment old routes as well.
FLUSH_SECONDS = 0.25
BATCH_SIZE = 1000
MAX_WAITING = 100_000
RETRY_SECONDS = 1.0


class OutcomeReporter:
    def __init__(self, registry: RegistryClient) -> None:
        self._registry = registry
        self._waiting: deque[Outcome] = deque()
        self._ready = asyncio.Event()
        self.dropped = 0
        # The trace the first waiting outcome was recorded in: the call that sends them carries it.
        self._trace: Context | None = None

    def record(self, outcome: Outcome) -> None:
        if len(self._waiting) >= MAX_WAITING:
            self._waiting.popleft()
            self.dropped += 1
            if self.dropped % 1000 == 1:
                logger.warning("registry unreachable: %d outcomes dropped so far", self.dropped)
        if not self._waiting:
            self._trace = get_current()
        self._waiting.append(outcome)
        self._ready.set()

    async def run(self) -> None:
        """Flushes until cancelled."""
        while True:
            await self._ready.wait()
            # Let a burst gather into one call.
            if len(self._waiting) < BATCH_SIZE:
                await asyncio.sleep(FLUSH_SECONDS)
            if not await self.flush():
                await asyncio.sleep(RETRY_SECONDS)

    async def flush(self) -> bool:
        """Sends what is waiting, in batches; False when the registry could not take it (kept for later)."""
        while self._waiting:
            batch = [self._waiting.popleft() for _ in range(min(BATCH_SIZE, len(self._waiting)))]
            token = attach(self._trace) if self._trace is not None else None
            try:
                await self._registry.record_outcomes(batch)
            except ArbiterError as error:
                logger.warning("could not record %d outcomes yet: %s", len(batch), error)
                self._waiting.extendleft(reversed(batch))
                return False
            finally:
                if token is not None:
                    detach(token)
        self._trace = None
        self._ready.clear()
        return True

    async def close(self, timeout_seconds: float) -> None:
        """Shutting down: one last try to send what is waiting."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), timeout_seconds)
        if self._waiting:
            logger.warning("shutdown: %d outcomes could not be recorded", len(self._waiting))
