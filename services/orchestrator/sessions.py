"""The assignment streams open in this process, and how they are woken when there is work."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from services.orchestrator import metrics
from services.orchestrator.domain import AgentProfile, AttemptCancellation, TaskRecord


@dataclass
class AgentSession:
    profile: AgentProfile
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    # Set when a newer stream for the same agent replaces this one.
    superseded: bool = False
    # Set when the stream has ended (its release may still be pending): it gets no more work.
    closed: bool = False
    # Cancellations of attempts this agent holds, to send before anything else.
    cancellations: list[AttemptCancellation] = field(default_factory=list)
    # Tasks the dispatcher assigned to this agent, to send next.
    assignments: list[TaskRecord] = field(default_factory=list)
    # The task being written to the stream: if the stream ends there, the agent may never have read it.
    sending: TaskRecord | None = None
    # Assigned to this agent but never sent on this stream (queued, being written, or routed to it
    # just as it closed). A draining agent will not reconnect for them, so they are released.
    unsent: list[TaskRecord] = field(default_factory=list)

    def take_cancellations(self) -> list[AttemptCancellation]:
        taken, self.cancellations = self.cancellations, []
        return taken

    def take_assignments(self) -> list[TaskRecord]:
        taken, self.assignments = self.assignments, []
        return taken

    def close(self) -> None:
        """The stream ended: what was queued or being written counts as never sent."""
        self.closed = True
        if self.sending is not None:
            self.unsent.append(self.sending)
            self.sending = None
        self.unsent.extend(self.take_assignments())


class AgentSessions:
    def __init__(self) -> None:
        self._sessions: dict[str, AgentSession] = {}
        self.closing = False
        # Set while no stream is open (shutdown waits on it).
        self.all_closed = asyncio.Event()
        self.all_closed.set()

    @contextlib.contextmanager
    def open(self, profile: AgentProfile) -> Iterator[AgentSession]:
        """One session per agent: a reconnecting agent's new stream replaces its old one, which may be
        a dead connection not yet noticed."""
        previous = self._sessions.get(profile.id)
        if previous is not None:
            previous.superseded = True
            previous.wakeup.set()
        session = AgentSession(profile)
        self._sessions[profile.id] = session
        self.all_closed.clear()
        metrics.CONNECTED_AGENTS.inc()
        try:
            yield session
        finally:
            metrics.CONNECTED_AGENTS.dec()
            if self._sessions.get(profile.id) is session:
                del self._sessions[profile.id]
            if not self._sessions:
                self.all_closed.set()

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, agent_id: object) -> bool:
        session = self._sessions.get(agent_id) if isinstance(agent_id, str) else None
        return session is not None and not session.closed

    def open_sessions(self) -> list[AgentSession]:
        """The sessions whose streams are still open."""
        return [session for session in self._sessions.values() if not session.closed]

    def deliver(self, agent_id: str, task: TaskRecord) -> bool:
        """Queues an assignment on the agent's stream; False when the agent has no stream here (any
        more): the task stays assigned to it, and its reconnect re-sends it or its release frees it."""
        session = self._sessions.get(agent_id)
        if session is None:
            return False
        if session.closed:
            session.unsent.append(task)
            return False
        session.assignments.append(task)
        session.wakeup.set()
        return True

    def send_cancellation(self, agent_id: str, cancellation: AttemptCancellation) -> None:
        """Queues the cancellation on the agent's stream if it is open in this process. An agent
        connected elsewhere learns of it when its next report is refused."""
        session = self._sessions.get(agent_id)
        if session is not None:
            session.cancellations.append(cancellation)
            session.wakeup.set()

    def wake_all(self) -> None:
        """Wake-ups may have been missed (the notification listener reconnected): everyone looks again."""
        for session in self._sessions.values():
            session.wakeup.set()

    def close_all(self) -> None:
        """Shutting down: every stream says so and ends, so its agent reconnects elsewhere."""
        self.closing = True
        self.wake_all()
