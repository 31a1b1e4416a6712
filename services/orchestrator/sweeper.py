"""The chores every orchestrator runs on a timer: take back expired leases and timed-out attempts,
fail tasks nobody started in time, release what OFFLINE agents hold, wake agents when backoffs end,
and prune old finished tasks. Every step locks rows with SKIP LOCKED (or is idempotent), so any number
of orchestrators can sweep at once without doing anything twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from services.orchestrator import metrics
from services.orchestrator.agent_directory import AgentDirectory
from services.orchestrator.domain import TaskRecord
from services.orchestrator.registry_client import RegistryClient
from services.orchestrator.storage import TaskStore
from shared import tenancy
from shared.errors import ArbiterError

logger = logging.getLogger(__name__)

# Rows one statement handles; a sweep repeats a step while it keeps finding a full batch.
SWEEP_BATCH = 500
PRUNE_BATCH = 1000
PRUNE_EVERY_SECONDS = 60.0


@dataclass
class SweepCounts:
    expired_leases: int = 0
    timed_out: int = 0
    unstarted: int = 0
    released_offline: int = 0
    pruned: int = 0
    pruned_audit_events: int = 0
    woken_types: list[str] = field(default_factory=list)


class Sweeper:
    def __init__(
        self,
        store: TaskStore,
        registry: RegistryClient,
        directory: AgentDirectory,
        wake_dispatcher: Callable[[], None],
        *,
        interval_seconds: float,
        retention: timedelta,
        prune_audit_events: Callable[[], Awaitable[int]],
    ) -> None:
        self._store = store
        self._registry = registry
        self._directory = directory
        self._wake_dispatcher = wake_dispatcher
        self._interval_seconds = interval_seconds
        self._retention = retention
        self._prune_audit_events = prune_audit_events
        self._last_sweep_at = datetime.now(UTC)
        self._last_prune = float("-inf")  # the first sweep prunes

    async def run(self) -> None:
        """Sweeps every interval until cancelled; a failed sweep (e.g. the database is down) is logged
        and the next one tries again."""
        while True:
            try:
                counts = await self.sweep_once()
                if counts.expired_leases or counts.timed_out or counts.unstarted or counts.released_offline:
                    logger.info("sweep: %s", counts)
            except Exception as error:  # the sweeper must outlive any one failure
                logger.warning("sweep failed; retrying in %.1f s: %s", self._interval_seconds, error)
            await asyncio.sleep(self._interval_seconds)

    async def sweep_once(self) -> SweepCounts:
        counts = SweepCounts()
        started_at = datetime.now(UTC)
        counts.expired_leases = await _repeat(self._store.expire_leases)
        metrics.LEASE_EXPIRIES.inc(counts.expired_leases)
        counts.timed_out = await _repeat(self._store.time_out_attempts)
        counts.unstarted = await _repeat(self._store.fail_unstarted)
        counts.released_offline = await self._release_offline_agents()
        counts.woken_types = await self._store.types_ready_since(self._last_sweep_at)
        # Slots freed here: this instance's own notifications of them are skipped (see notifications.py).
        if counts.woken_types or counts.expired_leases or counts.timed_out or counts.released_offline:
            self._wake_dispatcher()
        self._last_sweep_at = started_at
        if time.monotonic() - self._last_prune >= PRUNE_EVERY_SECONDS:
            self._last_prune = time.monotonic()
            while (pruned := await self._store.prune_finished(self._retention, PRUNE_BATCH)) > 0:
                counts.pruned += pruned
                if pruned < PRUNE_BATCH:
                    break
            # Audit events past their retention go too (batched inside; safe on every instance).
            counts.pruned_audit_events = await self._prune_audit_events()
        return counts

    async def _release_offline_agents(self) -> int:
        holders = set(await self._store.holders())
        if not holders:
            return 0
        try:
            gone = await self._offline_among(holders)
        except ArbiterError as error:
            logger.warning("cannot ask the registry which agents are offline: %s", error)
            return 0
        released = 0
        for agent_id in sorted(gone):
            tasks = await self._store.release_agent(
                agent_id, f"agent '{tenancy.plain(agent_id)}' is OFFLINE (no heartbeat) or no longer registered"
            )
            released += len(tasks)
        return released

    async def _offline_among(self, holders: set[str]) -> set[str]:
        """OFFLINE or unregistered, from the live view while it is in sync; the registry is asked about
        holders the view does not know (perhaps registered a moment ago) and about all while it is not."""
        if not self._directory.synced.is_set():
            return await self._registry.offline_among(holders)
        known = {agent_id: self._directory.get(agent_id) for agent_id in holders}
        gone = {agent_id for agent_id, agent in known.items() if agent is not None and agent.status == "OFFLINE"}
        unknown = {agent_id for agent_id, agent in known.items() if agent is None}
        return gone | (await self._registry.offline_among(unknown) if unknown else set())


async def _repeat(step: Callable[[int], Awaitable[list[TaskRecord]]]) -> int:
    total = 0
    while True:
        handled = len(await step(SWEEP_BATCH))
        total += handled
        if handled < SWEEP_BATCH:
            return total
