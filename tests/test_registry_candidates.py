"""FindCandidates against the real registry: only agents that can take the task now, ranked by their
record on the task type, then fit, then load, each with why it matched."""

from __future__ import annotations

from datetime import timedelta

import grpc
import psycopg
import pytest

from arbiter.v1 import agent_pb2
from arbiter.v1 import registry_service_pb2 as rpb
from shared.api_keys import Role
from shared.config import Config
from tests.support.stack import Stack

TASK_TYPE = "code-review"
# The stack runs with the default.
HEARTBEAT_INTERVAL_SECONDS = Config.from_env({}).heartbeat_interval_seconds


async def register(
    stack: Stack,
    agent_id: str,
    *,
    task_types: tuple[str, ...] = (TASK_TYPE,),
    languages: tuple[str, ...] = (),
    specializations: tuple[str, ...] = (),
    labels: dict[str, str] | None = None,
    max_concurrent_tasks: int = 4,
) -> None:
    await stack.registry().RegisterAgent(
        rpb.RegisterAgentRequest(
            agent=agent_pb2.Agent(
                id=agent_id,
                capabilities=agent_pb2.AgentCapabilities(
                    task_types=task_types, languages=languages, specializations=specializations, labels=labels or {}
                ),
                max_concurrent_tasks=max_concurrent_tasks,
            )
        ),
        metadata=stack.as_role(Role.AGENT),
    )


async def heartbeat(stack: Stack, agent_id: str, active_tasks: int = 0, status: int = 0) -> None:
    await stack.registry().Heartbeat(
        rpb.HeartbeatRequest(agent_id=agent_id, active_tasks=active_tasks, status=status),
        metadata=stack.as_role(Role.AGENT),
    )


async def record(stack: Stack, agent_id: str, successes: int, failures: int, task_type: str = TASK_TYPE) -> None:
    await stack.registry().RecordOutcomes(
        rpb.RecordOutcomesRequest(
            outcomes=[
                rpb.RecordOutcomeRequest(agent_id=agent_id, task_type=task_type, success=index < successes)
                for index in range(successes + failures)
            ]
        ),
        metadata=stack.as_role(Role.SERVICE),
    )


async def find(stack: Stack, **fields: object) -> list[rpb.Candidate]:
    request = rpb.FindCandidatesRequest(task_type=TASK_TYPE)
    for name, value in fields.items():
        if isinstance(value, dict):
            getattr(request, name).update(value)
        elif isinstance(value, list):
            getattr(request, name).extend(value)
        else:
            setattr(request, name, value)
    response = await stack.registry().FindCandidates(request, metadata=stack.as_role(Role.SUBMITTER))
    return list(response.candidates)


async def found_ids(stack: Stack, **fields: object) -> list[str]:
    return [candidate.agent.id for candidate in await find(stack, **fields)]


async def silence(database_url: str, agent_id: str, seconds: float) -> None:
    """Test setup: the agent's last heartbeat was `seconds` ago."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as connection:
        await connection.execute(
            "UPDATE agents SET last_heartbeat_at = now() - %s WHERE id = %s",
            (timedelta(seconds=seconds), f"default/{agent_id}"),
        )


# Requirements.


async def register_one_short_of_each_requirement(stack: Stack) -> None:
    """ "full" offers everything asked below; each other agent lacks one thing."""
    languages, specializations, labels = ("python", "go"), ("security",), {"gpu": "a100"}
    await register(stack, "full", languages=languages, specializations=specializations, labels=labels)
    await register(stack, "no-go", languages=("python",), specializations=specializations, labels=labels)
    await register(stack, "no-security", languages=languages, labels=labels)
    await register(stack, "other-gpu", languages=languages, specializations=specializations, labels={"gpu": "t4"})
    await register(
        stack,
        "other-type",
        task_types=("summarize",),
        languages=languages,
        specializations=specializations,
        labels=labels,
    )


@pytest.mark.parametrize(
    ("requirement", "expected"),
    [
        ({}, {"full", "no-go", "no-security", "other-gpu"}),
        ({"languages": ["go"]}, {"full", "no-security", "other-gpu"}),
        ({"specializations": ["security"]}, {"full", "no-go", "other-gpu"}),
        ({"labels": {"gpu": "a100"}}, {"full", "no-go", "no-security"}),
        ({"languages": ["go"], "specializations": ["security"], "labels": {"gpu": "a100"}}, {"full"}),
    ],
    ids=["task-type", "language", "specialization", "label", "all"],
)
async def test_only_agents_meeting_every_requirement_are_candidates(
    stack: Stack, requirement: dict[str, object], expected: set[str]
) -> None:
    await register_one_short_of_each_requirement(stack)
    assert set(await found_ids(stack, **requirement)) == expected


async def test_an_unoffered_task_type_finds_nobody(stack: Stack) -> None:
    await register(stack, "agent-1")
    assert await found_ids(stack, task_type="translate") == []


@pytest.mark.parametrize(
    ("max_utilization", "expected"),
    [(None, {"idle", "half", "full"}), (0.5, {"idle", "half"}), (0.0, {"idle"})],
    ids=["unset", "half", "zero"],
)
async def test_agents_above_the_utilization_limit_are_left_out(
    stack: Stack, max_utilization: float | None, expected: set[str]
) -> None:
    for agent_id, active_tasks in (("idle", 0), ("half", 2), ("full", 4)):
        await register(stack, agent_id, max_concurrent_tasks=4)
        await heartbeat(stack, agent_id, active_tasks)
    limit = {} if max_utilization is None else {"max_utilization": max_utilization}
    assert set(await found_ids(stack, **limit)) == expected


@pytest.mark.parametrize(
    ("minimum", "expected"), [(0.0, {"good", "new", "bad"}), (0.7, {"good", "new"}), (0.8, {"good"})]
)
async def test_agents_below_the_minimum_success_rate_on_the_task_type_are_left_out(
    stack: Stack, minimum: float, expected: set[str]
) -> None:
    for agent_id in ("good", "new", "bad"):
        await register(stack, agent_id, task_types=(TASK_TYPE, "summarize"))
    await record(stack, "good", successes=3, failures=0)
    await record(stack, "bad", successes=0, failures=3)
    # A fine record on another task type does not help.
    await record(stack, "bad", successes=20, failures=0, task_type="summarize")
    assert set(await found_ids(stack, min_success_rate=minimum)) == expected


async def test_draining_unhealthy_and_offline_agents_are_left_out_and_busy_ones_kept(
    stack: Stack, database_url: str
) -> None:
    for agent_id in ("online", "busy", "draining", "unhealthy", "offline"):
        await register(stack, agent_id)
    await heartbeat(stack, "busy", 1, agent_pb2.AGENT_STATUS_BUSY)
    await heartbeat(stack, "draining", 0, agent_pb2.AGENT_STATUS_DRAINING)
    await silence(database_url, "unhealthy", 4 * HEARTBEAT_INTERVAL_SECONDS)
    await silence(database_url, "offline", 7 * HEARTBEAT_INTERVAL_SECONDS)
    assert set(await found_ids(stack)) == {"online", "busy"}


# Ranking.


async def test_candidates_rank_by_success_rate_then_fit_then_load_then_id(stack: Stack) -> None:
    await register(stack, "proven", languages=("python", "go"))
    await record(stack, "proven", successes=3, failures=0)
    await register(stack, "generalist", languages=("python", "go", "rust"))
    await register(stack, "specialist-b", languages=("python",))
    await register(stack, "specialist-a", languages=("python",))
    await register(stack, "specialist-busy", languages=("python",), max_concurrent_tasks=2)
    await heartbeat(stack, "specialist-busy", 1)
    assert await found_ids(stack, languages=["python"]) == [
        "proven",
        "specialist-a",
        "specialist-b",
        "specialist-busy",
        "generalist",
    ]


async def test_candidates_are_cut_to_the_limit_and_to_ten_by_default(stack: Stack) -> None:
    for index in range(12):
        await register(stack, f"agent-{index:02d}")
    assert await found_ids(stack, limit=3) == ["agent-00", "agent-01", "agent-02"]
    assert len(await found_ids(stack)) == 10


async def test_a_candidate_carries_its_score_rate_on_the_task_type_reason_and_full_record(stack: Stack) -> None:
    await register(stack, "agent-1", task_types=(TASK_TYPE, "summarize"), languages=("python", "go"))
    await heartbeat(stack, "agent-1", 1)
    await record(stack, "agent-1", successes=3, failures=1)
    await record(stack, "agent-1", successes=0, failures=4, task_type="summarize")
    (candidate,) = await find(stack, languages=["python"])
    rate = (3 + 0.7) / 5
    assert candidate.success_rate == pytest.approx(rate)
    assert candidate.score == pytest.approx(0.25 * 0.5 + 0.25 * 1 + 0.5 * rate)
    assert candidate.reason == (
        f"offers code-review with python; success 0.74 over 4 code-review tasks; 25% utilized; "
        f"match {candidate.score:.2f}"
    )
    assert (candidate.agent.performance.task_count, len(candidate.agent.performance.windows)) == (8, 3)


# Bad input.


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"task_type": ""}, "task_type"),
        ({"languages": [""]}, "languages[0]"),
        ({"specializations": ["security", " padded"]}, "specializations[1]"),
        ({"labels": {"": "x"}}, "labels['']"),
        ({"max_utilization": 1.5}, "max_utilization"),
        ({"max_utilization": -0.5}, "max_utilization"),
        ({"min_success_rate": 1.1}, "min_success_rate"),
        ({"limit": 501}, "limit"),
        ({"limit": -1}, "limit"),
    ],
)
async def test_bad_input_is_rejected_naming_the_field(stack: Stack, fields: dict[str, object], field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await find(stack, **fields)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(f"{field}:"), caught.value.details()
