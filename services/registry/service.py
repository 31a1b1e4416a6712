"""The registry's operations: validation from domain, rows from storage, NOT_FOUND for unknown ids."""

from __future__ import annotations

import asyncio
import logging
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
    Heartbeat,
    Outcome,
    RecordedOutcomes,
    judge_degradation,
    rank_candidates,
)
from services.registry.storage import AgentStore, DegradationUpdate
from shared import tenancy, validation
from shared.errors import InvalidArgument, NotFound, Unavailable
from shared.logs import about_agent
from shared.pagination import decode_page_token, encode_page_token
from shared.replica import Reads

logger = logging.getLogger(__name__)

_PAGE_KEYS = frozenset({"after_id"})
# How long a WatchAgents call waits for a starting registry's first read of every agent.
FEED_READY_SECONDS = 10.0


def _unknown_agent(agent_id: str) -> NotFound:
    # The same answer for an agent of another tenant: ids do not leak across tenants.
    return NotFound(f"agent '{tenancy.plain(agent_id)}' is not registered: call RegisterAgent first")


@dataclass(frozen=True)
class AgentPage:
    agents: list[AgentRecord]
    next_page_token: str


class Registry:
    """Agent ids here are qualified by their tenant (`shared.tenancy`); a `tenant` of None means every
    tenant (keys that act in every tenant)."""

    def __init__(
        self,
        store: AgentStore,
        feed: AgentFeed,
        heartbeat_interval_seconds: float,
        degradation_min_outcomes: int,
        reads: Reads[AgentStore] | None = None,
    ) -> None:
        self._store = store
        # ListAgents: the read replica's store when there is one (shared/replica.py).
        self._reads = reads or Reads(store)
        self._feed = feed
        self.heartbeat_interval_seconds = heartbeat_interval_seconds
        self._judge = partial(judge_degradation, min_outcomes=degradation_min_outcomes)

    async def register(self, registration: AgentRegistration) -> AgentRecord:
        record = await self._store.upsert(registration)
        logger.info(
            "agent %s registered for %s",
            tenancy.plain(registration.id),
            ", ".join(registration.task_types),
            extra=about_agent(registration.id),
        )
        return record

    async def heartbeat(self, beat: Heartbeat) -> AgentRecord:
        record = await self._store.record_heartbeat(beat)
        if record is None:
            raise _unknown_agent(beat.agent_id)
        return record

    async def get(self, agent_id: str) -> AgentRecord:
        record = await self._store.get(agent_id)
        if record is None:
            raise _unknown_agent(agent_id)
        return record

    async def list_agents(
        self, tenant: str | None, page_size: int, page_token: str, task_type: str, status: AgentStatus | None
    ) -> AgentPage:
        limit = validation.page_size("page_size", page_size)
        position = decode_page_token("page_token", page_token, _PAGE_KEYS)
        if position is not None and not isinstance(position["after_id"], str):
            raise InvalidArgument("page_token", "is not a token from a previous page: pass next_page_token unchanged")
        if task_type:
            validation.name("task_type", task_type, required=True)
        # One extra row tells whether another page follows.
        records = await self._reads.run(
            lambda store: store.list_page(
                tenant, position["after_id"] if position else None, limit + 1, task_type or None, status
            )
        )
        if len(records) <= limit:
            return AgentPage(records, "")
        page = records[:limit]
        return AgentPage(page, encode_page_token({"after_id": page[-1].registration.id}))

    async def deregister(self, agent_id: str) -> None:
        if not await self._store.delete(agent_id):
            raise _unknown_agent(agent_id)

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

    async def find_candidates(self, tenant: str | None, query: CandidateQuery) -> list[Candidate]:
        """The tenant's capable agents, ranked and cut to the limit, with their windows."""
        ranked = rank_candidates(query, await self._store.capable_agents(tenant, query))
        with_windows = await self._store.with_windows([candidate.agent for candidate in ranked])
        return [replace(candidate, agent=agent) for candidate, agent in zip(ranked, with_windows, strict=True)]

    async def watch(self, tenant: str | None) -> AsyncIterator[AgentChanges]:
        """Every agent of the tenant (in pages, the last marked complete), then every change, until the
        caller leaves or the stream must end (it fell behind, or the registry stops: UNAVAILABLE)."""
        try:
            async with asyncio.timeout(FEED_READY_SECONDS):
                await self._feed.ready.wait()
        except TimeoutError:
            raise Unavailable("the registry has not read its agents from the database yet; retry shortly") from None
        with self._feed.subscribe() as subscription:
            for page in subscription.snapshot_pages():
                yield page if tenant is None else page.of_tenant(tenant)
            async for changes in subscription.changes():
                seen = changes if tenant is None else changes.of_tenant(tenant)
                if seen.upserted or seen.removed_ids:
                    yield seen


def _update_metrics(degradation: DegradationUpdate) -> None:
    metrics.AGENTS_DEGRADED.set(degradation.degraded_agents)
    metrics.AGENT_DEGRADATIONS.inc(degradation.newly_degraded)
