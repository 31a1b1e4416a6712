"""RecordOutcome and RecordOutcomes against the real registry: every agent read shows the track record
(with priors, per task type and per recent window), bad input writes nothing, and an agent whose last
minutes are much worse than its own baseline is flagged degraded until it recovers."""

from __future__ import annotations

from datetime import timedelta

import grpc
import psycopg
import pytest
from prometheus_client import REGISTRY

from arbiter.v1 import agent_pb2
from arbiter.v1 import registry_service_pb2 as rpb
from shared.api_keys import Role
from tests.support.stack import Stack

TASK_TYPE = "code-review"


async def register(stack: Stack, agent_id: str, task_types: tuple[str, ...] = (TASK_TYPE,)) -> None:
    await stack.registry().RegisterAgent(
        rpb.RegisterAgentRequest(
            agent=agent_pb2.Agent(id=agent_id, capabilities=agent_pb2.AgentCapabilities(task_types=task_types))
        ),
        metadata=stack.as_role(Role.AGENT),
    )


def outcome(
    agent_id: str, success: bool, latency_ms: float = 100.0, quality: float | None = None, task_type: str = TASK_TYPE
) -> rpb.RecordOutcomeRequest:
    request = rpb.RecordOutcomeRequest(agent_id=agent_id, task_type=task_type, success=success, latency_ms=latency_ms)
    if quality is not None:
        request.quality = quality
    return request


async def record(stack: Stack, *outcomes: rpb.RecordOutcomeRequest) -> rpb.RecordOutcomesResponse:
    response: rpb.RecordOutcomesResponse = await stack.registry().RecordOutcomes(
        rpb.RecordOutcomesRequest(outcomes=outcomes), metadata=stack.as_role(Role.SERVICE)
    )
    return response


async def get_agent(stack: Stack, agent_id: str) -> agent_pb2.Agent:
    response = await stack.registry().GetAgent(
        rpb.GetAgentRequest(agent_id=agent_id), metadata=stack.as_role(Role.VIEWER)
    )
    return response.agent


async def record_two_successes_and_a_failure(stack: Stack, agent_id: str) -> None:
    await record(
        stack,
        outcome(agent_id, True, latency_ms=100, quality=0.9),
        outcome(agent_id, True, latency_ms=200, quality=0.8),
        outcome(agent_id, False, latency_ms=300),
    )


# The track record.


async def test_two_successes_and_a_failure_read_as_0_675_overall_and_on_the_task_type(stack: Stack) -> None:
    await register(stack, "agent-1")
    await record_two_successes_and_a_failure(stack, "agent-1")
    performance = (await get_agent(stack, "agent-1")).performance
    assert (performance.success_rate, performance.task_count) == (pytest.approx(0.675), 3)
    (on_task_type,) = performance.by_task_type
    assert (on_task_type.task_type, on_task_type.success_rate, on_task_type.task_count) == (
        TASK_TYPE,
        pytest.approx(0.675),
        3,
    )


async def test_latency_is_averaged_and_quality_averaged_with_its_prior_over_judged_outcomes(stack: Stack) -> None:
    await register(stack, "agent-1")
    await record_two_successes_and_a_failure(stack, "agent-1")
    performance = (await get_agent(stack, "agent-1")).performance
    assert performance.average_latency_ms == pytest.approx(200)
    assert performance.average_quality == pytest.approx((0.9 + 0.8 + 0.7) / 3)


async def test_each_window_holds_the_recent_outcomes_with_raw_rates(stack: Stack) -> None:
    await register(stack, "agent-1")
    await record_two_successes_and_a_failure(stack, "agent-1")
    windows = (await get_agent(stack, "agent-1")).performance.windows
    assert [window.length.ToTimedelta() for window in windows] == [
        timedelta(minutes=5),
        timedelta(hours=1),
        timedelta(hours=24),
    ]
    for window in windows:
        assert (window.task_count, window.success_rate) == (3, pytest.approx(2 / 3))
        assert (window.average_latency_ms, window.average_quality) == (pytest.approx(200), pytest.approx(0.85))


async def test_a_new_agent_reads_as_the_priors_on_every_task_type_it_offers(stack: Stack) -> None:
    await register(stack, "agent-1", ("summarize", "code-review"))
    performance = (await get_agent(stack, "agent-1")).performance
    assert (performance.success_rate, performance.average_quality, performance.average_latency_ms) == (
        pytest.approx(0.7),
        pytest.approx(0.7),
        0,
    )
    assert [(each.task_type, each.success_rate, each.task_count) for each in performance.by_task_type] == [
        ("code-review", pytest.approx(0.7), 0),
        ("summarize", pytest.approx(0.7), 0),
    ]
    assert [(window.task_count, window.success_rate) for window in performance.windows] == [(0, 0.0)] * 3


async def test_a_task_type_with_history_is_listed_even_when_no_longer_offered(stack: Stack) -> None:
    await register(stack, "agent-1", ("code-review", "summarize"))
    await record(stack, outcome("agent-1", True, task_type="translate"))
    performance = (await get_agent(stack, "agent-1")).performance
    assert [(each.task_type, each.task_count) for each in performance.by_task_type] == [
        ("code-review", 0),
        ("summarize", 0),
        ("translate", 1),
    ]
    assert performance.success_rate == pytest.approx(1.7 / 2)


async def test_list_agents_shows_the_track_record_and_windows(stack: Stack) -> None:
    await register(stack, "agent-1")
    await record_two_successes_and_a_failure(stack, "agent-1")
    response = await stack.registry().ListAgents(rpb.ListAgentsRequest(), metadata=stack.as_role(Role.VIEWER))
    (listed,) = response.agents
    assert (listed.performance.task_count, len(listed.performance.windows)) == (3, 3)


async def test_record_outcome_answers_with_the_updated_agent(stack: Stack) -> None:
    await register(stack, "agent-1")
    response = await stack.registry().RecordOutcome(outcome("agent-1", True), metadata=stack.as_role(Role.SERVICE))
    assert response.agent.performance.task_count == 1
    assert response.agent.performance.success_rate == pytest.approx(1.7 / 2)
    assert response.agent.performance.windows[0].task_count == 1


async def test_record_outcome_for_an_unregistered_agent_is_not_found(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.registry().RecordOutcome(outcome("nobody", True), metadata=stack.as_role(Role.SERVICE))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "RegisterAgent" in (caught.value.details() or "")


async def test_deregistering_an_agent_forgets_its_track_record(stack: Stack) -> None:
    await register(stack, "agent-1")
    await record_two_successes_and_a_failure(stack, "agent-1")
    await stack.registry().DeregisterAgent(
        rpb.DeregisterAgentRequest(agent_id="agent-1"), metadata=stack.as_role(Role.AGENT)
    )
    await register(stack, "agent-1")
    assert (await get_agent(stack, "agent-1")).performance.task_count == 0


# Batches.


async def test_a_batch_drops_outcomes_of_unregistered_agents_and_names_them_once_each(stack: Stack) -> None:
    await register(stack, "agent-1")
    response = await record(
        stack,
        outcome("zed", True),
        outcome("agent-1", True),
        outcome("ghost", False),
        outcome("zed", False),
        outcome("agent-1", False),
    )
    assert (response.recorded, list(response.unknown_agent_ids)) == (2, ["ghost", "zed"])
    assert (await get_agent(stack, "agent-1")).performance.task_count == 2


async def test_a_batch_of_1000_outcomes_over_several_agents_and_task_types_is_recorded(stack: Stack) -> None:
    agent_ids = [f"agent-{index}" for index in range(10)]
    for agent_id in agent_ids:
        await register(stack, agent_id, ("code-review", "summarize"))
    batch = [
        outcome(agent_ids[index % 10], index % 4 != 0, task_type=("code-review", "summarize")[index % 3 % 2])
        for index in range(1000)
    ]
    assert (await record(stack, *batch)).recorded == 1000
    agents = [await get_agent(stack, agent_id) for agent_id in agent_ids]
    assert [agent.performance.task_count for agent in agents] == [100] * 10
    assert sum(
        each.task_count for agent in agents for each in agent.performance.by_task_type if each.task_type == "summarize"
    ) == sum(1 for index in range(1000) if index % 3 % 2)


BAD_OUTCOMES = {
    "agent_id": rpb.RecordOutcomeRequest(agent_id="bad id!", task_type=TASK_TYPE),
    "task_type": rpb.RecordOutcomeRequest(agent_id="agent-1", task_type=""),
    "latency_ms": rpb.RecordOutcomeRequest(agent_id="agent-1", task_type=TASK_TYPE, latency_ms=-1),
    "quality": rpb.RecordOutcomeRequest(agent_id="agent-1", task_type=TASK_TYPE, quality=1.5),
}


@pytest.mark.parametrize("field", BAD_OUTCOMES)
async def test_a_bad_outcome_rejects_the_whole_batch_naming_its_field_and_writes_nothing(
    stack: Stack, field: str
) -> None:
    await register(stack, "agent-1")
    batch = [outcome("agent-1", True)] * 3 + [BAD_OUTCOMES[field], outcome("agent-1", True)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record(stack, *batch)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(f"outcomes[3].{field}:")
    assert (await get_agent(stack, "agent-1")).performance.task_count == 0


@pytest.mark.parametrize("field", BAD_OUTCOMES)
async def test_a_bad_single_outcome_is_rejected_naming_its_field(stack: Stack, field: str) -> None:
    await register(stack, "agent-1")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.registry().RecordOutcome(BAD_OUTCOMES[field], metadata=stack.as_role(Role.SERVICE))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(f"{field}:")


@pytest.mark.parametrize("size", [0, 1001])
async def test_a_batch_must_hold_1_to_1000_outcomes(stack: Stack, size: int) -> None:
    await register(stack, "agent-1")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record(stack, *[outcome("agent-1", True)] * size)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith("outcomes:")
    assert (await get_agent(stack, "agent-1")).performance.task_count == 0


# Minute buckets and degradation.


async def add_bucket(
    database_url: str, agent_id: str, age: timedelta, outcomes: int, successes: int, latency_ms: float
) -> None:
    """Test setup: a minute bucket `age` ago, as if outcomes had been recorded then."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as connection:
        await connection.execute(
            """
            INSERT INTO agent_outcome_minutes (agent_id, minute, outcomes, successes, latency_ms_sum)
            VALUES (%s, date_trunc('minute', now() - %s), %s, %s, %s)
            """,
            (f"default/{agent_id}", age, outcomes, successes, outcomes * latency_ms),
        )


async def bucket_counts(database_url: str, agent_id: str) -> tuple[int, int]:
    """The agent's minute buckets: how many in all, and how many older than 25 hours."""
    async with await psycopg.AsyncConnection.connect(database_url) as connection:
        cursor = await connection.execute(
            """
            SELECT count(*), count(*) FILTER (WHERE minute < now() - interval '25 hours')
            FROM agent_outcome_minutes WHERE agent_id = %s
            """,
            (f"default/{agent_id}",),
        )
        row = await cursor.fetchone()
        assert row is not None
        return row[0], row[1]


async def test_recording_deletes_the_agents_buckets_older_than_25_hours(stack: Stack, database_url: str) -> None:
    await register(stack, "agent-1")
    await add_bucket(database_url, "agent-1", timedelta(hours=26), 1, 1, 100)
    await add_bucket(database_url, "agent-1", timedelta(hours=24), 1, 1, 100)
    await record(stack, outcome("agent-1", True))
    # The new bucket and the one 24 hours old remain.
    assert await bucket_counts(database_url, "agent-1") == (2, 0)


async def test_buckets_older_than_a_window_are_outside_it(stack: Stack, database_url: str) -> None:
    await register(stack, "agent-1")
    await add_bucket(database_url, "agent-1", timedelta(minutes=30), 2, 1, 100)
    await add_bucket(database_url, "agent-1", timedelta(hours=3), 4, 4, 100)
    windows = (await get_agent(stack, "agent-1")).performance.windows
    assert [window.task_count for window in windows] == [0, 2, 6]


async def seed_good_baseline(database_url: str, agent_id: str) -> None:
    """95 of 100 outcomes succeeded at 300 ms, an hour or two ago."""
    await add_bucket(database_url, agent_id, timedelta(hours=1), 50, 48, 300)
    await add_bucket(database_url, agent_id, timedelta(hours=2), 50, 47, 300)


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_an_agent_failing_slowly_against_its_baseline_is_flagged_degraded_with_the_reason(
    stack: Stack, database_url: str
) -> None:
    await register(stack, "agent-1")
    await seed_good_baseline(database_url, "agent-1")
    degradations_before = metric("arbiter_agent_degradations_total")
    await record(stack, *[outcome("agent-1", False, latency_ms=930)] * 10)
    performance = (await get_agent(stack, "agent-1")).performance
    assert performance.degraded
    assert performance.degraded_reason == (
        "average latency 930 ms in the last 5 min against 300 ms over the 24 h before; "
        "success rate 0.00 in the last 5 min against 0.95 over the 24 h before"
    )
    assert metric("arbiter_agent_degradations_total") == degradations_before + 1
    assert metric("arbiter_agents_degraded") == 1


async def test_the_degraded_flag_clears_once_the_last_minutes_recover(stack: Stack, database_url: str) -> None:
    await register(stack, "agent-1")
    await seed_good_baseline(database_url, "agent-1")
    await record(stack, *[outcome("agent-1", False, latency_ms=930)] * 10)
    await record(stack, *[outcome("agent-1", True, latency_ms=100)] * 90)
    performance = (await get_agent(stack, "agent-1")).performance
    assert (performance.degraded, performance.degraded_reason) == (False, "")
    assert metric("arbiter_agents_degraded") == 0


async def test_a_few_bad_outcomes_do_not_flag_an_agent(stack: Stack, database_url: str) -> None:
    await register(stack, "agent-1")
    await seed_good_baseline(database_url, "agent-1")
    await record(stack, *[outcome("agent-1", False, latency_ms=930)] * 4)
    assert not (await get_agent(stack, "agent-1")).performance.degraded


async def test_an_agent_without_a_baseline_is_not_flagged(stack: Stack) -> None:
    await register(stack, "agent-1")
    await record(stack, *[outcome("agent-1", False, latency_ms=930)] * 20)
    assert not (await get_agent(stack, "agent-1")).performance.degraded
