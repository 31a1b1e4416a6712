"""Assignment streams in one process (services/orchestrator/sessions.py) as plain logic: what a stream
never sent is known when it closes, so a draining agent's close can give exactly that back."""

from __future__ import annotations

from services.orchestrator.domain import AgentProfile
from services.orchestrator.sessions import AgentSessions
from tests.test_planning import task

PROFILE = AgentProfile(
    id="t/agent-1",
    task_types=["review"],
    languages=[],
    specializations=[],
    labels={},
    max_concurrent_tasks=2,
    accepts_work=True,
)


def test_a_closed_stream_counts_what_was_queued_or_being_written_as_never_sent() -> None:
    sessions = AgentSessions()
    with sessions.open(PROFILE) as session:
        assert sessions.deliver(PROFILE.id, task(1))
        assert [each.id for each in session.take_assignments()] == [task(1).id]  # written in full
        sessions.deliver(PROFILE.id, task(2))
        (session.sending,) = session.take_assignments()  # the stream ends while this one is written
        sessions.deliver(PROFILE.id, task(3))  # still queued
        session.close()
        assert [each.id for each in session.unsent] == [task(2).id, task(3).id]
        assert session.sending is None


def test_a_task_routed_to_a_stream_that_just_closed_is_not_queued_and_counts_as_never_sent() -> None:
    sessions = AgentSessions()
    with sessions.open(PROFILE) as session:
        session.close()
        assert not sessions.deliver(PROFILE.id, task(7))
        assert session.assignments == []
        assert [each.id for each in session.unsent] == [task(7).id]
        assert PROFILE.id not in sessions


def test_a_stream_that_sent_everything_leaves_nothing_unsent() -> None:
    sessions = AgentSessions()
    with sessions.open(PROFILE) as session:
        sessions.deliver(PROFILE.id, task(1))
        session.take_assignments()
        session.close()
        assert session.unsent == []


def test_an_agent_with_no_stream_here_gets_nothing_queued() -> None:
    assert not AgentSessions().deliver(PROFILE.id, task(1))
