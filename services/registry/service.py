"""The registry's operations: validation from domain, rows from storage, NOT_FOUND for unknown ids."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from functools import partial

from services.registry import metrics
from services.registry.agent_feed import AgentFeed
from services.registry.domain import (
    AgentChanges,
    AgentRecord,
    AgentRegistration,
    AgentStatus,
    Candidate,
    CandidateQuery,
    Outcome,
    RecordedOutcomes,
    judge_degradation,
    rank_candidates,
    validate_heartbeat,
)
from services.registry.storage import AgentStore, DegradationUpdate
from shared import validation
from shared.errors import NotFound, Unavailable
from shared.pagination import decode_page_token, encode_page_token

_PAGE_KEYS = frozenset({"after_id"})
# How long a WatchAgents call waits for a starting registry's first read of every agent.
FEED_READY_SECONDS = 10.0


def _unknown_agent(agent_id: str) -> NotFound:
    return NotFound(f"agent '{agent_id}' is not registered: call RegisterAgent first")


@dataclass(frozen=True)
class AgentPage:
    agents: list[AgentRecord]
    next_page_token: str


class Registry:
    def __init__(
        self,
        store: AgentStore,
        feed: AgentFeed,
        heartbeat_interval_seconds: float,
        degradation_min_outcomes: int,
    ) -> None:
        self._store = store
        self._feed = feed
        self.heartbeat_interval_seconds = heartbeat_interval_seconds
        self._judge = partial(judge_degradation, min_outcomes=degradation_min_outcomes)

    async def register(self, registration: AgentRegistration) -> AgentRecord:
        return await self._store.upsert(registration)

    async def heartbeat(self, agent_id: str, active_tasks: int, status: AgentStatus | None) -> AgentRecord:
        beat = validate_heartbeat(agent_id, active_tasks, status)
        record = await self._store.record_heartbeat(beat)
        if record is None:
            raise _unknown_agent(beat.agent_id)
        return record

    async def get(self, agent_id: str) -> AgentRecord:
        checked_id = validation.agent_id("agent_id", agent_id)
        record = await self._store.get(checked_id)
        if record is None:
            raise _unknown_agent(checked_id)
        return record

    async def list_agents(
        self, page_size: int, page_token: str, task_type: str, status: AgentStatus | None
    ) -> AgentPage:
        limit = validation.page_size("page_size", page_size)
        position = decode_page_token("page_token", page_token, _PAGE_KEYS)
        if task_type:
            validation.name("task_type", task_type, required=True)
        # One extra row tells whether another page follows.
        records = await self._store.list_page(
            position["after_id"] if position else None, limit + 1, task_type or None, status
        )
        if len(records) <= limit:
            return AgentPage(records, "")
        page = records[:limit]
        return AgentPage(page, encode_page_token({"after_id": page[-1].registration.id}))

    async def deregister(self, agent_id: str) -> None:
        checked_id = validation.agent_id("agent_id", agent_id)
        if not await self._store.delete(checked_id):
            raise _unknown_agent(checked_id)

    async def record_outcome(self, outcome: Outcome) -> AgentRecord:
        """Records one outcome and returns the agent's updated record."""
        recorded = await self._record([outcome])
        if recorded.unknown_agent_ids:
            raise _unknown_agent(outcome.agent_id)
        return await self.get(outcome.agent_id)

    async def record_outcomes(self, outcomes: Sequence[Outcome]) -> RecordedOutcomes:
        """Records a batch in one transaction; outcomes of unregistered agents are dropped and named."""
        return await self._record(outcomes)

    async def _record(self, outcomes: Sequence[Outcome]) -> RecordedOutcomes:
        recorded, degradation = await self._store.record_outcomes(outcomes, self._judge)
        _update_metrics(degradation)
        return recorded

    async def find_candidates(self, query: CandidateQuery) -> list[Candidate]:
        """The capable agents, ranked and cut to the limit, with their windows."""
        ranked = rank_candidates(query, await self._store.capable_agents(query))
        with_windows = await self._store.with_windows([candidate.agent for candidate in ranked])
        return [replace(candidate, agent=agent) for candidate, agent in zip(ranked, with_windows, strict=True)]

    async def watch(self) -> AsyncIterator[AgentChanges]:
        """Every agent (in pages, the last marked complete), then every change, until the caller leaves
        or the stream must end (it fell behind, or the registry stops: UNAVAILABLE)."""
        try:
            async with asyncio.timeout(FEED_READY_SECONDS):
                await self._feed.ready.wait()
        except TimeoutError:
            raise Unavailable("the registry has not read its agents from the database yet; retry shortly") from None
        with self._feed.subscribe() as subscription:
            for page in subscription.snapshot_pages():
                yield page
            async for changes in subscription.changes():
                yield changes


def _update_metrics(degradation: DegradationUpdate) -> None:
    metrics.AGENTS_DEGRADED.set(degradation.degraded_agents)
    metrics.AGENT_DEGRADATIONS.inc(degradation.newly_degraded)
