"""The orchestrator's operations: tasks in, assignments out, reports checked against the attempt."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.orchestrator.domain import (
    AgentProfile,
    AttemptCancellation,
    AttemptReport,
    NewTask,
    Submitted,
    TaskCount,
    TaskRecord,
    TaskState,
    validate_batch_size,
    validate_failure,
    validate_progress,
    validate_report,
    why_report_is_stale,
)
from services.orchestrator.registry_client import RegistryClient
from services.orchestrator.sessions import AgentSession, AgentSessions
from services.orchestrator.storage import TaskStore
from shared import validation
from shared.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from shared.pagination import decode_page_token, encode_page_token

logger = logging.getLogger(__name__)

_PAGE_KEYS = frozenset({"created_at", "id"})
# How often an open stream re-reads its agent's capabilities from the registry.
PROFILE_REFRESH_SECONDS = 10.0
MAX_CANCEL_REASON_LENGTH = 1024


def _unknown_task(task_id: str) -> NotFound:
    return NotFound(f"task {task_id} does not exist")


@dataclass(frozen=True)
class TaskPage:
    tasks: list[TaskRecord]
    next_page_token: str


class Orchestrator:
    def __init__(
        self,
        store: TaskStore,
        registry: RegistryClient,
        sessions: AgentSessions,
        *,
        max_payload_bytes: int,
        poll_seconds: float,
    ) -> None:
        self._store = store
        self._registry = registry
        self.sessions = sessions
        self.max_payload_bytes = max_payload_bytes
        self._poll_seconds = poll_seconds

    # Submitters' side.

    async def submit(self, task: NewTask) -> Submitted:
        return (await self.submit_many([task]))[0]

    async def submit_many(self, tasks: list[NewTask]) -> list[Submitted]:
        validate_batch_size(len(tasks))
        submitted = await self._store.insert_many(tasks)
        for task_type in {each.task.task_type for each in submitted if each.created}:
            self.sessions.wake_capable(task_type)
        return submitted

    async def queue_stats(self) -> list[TaskCount]:
        return await self._store.count_by_type_and_state()

    async def get(self, task_id: str) -> TaskRecord:
        checked_id = validation.task_id("task_id", task_id)
        record = await self._store.get(checked_id)
        if record is None:
            raise _unknown_task(checked_id)
        return record

    async def list_tasks(self, state: TaskState | None, task_type: str, page_size: int, page_token: str) -> TaskPage:
        limit = validation.page_size("page_size", page_size)
        position = decode_page_token("page_token", page_token, _PAGE_KEYS)
        before = None
        if position is not None:
            try:
                before = (datetime.fromisoformat(position["created_at"]), validation.task_id("id", position["id"]))
            except (TypeError, ValueError, InvalidArgument):
                raise InvalidArgument("page_token", "is not a token from a previous page") from None
        if task_type:
            validation.name("task_type", task_type, required=True)
        records = await self._store.list_page(before, limit + 1, state, task_type or None)
        if len(records) <= limit:
            return TaskPage(records, "")
        page = records[:limit]
        last = page[-1]
        return TaskPage(page, encode_page_token({"created_at": last.created_at.isoformat(), "id": last.id}))

    async def cancel(self, task_id: str, reason: str) -> TaskRecord:
        checked_id = validation.task_id("task_id", task_id)
        if len(reason) > MAX_CANCEL_REASON_LENGTH:
            raise InvalidArgument("reason", f"is {len(reason)} characters; at most {MAX_CANCEL_REASON_LENGTH}")
        cancellation = await self._store.cancel(checked_id, reason.strip() or "cancelled by request")
        if cancellation is None:
            current = await self.get(checked_id)
            raise FailedPrecondition(
                f"task {checked_id} is already {current.state.name}; only PENDING, ASSIGNED or RUNNING tasks "
                "can be cancelled"
            )
        if cancellation.released_agent_id is not None:
            task = cancellation.task
            self.sessions.send_cancellation(
                cancellation.released_agent_id, AttemptCancellation(task.id, task.attempt, task.error)
            )
        return cancellation.task

    # Agents' side.

    async def _explain_stale(self, report: AttemptReport) -> FailedPrecondition:
        current = await self._store.get(report.task_id)
        if current is None:
            raise _unknown_task(report.task_id)
        return FailedPrecondition(why_report_is_stale(current, report))

    async def report_progress(
        self, task_id: str, agent_id: str, attempt: int, progress: float, message: str
    ) -> TaskRecord:
        report = validate_report(task_id, agent_id, attempt)
        validate_progress(progress, message)
        record = await self._store.record_progress(report, progress, message)
        if record is None:
            raise await self._explain_stale(report)
        return record

    async def complete(self, task_id: str, agent_id: str, attempt: int, result: dict[str, Any]) -> TaskRecord:
        report = validate_report(task_id, agent_id, attempt)
        record = await self._store.complete(report, validation.storable_json("result", result))
        if record is None:
            raise await self._explain_stale(report)
        self.sessions.wake(report.agent_id)
        return record

    async def fail(self, task_id: str, agent_id: str, attempt: int, error: str, retryable: bool) -> TaskRecord:
        report = validate_report(task_id, agent_id, attempt)
        validate_failure(error)
        record = await self._store.fail(report, error, retryable)
        if record is None:
            raise await self._explain_stale(report)
        self.sessions.wake(report.agent_id)
        if record.state == TaskState.PENDING:
            self.sessions.wake_capable(record.task_type)
        return record

    async def assignments(self, agent_id: str) -> AsyncIterator[TaskRecord | AttemptCancellation]:
        """The agent's work, as long as the stream is open: first what it already holds (an assignment
        may have been lost with a previous stream), then new claims whenever it has free slots, and
        cancellations of what it holds as they happen."""
        profile = await self._registry.get_agent(validation.agent_id("agent_id", agent_id))
        with self.sessions.open(profile) as session:
            logger.info("agent %s connected (%d streams open)", agent_id, len(self.sessions))
            try:
                async with session.claim_lock:
                    held = await self._store.renew_held(agent_id)
                for task in held:
                    yield task
                refreshed_at = time.monotonic()
                while not self.sessions.closing:
                    session.wakeup.clear()
                    for cancellation in session.take_cancellations():
                        yield cancellation
                    if session.profile.accepts_work:
                        async with session.claim_lock:
                            self._raise_if_superseded(session, agent_id)
                            claimed = await self._store.claim(session.profile)
                        for task in claimed:
                            yield task
                        if claimed:
                            continue
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(session.wakeup.wait(), self._poll_seconds)
                    self._raise_if_superseded(session, agent_id)
                    if time.monotonic() - refreshed_at >= PROFILE_REFRESH_SECONDS:
                        session.profile = await self._refreshed(session.profile)
                        refreshed_at = time.monotonic()
            finally:
                logger.info("agent %s disconnected", agent_id)

    @staticmethod
    def _raise_if_superseded(session: AgentSession, agent_id: str) -> None:
        if session.superseded:
            raise Aborted(f"a newer assignment stream for agent '{agent_id}' replaced this one")

    async def _refreshed(self, profile: AgentProfile) -> AgentProfile:
        """The agent's current profile; the last known one while the registry is unreachable."""
        try:
            return await self._registry.get_agent(profile.id)
        except NotFound:
            raise NotFound(f"agent '{profile.id}' was deregistered; register it again to receive work") from None
        except Unavailable as error:
            logger.warning("keeping agent %s's last known profile: %s", profile.id, error)
            return profile
