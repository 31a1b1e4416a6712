"""Routes PENDING tasks to the agents connected to this orchestrator, in rounds.

A round records the completions agents reported since the last one (CompleteTasks calls wait for the
round that commits theirs), reads what each connected agent holds, locks the PENDING work those with free
slots could take (storage.dispatch), lets the router pick an agent for each task
(planning.plan_assignments), records the assignments with their routing decisions in the same
transaction, and queues each on its agent's stream. So a completion and the assignment that fills its
slot share one commit, and a burst of completions costs one round, not one each.
Rounds run one at a time; opening and closing a stream waits for the round in progress (`lock`), so an
assignment is never made to a stream that is already gone without its release seeing it.

Several orchestrators each route among their own connected agents; SKIP LOCKED keeps them from taking the
same task, and the agents' track records (the registry's) are shared by all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from services.orchestrator import metrics
from services.orchestrator.agent_directory import AgentDirectory
from services.orchestrator.domain import AgentProfile, CompletedAttempt, Completion, TaskRecord
from services.orchestrator.planning import (
    FairShare,
    RoutingTable,
    WorkQuery,
    more_work_may_wait,
    plan_assignments,
    work_queries,
)
from services.orchestrator.routing import Decision, Router
from services.orchestrator.sessions import AgentSessions
from services.orchestrator.storage import Assigned, Round, Submission, TaskStore
from shared.errors import Unavailable

logger = logging.getLogger(__name__)

# After a failed round (e.g. the database is down), wait this long before the next.
RETRY_SECONDS = 0.5


@dataclass(eq=False)
class _Waiting:
    """A caller's part of the next round, and the round's outcome it awaits."""

    submission: Submission | None = None
    completions: list[Completion] = field(default_factory=list)
    done: asyncio.Future[Round] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Dispatcher:
    def __init__(
        self,
        store: TaskStore,
        sessions: AgentSessions,
        directory: AgentDirectory,
        router: Router,
        *,
        poll_seconds: float,
    ) -> None:
        self._store = store
        self._sessions = sessions
        self._directory = directory
        self._router = router
        self._poll_seconds = poll_seconds
        self._wakeup = asyncio.Event()
        self._share = FairShare()
        self._table = RoutingTable()
        # Held for a whole round; streams take it to open and close.
        self.lock = asyncio.Lock()
        # Set by a round that may have left assignable work behind.
        self._more_may_wait = False
        # Callers' submissions and completions for the next round.
        self._waiting: list[_Waiting] = []
        self._running = False
        # Set while rounds fail (e.g. the database is down): callers then go on their own, so each waits
        # for its own attempt only, not behind a failing round and the retry pause after it.
        self._failing = False

    def wake(self) -> None:
        """There may be work for a connected agent (new task, free slot, changed agent, ended backoff)."""
        self._wakeup.set()

    def wake_for_agents(self, agent_ids: set[str]) -> None:
        if any(agent_id in self._sessions for agent_id in agent_ids):
            self._wakeup.set()

    async def insert(self, submission: Submission) -> dict[str, TaskRecord]:
        """Inserts the tasks in the next round, where any a free agent can take are assigned in the same
        transaction; returns the rows made, by id. Raises what the round's transaction raised, if it failed
        (nothing of it is kept)."""
        if not self._running or self._failing:
            # Starting up, shutting down or failing rounds: insert them on their own.
            return await self._store.insert_many(submission)
        return (await self._in_next_round(_Waiting(submission=submission))).inserted

    async def complete(self, completions: list[Completion]) -> dict[tuple[str, int], CompletedAttempt]:
        """Records the completions in the next round, where the slots they free are filled in the same
        transaction; returns those recorded (the others were stale or foreign). Raises as `insert` does."""
        if not self._running or self._failing:
            return await self._store.complete_many(completions)
        return (await self._in_next_round(_Waiting(completions=completions))).completed

    async def _in_next_round(self, waiting: _Waiting) -> Round:
        self._waiting.append(waiting)
        self._wakeup.set()
        return await waiting.done

    async def run(self) -> None:
        """Dispatches until cancelled: again at once after a round that may have left work an agent could
        take (see planning.more_work_may_wait), otherwise on the next wake-up or after the safety poll."""
        self._running = True
        try:
            await self._run_rounds()
        finally:
            self._running = False
            for waiting in self._waiting:
                if not waiting.done.done():
                    waiting.done.set_exception(Unavailable("this orchestrator is shutting down; try again"))
            self._waiting.clear()

    async def _run_rounds(self) -> None:
        while True:
            self._wakeup.clear()
            try:
                await self.dispatch_once()
            except Exception as error:  # the dispatcher must outlive any one failure
                logger.warning("dispatch round failed; retrying: %s", error)
                self._failing = True
                await asyncio.sleep(RETRY_SECONDS)
                continue
            self._failing = False
            if self._more_may_wait:
                continue
            # asyncio.timeout, not wait_for: in Python 3.11 wait_for can swallow a cancellation that
            # arrives as the event is set, and the loop would outlive its app.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_seconds):
                    await self._wakeup.wait()

    async def dispatch_once(self) -> list[Assigned]:
        async with self.lock:
            waiting, self._waiting = self._waiting, []
            submissions = [each.submission for each in waiting if each.submission is not None]
            completions = [completion for each in waiting for completion in each.completions]
            try:
                result = await self._round(submissions, completions)
            except BaseException as error:
                # A cancelled round (shutdown) is, to its callers, an orchestrator going away.
                failure = error if isinstance(error, Exception) else Unavailable("this orchestrator is shutting down")
                for each in waiting:
                    if not each.done.done():
                        each.done.set_exception(failure)
                raise
            for each in waiting:
                if not each.done.done():
                    each.done.set_result(result)
            for assigned in result.assigned:
                self._sessions.deliver(assigned.decision.agent_id, assigned.task)
            metrics.record_assignments(assigned.task for assigned in result.assigned)
            return result.assigned

    async def _round(self, submissions: list[Submission], completions: list[Completion]) -> Round:
        profiles = [self._current_profile(session.profile) for session in self._sessions.open_sessions()]
        profiles = [
            profile for profile in profiles if profile.accepts_work and profile.id not in self._directory.removed
        ]
        self._more_may_wait = False
        if self._sessions.closing:
            profiles = []
        if not profiles and not submissions and not completions:
            return Round({}, {}, [], False)

        def queries_for(held: dict[str, int]) -> list[WorkQuery]:
            if not profiles:
                return []
            self._table.refresh(profiles, held)
            return work_queries(self._table.agents())

        def plan(candidates: list[TaskRecord]) -> list[tuple[TaskRecord, Decision]]:
            with metrics.ROUTING_SECONDS.time():
                return plan_assignments(
                    candidates, self._table, self._router, self._directory.outcomes_of_type, self._share
                )

        result = await self._store.dispatch(
            submissions, completions, [profile.id for profile in profiles], queries_for, plan
        )
        self._more_may_wait = more_work_may_wait(result.limit_reached, self._table)
        return result

    def _current_profile(self, known_at_connect: AgentProfile) -> AgentProfile:
        """The registry's latest word on the agent (the live view), or what it was when it connected if
        the view does not have it yet (registered a moment ago, or the registry is unreachable)."""
        return self._directory.get(known_at_connect.id) or known_at_connect
