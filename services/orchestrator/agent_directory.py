"""The orchestrator's live view of every registered agent, fed by the registry's WatchAgents stream.

Routing reads it for every task, so no task costs a registry call. The stream opens with a snapshot
and then carries changes; when it breaks (the registry restarts, the network blips) the directory keeps
its last view, reconnects with backoff, and replaces the view with the new snapshot, so anything missed
meanwhile is corrected.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from services.orchestrator.domain import AgentProfile
from services.orchestrator.registry_client import RegistryClient
from shared.errors import ArbiterError

logger = logging.getLogger(__name__)


class StreamEnded(Exception):
    """The registry ended the stream without an error (e.g. while shutting down)."""


class AgentDirectory:
    def __init__(self, registry: RegistryClient, on_change: Callable[[set[str]], None] = lambda ids: None) -> None:
        self._registry = registry
        self._on_change = on_change
        self._agents: dict[str, AgentProfile] = {}
        # Set once a snapshot has been received; cleared while the stream is down (the view may be stale).
        self.synced = asyncio.Event()
        self.ever_synced = False
        self._outcomes_by_type: dict[str, int] | None = None
        # Agents the registry said were deregistered (until they register again).
        self.removed: set[str] = set()

    def get(self, agent_id: str) -> AgentProfile | None:
        return self._agents.get(agent_id)

    def agents(self) -> Iterable[AgentProfile]:
        return self._agents.values()

    def outcomes_of_type(self, task_type: str) -> int:
        """Outcomes recorded on the task type across the fleet: the `t` of the routing strategies."""
        if self._outcomes_by_type is None:
            totals: dict[str, int] = {}
            for agent in self._agents.values():
                for each_type, performance in agent.performance.items():
                    totals[each_type] = totals.get(each_type, 0) + performance.samples
            self._outcomes_by_type = totals
        return self._outcomes_by_type.get(task_type, 0)

    async def run(self) -> None:
        """Follows the registry until cancelled, reconnecting with backoff whenever the stream breaks."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((ArbiterError, StreamEnded)),
            wait=wait_exponential_jitter(multiplier=0.05, max=2.0, jitter=0.1),
            before_sleep=lambda state: logger.warning(
                "agent watch stream lost; reconnecting: %s", state.outcome.exception() if state.outcome else ""
            ),
        ):
            with attempt:
                await self._follow()

    async def _follow(self) -> None:
        incoming: dict[str, AgentProfile] = {}
        in_snapshot = True
        try:
            async for changes in self._registry.watch_agents():
                if in_snapshot:
                    incoming.update((agent.id, agent) for agent in changes.agents)
                    if changes.snapshot_complete:
                        self._replace(incoming)
                        in_snapshot = False
                    continue
                changed = {agent.id for agent in changes.agents} | set(changes.removed_agent_ids)
                for agent in changes.agents:
                    self._agents[agent.id] = agent
                    self.removed.discard(agent.id)
                for agent_id in changes.removed_agent_ids:
                    self._agents.pop(agent_id, None)
                    self.removed.add(agent_id)
                self._changed(changed)
        finally:
            self.synced.clear()
        raise StreamEnded("the registry ended the agent watch stream")

    def _replace(self, snapshot: dict[str, AgentProfile]) -> None:
        changed = {
            agent_id
            for agent_id in snapshot.keys() | self._agents.keys()
            if snapshot.get(agent_id) != self._agents.get(agent_id)
        }
        self.removed = (self.removed | (self._agents.keys() - snapshot.keys())) - snapshot.keys()
        self._agents = snapshot
        self.synced.set()
        if not self.ever_synced:
            logger.info("agent view synchronised: %d agents", len(snapshot))
        self.ever_synced = True
        self._changed(changed)

    def _changed(self, agent_ids: set[str]) -> None:
        self._outcomes_by_type = None
        if agent_ids:
            self._on_change(agent_ids)
