"""All of the registry's SQL: agents, their track record per task type, and their outcomes per minute."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from services.registry.domain import (
    BASELINE_WINDOW,
    PERFORMANCE_WINDOWS,
    RECENT_WINDOW,
    AgentRecord,
    AgentRegistration,
    AgentStatus,
    CandidateQuery,
    Degradation,
    Heartbeat,
    Outcome,
    OutcomeTotals,
    RecordedOutcomes,
    Silence,
    WindowTotals,
)
from shared.database import Pool

Connection = psycopg.AsyncConnection[DictRow]

# The status an agent reported, unless it has been silent too long: then UNHEALTHY, later OFFLINE.
# Computed when read, so it is never stale and needs no sweeper.
_EFFECTIVE_STATUS = """
    CASE
        WHEN last_heartbeat_at < now() - make_interval(secs => %(offline_after)s) THEN 'offline'
        WHEN last_heartbeat_at < now() - make_interval(secs => %(unhealthy_after)s) THEN 'unhealthy'
        ELSE status
    END
"""
# The agent's running totals per task type ride along as one jsonb array, so a record is one statement
# (one snapshot) however many task types it has.
_AGENT_COLUMNS = f"""
    id, name, model_family, task_types, languages, specializations, labels, max_concurrent_tasks, prefetch_tasks,
    {_EFFECTIVE_STATUS} AS status, active_tasks, registered_at, last_heartbeat_at, degraded, degraded_reason,
    (SELECT coalesce(jsonb_agg(jsonb_build_object(
                'task_type', stats.task_type, 'outcomes', stats.outcomes, 'successes', stats.successes,
                'quality_sum', stats.quality_sum, 'quality_count', stats.quality_count,
                'latency_ms_sum', stats.latency_ms_sum)), '[]'::jsonb)
     FROM agent_task_type_stats AS stats WHERE stats.agent_id = agents.id) AS task_type_totals
"""
# Minute buckets older than this are deleted: the degradation baseline reaches back 24 h 5 min.
_MINUTE_RETENTION = "25 hours"


def _totals(row: dict[str, Any]) -> OutcomeTotals:
    return OutcomeTotals(
        outcomes=int(row["outcomes"]),
        successes=int(row["successes"]),
        quality_sum=float(row["quality_sum"]),
        quality_count=int(row["quality_count"]),
        latency_ms_sum=float(row["latency_ms_sum"]),
    )


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
            prefetch_tasks=row["prefetch_tasks"],
        ),
        status=AgentStatus(row["status"]),
        active_tasks=row["active_tasks"],
        registered_at=row["registered_at"],
        last_heartbeat_at=row["last_heartbeat_at"],
        totals_by_task_type={totals["task_type"]: _totals(totals) for totals in row["task_type_totals"]},
        degraded=row["degraded"],
        degraded_reason=row["degraded_reason"],
    )


@dataclass(frozen=True)
class DegradationUpdate:
    """What recording a batch of outcomes did to the degraded flags."""

    # Agents that were not degraded before the batch and are now.
    newly_degraded: int
    # Agents flagged now, across the whole registry.
    degraded_agents: int


class AgentStore:
    def __init__(self, pool: Pool, silence: Silence) -> None:
        self._pool = pool
        self._silence = {"unhealthy_after": silence.unhealthy_after, "offline_after": silence.offline_after}

    async def count_by_status(self) -> dict[AgentStatus, int]:
        """count_agents_by_status: registered agents of every tenant by their status as read now (silence
        counted: UNHEALTHY, OFFLINE)."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                f"SELECT {_EFFECTIVE_STATUS} AS status, count(*) AS count FROM agents GROUP BY 1", self._silence
            )
            return {AgentStatus(row["status"]): row["count"] for row in await cursor.fetchall()}

    async def upsert(self, registration: AgentRegistration) -> AgentRecord:
        """register_agent: one row per id. Re-registering replaces the capabilities, marks the agent
        ONLINE and counts as a heartbeat; registered_at and the track record are kept."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                f"""
                INSERT INTO agents (id, name, model_family, task_types, languages, specializations, labels,
                                    max_concurrent_tasks, prefetch_tasks, status)
                VALUES (%(id)s, %(name)s, %(model_family)s, %(task_types)s, %(languages)s, %(specializations)s,
                        %(labels)s, %(max_concurrent_tasks)s, %(prefetch_tasks)s, 'online')
                ON CONFLICT (id) DO UPDATE SET
                    name = excluded.name,
                    model_family = excluded.model_family,
                    task_types = excluded.task_types,
                    languages = excluded.languages,
                    specializations = excluded.specializations,
                    labels = excluded.labels,
                    max_concurrent_tasks = excluded.max_concurrent_tasks,
                    prefetch_tasks = excluded.prefetch_tasks,
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
                    "prefetch_tasks": registration.prefetch_tasks,
                },
            )
            row = await cursor.fetchone()
            assert row is not None
            return (await self.with_windows([_record(row)], connection))[0]

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
            return (await self.with_windows([_record(row)], connection))[0] if row else None

    async def get(self, agent_id: str) -> AgentRecord | None:
        """get_agent: one agent with its windows; None when the id is unknown."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                f"SELECT {_AGENT_COLUMNS} FROM agents WHERE id = %(id)s", {**self._silence, "id": agent_id}
            )
            row = await cursor.fetchone()
            return (await self.with_windows([_record(row)], connection))[0] if row else None

    async def list_page(
        self, tenant: str | None, after_id: str | None, limit: int, task_type: str | None, status: AgentStatus | None
    ) -> list[AgentRecord]:
        """list_agents: up to `limit` agents of the tenant (None: of every tenant) with ids after
        `after_id`, in id order (keyset paging), with their windows."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                f"""
                SELECT {_AGENT_COLUMNS} FROM agents
                WHERE (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
                  AND (%(after_id)s::text IS NULL OR id > %(after_id)s)
                  AND (%(task_type)s::text IS NULL OR task_types @> ARRAY[%(task_type)s::text])
                  AND (%(status)s::text IS NULL OR {_EFFECTIVE_STATUS} = %(status)s)
                ORDER BY id
                LIMIT %(limit)s
                """,
                {
                    **self._silence,
                    "tenant": tenant,
                    "after_id": after_id,
                    "task_type": task_type,
                    "status": status.value if status else None,
                    "limit": limit,
                },
            )
            records = [_record(row) for row in await cursor.fetchall()]
            return await self.with_windows(records, connection)

    async def delete(self, agent_id: str) -> bool:
        """delete_agent: removes the agent; its track record and minute buckets go with it (cascade)."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute("DELETE FROM agents WHERE id = %s", (agent_id,))
            return cursor.rowcount > 0

    async def capable_agents(self, tenant: str | None, query: CandidateQuery) -> list[AgentRecord]:
        """find_capable_agents: every ONLINE or BUSY agent of the tenant (None: of every tenant) that
        offers the task type and every required language, specialization and label, at or below the
        utilization limit; unordered, no windows."""
        required = query.requirements
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                f"""
                SELECT {_AGENT_COLUMNS} FROM agents
                WHERE (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
                  AND task_types @> ARRAY[%(task_type)s::text]
                  AND languages @> %(languages)s::text[]
                  AND specializations @> %(specializations)s::text[]
                  AND labels @> %(labels)s
                  AND {_EFFECTIVE_STATUS} IN ('online', 'busy')
                  AND least(1.0, active_tasks::double precision / max_concurrent_tasks) <= %(max_utilization)s
                """,
                {
                    **self._silence,
                    "tenant": tenant,
                    "task_type": required.task_type,
                    "languages": sorted(required.languages),
                    "specializations": sorted(required.specializations),
                    "labels": Jsonb(dict(required.labels)),
                    "max_utilization": query.max_utilization,
                },
            )
            return [_record(row) for row in await cursor.fetchall()]

    async def with_windows(
        self, records: Sequence[AgentRecord], connection: Connection | None = None
    ) -> list[AgentRecord]:
        """The records with their 5 min, 1 h and 24 h windows filled in (one query for all of them)."""
        if not records:
            return []
        if connection is None:
            async with self._pool.connection() as own_connection:
                windows = await self._read_windows(own_connection, [record.registration.id for record in records])
        else:
            windows = await self._read_windows(connection, [record.registration.id for record in records])
        return [replace(record, windows=windows[record.registration.id]) for record in records]

    async def _read_windows(self, connection: Connection, agent_ids: list[str]) -> dict[str, tuple[WindowTotals, ...]]:
        """read_windows: per agent, the outcome sums of the minute buckets inside each window length;
        every (agent, length) pair is present, zero when the window holds nothing."""
        seconds = [window.total_seconds() for window in PERFORMANCE_WINDOWS]
        cursor = await connection.execute(
            """
            SELECT ids.agent_id, lengths.seconds,
                   coalesce(sum(buckets.outcomes), 0)::bigint AS outcomes,
                   coalesce(sum(buckets.successes), 0)::bigint AS successes,
                   coalesce(sum(buckets.quality_sum), 0) AS quality_sum,
                   coalesce(sum(buckets.quality_count), 0)::bigint AS quality_count,
                   coalesce(sum(buckets.latency_ms_sum), 0) AS latency_ms_sum
            FROM unnest(%(agent_ids)s::text[]) AS ids (agent_id)
            CROSS JOIN unnest(%(seconds)s::double precision[]) AS lengths (seconds)
            LEFT JOIN agent_outcome_minutes AS buckets
                   ON buckets.agent_id = ids.agent_id
                  AND buckets.minute > now() - make_interval(secs => lengths.seconds)
            GROUP BY ids.agent_id, lengths.seconds
            """,
            {"agent_ids": agent_ids, "seconds": seconds},
        )
        totals_by_agent: dict[str, dict[float, OutcomeTotals]] = defaultdict(dict)
        for row in await cursor.fetchall():
            totals_by_agent[row["agent_id"]][row["seconds"]] = _totals(row)
        return {
            agent_id: tuple(
                WindowTotals(window, totals_by_agent[agent_id][window.total_seconds()])
                for window in PERFORMANCE_WINDOWS
            )
            for agent_id in agent_ids
        }

    async def record_outcomes(
        self, outcomes: Sequence[Outcome], judge: Callable[[OutcomeTotals, OutcomeTotals], Degradation]
    ) -> tuple[RecordedOutcomes, DegradationUpdate]:
        """record_outcomes: in one transaction, adds the outcomes of registered agents to their per-task-type
        totals and to this minute's bucket, deletes their buckets older than 25 hours, and sets each
        affected agent's degraded flag from `judge(recent, baseline)`. Every affected agent row is updated
        (so watchers hear of the new record); outcomes of unknown agents are dropped and reported. A fixed
        number of statements, whatever the batch size."""
        named_ids = sorted({outcome.agent_id for outcome in outcomes})
        async with self._pool.connection() as connection, connection.transaction():
            # Locks the rows (in id order, so concurrent batches cannot deadlock): no agent is deleted
            # before its outcomes are in, and the flag's old value is known for the counter.
            cursor = await connection.execute(
                "SELECT id, degraded FROM agents WHERE id = ANY(%(ids)s) ORDER BY id FOR NO KEY UPDATE",
                {"ids": named_ids},
            )
            was_degraded = {row["id"]: row["degraded"] for row in await cursor.fetchall()}
            known = [outcome for outcome in outcomes if outcome.agent_id in was_degraded]
            unknown_ids = [agent_id for agent_id in named_ids if agent_id not in was_degraded]
            if not known:
                return RecordedOutcomes(0, unknown_ids), DegradationUpdate(0, await self._count_degraded(connection))
            columns: dict[str, list[Any]] = {
                "agent_ids": [outcome.agent_id for outcome in known],
                "task_types": [outcome.task_type for outcome in known],
                "successes": [outcome.success for outcome in known],
                "latencies": [outcome.latency_ms for outcome in known],
                "qualities": [outcome.quality for outcome in known],
            }
            await self._add_to_task_type_totals(connection, columns)
            await self._add_to_minute_buckets(connection, columns)
            affected_ids = sorted(was_degraded)
            # Cheap: the primary key's (agent_id, minute) order finds each agent's oldest buckets.
            await connection.execute(
                f"""
                DELETE FROM agent_outcome_minutes
                WHERE agent_id = ANY(%(ids)s) AND minute < now() - interval '{_MINUTE_RETENTION}'
                """,
                {"ids": affected_ids},
            )
            degradations = {
                agent_id: judge(recent, baseline)
                for agent_id, (recent, baseline) in (await self._recent_and_baseline(connection, affected_ids)).items()
            }
            await connection.execute(
                """
                UPDATE agents
                SET degraded = flags.degraded, degraded_reason = flags.reason, updated_at = now()
                FROM unnest(%(ids)s::text[], %(degraded)s::boolean[], %(reasons)s::text[])
                     AS flags (id, degraded, reason)
                WHERE agents.id = flags.id
                """,
                {
                    "ids": affected_ids,
                    "degraded": [degradations[agent_id].degraded for agent_id in affected_ids],
                    "reasons": [degradations[agent_id].reason for agent_id in affected_ids],
                },
            )
            newly_degraded = sum(
                1 for agent_id in affected_ids if degradations[agent_id].degraded and not was_degraded[agent_id]
            )
            degraded_agents = await self._count_degraded(connection)
        return RecordedOutcomes(len(known), unknown_ids), DegradationUpdate(newly_degraded, degraded_agents)

    @staticmethod
    async def _add_to_task_type_totals(connection: Connection, columns: dict[str, list[Any]]) -> None:
        """add_to_task_type_totals: one row per (agent, task type), created at zero on first use; the batch
        is summed per pair first, since one upsert may touch each row only once."""
        await connection.execute(
            """
            INSERT INTO agent_task_type_stats AS stats
                (agent_id, task_type, outcomes, successes, quality_sum, quality_count, latency_ms_sum)
            SELECT agent_id, task_type, count(*), count(*) FILTER (WHERE success),
                   coalesce(sum(quality), 0), count(quality), sum(latency_ms)
            FROM unnest(%(agent_ids)s::text[], %(task_types)s::text[], %(successes)s::boolean[],
                        %(latencies)s::double precision[], %(qualities)s::double precision[])
                 AS batch (agent_id, task_type, success, latency_ms, quality)
            GROUP BY agent_id, task_type
            ON CONFLICT (agent_id, task_type) DO UPDATE SET
                outcomes = stats.outcomes + excluded.outcomes,
                successes = stats.successes + excluded.successes,
                quality_sum = stats.quality_sum + excluded.quality_sum,
                quality_count = stats.quality_count + excluded.quality_count,
                latency_ms_sum = stats.latency_ms_sum + excluded.latency_ms_sum
            """,
            columns,
        )

    @staticmethod
    async def _add_to_minute_buckets(connection: Connection, columns: dict[str, list[Any]]) -> None:
        """add_to_minute_buckets: the batch summed per agent into the bucket of the current minute."""
        await connection.execute(
            """
            INSERT INTO agent_outcome_minutes AS buckets
                (agent_id, minute, outcomes, successes, quality_sum, quality_count, latency_ms_sum)
            SELECT agent_id, date_trunc('minute', now()), count(*), count(*) FILTER (WHERE success),
                   coalesce(sum(quality), 0), count(quality), sum(latency_ms)
            FROM unnest(%(agent_ids)s::text[], %(successes)s::boolean[], %(latencies)s::double precision[],
                        %(qualities)s::double precision[])
                 AS batch (agent_id, success, latency_ms, quality)
            GROUP BY agent_id
            ON CONFLICT (agent_id, minute) DO UPDATE SET
                outcomes = buckets.outcomes + excluded.outcomes,
                successes = buckets.successes + excluded.successes,
                quality_sum = buckets.quality_sum + excluded.quality_sum,
                quality_count = buckets.quality_count + excluded.quality_count,
                latency_ms_sum = buckets.latency_ms_sum + excluded.latency_ms_sum
            """,
            columns,
        )

    @staticmethod
    async def _recent_and_baseline(
        connection: Connection, agent_ids: list[str]
    ) -> dict[str, tuple[OutcomeTotals, OutcomeTotals]]:
        """read_recent_and_baseline: per agent, the sums of the last 5 minutes' buckets and of the 24 hours'
        before them; zero totals for an agent without buckets."""
        cursor = await connection.execute(
            """
            SELECT ids.agent_id, periods.recent,
                   coalesce(sum(buckets.outcomes), 0)::bigint AS outcomes,
                   coalesce(sum(buckets.successes), 0)::bigint AS successes,
                   coalesce(sum(buckets.quality_sum), 0) AS quality_sum,
                   coalesce(sum(buckets.quality_count), 0)::bigint AS quality_count,
                   coalesce(sum(buckets.latency_ms_sum), 0) AS latency_ms_sum
            FROM unnest(%(agent_ids)s::text[]) AS ids (agent_id)
            CROSS JOIN (VALUES (true), (false)) AS periods (recent)
            LEFT JOIN agent_outcome_minutes AS buckets
                   ON buckets.agent_id = ids.agent_id
                  AND CASE WHEN periods.recent
                           THEN buckets.minute > now() - %(recent)s
                           ELSE buckets.minute > now() - %(recent)s - %(baseline)s
                                AND buckets.minute <= now() - %(recent)s
                      END
            GROUP BY ids.agent_id, periods.recent
            """,
            {"agent_ids": agent_ids, "recent": RECENT_WINDOW, "baseline": BASELINE_WINDOW},
        )
        recent: dict[str, OutcomeTotals] = {}
        baseline: dict[str, OutcomeTotals] = {}
        for row in await cursor.fetchall():
            (recent if row["recent"] else baseline)[row["agent_id"]] = _totals(row)
        return {agent_id: (recent[agent_id], baseline[agent_id]) for agent_id in agent_ids}

    @staticmethod
    async def _count_degraded(connection: Connection) -> int:
        """count_degraded: agents flagged degraded now, registry-wide."""
        cursor = await connection.execute("SELECT count(*) AS degraded FROM agents WHERE degraded")
        row = await cursor.fetchone()
        assert row is not None
        return int(row["degraded"])

    # ---- For the WatchAgents feed: no windows (too costly on every change). ----

    async def all_agents(self) -> list[AgentRecord]:
        """all_agents: every registered agent, in one statement (one consistent snapshot)."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(f"SELECT {_AGENT_COLUMNS} FROM agents ORDER BY id", self._silence)
            return [_record(row) for row in await cursor.fetchall()]

    async def agents_by_ids(self, agent_ids: Sequence[str]) -> list[AgentRecord]:
        """agents_by_ids: those of the ids still registered; a missing id has been deregistered."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                f"SELECT {_AGENT_COLUMNS} FROM agents WHERE id = ANY(%(ids)s) ORDER BY id",
                {**self._silence, "ids": list(agent_ids)},
            )
            return [_record(row) for row in await cursor.fetchall()]

    async def effective_statuses(self) -> dict[str, AgentStatus]:
        """effective_statuses: every agent's status as read now (silence turns it UNHEALTHY, then OFFLINE);
        two columns, so cheap enough to run every second."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(f"SELECT id, {_EFFECTIVE_STATUS} AS status FROM agents", self._silence)
            return {row["id"]: AgentStatus(row["status"]) for row in await cursor.fetchall()}
