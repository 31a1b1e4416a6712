"""Routes PENDING tasks to the agents connected to this orchestrator, in rounds.

A round records the completions agents reported since the last one (CompleteTasks calls wait for the
round that commits theirs), reads what each connected agent holds, locks the PENDING work those with free
slots could take (storage.dispatch), lets the router pick an agent for each task
(planning.plan_assignments), records the assignments with their routing decisions in the same
transaction, and queues each on its agent's stream. So a completion and the assignment that fills its
slot share one commit, and a burst of completions costs one round, not one each.
Rounds run one at a time; opening and closing a stream waits for the round in progress (`lock`), so an
assignment is never made to a stream that is already gone without its release seeing it.

A round that cannot find PENDING work its agents could take is cheaper (storage.dispatch_new): when the last
full round left none behind and nothing since could have made more (every such event wakes the dispatcher:
a task submitted or put back elsewhere, a slot freed outside a round, an agent that connected or changed,
the end of a backoff, the safety poll), the only work to route is what is submitted now. It is routed
before it is inserted, against what each agent holds as the rounds have counted it, and inserted and
assigned in one round trip. That is how a new task goes straight to a waiting agent (as Temporal's "sync
match" does), and only when there is no backlog, so the order of waiting work is kept.

Several orchestrators each route among their own connected agents; SKIP LOCKED keeps them from taking the
same task, and the agents' track records (the registry's) are shared by all.
"""

from __future__ import annotations

import asyncio
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
        # Whether PENDING work a connected agent could take may exist beyond the next round's submissions:
        # cleared by a full round that leaves none, set by whatever could make some (see the module's doc).
        self._backlog_possible = True
        # What each agent holds, as of the last full round (read from the database then) and counted
        # since by this dispatcher's rounds. Slots freed outside rounds make it too high until the next
        # full round, never too low: every assignment to an agent connected here is made by a round here.
        self._held: dict[str, int] = {}

    def wake(self) -> None:
        """There may be work for a connected agent (new task, free slot, changed agent, ended backoff)."""
        self._backlog_possible = True
        self._wakeup.set()

    def wake_for_agents(self, agent_ids: set[str]) -> None:
        if any(agent_id in self._sessions for agent_id in agent_ids):
            self.wake()

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
                self._backlog_possible = True
                await asyncio.sleep(RETRY_SECONDS)
                continue
            self._failing = False
            if self._more_may_wait:
                continue
            # asyncio.timeout, not wait_for: in Python 3.11 wait_for can swallow a cancellation that
            # arrives as the event is set, and the loop would outlive its app.
            try:
                async with asyncio.timeout(self._poll_seconds):
                    await self._wakeup.wait()
            except TimeoutError:
                # The safety poll looks for work whatever the dispatcher believes.
                self._backlog_possible = True

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
        if self._backlog_possible:
            return await self._full_round(profiles, submissions, completions)
        return await self._new_work_round(profiles, submissions, completions)

    async def _full_round(
        self, profiles: list[AgentProfile], submissions: list[Submission], completions: list[Completion]
    ) -> Round:
        """Looks for PENDING work for every agent with a free slot (storage.dispatch)."""
        # Cleared first: news arriving during the round sets it again.
        self._backlog_possible = False
        held_before: dict[str, int] = {}
        left_unplanned = some_agent_full = False

        def queries_for(held: dict[str, int]) -> list[WorkQuery]:
            nonlocal some_agent_full
            held_before.update(held)
            if not profiles:
                return []
            self._table.refresh(profiles, held)
            # A full agent's work is not looked for: some may be waiting for its next free slot.
            some_agent_full = any(agent.free_slots <= 0 for agent in self._table.agents())
            return work_queries(self._table.agents())

        def plan(candidates: list[TaskRecord]) -> list[tuple[TaskRecord, Decision]]:
            nonlocal left_unplanned
            planned = self._plan(candidates)
            left_unplanned = len(planned) < len(candidates)
            return planned

        result = await self._store.dispatch(
            submissions, completions, [profile.id for profile in profiles], queries_for, plan
        )
        # Read after this round's completions were recorded, before its assignments.
        self._held = {profile.id: held_before.get(profile.id, 0) for profile in profiles}
        self._count_assigned(result)
        self._more_may_wait = more_work_may_wait(result.limit_reached, self._table)
        if result.limit_reached or left_unplanned or some_agent_full:
            self._backlog_possible = True
        return result

    async def _new_work_round(
        self, profiles: list[AgentProfile], submissions: list[Submission], completions: list[Completion]
    ) -> Round:
        """No PENDING work waits for these agents: routes the submitted tasks only (storage.dispatch_new).
        An agent whose holdings no full round has counted yet gets nothing here."""
        counted = [profile for profile in profiles if profile.id in self._held]
        self._table.refresh(counted, self._held)
        result = await self._store.dispatch_new(submissions, completions, self._plan)
        recorded = result.completed.keys()
        for completion in completions:
            report = completion.report
            if (report.task_id, report.attempt) in recorded and self._held.get(report.agent_id, 0) > 0:
                self._held[report.agent_id] -= 1
        self._count_assigned(result)
        if len(result.assigned) < len(result.inserted):
            # Some stayed PENDING (no free slot here): a full round looks again at once.
            self._backlog_possible = self._more_may_wait = True
        return result

    def _plan(self, candidates: list[TaskRecord]) -> list[tuple[TaskRecord, Decision]]:
        with metrics.ROUTING_SECONDS.time():
            return plan_assignments(
                candidates, self._table, self._router, self._directory.outcomes_of_type, self._share
            )

    def _count_assigned(self, result: Round) -> None:
        for assigned in result.assigned:
            agent_id = assigned.decision.agent_id
            self._held[agent_id] = self._held.get(agent_id, 0) + 1

    def _current_profile(self, known_at_connect: AgentProfile) -> AgentProfile:
        """The registry's latest word on the agent (the live view), or what it was when it connected if
        the view does not have it yet (registered a moment ago, or the registry is unreachable)."""
        return self._directory.get(known_at_connect.id) or known_at_connect
