"""Why a PENDING task waits (Task.pending_reason), from the live view of agents: plain logic."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

from services.orchestrator.domain import AgentProfile, TaskState
from services.orchestrator.explain import PendingReasons
from tests.test_planning import EPOCH, task


def agent_profile(agent_id: str, *, status: str = "ONLINE", active_tasks: int = 0, **capabilities: Any) -> AgentProfile:
    capabilities.setdefault("task_types", ["review"])
    capabilities.setdefault("languages", [])
    capabilities.setdefault("specializations", [])
    capabilities.setdefault("labels", {})
    return AgentProfile(
        id=agent_id,
        max_concurrent_tasks=2,
        accepts_work=status in ("ONLINE", "BUSY"),
        status=status,
        active_tasks=active_tasks,
        **capabilities,
    )


def reason(fleet: list[AgentProfile], **requirements: Any) -> str:
    return PendingReasons(fleet, EPOCH).of(task(1, **requirements))


def test_names_the_first_requirement_no_registered_agent_meets() -> None:
    fleet = [agent_profile("py", languages=["python"]), agent_profile("gpu", labels={"gpu": "a100"})]
    assert reason([], languages=["rust"]) == "no registered agent offers task type 'review'"
    assert reason(fleet, languages=["python", "rust"]) == (
        "no registered agent offers task type 'review' with language 'python' and language 'rust'"
    )
    assert (
        reason(fleet, labels={"gpu": "h100"}) == "no registered agent offers task type 'review' with label gpu='h100'"
    )


def test_says_when_only_agents_that_take_no_work_could_take_it() -> None:
    fleet = [agent_profile("a", status="DRAINING", languages=["rust"]), agent_profile("b", languages=["go"])]
    assert reason(fleet, languages=["rust"]) == (
        "no ONLINE agent offers task type 'review' with language 'rust'; the capable agents are 'a' (DRAINING)"
    )


def test_says_when_every_capable_agent_is_at_capacity_or_which_could_take_it() -> None:
    assert reason([agent_profile("full", active_tasks=2)]).startswith(
        "waiting for a free slot: the 1 capable agent(s) are at capacity: 'full' (2/2)"
    )
    assert reason([agent_profile("free", active_tasks=1)]).startswith("waiting for one of 1 capable agent(s)")


def test_a_task_in_backoff_says_until_when_and_a_task_not_pending_says_nothing() -> None:
    backing_off = replace(task(1), not_before=EPOCH + timedelta(seconds=30), attempt=2)
    reasons = PendingReasons([agent_profile("a")], EPOCH)
    assert reasons.of(backing_off) == "waiting out the retry backoff until 2026-01-01T00:00:30+00:00 before attempt 2"
    assert reasons.of(replace(task(2), state=TaskState.ASSIGNED)) == ""
