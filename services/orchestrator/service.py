"""The orchestrator's operations: tasks in, assignments out, reports checked against the attempt."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import psycopg
from opentelemetry.propagate import inject

from services.orchestrator.agent_directory import AgentDirectory
from services.orchestrator.dispatcher import Dispatcher
from services.orchestrator.domain import (
    AttemptCancellation,
    AttemptReport,
    Completion,
    NewTask,
    OrchestratorDraining,
    RecordedDecision,
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
from services.orchestrator.explain import PendingReasons, scored_candidates
from services.orchestrator.notifications import TaskNotifications
from services.orchestrator.outcomes import OutcomeReporter
from services.orchestrator.registry_client import Outcome, RegistryClient
from services.orchestrator.routing import Router, ScoredAgent, Strategy
from services.orchestrator.sessions import AgentSession, AgentSessions
from services.orchestrator.storage import Submission, TaskStore
from shared import tenancy, validation
from shared.errors import Aborted, ArbiterError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from shared.logs import about_agent
from shared.pagination import decode_page_token, encode_page_token
from shared.replica import Reads
from shared.tenancy import TaskScope

logger = logging.getLogger(__name__)

_PAGE_KEYS = frozenset({"created_at", "id"})
MAX_CANCEL_REASON_LENGTH = validation.MAX_CANCEL_REASON_LENGTH
# A watcher re-reads its task this often even without a notification (the listener may be reconnecting).
WATCH_REREAD_SECONDS = 5.0
SHUTDOWN_POLL_SECONDS = 0.1
# A closed stream's tasks are released this long after it closed, unless the agent reconnected here
# meanwhile (then they stay with it and are sent again). A reconnect to another orchestrator within
# this time replaces the agent's stream row, which keeps them too.
RECONNECT_GRACE_SECONDS = 0.25
RECONNECT_POLL_SECONDS = 0.01


def _unknown_task(task_id: str) -> NotFound:
    # The same answer for another tenant's task (or, for a submitter key, another key's): ids do not leak.
    return NotFound(f"task {task_id} does not exist")


def _absent(found: object) -> bool:
    return found is None


@dataclass(frozen=True)
class TaskPage:
    tasks: list[TaskRecord]
    next_page_token: str


@dataclass(frozen=True)
class RoutingExplanation:
    task: TaskRecord
    decisions: list[RecordedDecision]
    strategy: Strategy
    # While PENDING: the agents that could take it, scored now.
    candidates: list[ScoredAgent]


def _latency_ms(assigned_at: datetime | None) -> float:
    """From assignment to now: the attempt's latency as the agent's track record counts it."""
    if assigned_at is None:
        return 0.0
    return max(0.0, (datetime.now(UTC) - assigned_at).total_seconds() * 1000)


class Orchestrator:
    def __init__(
        self,
        store: TaskStore,
        registry: RegistryClient,
        sessions: AgentSessions,
        notifications: TaskNotifications,
        directory: AgentDirectory,
        dispatcher: Dispatcher,
        router: Router,
        outcomes: OutcomeReporter,
        *,
        max_payload_bytes: int,
        poll_seconds: float,
        instance_id: str,
        reads: Reads[TaskStore] | None = None,
    ) -> None:
        self._store = store
        # GetTask, ListTasks and GetTaskHistory: the read replica's store when there is one
        # (shared/replica.py); everything else, watches included, reads what it wrote on the primary.
        self._reads = reads or Reads(store)
        self._registry = registry
        self.sessions = sessions
        self._notifications = notifications
        self.directory = directory
        self.dispatcher = dispatcher
        self._router = router
        self.outcomes = outcomes
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
        # The call's trace (if it is traced) goes with the tasks to their agents (shared/tracing.py).
        trace_context: dict[str, str] = {}
        inject(trace_context)
        submission = Submission.of(tasks, trace_context)
        # Inserted by the next dispatch round, which hands what it can to free agents in the same commit.
        inserted = await self.dispatcher.insert(submission)
        return await self._store.submitted(submission, inserted)

    async def queue_stats(self, scope: TaskScope) -> list[TaskCount]:
        return await self._store.count_by_type_and_state(scope)

    async def get(self, task_id: str, scope: TaskScope) -> TaskRecord:
        """GetTask: read where reads go; a task the replica does not have yet is looked up on the primary."""
        checked_id = validation.task_id("task_id", task_id)
        record = await self._reads.run(lambda store: self._read_task(store, checked_id, scope), missing=_absent)
        if record is None:
            raise _unknown_task(checked_id)
        return record

    async def _current(self, task_id: str, scope: TaskScope) -> TaskRecord:
        """The task as the primary has it: for callers that must see their own writes."""
        checked_id = validation.task_id("task_id", task_id)
        record = await self._read_task(self._store, checked_id, scope)
        if record is None:
            raise _unknown_task(checked_id)
        return record

    async def _read_task(self, store: TaskStore, task_id: str, scope: TaskScope) -> TaskRecord | None:
        record = await store.get(task_id, scope)
        return None if record is None else (await self._shown([record], store))[0]

    async def _shown(self, records: list[TaskRecord], store: TaskStore | None = None) -> list[TaskRecord]:
        """The tasks as users see them: with their latest routing decision (read from `store`, default the
        primary's) and, while PENDING, why."""
        records = await (store or self._store).with_routing(records)
        if not self.directory.ever_synced:
            return records
        reasons = PendingReasons(list(self.directory.agents()), datetime.now(UTC))
        return [
            replace(record, pending_reason=reasons.of(record)) if record.state == TaskState.PENDING else record
            for record in records
        ]

    async def explain_routing(self, task_id: str, scope: TaskScope) -> RoutingExplanation:
        task = await self._current(task_id, scope)
        decisions = await self._store.routing_decisions(task.id)
        candidates = []
        if task.state == TaskState.PENDING:
            candidates = scored_candidates(
                task, list(self.directory.agents()), self._router, self.directory.outcomes_of_type(task.task_type)
            )
        return RoutingExplanation(task, decisions, self._router.settings.strategy, candidates)

    async def list_tasks(
        self, scope: TaskScope, state: TaskState | None, task_type: str, page_size: int, page_token: str
    ) -> TaskPage:
        limit = validation.page_size("page_size", page_size)
        position = decode_page_token("page_token", page_token, _PAGE_KEYS)
        before = None
        if position is not None:
            try:
                before = (datetime.fromisoformat(position["created_at"]), validation.task_id("id", position["id"]))
            # A token edited by hand may hold any JSON value: uuid.UUID(True) raises AttributeError.
            except (TypeError, ValueError, AttributeError, InvalidArgument):
                raise InvalidArgument("page_token", "is not a token from a previous page") from None
        if task_type:
            validation.name("task_type", task_type, required=True)

        async def read_page(store: TaskStore) -> tuple[list[TaskRecord], bool]:
            # One extra row tells whether another page follows.
            records = await store.list_page(scope, before, limit + 1, state, task_type or None)
            return await self._shown(records[:limit], store), len(records) > limit

        page, more = await self._reads.run(read_page)
        if not more:
            return TaskPage(page, "")
        last = page[-1]
        return TaskPage(page, encode_page_token({"created_at": last.created_at.isoformat(), "id": last.id}))

    async def cancel(self, task_id: str, reason: str, scope: TaskScope) -> TaskRecord:
        checked_id = validation.task_id("task_id", task_id)
        validation.text("reason", reason, maximum=MAX_CANCEL_REASON_LENGTH)
        cancelled = await self._store.cancel(checked_id, reason.strip() or "cancelled by request", scope)
        if cancelled is None:
            current = await self._current(checked_id, scope)
            raise FailedPrecondition(
                f"task {checked_id} is already {current.state.name}; only PENDING, ASSIGNED or RUNNING tasks "
                "can be cancelled"
            )
        # The agent's stream, on whichever orchestrator, hears of it through the table's NOTIFY; a slot it
        # freed is this dispatcher's to fill (its own notifications of freed slots are skipped).
        self.dispatcher.wake()
        return (await self._shown([cancelled]))[0]

    async def watch(self, task_id: str, scope: TaskScope) -> AsyncIterator[TaskRecord]:
        """The task now, then after each change, until it is finished. Changes in quick succession may
        arrive as one (the latest state); GetTaskHistory has every transition."""
        checked_id = validation.task_id("task_id", task_id)
        with self._notifications.watch(checked_id) as changed:
            # From the primary, like every later read: the notifications follow the primary's changes.
            task = await self._current(checked_id, scope)
            yield task
            while not task.state.is_terminal:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), WATCH_REREAD_SECONDS)
                changed.clear()
                stored = await self._store.get(checked_id, scope)
                if stored is None:
                    raise NotFound(f"task {checked_id} was deleted (finished tasks are pruned after their retention)")
                current = (await self._shown([stored]))[0]
                if current != task:
                    task = current
                    yield task

    async def history(self, task_id: str, scope: TaskScope) -> list[TaskEvent]:
        """GetTaskHistory: read where reads go; a task the replica does not have yet is looked up on the primary."""
        checked_id = validation.task_id("task_id", task_id)

        async def read_history(store: TaskStore) -> list[TaskEvent] | None:
            if await store.get(checked_id, scope) is None:
                return None
            return await store.history(checked_id)

        events = await self._reads.run(read_history, missing=_absent)
        if events is None:
            raise _unknown_task(checked_id)
        return events

    # Agents' side.

    async def _explain_stale(self, report: AttemptReport) -> FailedPrecondition:
        """Why the report changed nothing; NotFound (raised) when the task is unknown to the agent's tenant."""
        current = await self._store.get(report.task_id, TaskScope(tenancy.tenant_of(report.agent_id)))
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

    @staticmethod
    def check_completion(
        task_id: str, agent_id: str, attempt: int, result: dict[str, Any], quality: float | None
    ) -> Completion:
        report = validate_report(task_id, agent_id, attempt)
        if quality is not None and not 0.0 <= quality <= 1.0:  # also rejects NaN
            raise InvalidArgument("quality", f"must be between 0 and 1, or unset; got {quality}")
        return Completion(report, validation.storable_json("result", result), quality)

    async def complete(self, completion: Completion) -> TaskRecord:
        record = await self._store.complete(completion.report, completion.result)
        if record is None:
            raise await self._explain_stale(completion.report)
        self._record_success(completion, record.task_type, record.assigned_at)
        self.dispatcher.wake()
        return record

    async def complete_many(self, checked: list[Completion | ArbiterError]) -> list[ArbiterError | None]:
        """Records every completion in one transaction; for each entry, None when recorded, or why not
        (its own check's error, a repeat within the call, a stale or foreign attempt, an unknown task)."""
        refusals: list[ArbiterError | None] = []
        unique: list[Completion] = []
        seen: set[tuple[str, int]] = set()
        for item in checked:
            if isinstance(item, Completion):
                key = (item.report.task_id, item.report.attempt)
                if key in seen:
                    item = InvalidArgument(
                        "completions", f"task {key[0]} attempt {key[1]} appears more than once; report it once"
                    )
                else:
                    seen.add(key)
                    unique.append(item)
            refusals.append(item if isinstance(item, ArbiterError) else None)
        # Recorded by the next dispatch round, in the transaction that fills the slots they free.
        recorded = await self.dispatcher.complete(unique) if unique else {}
        for completion in unique:
            attempt = recorded.get((completion.report.task_id, completion.report.attempt))
            if attempt is not None:
                self._record_success(completion, attempt.task_type, attempt.assigned_at)
        for index, item in enumerate(checked):
            if isinstance(item, Completion) and refusals[index] is None:
                if (item.report.task_id, item.report.attempt) not in recorded:
                    refusals[index] = await self._why_not_recorded(item.report)
        return refusals

    async def _why_not_recorded(self, report: AttemptReport) -> ArbiterError:
        try:
            return await self._explain_stale(report)
        except NotFound as unknown:
            return unknown

    def _record_success(self, completion: Completion, task_type: str, assigned_at: datetime | None) -> None:
        self.outcomes.record(
            Outcome(completion.report.agent_id, task_type, True, _latency_ms(assigned_at), completion.quality)
        )

    async def fail(self, task_id: str, agent_id: str, attempt: int, error: str, retryable: bool) -> TaskRecord:
        report = validate_report(task_id, agent_id, attempt)
        validate_failure(error)
        record = await self._store.fail(report, error, retryable)
        if record is None:
            raise await self._explain_stale(report)
        self.outcomes.record(Outcome(report.agent_id, record.task_type, False, _latency_ms(record.assigned_at)))
        self.dispatcher.wake()
        return record

    def record_failures(self, tasks: list[TaskRecord]) -> None:
        """Attempts taken back from their agents (lease, timeout, agent gone) count as their failures."""
        for task in tasks:
            if task.assigned_agent_id:
                self.outcomes.record(
                    Outcome(task.assigned_agent_id, task.task_type, False, _latency_ms(task.assigned_at))
                )

    async def assignments(
        self, agent_id: str
    ) -> AsyncIterator[TaskRecord | AttemptCancellation | OrchestratorDraining]:
        """The agent's work, as long as the stream is open: first what it already holds (an assignment
        may have been lost with a previous stream), then what the dispatcher routes to it, and
        cancellations of what it holds as they happen."""
        if self.sessions.closing:
            raise Unavailable("this orchestrator is shutting down; connect to another instance")
        # `agent_id` is qualified with its tenant (checked by the servicer).
        profile = self.directory.get(agent_id)
        if profile is None or not self.directory.synced.is_set():
            # Registered a moment ago, or the view is not in sync: ask the registry itself.
            profile = await self._registry.get_agent(agent_id)
        stream_id = str(uuid.uuid4())
        with self.sessions.open(profile) as session:
            logger.info(
                "agent %s connected (%d streams open)", agent_id, len(self.sessions), extra=about_agent(agent_id)
            )
            try:
                async with self.dispatcher.lock:
                    # Anything a round queued for this agent before now is among what it holds.
                    session.take_assignments()
                    await self._store.open_stream(agent_id, stream_id, self.instance_id)
                    held = await self._store.renew_held(agent_id)
                for task in held:
                    session.sending = task
                    yield task
                session.sending = None
                self.dispatcher.wake()
                while not self.sessions.closing:
                    session.wakeup.clear()
                    for cancellation in session.take_cancellations():
                        yield cancellation
                    for task in session.take_assignments():
                        session.sending = task
                        yield task
                    session.sending = None
                    self._raise_if_superseded(session, agent_id)
                    if agent_id in self.directory.removed:
                        raise NotFound(
                            f"agent '{tenancy.plain(agent_id)}' was deregistered; register it again to receive work"
                        )
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._poll_seconds):
                            await session.wakeup.wait()
                for cancellation in session.take_cancellations():
                    yield cancellation
                yield OrchestratorDraining(f"orchestrator {self.instance_id} is shutting down; reconnect")
            finally:
                session.close()
                logger.info("agent %s disconnected", agent_id, extra=about_agent(agent_id))
                # Shielded: the stream's own cancellation must not cut the release short.
                await asyncio.shield(self._stream_closed(session, stream_id))

    async def _stream_closed(self, session: AgentSession, stream_id: str) -> None:
        """A closed stream releases what its agent holds at once, for other agents to take, unless a
        newer stream replaced it, the agent is draining (it finishes its tasks, extending their leases),
        or this orchestrator is shutting down (then after the grace period, see `shutdown`). "At once" is
        after RECONNECT_GRACE_SECONDS, so an agent that reconnects straight away keeps its tasks."""
        agent_id = session.profile.id
        if self.sessions.closing:
            self._left_at_shutdown.append((agent_id, stream_id))
            return
        if session.superseded or await self._reconnected_here(session):
            # The agent's newer stream here has (or is about to have) its row: never release.
            return
        release_reason: str | None = f"the assignment stream of agent '{tenancy.plain(agent_id)}' closed"
        release_only: set[tuple[str, int]] | None = None
        try:
            # The registry itself, not the live view: an agent heartbeats DRAINING just before it
            # closes its stream, and the view may be a moment behind, so a round may have routed a
            # task to it meanwhile. The agent keeps what it holds; what it never got goes back.
            if (await self._registry.get_agent(agent_id)).draining:
                release_only = {(task.id, task.attempt) for task in session.unsent}
                release_reason = (
                    f"agent '{tenancy.plain(agent_id)}' began draining before the task reached it"
                    if release_only
                    else None
                )
        except ArbiterError as error:
            logger.info(
                "releasing agent %s's tasks without its status (%s)", agent_id, error, extra=about_agent(agent_id)
            )
        try:
            async with self.dispatcher.lock:
                released = await self._store.close_stream(
                    agent_id, stream_id, release_reason, only=release_only, agent_failed=release_only is None
                )
        except psycopg.Error as error:
            logger.warning(
                "could not release agent %s's tasks; their leases will: %s",
                agent_id,
                error,
                extra=about_agent(agent_id),
            )
            return
        if released:
            logger.info(
                "agent %s's stream closed: released %d task(s)", agent_id, len(released), extra=about_agent(agent_id)
            )
            self.dispatcher.wake()

    async def _reconnected_here(self, closed: AgentSession) -> bool:
        """Waits a moment for the agent to reconnect (a network blip, a client retry): True if a newer
        stream of it opened here."""
        deadline = time.monotonic() + RECONNECT_GRACE_SECONDS
        while not closed.superseded:
            if time.monotonic() >= deadline or self.sessions.closing:
                return False
            await asyncio.sleep(RECONNECT_POLL_SECONDS)
        return True

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
                    else (f"orchestrator {self.instance_id} shut down and agent '{tenancy.plain(agent_id)}' is gone")
                )
                # This orchestrator's own shutdown: not held against the agent's track record.
                released = await self._store.close_stream(agent_id, stream_id, reason, agent_failed=False)
                if released:
                    logger.info(
                        "shutdown: released %d task(s) of agent %s",
                        len(released),
                        agent_id,
                        extra=about_agent(agent_id),
                    )
        except psycopg.Error as error:
            logger.warning("shutdown: could not release held tasks; their leases will: %s", error)

    async def _is_alive(self, agent_id: str) -> bool:
        """Heartbeating (ONLINE, BUSY or DRAINING) by the registry's own account (the live view may be
        a moment behind); unknown counts as gone."""
        try:
            return (await self._registry.get_agent(agent_id)).alive
        except ArbiterError:
            return False

    @staticmethod
    def _raise_if_superseded(session: AgentSession, agent_id: str) -> None:
        if session.superseded:
            raise Aborted(f"a newer assignment stream for agent '{tenancy.plain(agent_id)}' replaced this one")
