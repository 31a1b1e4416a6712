"""All of the registry's SQL: the agents table."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from services.registry.domain import AgentRecord, AgentRegistration, AgentStatus, Heartbeat, Silence
from shared.database import Pool

# The status an agent reported, unless it has been silent too long: then UNHEALTHY, later OFFLINE.
# Computed when read, so it is never stale and needs no sweeper.
_EFFECTIVE_STATUS = """
    CASE
        WHEN last_heartbeat_at < now() - make_interval(secs => %(offline_after)s) THEN 'offline'
        WHEN last_heartbeat_at < now() - make_interval(secs => %(unhealthy_after)s) THEN 'unhealthy'
        ELSE status
    END
"""
_AGENT_COLUMNS = f"""
    id, name, model_family, task_types, languages, specializations, labels, max_concurrent_tasks,
    {_EFFECTIVE_STATUS} AS status, active_tasks, success_rate, average_quality, average_latency_ms, task_count,
    registered_at, last_heartbeat_at
"""


def _record(row: dict[str, Any]) -> AgentRecord:
    return AgentRecord(
        registration=AgentRegistration(
            id=row["id"],
            name=row["name"],
            model_family=row["model_family"],
            task_types=list(row["task_types"]),
            languages=list(row["languages"]),
            specializations=list(row["specializations"]),
            labels=dict(row["labels"]),
            max_concurrent_tasks=row["max_concurrent_tasks"],
        ),
        status=AgentStatus(row["status"]),
        active_tasks=row["active_tasks"],
        success_rate=row["success_rate"],
        average_quality=row["average_quality"],
        average_latency_ms=row["average_latency_ms"],
        task_count=row["task_count"],
        registered_at=row["registered_at"],
        last_heartbeat_at=row["last_heartbeat_at"],
    )


class AgentStore:
    def __init__(self, pool: Pool, silence: Silence) -> None:
        self._pool = pool
        self._silence = {"unhealthy_after": silence.unhealthy_after, "offline_after": silence.offline_after}

    async def upsert(self, registration: AgentRegistration) -> AgentRecord:
        """register_agent: one row per id. Re-registering replaces the capabilities, marks the agent
        ONLINE and counts as a heartbeat; registered_at and the track record are kept."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                f"""
                INSERT INTO agents (id, name, model_family, task_types, languages, specializations, labels,
                                    max_concurrent_tasks, status)
                VALUES (%(id)s, %(name)s, %(model_family)s, %(task_types)s, %(languages)s, %(specializations)s,
                        %(labels)s, %(max_concurrent_tasks)s, 'online')
                ON CONFLICT (id) DO UPDATE SET
                    name = excluded.name,
                    model_family = excluded.model_family,
                    task_types = excluded.task_types,
                    languages = excluded.languages,
                    specializations = excluded.specializations,
                    labels = excluded.labels,
                    max_concurrent_tasks = excluded.max_concurrent_tasks,
                    status = 'online',
                    last_heartbeat_at = now(),
                    updated_at = now()
                RETURNING {_AGENT_COLUMNS}
                """,
                {
                    **self._silence,
                    "id": registration.id,
                    "name": registration.name,
                    "model_family": registration.model_family,
                    "task_types": registration.task_types,
                    "languages": registration.languages,
                    "specializations": registration.specializations,
                    "labels": Jsonb(registration.labels),
                    "max_concurrent_tasks": registration.max_concurrent_tasks,
                },
            )
            row = await cursor.fetchone()
        assert row is not None
        return _record(row)

    async def record_heartbeat(self, heartbeat: Heartbeat) -> AgentRecord | None:
        """record_heartbeat: updates one agent's load and status; None when the id is unknown."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                f"""
                UPDATE agents
                SET active_tasks = %(active_tasks)s, status = %(status)s, last_heartbeat_at = now(),
                    updated_at = now()
                WHERE id = %(id)s
                RETURNING {_AGENT_COLUMNS}
                """,
                {
                    **self._silence,
                    "active_tasks": heartbeat.active_tasks,
                    "status": heartbeat.status.value,
                    "id": heartbeat.agent_id,
                },
            )
            row = await cursor.fetchone()
        return _record(row) if row else None

    async def get(self, agent_id: str) -> AgentRecord | None:
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                f"SELECT {_AGENT_COLUMNS} FROM agents WHERE id = %(id)s", {**self._silence, "id": agent_id}
            )
            row = await cursor.fetchone()
        return _record(row) if row else None

    async def list_page(
        self, after_id: str | None, limit: int, task_type: str | None, status: AgentStatus | None
    ) -> list[AgentRecord]:
        """list_agents: up to `limit` agents with ids after `after_id`, in id order (keyset paging)."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                f"""
                SELECT {_AGENT_COLUMNS} FROM agents
                WHERE (%(after_id)s::text IS NULL OR id > %(after_id)s)
                  AND (%(task_type)s::text IS NULL OR task_types @> ARRAY[%(task_type)s::text])
                  AND (%(status)s::text IS NULL OR {_EFFECTIVE_STATUS} = %(status)s)
                ORDER BY id
                LIMIT %(limit)s
                """,
                {
                    **self._silence,
                    "after_id": after_id,
                    "task_type": task_type,
                    "status": status.value if status else None,
                    "limit": limit,
                },
            )
            rows = await cursor.fetchall()
        return [_record(row) for row in rows]

    async def delete(self, agent_id: str) -> bool:
        async with self._pool.connection() as connection:
            cursor = await connection.execute("DELETE FROM agents WHERE id = %s", (agent_id,))
            return cursor.rowcount > 0
