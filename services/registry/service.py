"""The registry's operations: validation from domain, rows from storage, NOT_FOUND for unknown ids."""

from __future__ import annotations

from dataclasses import dataclass

from services.registry.domain import AgentRecord, AgentRegistration, AgentStatus, validate_heartbeat
from services.registry.storage import AgentStore
from shared import validation
from shared.errors import NotFound
from shared.pagination import decode_page_token, encode_page_token

_PAGE_KEYS = frozenset({"after_id"})


def _unknown_agent(agent_id: str) -> NotFound:
    return NotFound(f"agent '{agent_id}' is not registered: call RegisterAgent first")


@dataclass(frozen=True)
class AgentPage:
    agents: list[AgentRecord]
    next_page_token: str


class Registry:
    def __init__(self, store: AgentStore, heartbeat_interval_seconds: float) -> None:
        self._store = store
        self.heartbeat_interval_seconds = heartbeat_interval_seconds

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
