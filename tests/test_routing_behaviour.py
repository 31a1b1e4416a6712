"""Routing as users see it, against real services in this test's event loop, with SDK agents and seeded
randomness: who gets the work, load, fairness between task types, why a task waits, and the record of
every decision."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import grpc
import pytest

from arbiter import PermanentError, Task
from arbiter.v1 import agent_pb2, task_pb2
from arbiter.v1 import orchestrator_service_pb2 as opb
from arbiter.v1 import registry_service_pb2 as rpb
from shared.api_keys import Role
from tests.support.stack import Stack, running_stack, serving_agent
from tests.support.waiting import eventually

TERMINAL = (task_pb2.TASK_STATE_COMPLETED, task_pb2.TASK_STATE_FAILED, task_pb2.TASK_STATE_CANCELLED)


@asynccontextmanager
async def routing_stack(database_url: str, **overrides: Any) -> AsyncIterator[Stack]:
    async with running_stack(database_url, routing_seed=20261127, **overrides) as stack:
        yield stack


async def view_has(stack: Stack, agent_ids: set[str], task_type: str, outcomes: int) -> None:
    """Waits until the orchestrator's live view holds these agents and this many outcomes of the type."""
    directory = stack.orchestrator_app.orchestrator.directory

    def ready() -> bool:
        return all(directory.get(f"default/{agent_id}") for agent_id in agent_ids) and (
            directory.outcomes_of_type(task_type) >= outcomes
        )

    await eventually(ready, f"the orchestrator's view of {agent_ids} with {outcomes} outcomes of {task_type}")


async def connected(stack: Stack, agent_ids: set[str]) -> None:
    await eventually(
        lambda: all(f"default/{agent_id}" in stack.orchestrator_app.orchestrator.sessions for agent_id in agent_ids),
        f"assignment streams of {agent_ids}",
    )


async def run_one(stack: Stack, task_type: str, **fields: Any) -> task_pb2.Task:
    """Submits a task and waits for it to finish; returns it as GetTask shows it."""
    orchestrator = stack.orchestrator()
    submitter = stack.as_role(Role.SUBMITTER)
    submitted = await orchestrator.SubmitTask(
        opb.SubmitTaskRequest(task_type=task_type, max_attempts=1, **fields), metadata=submitter
    )

    async def finished() -> task_pb2.Task | None:
        task = (await orchestrator.GetTask(opb.GetTaskRequest(task_id=submitted.task.id), metadata=submitter)).task
        return task if task.state in TERMINAL else None

    return await eventually(finished, f"task {submitted.task.id} to finish", timeout=15)


def succeeding_with(rate: float, seed: int) -> Any:
    chance = random.Random(seed)

    async def handler(task: Task) -> dict[str, Any]:
        if chance.random() >= rate:
            raise PermanentError("simulated failure")
        return {}

    return handler


@pytest.mark.parametrize("strategy", ["ucb", "epsilon_greedy"])
async def test_the_strong_agent_gets_most_tasks_the_weak_one_some_and_a_new_one_a_fair_try(
    database_url: str, strategy: str
) -> None:
    """Two agents that really succeed 95% and 50% of the time, learned from their outcomes as they go."""
    async with routing_stack(database_url, routing_strategy=strategy) as stack, AsyncExitStack() as agents:
        await agents.enter_async_context(serving_agent(stack, "strong", {"review": succeeding_with(0.95, 1)}))
        await agents.enter_async_context(serving_agent(stack, "weak", {"review": succeeding_with(0.5, 2)}))
        await view_has(stack, {"strong", "weak"}, "review", 0)
        await connected(stack, {"strong", "weak"})

        first = Counter([(await run_one(stack, "review")).routing.agent_id for _ in range(200)])
        print("\n[routing]", strategy, first)
        assert first["strong"] > 160, first
        assert first["weak"] >= 1, first  # exploration
        await view_has(stack, {"strong", "weak"}, "review", 200)  # every outcome reached the track records

        await agents.enter_async_context(serving_agent(stack, "newcomer", {"review": succeeding_with(0.95, 3)}))
        await view_has(stack, {"newcomer"}, "review", 200)
        await connected(stack, {"newcomer"})
        second = Counter([(await run_one(stack, "review")).routing.agent_id for _ in range(40)])
        print("[routing] after a newcomer joined:", second)
        if strategy == "ucb":  # ucb's new-agent bonus; epsilon_greedy only explores at random
            assert second["newcomer"] > 2, second  # more than 5% of 40


@pytest.mark.parametrize("strategy", ["least_loaded", "ucb"])
async def test_the_lightly_loaded_agent_gets_the_task(database_url: str, strategy: str) -> None:
    """Agents at 90% and 30% load with equal records: the one at 30% gets the next task."""
    release = asyncio.Event()

    async def hold(task: Task) -> dict[str, Any]:
        await release.wait()
        return {}

    async def quick(task: Task) -> dict[str, Any]:
        return {}

    async with routing_stack(database_url, routing_strategy=strategy) as stack, AsyncExitStack() as agents:
        for agent_id in ("busy", "calm"):
            await agents.enter_async_context(
                serving_agent(
                    stack, agent_id, {"hold": hold, "next": quick}, labels={"name": agent_id}, max_concurrent_tasks=10
                )
            )
        await view_has(stack, {"busy", "calm"}, "next", 0)
        await connected(stack, {"busy", "calm"})
        orchestrator, submitter = stack.orchestrator(), stack.as_role(Role.SUBMITTER)
        for agent_id, count in (("busy", 9), ("calm", 3)):
            for _ in range(count):
                await orchestrator.SubmitTask(
                    opb.SubmitTaskRequest(
                        task_type="hold", requirements=task_pb2.TaskRequirements(labels={"name": agent_id})
                    ),
                    metadata=submitter,
                )

        async def held() -> bool:
            listed = await orchestrator.ListTasks(
                opb.ListTasksRequest(task_type="hold", page_size=100), metadata=submitter
            )
            holders = Counter(
                task.assigned_agent_id for task in listed.tasks if task.state != task_pb2.TASK_STATE_PENDING
            )
            return holders == Counter({"busy": 9, "calm": 3})

        await eventually(held, "9 tasks held by 'busy' and 3 by 'calm'")
        done = await run_one(stack, "next")
        assert done.routing.agent_id == "calm"
        assert [alternative.agent_id for alternative in done.routing.alternatives] == ["busy"]
        release.set()


async def test_a_type_with_a_huge_backlog_does_not_starve_another_type(database_url: str) -> None:
    """One agent does both types one at a time: 200 'bulk' tasks are queued before 3 'quick' ones, and
    the quick ones are handed out among the first few, not after the whole backlog."""
    order: list[str] = []

    async def work(task: Task) -> dict[str, Any]:
        order.append(task.task_type)
        await asyncio.sleep(0.005)
        return {}

    async with routing_stack(database_url) as stack:
        orchestrator, submitter = stack.orchestrator(), stack.as_role(Role.SUBMITTER)
        await orchestrator.SubmitTasks(
            opb.SubmitTasksRequest(tasks=[opb.SubmitTaskRequest(task_type="bulk") for _ in range(200)]),
            metadata=submitter,
        )
        await orchestrator.SubmitTasks(
            opb.SubmitTasksRequest(tasks=[opb.SubmitTaskRequest(task_type="quick") for _ in range(3)]),
            metadata=submitter,
        )
        async with serving_agent(stack, "both", {"bulk": work, "quick": work}):
            await eventually(lambda: order.count("quick") == 3, "the three quick tasks", timeout=30)
            assert len(order) <= 8, order


async def test_an_idle_agent_of_another_type_gets_its_task_while_a_backlog_waits(database_url: str) -> None:
    release = asyncio.Event()

    async def hold(task: Task) -> dict[str, Any]:
        await release.wait()
        return {}

    async def quick(task: Task) -> dict[str, Any]:
        return {}

    async with routing_stack(database_url) as stack, AsyncExitStack() as agents:
        orchestrator, submitter = stack.orchestrator(), stack.as_role(Role.SUBMITTER)
        await orchestrator.SubmitTasks(
            opb.SubmitTasksRequest(tasks=[opb.SubmitTaskRequest(task_type="bulk", priority=10) for _ in range(500)]),
            metadata=submitter,
        )
        await agents.enter_async_context(serving_agent(stack, "bulk-worker", {"bulk": hold}, max_concurrent_tasks=2))
        await agents.enter_async_context(serving_agent(stack, "quick-worker", {"quick": quick}))
        done = await run_one(stack, "quick")
        assert done.state == task_pb2.TASK_STATE_COMPLETED
        assert done.routing.agent_id == "quick-worker"
        release.set()


async def register(stack: Stack, agent_id: str, **capabilities: Any) -> None:
    await stack.registry().RegisterAgent(
        rpb.RegisterAgentRequest(
            agent=agent_pb2.Agent(
                id=agent_id, capabilities=agent_pb2.AgentCapabilities(**capabilities), max_concurrent_tasks=1
            )
        ),
        metadata=stack.as_role(Role.AGENT),
    )


async def pending_reason(stack: Stack, task_id: str, expected: str) -> str:
    orchestrator, viewer = stack.orchestrator(), stack.as_role(Role.VIEWER)

    async def reason() -> str:
        task = (await orchestrator.GetTask(opb.GetTaskRequest(task_id=task_id), metadata=viewer)).task
        assert task.state == task_pb2.TASK_STATE_PENDING
        return task.pending_reason if task.pending_reason.startswith(expected) else ""

    return await eventually(reason, f"pending_reason starting {expected!r}")


async def test_a_task_no_agent_can_take_stays_pending_and_says_what_is_missing(database_url: str) -> None:
    async with routing_stack(database_url) as stack:
        await register(stack, "py-reviewer", task_types=["code-review"], languages=["python"])
        submitted = await stack.orchestrator().SubmitTask(
            opb.SubmitTaskRequest(
                task_type="code-review", requirements=task_pb2.TaskRequirements(languages=["python", "rust"])
            ),
            metadata=stack.as_role(Role.SUBMITTER),
        )
        task_id = submitted.task.id
        await pending_reason(
            stack,
            task_id,
            "no registered agent offers task type 'code-review' with language 'python' and language 'rust'",
        )

        await register(stack, "rust-reviewer", task_types=["code-review"], languages=["python", "rust"])
        await stack.registry().Heartbeat(
            rpb.HeartbeatRequest(agent_id="rust-reviewer", status=agent_pb2.AGENT_STATUS_DRAINING),
            metadata=stack.as_role(Role.AGENT),
        )
        reason = await pending_reason(
            stack, task_id, "no ONLINE agent offers task type 'code-review' with language 'python' and language 'rust'"
        )
        assert "'rust-reviewer' (DRAINING)" in reason

        await stack.registry().Heartbeat(
            rpb.HeartbeatRequest(agent_id="rust-reviewer"), metadata=stack.as_role(Role.AGENT)
        )
        await pending_reason(stack, task_id, "waiting for one of 1 capable agent(s)")
        explained = await stack.orchestrator().ExplainRouting(
            opb.ExplainRoutingRequest(task_id=task_id), metadata=stack.as_role(Role.VIEWER)
        )
        assert explained.strategy == task_pb2.ROUTING_STRATEGY_UCB
        assert [candidate.agent_id for candidate in explained.candidates] == ["rust-reviewer"]
        assert not explained.decisions


async def test_every_attempt_s_routing_decision_is_recorded_and_explained(database_url: str) -> None:
    async def fail_first(task: Task) -> dict[str, Any]:
        if task.attempt == 1:
            raise RuntimeError("flaky")
        return {}

    async with routing_stack(database_url) as stack, AsyncExitStack() as agents:
        for agent_id in ("one", "two", "three"):
            await agents.enter_async_context(serving_agent(stack, agent_id, {"job": fail_first}))
        await connected(stack, {"one", "two", "three"})
        orchestrator, viewer = stack.orchestrator(), stack.as_role(Role.VIEWER)
        submitted = await orchestrator.SubmitTask(
            opb.SubmitTaskRequest(task_type="job", max_attempts=2), metadata=stack.as_role(Role.SUBMITTER)
        )

        async def completed() -> opb.ExplainRoutingResponse | None:
            explained = await orchestrator.ExplainRouting(
                opb.ExplainRoutingRequest(task_id=submitted.task.id), metadata=viewer
            )
            return explained if explained.task.state == task_pb2.TASK_STATE_COMPLETED else None

        explained = await eventually(completed, "the task to complete on its second attempt")
        assert [decision.attempt for decision in explained.decisions] == [1, 2]
        for decision in explained.decisions:
            assert decision.strategy == task_pb2.ROUTING_STRATEGY_UCB
            assert decision.agent_id in {"one", "two", "three"}
            assert 0 <= decision.confidence <= 1
            assert decision.reason
            assert decision.decided_at.seconds > 0
            others = {alternative.agent_id for alternative in decision.alternatives}
            assert others == {"one", "two", "three"} - {decision.agent_id}
        assert explained.task.routing == explained.decisions[-1]
        assert explained.task.assigned_agent_id == explained.decisions[-1].agent_id
        assert not explained.candidates  # only while PENDING

        missing = "00000000-0000-0000-0000-000000000000"
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await orchestrator.ExplainRouting(opb.ExplainRoutingRequest(task_id=missing), metadata=viewer)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_finished_attempts_feed_the_agents_track_record(database_url: str) -> None:
    async def good(task: Task) -> dict[str, Any]:
        task.quality = 0.9
        return {}

    async with routing_stack(database_url) as stack, serving_agent(stack, "recorded", {"job": good}):
        await connected(stack, {"recorded"})
        await run_one(stack, "job")
        await run_one(stack, "job")
        registry = stack.registry()

        async def recorded() -> agent_pb2.Agent | None:
            agent = (
                await registry.GetAgent(rpb.GetAgentRequest(agent_id="recorded"), metadata=stack.as_role(Role.VIEWER))
            ).agent
            return agent if agent.performance.task_count == 2 else None

        agent = await eventually(recorded, "two outcomes on the agent's record")
        assert agent.performance.success_rate == pytest.approx((2 + 0.7) / 3)
        assert agent.performance.average_quality == pytest.approx((0.9 * 2 + 0.7) / 3)
        assert agent.performance.average_latency_ms > 0
