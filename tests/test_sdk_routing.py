"""Routing through the SDK, against both services running in this test's event loop with an in-process
SDK agent: why a task waits, why it went where it went, which agents could take a task, and the track
record a handler's quality feeds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from typing import Any

import pytest

from arbiter import Agent, AgentInfo, Candidate, Client, Task, TaskInfo, TaskState
from arbiter.v1 import orchestrator_service_pb2 as opb
from shared.api_keys import Role
from tests.support.sdk_agent import wait_for
from tests.support.stack import Stack, serving_agent

AGENT_ID = "reviewer-1"
QUALITY = 0.9
# shared/matching.py: a record starts as one outcome worth 0.7, for success and quality alike.
PRIOR = 0.7
WAIT_SECONDS = 30.0


async def review(task: Task) -> dict[str, Any]:
    task.quality = QUALITY
    return {"verdict": "approve"}


def python_reviewer(stack: Stack) -> AbstractAsyncContextManager[Agent]:
    """An agent that reviews Python and Go code and rates each review QUALITY."""
    return serving_agent(stack, AGENT_ID, {"code-review": review}, languages=["python", "go"])


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[Client]:
    async with Client(
        stack.orchestrator_address, stack.keys[Role.SUBMITTER], registry_address=stack.registry_address
    ) as client:
        yield client


async def reviewed(stack: Stack, client: Client) -> TaskInfo:
    """A Python review the agent completed."""
    async with python_reviewer(stack):
        task = await client.submit("code-review", {"pullRequest": 7}, languages=["python"])
        done = await client.wait(task.id, timeout=WAIT_SECONDS)
    assert done.state == TaskState.COMPLETED, done.error
    return done


async def test_a_task_needing_a_language_no_agent_speaks_stays_pending_and_says_which(
    stack: Stack, client: Client
) -> None:
    async with python_reviewer(stack):
        task = await client.submit("code-review", languages=["rust"])

        async def waiting_on_rust() -> TaskInfo | None:
            current = await client.get(task.id)
            return current if "language 'rust'" in current.pending_reason else None

        waiting = await wait_for(waiting_on_rust, "a pending reason naming the language", timeout=WAIT_SECONDS)
        explanation = await client.explain_routing(task.id)
    assert (waiting.state, waiting.routing) == (TaskState.PENDING, None)
    assert "task type 'code-review' with language 'rust'" in waiting.pending_reason
    assert (explanation.decisions, explanation.candidates) == ([], [])
    assert explanation.task.pending_reason == waiting.pending_reason


async def test_explain_routing_shows_the_decision_that_sent_the_task_to_its_agent(stack: Stack, client: Client) -> None:
    done = await reviewed(stack, client)

    explanation = await client.explain_routing(done.id)
    [decision] = explanation.decisions
    assert (decision.attempt, decision.agent_id, decision.strategy) == (1, AGENT_ID, "ucb")
    # A new agent gets ucb's new-agent bonus: exploration, on the prior success rate.
    assert decision.explored
    assert decision.confidence == pytest.approx(PRIOR)
    assert decision.alternatives == []
    assert decision.decided_at is not None
    assert explanation.strategy == "ucb"
    assert explanation.candidates == []
    assert (await client.get(done.id)).routing == decision


async def test_find_candidates_returns_the_capable_agent_with_its_score_and_reason(
    stack: Stack, client: Client
) -> None:
    async with python_reviewer(stack):

        async def found() -> list[Candidate]:
            return await client.find_candidates("code-review", languages=["python"])

        [candidate] = await wait_for(found, "the agent among the candidates", timeout=WAIT_SECONDS)
        nobody = await client.find_candidates("code-review", languages=["rust"])
    assert candidate.agent.id == AGENT_ID
    assert candidate.success_rate == pytest.approx(PRIOR)
    # 0.25 x language fit (python of python and go: 1/2) + 0.25 x specialization fit (none asked: 1)
    # + 0.5 x success rate.
    assert candidate.score == pytest.approx(0.25 * 0.5 + 0.25 * 1 + 0.5 * PRIOR)
    assert candidate.reason.startswith("offers code-review with python;")
    assert nobody == []


async def test_a_completed_task_and_its_quality_reach_the_agents_track_record(stack: Stack, client: Client) -> None:
    await reviewed(stack, client)

    async def recorded() -> AgentInfo | None:
        agent = await client.get_agent(AGENT_ID)
        return agent if agent.task_count == 1 else None

    agent = await wait_for(recorded, "the outcome in the agent's record", timeout=WAIT_SECONDS)
    assert agent.success_rate == pytest.approx((1 + PRIOR) / 2)
    assert agent.average_quality == pytest.approx((QUALITY + PRIOR) / 2)
    on_reviews = agent.performance_on("code-review")
    assert on_reviews is not None
    assert (on_reviews.task_count, on_reviews.average_quality) == (1, pytest.approx((QUALITY + PRIOR) / 2))
    # Windows are raw figures, without the prior.
    assert [window.length for window in agent.windows] == [timedelta(minutes=5), timedelta(hours=1), timedelta(days=1)]
    last_five_minutes = agent.windows[0]
    assert (last_five_minutes.task_count, last_five_minutes.success_rate) == (1, 1.0)
    assert last_five_minutes.average_quality == pytest.approx(QUALITY)
    assert (agent.degraded, agent.degraded_reason) == (False, "")


@pytest.mark.parametrize("quality", [-0.1, 1.5, float("nan")])
def test_a_handler_cannot_set_a_quality_outside_0_to_1(quality: float) -> None:
    task = Task(opb.Assignment(attempt=1), report_progress=lambda fraction, message: _never())
    with pytest.raises(ValueError, match="quality must be between 0 and 1"):
        task.quality = quality
    assert task.quality is None


async def _never() -> None:
    raise AssertionError("a quality check must not report progress")
