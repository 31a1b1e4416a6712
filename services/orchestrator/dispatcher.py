"""Routes PENDING tasks to the agents connected to this orchestrator, in rounds.

A round reads what each connected agent holds, locks the PENDING work those with free slots could take
(storage.dispatch), lets the router pick an agent for each task (planning.plan_assignments), records the
assignments with their routing decisions in the same transaction, and queues each on its agent's stream.
Rounds run one at a time; opening and closing a stream waits for the round in progress (`lock`), so an
assignment is never made to a stream that is already gone without its release seeing it.

Several orchestrators each route among their own connected agents; SKIP LOCKED keeps them from taking the
same task, and the agents' track records (the registry's) are shared by all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from services.orchestrator.agent_directory import AgentDirectory
from services.orchestrator.domain import AgentProfile
from services.orchestrator.planning import FairShare, RoutingTable, WorkQuery, plan_assignments, work_queries
from services.orchestrator.routing import Router
from services.orchestrator.sessions import AgentSessions
from services.orchestrator.storage import Assigned, TaskStore

logger = logging.getLogger(__name__)

# After a failed round (e.g. the database is down), wait this long before the next.
RETRY_SECONDS = 0.5


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

    def wake(self) -> None:
        """There may be work for a connected agent (new task, free slot, changed agent, ended backoff)."""
        self._wakeup.set()

    def wake_for_agents(self, agent_ids: set[str]) -> None:
        if any(agent_id in self._sessions for agent_id in agent_ids):
            self._wakeup.set()

    async def run(self) -> None:
        """Dispatches until cancelled: again at once after a round that assigned something, otherwise
        on the next wake-up or after the safety poll."""
        while True:
            self._wakeup.clear()
            try:
                assigned = await self.dispatch_once()
            except Exception as error:  # the dispatcher must outlive any one failure
                logger.warning("dispatch round failed; retrying: %s", error)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            if assigned:
                continue
            # asyncio.timeout, not wait_for: in Python 3.11 wait_for can swallow a cancellation that
            # arrives as the event is set, and the loop would outlive its app.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_seconds):
                    await self._wakeup.wait()

    async def dispatch_once(self) -> list[Assigned]:
        async with self.lock:
            profiles = [self._current_profile(session.profile) for session in self._sessions.open_sessions()]
            profiles = [
                profile for profile in profiles if profile.accepts_work and profile.id not in self._directory.removed
            ]
            if self._sessions.closing or not profiles:
                return []

            def queries_for(held: dict[str, int]) -> list[WorkQuery]:
                self._table.refresh(profiles, held)
                return work_queries(self._table.agents())

            assigned = await self._store.dispatch(
                [profile.id for profile in profiles],
                queries_for,
                lambda tasks: plan_assignments(
                    tasks, self._table, self._router, self._directory.outcomes_of_type, self._share
                ),
            )
            for each in assigned:
                self._sessions.deliver(each.decision.agent_id, each.task)
            return assigned

    def _current_profile(self, known_at_connect: AgentProfile) -> AgentProfile:
        """The registry's latest word on the agent (the live view), or what it was when it connected if
        the view does not have it yet (registered a moment ago, or the registry is unreachable)."""
        return self._directory.get(known_at_connect.id) or known_at_connect
