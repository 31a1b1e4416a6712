"""The orchestrator's operations: tasks in, assignments out, reports checked against the attempt."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from services.orchestrator.domain import (
    AgentProfile,
    AttemptCancellation,
    AttemptReport,
    NewTask,
    OrchestratorDraining,
    Submitted,
    TaskCount,
    TaskEvent,
    TaskRecord,
    TaskState,
    validate_batch_size,
    validate_failure,
    validate_progress,
    validate_report,
    why_report_is_stale,
)
from services.orchestrator.notifications import TaskNotifications
from services.orchestrator.registry_client import RegistryClient
from services.orchestrator.sessions import AgentSession, AgentSessions
from services.orchestrator.storage import TaskStore
from shared import validation
from shared.errors import Aborted, ArbiterError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from shared.pagination import decode_page_token, encode_page_token

logger = logging.getLogger(__name__)

_PAGE_KEYS = frozenset({"created_at", "id"})
# How often an open stream re-reads its agent's capabilities from the registry.
PROFILE_REFRESH_SECONDS = 10.0
MAX_CANCEL_REASON_LENGTH = 1024
# A watcher re-reads its task this often even without a notification (the listener may be reconnecting).
WATCH_REREAD_SECONDS = 5.0
SHUTDOWN_POLL_SECONDS = 0.1


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
        notifications: TaskNotifications,
        *,
        max_payload_bytes: int,
        poll_seconds: float,
        instance_id: str,
    ) -> None:
        self._store = store
        self._registry = registry
        self.sessions = sessions
        self._notifications = notifications
        self.max_payload_bytes = max_payload_bytes
        self._poll_seconds = poll_seconds
        self.instance_id = instance_id
        # Streams that ended because this orchestrator is shutting down: (agent id, stream id).
        self._left_at_shutdown: list[tuple[str, str]] = []

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
        cancelled = await self._store.cancel(checked_id, reason.strip() or "cancelled by request")
        if cancelled is None:
            current = await self.get(checked_id)
            raise FailedPrecondition(
                f"task {checked_id} is already {current.state.name}; only PENDING, ASSIGNED or RUNNING tasks "
                "can be cancelled"
            )
        # The agent's stream, on whichever orchestrator, hears of it through the table's NOTIFY.
        return cancelled

    async def watch(self, task_id: str) -> AsyncIterator[TaskRecord]:
        """The task now, then after each change, until it is finished. Changes in quick succession may
        arrive as one (the latest state); GetTaskHistory has every transition."""
        checked_id = validation.task_id("task_id", task_id)
        with self._notifications.watch(checked_id) as changed:
            task = await self.get(checked_id)
            yield task
            while not task.state.is_terminal:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), WATCH_REREAD_SECONDS)
                changed.clear()
                current = await self._store.get(checked_id)
                if current is None:
                    raise NotFound(f"task {checked_id} was deleted (finished tasks are pruned after their retention)")
                if current != task:
                    task = current
                    yield task

    async def history(self, task_id: str) -> list[TaskEvent]:
        checked_id = validation.task_id("task_id", task_id)
        events = await self._store.history(checked_id)
        if not events and await self._store.get(checked_id) is None:
            raise _unknown_task(checked_id)
        return events

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

    async def assignments(
        self, agent_id: str
    ) -> AsyncIterator[TaskRecord | AttemptCancellation | OrchestratorDraining]:
        """The agent's work, as long as the stream is open: first what it already holds (an assignment
        may have been lost with a previous stream), then new claims whenever it has free slots, and
        cancellations of what it holds as they happen."""
        if self.sessions.closing:
            raise Unavailable("this orchestrator is shutting down; connect to another instance")
        profile = await self._registry.get_agent(validation.agent_id("agent_id", agent_id))
        stream_id = str(uuid.uuid4())
        with self.sessions.open(profile) as session:
            logger.info("agent %s connected (%d streams open)", agent_id, len(self.sessions))
            try:
                async with session.claim_lock:
                    await self._store.open_stream(agent_id, stream_id, self.instance_id)
                    held = await self._store.renew_held(agent_id)
                for task in held:
                    yield task
                refreshed_at = time.monotonic()
                while not self.sessions.closing:
                    session.wakeup.clear()
                    cancellations = session.take_cancellations()
                    for cancellation in cancellations:
                        yield cancellation
                    if cancellations:
                        # An attempt was taken back, perhaps because the agent is OFFLINE: ask the registry
                        # before claiming, or the released tasks would come straight back to this stream.
                        session.profile = await self._refreshed(session.profile)
                        refreshed_at = time.monotonic()
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
                for cancellation in session.take_cancellations():
                    yield cancellation
                yield OrchestratorDraining(f"orchestrator {self.instance_id} is shutting down; reconnect")
            finally:
                logger.info("agent %s disconnected", agent_id)
                # Shielded: the stream's own cancellation must not cut the release short.
                await asyncio.shield(self._stream_closed(agent_id, stream_id, replaced=session.superseded))

    async def _stream_closed(self, agent_id: str, stream_id: str, *, replaced: bool) -> None:
        """A closed stream releases what its agent holds at once, for other agents to take, unless a
        newer stream replaced it, the agent is draining (it finishes its tasks, extending their leases),
        or this orchestrator is shutting down (then after the grace period, see `shutdown`)."""
        if self.sessions.closing:
            self._left_at_shutdown.append((agent_id, stream_id))
            return
        if replaced:
            # The agent's newer stream here has (or is about to have) its row: never release.
            return
        release_reason: str | None = f"the assignment stream of agent '{agent_id}' closed"
        try:
            if (await self._registry.get_agent(agent_id)).draining:
                release_reason = None
        except ArbiterError as error:
            logger.info("releasing agent %s's tasks without its status (%s)", agent_id, error)
        try:
            released = await self._store.close_stream(agent_id, stream_id, release_reason)
        except psycopg.Error as error:
            logger.warning("could not release agent %s's tasks; their leases will: %s", agent_id, error)
            return
        if released:
            logger.info("agent %s's stream closed: released %d task(s)", agent_id, len(released))
            for task_type in {task.task_type for task in released}:
                self.sessions.wake_capable(task_type)

    async def shutdown(self, grace_seconds: float) -> None:
        """Streams say this orchestrator is draining and end; reports keep being accepted for up to
        `grace_seconds` while agents finish or reconnect elsewhere. Then what is left is released for
        reassignment, except the tasks of agents that are still heartbeating and did not reconnect yet
        (a lone orchestrator restarting): they carry on when they reconnect, and their leases and the
        OFFLINE check still take the tasks back if they never do."""
        self.sessions.close_all()
        deadline = time.monotonic() + grace_seconds
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.sessions.all_closed.wait(), grace_seconds)
        agent_ids = sorted({agent_id for agent_id, _ in self._left_at_shutdown})
        try:
            # Reports arrive as unary calls, possibly on other instances: ask the database.
            for _ in range(max(0, int((deadline - time.monotonic()) / SHUTDOWN_POLL_SECONDS))):
                if not agent_ids or not await self._store.count_held(agent_ids):
                    break
                await asyncio.sleep(SHUTDOWN_POLL_SECONDS)
            for agent_id, stream_id in self._left_at_shutdown:
                reason = (
                    None
                    if await self._is_alive(agent_id)
                    else (f"orchestrator {self.instance_id} shut down and agent '{agent_id}' is gone")
                )
                released = await self._store.close_stream(agent_id, stream_id, reason)
                if released:
                    logger.info("shutdown: released %d task(s) of agent %s", len(released), agent_id)
        except psycopg.Error as error:
            logger.warning("shutdown: could not release held tasks; their leases will: %s", error)

    async def _is_alive(self, agent_id: str) -> bool:
        """Heartbeating (ONLINE, BUSY or DRAINING) by the registry's account; unknown counts as gone."""
        try:
            return (await self._registry.get_agent(agent_id)).alive
        except ArbiterError:
            return False

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
