"""The `arbiter` command as a person runs it: one subprocess per call (`python -m arbiter.cli`), against
live services (the in-process `stack`, or `arbiter run` itself), checking what it prints and its exit code.

A subprocess started from an async test must not block the loop the in-process services run on, so
every call goes through asyncio.create_subprocess_exec."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from arbiter import Agent, AgentInfo, Client, PermanentError, Task, TaskInfo, TaskState
from shared.api_keys import Role, find_key
from shared.database import open_pool
from shared.devstack import wait_until_serving
from tests.support.processes import REPO_ROOT, free_port
from tests.support.sdk_agent import wait_for
from tests.support.stack import TEST_HASHER, TEST_PEPPER, Stack, create_keys, running_stack
from tests.support.stack import serving_agent as stack_serving_agent
from tests.support.waiting import eventually

COMMAND = [sys.executable, "-m", "arbiter.cli"]
UNREACHABLE = "127.0.0.1:1"
CALL_TIMEOUT_SECONDS = 60


def environment(**variables: str) -> dict[str, str]:
    """This process's environment without any ARBITER_* setting, plus the tests' pepper and `variables`."""
    inherited = {name: value for name, value in os.environ.items() if not name.startswith("ARBITER_")}
    return {**inherited, "ARBITER_API_KEY_PEPPER": TEST_PEPPER, **variables}


def stack_environment(stack: Stack, database_url: str, key: str | None = None) -> dict[str, str]:
    """Pointed at the in-process services and their database, with the admin key unless `key`."""
    return environment(
        ARBITER_DATABASE_URL=database_url,
        ARBITER_ORCHESTRATOR_ADDR=stack.orchestrator_address,
        ARBITER_REGISTRY_ADDR=stack.registry_address,
        ARBITER_API_KEY=stack.keys[Role.ADMIN] if key is None else key,
    )


async def arbiter(variables: dict[str, str], *arguments: str) -> subprocess.CompletedProcess[str]:
    process = await asyncio.create_subprocess_exec(
        *COMMAND,
        *arguments,
        cwd=REPO_ROOT,
        env=variables,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), CALL_TIMEOUT_SECONDS)
    assert process.returncode is not None
    return subprocess.CompletedProcess([*COMMAND, *arguments], process.returncode, stdout.decode(), stderr.decode())


def succeeded(result: subprocess.CompletedProcess[str]) -> str:
    """stdout of a call that must have worked."""
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def assert_one_line_error(result: subprocess.CompletedProcess[str], exit_code: int, start: str) -> str:
    """The call failed with `exit_code` and said why in exactly one line on stderr, no traceback."""
    assert result.returncode == exit_code, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(start), result.stderr
    return lines[0]


def table_row(output: str, first_cell: str) -> list[str]:
    """The cells (split on whitespace) of the table row that starts with `first_cell`."""
    rows = [line.split() for line in output.splitlines() if line.split()[:1] == [first_cell]]
    assert len(rows) == 1, output
    return rows[0]


Handler = Callable[[Task], Awaitable[Any]]


def serving_agent(stack: Stack, handlers: dict[str, Handler]) -> AbstractAsyncContextManager[Agent]:
    return stack_serving_agent(stack, "cli-test-agent", handlers, max_concurrent_tasks=4)


async def succeed(task: Task) -> dict[str, Any]:
    return {"echo": task.payload}


async def give_up(task: Task) -> dict[str, Any]:
    raise PermanentError("this input cannot work")


def submitter(stack: Stack) -> Client:
    return Client(stack.orchestrator_address, stack.keys[Role.SUBMITTER], registry_address=stack.registry_address)


# Help and usage.


async def test_help_lists_every_command_and_tasks_help_documents_exit_codes() -> None:
    top, tasks = await asyncio.gather(arbiter(environment(), "--help"), arbiter(environment(), "tasks", "--help"))
    for command in ("run", "migrate", "keys", "admin", "agents", "tasks", "stats", "demo", "smoke"):
        assert f"    {command} " in succeeded(top)
    assert "--orchestrator HOST:PORT" in top.stdout
    assert "0    the task is COMPLETED" in succeeded(tasks)
    assert "1    the task is FAILED or CANCELLED" in tasks.stdout


async def test_an_unknown_flag_is_a_usage_error() -> None:
    refused = await arbiter(environment(ARBITER_API_KEY="arb_unused"), "tasks", "list", "--colour")
    assert refused.returncode == 2
    assert refused.stderr.startswith("usage: arbiter")
    assert "error: unrecognized arguments: --colour" in refused.stderr


async def test_a_missing_key_says_where_to_get_one() -> None:
    refused = await arbiter(environment(), "tasks", "list")
    line = assert_one_line_error(refused, 2, "arbiter: no API key:")
    assert "pass --key or set ARBITER_API_KEY" in line


async def test_a_malformed_variable_is_named_and_exits_2() -> None:
    refused = await arbiter(environment(ARBITER_API_KEY="arb_unused", ARBITER_ORCHESTRATOR_ADDR="nowhere"), "stats")
    assert refused.returncode == 2
    assert "ARBITER_ORCHESTRATOR_ADDR='nowhere': expected HOST:PORT" in refused.stderr
    assert "Traceback" not in refused.stderr


async def test_a_payload_that_is_not_a_json_object_is_refused_before_any_call() -> None:
    variables = environment(ARBITER_API_KEY="arb_unused", ARBITER_ORCHESTRATOR_ADDR=UNREACHABLE)
    broken, array = await asyncio.gather(
        arbiter(variables, "tasks", "submit", "echo", "--payload", "{text: hi}"),
        arbiter(variables, "tasks", "submit", "echo", "--payload", "[1, 2]"),
    )
    assert_one_line_error(broken, 2, "arbiter: --payload is not valid JSON:")
    assert_one_line_error(array, 2, "arbiter: --payload must be a JSON object")


# Refused and unreachable calls.


async def test_an_unreachable_address_is_unavailable_in_one_line() -> None:
    refused = await arbiter(environment(ARBITER_API_KEY="arb_unused"), "tasks", "list", "--orchestrator", UNREACHABLE)
    line = assert_one_line_error(refused, 1, "arbiter: UNAVAILABLE: cannot reach 127.0.0.1:1")
    assert "Traceback" not in line


async def test_an_unknown_key_is_unauthenticated_in_one_line(stack: Stack, database_url: str) -> None:
    refused = await arbiter(stack_environment(stack, database_url, key="arb_not-a-real-key"), "stats")
    assert_one_line_error(refused, 1, "arbiter: UNAUTHENTICATED: ")


# Tasks.


async def test_a_submitted_task_reads_back_with_get_and_list_in_json_and_tables(
    stack: Stack, database_url: str
) -> None:
    variables = stack_environment(stack, database_url)
    submitted = await arbiter(
        variables,
        *("tasks", "submit", "code-review", "--payload", '{"pullRequest": 7}', "--priority", "5"),
        *("--language", "python", "--language", "go", "--label", "region=eu", "--timeout", "30", "--json"),
    )
    task = json.loads(succeeded(submitted))
    assert task["state"] == "pending"
    assert task["payload"] == {"pullRequest": 7}
    assert task["languages"] == ["python", "go"]
    assert task["labels"] == {"region": "eu"}
    assert task["timeout"] == 30.0
    assert task["created_at"].endswith("+00:00")

    shown, listed, table = await asyncio.gather(
        arbiter(variables, "tasks", "get", task["id"]),
        arbiter(variables, "tasks", "list", "--state", "pending", "--type", "code-review", "--json"),
        arbiter(variables, "tasks", "list"),
    )
    assert table_row(succeeded(shown), "state") == ["state", "pending"]
    # Protobuf keeps every number as a double; 7 still prints as 7.
    assert table_row(shown.stdout, "payload") == ["payload", '{"pullRequest":', "7}"]
    assert [listed_task["id"] for listed_task in json.loads(succeeded(listed))] == [task["id"]]
    row = table_row(succeeded(table), task["id"])
    assert row[1:5] == ["code-review", "pending", "5", "1/3"]


async def test_cancel_then_watch_shows_the_cancelled_task_and_exits_1(stack: Stack, database_url: str) -> None:
    variables = stack_environment(stack, database_url)
    async with submitter(stack) as client:
        task = await client.submit("nobody-takes-this")
    cancelled = await arbiter(variables, "tasks", "cancel", task.id, "--reason", "not needed", "--json")
    assert json.loads(succeeded(cancelled))["state"] == "cancelled"

    watched = await arbiter(variables, "tasks", "watch", task.id)
    assert watched.returncode == 1
    [line] = watched.stdout.splitlines()
    assert "cancelled" in line and "error not needed" in line


async def test_watch_prints_each_change_until_completed_and_exits_0(stack: Stack, database_url: str) -> None:
    async with submitter(stack) as client:
        task = await client.submit("echo", {"text": "hello"})
    watching = await asyncio.create_subprocess_exec(
        *COMMAND,
        *("tasks", "watch", task.id, "--json"),
        cwd=REPO_ROOT,
        env=stack_environment(stack, database_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert watching.stdout is not None
    # The task as it is now comes first; only then does an agent take it.
    first = json.loads(await asyncio.wait_for(watching.stdout.readline(), CALL_TIMEOUT_SECONDS))
    assert first["state"] == "pending"
    async with serving_agent(stack, {"echo": succeed}):
        rest, stderr = await asyncio.wait_for(watching.communicate(), CALL_TIMEOUT_SECONDS)
    assert watching.returncode == 0, stderr.decode()
    changes = [json.loads(line) for line in rest.decode().splitlines()]
    assert changes[-1]["state"] == "completed"
    assert changes[-1]["result"] == {"echo": {"text": "hello"}}
    assert len(changes) == len({change["updated_at"] for change in changes})


async def test_watch_exits_1_when_the_task_fails(stack: Stack, database_url: str) -> None:
    async with serving_agent(stack, {"give-up": give_up}), submitter(stack) as client:
        task = await client.submit("give-up")
        watched = await arbiter(stack_environment(stack, database_url), "tasks", "watch", task.id)
    assert watched.returncode == 1, watched.stderr
    last = watched.stdout.splitlines()[-1]
    assert "failed" in last and "this input cannot work" in last


async def test_watch_gives_up_after_its_timeout_with_exit_124(stack: Stack, database_url: str) -> None:
    async with submitter(stack) as client:
        task = await client.submit("nobody-takes-this")
    watched = await arbiter(stack_environment(stack, database_url), "tasks", "watch", task.id, "--timeout", "0.5")
    assert_one_line_error(watched, 124, f"arbiter: task {task.id} is still PENDING after 0.5 s")


async def test_submit_wait_prints_the_finished_task_and_exits_by_its_state(stack: Stack, database_url: str) -> None:
    variables = stack_environment(stack, database_url)
    async with serving_agent(stack, {"echo": succeed, "give-up": give_up}):
        completed, failed = await asyncio.gather(
            arbiter(variables, "tasks", "submit", "echo", "--payload", '{"n": 1}', "--wait", "--json"),
            arbiter(variables, "tasks", "submit", "give-up", "--wait-timeout", "30", "--json"),
        )
    assert json.loads(succeeded(completed))["result"] == {"echo": {"n": 1}}
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["state"] == "failed"


async def test_history_lists_each_state_change_with_its_reason(stack: Stack, database_url: str) -> None:
    async with serving_agent(stack, {"give-up": give_up}), submitter(stack) as client:
        task = await client.submit("give-up")
        await client.wait(task.id, timeout=30)
    variables = stack_environment(stack, database_url)
    table = succeeded(await arbiter(variables, "tasks", "history", task.id)).splitlines()
    assert table[0].split() == ["TIME", "FROM", "TO", "ATTEMPT", "AGENT", "REASON"]
    assert [line.split()[1:3] for line in table[2:]] == [
        ["-", "pending"],
        ["pending", "assigned"],
        ["assigned", "failed"],
    ]
    events = json.loads(succeeded(await arbiter(variables, "tasks", "history", task.id, "--json")))
    assert [(event["from_state"], event["to_state"]) for event in events] == [
        (None, "pending"),
        ("pending", "assigned"),
        ("assigned", "failed"),
    ]
    assert "this input cannot work" in events[-1]["reason"]


async def test_a_task_nobody_starts_in_time_fails_saying_so(stack: Stack, database_url: str) -> None:
    submitted = await arbiter(
        stack_environment(stack, database_url),
        "tasks",
        "submit",
        "nobody-takes-this",
        "--schedule-to-start-timeout",
        "0.2",
        "--wait-timeout",
        "20",
        "--json",
    )
    assert submitted.returncode == 1, submitted.stderr
    finished = json.loads(submitted.stdout)
    assert finished["state"] == "failed"
    assert "schedule_to_start_timeout" in finished["error"]


# Queue depth and agents.


async def test_stats_counts_tasks_by_type_and_state(stack: Stack, database_url: str) -> None:
    async with submitter(stack) as client:
        first, *_ = [await client.submit("stat-a") for _ in range(3)]
        await client.submit("stat-b")
        await client.cancel(first.id)
    variables = stack_environment(stack, database_url)
    as_json, table = await asyncio.gather(arbiter(variables, "stats", "--json"), arbiter(variables, "stats"))

    depths = {depth["task_type"]: depth for depth in json.loads(succeeded(as_json))}
    assert set(depths) == {"stat-a", "stat-b"}
    assert (depths["stat-a"]["pending"], depths["stat-a"]["cancelled"], depths["stat-a"]["completed"]) == (2, 1, 0)
    assert depths["stat-b"]["pending"] == 1
    assert depths["stat-a"]["oldest_pending_age_seconds"] >= 0
    assert table_row(succeeded(table), "stat-a")[:7] == ["stat-a", "2", "0", "0", "0", "0", "1"]


async def test_agents_list_and_show_describe_a_serving_agent(stack: Stack, database_url: str) -> None:
    variables = stack_environment(stack, database_url)
    async with serving_agent(stack, {"echo": succeed}):
        listed, busy_only, shown = await asyncio.gather(
            arbiter(variables, "agents", "list", "--task-type", "echo", "--json"),
            arbiter(variables, "agents", "list", "--status", "busy"),
            arbiter(variables, "agents", "show", "cli-test-agent"),
        )
    [agent] = json.loads(succeeded(listed))
    assert (agent["id"], agent["status"], agent["task_types"]) == ("cli-test-agent", "online", ["echo"])
    assert succeeded(busy_only) == ""
    assert busy_only.stderr.strip() == "no agents match"
    assert table_row(succeeded(shown), "status") == ["status", "online"]

    unknown = await arbiter(variables, "agents", "show", "no-such-agent")
    assert_one_line_error(unknown, 1, "arbiter: NOT_FOUND: ")


async def test_agents_show_includes_the_track_record_by_task_type_and_window(stack: Stack, database_url: str) -> None:
    async def rated(task: Task) -> dict[str, Any]:
        task.quality = 0.9
        return {}

    async with serving_agent(stack, {"echo": rated}), submitter(stack) as client:
        await client.wait((await client.submit("echo")).id, timeout=CALL_TIMEOUT_SECONDS)

        async def recorded() -> AgentInfo | None:
            agent = await client.get_agent("cli-test-agent")
            return agent if agent.task_count == 1 else None

        await wait_for(recorded, "the outcome in the agent's record", timeout=CALL_TIMEOUT_SECONDS)
    shown = succeeded(await arbiter(stack_environment(stack, database_url), "agents", "show", "cli-test-agent"))
    # With the priors: success (1 + 0.7) / 2, quality (0.9 + 0.7) / 2.
    assert table_row(shown, "on")[1:7] == ["echo", "success", "85%", "of", "1", "task,"]
    assert "quality 0.80" in " ".join(table_row(shown, "on"))
    assert table_row(shown, "degraded") == ["degraded", "no"]
    # Windows are raw: the one task, with its own quality.
    windows = [" ".join(line.split()[:9]) for line in shown.splitlines() if line.startswith("last 5 min")]
    assert windows == ["last 5 min 1 task, success 100%, quality 0.90,"]


async def test_agents_find_lists_the_capable_agents_with_score_and_reason(stack: Stack, database_url: str) -> None:
    variables = stack_environment(stack, database_url)
    async with serving_agent(stack, {"echo": succeed}), submitter(stack) as client:
        await wait_for(
            lambda: client.find_candidates("echo"), "the agent among the candidates", timeout=CALL_TIMEOUT_SECONDS
        )
        as_json, table, nobody = await asyncio.gather(
            arbiter(variables, "agents", "find", "--task-type", "echo", "--json"),
            arbiter(
                variables,
                *("agents", "find", "--task-type", "echo", "--min-success-rate", "0.5", "--max-utilization", "1"),
            ),
            arbiter(variables, "agents", "find", "--task-type", "echo", "--language", "rust", "--limit", "3"),
        )
    [candidate] = json.loads(succeeded(as_json))
    assert candidate["agent"]["id"] == "cli-test-agent"
    # Nothing asked of languages or specializations: fit 1 each; success rate the prior, 0.7.
    assert candidate["score"] == pytest.approx(0.25 + 0.25 + 0.5 * 0.7)
    assert candidate["success_rate"] == pytest.approx(0.7)
    assert candidate["reason"].startswith("offers echo;")
    assert table_row(succeeded(table), "cli-test-agent")[1:4] == ["online", "0.85", "0.70"]
    assert succeeded(nobody) == ""
    assert nobody.stderr.strip() == "no ONLINE or BUSY agent can take such a 'echo' task"


async def test_agents_find_needs_a_task_type_and_fractions_from_0_to_1() -> None:
    variables = environment(ARBITER_API_KEY="arb_unused", ARBITER_REGISTRY_ADDR=UNREACHABLE)
    no_type, too_busy = await asyncio.gather(
        arbiter(variables, "agents", "find"),
        arbiter(variables, "agents", "find", "--task-type", "echo", "--max-utilization", "2"),
    )
    assert no_type.returncode == 2
    assert "the following arguments are required: --task-type" in no_type.stderr
    assert too_busy.returncode == 2
    assert "expected a number from 0 to 1; got 2" in too_busy.stderr


# Routing.


async def test_tasks_explain_shows_each_routing_decision_and_get_shows_the_routing(
    stack: Stack, database_url: str
) -> None:
    async with serving_agent(stack, {"echo": succeed}), submitter(stack) as client:
        task = await client.wait((await client.submit("echo")).id, timeout=CALL_TIMEOUT_SECONDS)
    variables = stack_environment(stack, database_url)
    as_json, table, shown = await asyncio.gather(
        arbiter(variables, "tasks", "explain", task.id, "--json"),
        arbiter(variables, "tasks", "explain", task.id),
        arbiter(variables, "tasks", "get", task.id),
    )
    explanation = json.loads(succeeded(as_json))
    assert explanation["strategy"] == "ucb"
    [decision] = explanation["decisions"]
    # The only agent, new: ucb's new-agent bonus makes it exploration.
    assert (decision["attempt"], decision["agent_id"], decision["strategy"], decision["explored"]) == (
        1,
        "cli-test-agent",
        "ucb",
        True,
    )
    assert decision["reason"].startswith("highest UCB score")
    assert explanation["task"]["routing"] == decision
    assert explanation["candidates"] == []

    output = succeeded(table)
    assert table_row(output, "ATTEMPT") == [
        *("ATTEMPT", "AGENT", "STRATEGY", "CONFIDENCE", "SCORE", "EXPLORED", "DECIDED", "REASON")
    ]
    row = table_row(output, "1")
    assert row[1:4] + row[5:6] == ["cli-test-agent", "ucb", "0.70", "yes"]
    assert table_row(output, "strategy")[1] == "ucb"
    assert table_row(succeeded(shown), "routing")[1:7] == ["attempt", "1", "to", "cli-test-agent", "by", "ucb"]


async def test_tasks_explain_of_a_waiting_task_says_why_and_scores_the_candidates(
    stack: Stack, database_url: str
) -> None:
    release = asyncio.Event()

    async def hold(task: Task) -> dict[str, Any]:
        await release.wait()
        return {}

    variables = stack_environment(stack, database_url)
    async with (
        stack_serving_agent(stack, "one-slot-agent", {"hold": hold}, max_concurrent_tasks=1),
        submitter(stack) as client,
    ):
        first = await client.submit("hold")
        waiting = await client.submit("hold")

        async def first_held_and_second_waiting() -> TaskInfo | None:
            held, pending = await client.get(first.id), await client.get(waiting.id)
            # The reason comes from the live view of agents, which learns of the agent, then of its held
            # task, a moment after its stream took the first task: wait for the settled reason (the agent
            # at capacity), which holds until the release, so both explanations below must repeat it.
            settled = "at capacity: 'one-slot-agent' (1/1)" in pending.pending_reason
            ready = held.state in (TaskState.ASSIGNED, TaskState.RUNNING) and settled
            return pending if ready else None

        pending = await wait_for(
            first_held_and_second_waiting, "one task held, the other waiting", timeout=CALL_TIMEOUT_SECONDS
        )
        as_json, table = await asyncio.gather(
            arbiter(variables, "tasks", "explain", waiting.id, "--json"),
            arbiter(variables, "tasks", "explain", waiting.id),
        )
        release.set()
    explanation = json.loads(succeeded(as_json))
    assert explanation["task"]["state"] == "pending"
    assert explanation["task"]["pending_reason"] == pending.pending_reason
    assert explanation["decisions"] == []
    assert [candidate["agent_id"] for candidate in explanation["candidates"]] == ["one-slot-agent"]

    output = succeeded(table)
    assert table_row(output, "waiting")[1:] == pending.pending_reason.split()
    assert table_row(output, "one-slot-agent")[0] == "one-slot-agent"
    assert "no routing decisions yet" in table.stderr


# Keys, on the database directly.


async def test_keys_create_prints_a_working_key_once_and_stores_only_its_hash(database_url: str) -> None:
    created = await arbiter(
        environment(ARBITER_DATABASE_URL=database_url), "keys", "create", "--role", "viewer", "--description", "boards"
    )
    secret = succeeded(created).strip()
    assert secret.startswith("arb_")
    assert "shown only this once" in created.stderr
    pool = await open_pool(database_url, 1, 1, name="test")
    try:
        key = await find_key(pool, TEST_HASHER, secret)
        assert key is not None and (key.role, key.tenant) == (Role.VIEWER, "default")
        async with pool.connection() as connection:
            cursor = await connection.execute("SELECT * FROM api_keys WHERE description = 'boards'")
            row = await cursor.fetchone()
        assert row is not None
        assert secret not in {str(value) for value in row.values()}
    finally:
        await pool.close()


async def test_keys_create_refuses_an_unknown_role(database_url: str) -> None:
    refused = await arbiter(environment(ARBITER_DATABASE_URL=database_url), "keys", "create", "--role", "root")
    assert refused.returncode == 2
    assert "invalid choice: 'root'" in refused.stderr


async def test_keys_list_shows_prefixes_and_roles_but_never_a_secret(database_url: str) -> None:
    keys = await create_keys(database_url)
    variables = environment(ARBITER_DATABASE_URL=database_url)
    as_json, table = await asyncio.gather(
        arbiter(variables, "keys", "list", "--json"), arbiter(variables, "keys", "list")
    )
    listed = json.loads(succeeded(as_json))
    assert sorted(key["role"] for key in listed) == sorted(role.value for role in Role)
    assert {key["key_prefix"] for key in listed} == {secret[:12] for secret in keys.values()}
    assert set(listed[0]) == {
        "id",
        "key_prefix",
        "role",
        "tenant",
        "description",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
        "rotated_at",
        "agent_ids",
        "sees_tenant_tasks",
    }
    for key in listed:
        assert table_row(succeeded(table), key["id"])[1:3] == [key["key_prefix"], key["role"]]
    for secret in keys.values():
        assert secret not in as_json.stdout and secret not in table.stdout
        assert TEST_HASHER.digest(secret).hex() not in as_json.stdout


async def test_keys_create_refuses_to_run_without_the_pepper(database_url: str) -> None:
    refused = await arbiter(
        environment(ARBITER_DATABASE_URL=database_url, ARBITER_API_KEY_PEPPER=""), "keys", "create", "--role", "admin"
    )
    assert_one_line_error(refused, 2, "arbiter: ARBITER_API_KEY_PEPPER must be a secret of at least 32 characters")


async def test_keys_create_makes_a_bound_expiring_key_in_another_tenant(database_url: str) -> None:
    created = await arbiter(
        environment(ARBITER_DATABASE_URL=database_url),
        *("keys", "create", "--role", "agent", "--tenant", "acme", "--agent-id", "build-pool-*"),
        *("--agent-id", "solo", "--expires-in-hours", "2", "--json"),
    )
    shown = json.loads(succeeded(created))
    assert shown["key"]["tenant"] == "acme"
    assert shown["key"]["agent_ids"] == ["build-pool-*", "solo"]
    assert shown["key"]["expires_at"] is not None
    pool = await open_pool(database_url, 1, 1, name="test")
    try:
        key = await find_key(pool, TEST_HASHER, shown["secret"])
    finally:
        await pool.close()
    assert key is not None and key.agent_ids == ("build-pool-*", "solo")


async def test_keys_create_refuses_a_bad_tenant_or_agent_pattern(database_url: str) -> None:
    variables = environment(ARBITER_DATABASE_URL=database_url)
    bad_tenant = await arbiter(variables, "keys", "create", "--role", "admin", "--tenant", "Acme Corp")
    assert bad_tenant.returncode == 2 and "is not a tenant name" in bad_tenant.stderr
    bad_pattern = await arbiter(variables, "keys", "create", "--role", "agent", "--agent-id", "a/b")
    assert bad_pattern.returncode == 2 and "is not a valid agent id" in bad_pattern.stderr


async def test_keys_rotate_prints_a_new_secret_and_the_old_one_stops(database_url: str) -> None:
    keys = await create_keys(database_url)
    old = keys[Role.VIEWER]
    rotated = await arbiter(environment(ARBITER_DATABASE_URL=database_url), "keys", "rotate", old[:12])
    new = succeeded(rotated).strip()
    assert new.startswith("arb_") and new != old
    pool = await open_pool(database_url, 1, 1, name="test")
    try:
        before, after = await find_key(pool, TEST_HASHER, old), await find_key(pool, TEST_HASHER, new)
    finally:
        await pool.close()
    assert before is None
    assert after is not None and after.role == Role.VIEWER


async def test_keys_revoke_of_an_unknown_key_says_so_and_exits_1(database_url: str) -> None:
    refused = await arbiter(environment(ARBITER_DATABASE_URL=database_url), "keys", "revoke", "arb_NoSuchKey")
    assert_one_line_error(refused, 1, "arbiter: no API key has the id or prefix 'arb_NoSuchKey'")


async def test_keys_revoke_makes_the_key_stop_working(database_url: str) -> None:
    async with running_stack(database_url, auth_cache_seconds=0.2) as stack:
        viewer = stack.keys[Role.VIEWER]
        as_viewer = stack_environment(stack, database_url, key=viewer)
        succeeded(await arbiter(as_viewer, "stats"))

        revoked = await arbiter(environment(ARBITER_DATABASE_URL=database_url), "keys", "revoke", viewer[:12])
        assert "takes effect within 5 s" in succeeded(revoked)
        deadline = asyncio.get_running_loop().time() + 20
        while (refused := await arbiter(as_viewer, "stats")).returncode == 0:
            assert asyncio.get_running_loop().time() < deadline, "the revoked key still works"
        assert_one_line_error(refused, 1, "arbiter: UNAUTHENTICATED: ")

        again = await arbiter(environment(ARBITER_DATABASE_URL=database_url), "keys", "revoke", viewer[:12], "--json")
        assert json.loads(succeeded(again))["revoked_now"] is False


async def test_migrate_on_an_up_to_date_database_says_so(database_url: str) -> None:
    migrated = await arbiter(environment(ARBITER_DATABASE_URL=database_url), "migrate")
    assert "up to date" in succeeded(migrated)


async def test_an_unreachable_database_is_reported_plainly() -> None:
    failed = await arbiter(environment(ARBITER_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none"), "migrate")
    assert_one_line_error(failed, 1, "arbiter: cannot reach PostgreSQL")


# The demo.


async def test_demo_runs_a_batch_through_its_agents_and_summarizes_it_as_json(stack: Stack, database_url: str) -> None:
    demo = await arbiter(
        stack_environment(stack, database_url, key=stack.keys[Role.SUBMITTER]),
        *("demo", "--tasks", "30", "--agents", "2", "--agent-key", stack.keys[Role.AGENT], "--json"),
    )
    summary = json.loads(succeeded(demo))
    assert (summary["tasks"], summary["completed"], summary["failed"]) == (30, 30, 0)
    assert summary["throughput_per_second"] > 0
    assert 0 < summary["latency_p50_ms"] <= summary["latency_p95_ms"] <= summary["latency_p99_ms"]
    async with submitter(stack) as client:
        agents = await client.list_agents(task_type="demo")
        completed = await client.list_tasks(state=TaskState.COMPLETED, task_type="demo", limit=100)
    assert sorted(agent.id for agent in agents) == ["demo-agent-1", "demo-agent-2"]
    assert len(completed) == 30


async def test_demo_prints_a_summary_table(stack: Stack, database_url: str) -> None:
    demo = await arbiter(stack_environment(stack, database_url), "demo", "--tasks", "30", "--agents", "2")
    output = succeeded(demo)
    assert output.splitlines()[0].split()[:3] == ["TASKS", "COMPLETED", "FAILED"]
    assert table_row(output, "30")[:3] == ["30", "30", "0"]
    assert "tasks/s" in output


# arbiter run.


@pytest.mark.e2e
@pytest.mark.xdist_group("e2e")
def test_arbiter_run_serves_until_interrupted_then_exits_0(database_url: str, tmp_path: Path) -> None:
    registry, orchestrator = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    log = tmp_path / "arbiter-run.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*COMMAND, "run"],
            cwd=REPO_ROOT,
            env=environment(
                ARBITER_DATABASE_URL=database_url,
                ARBITER_STATE_DIR=str(tmp_path / "state"),
                ARBITER_REGISTRY_ADDR=registry,
                ARBITER_ORCHESTRATOR_ADDR=orchestrator,
            ),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_serving(registry, process)
        wait_until_serving(orchestrator, process)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert (tmp_path / "state" / "dev-keys.env").exists()


# Keys and the audit log through AdminService, with an admin key.


async def test_admin_creates_lists_rotates_and_revokes_keys_without_database_access(database_url: str) -> None:
    async with running_stack(database_url, auth_cache_seconds=0.2) as stack:
        # No ARBITER_DATABASE_URL: these go through the services only.
        as_admin = {**stack_environment(stack, database_url), "ARBITER_DATABASE_URL": ""}
        created = await arbiter(
            as_admin, "admin", "create-key", "--role", "agent", "--agent-id", "build-pool-*", "--description", "pool"
        )
        secret = succeeded(created).strip()
        assert secret.startswith("arb_") and "shown only this once" in created.stderr
        listed = json.loads(succeeded(await arbiter(as_admin, "admin", "keys", "--json")))
        pool_key = next(key for key in listed if key["description"] == "pool")
        assert (pool_key["role"], pool_key["agent_ids"], pool_key["prefix"]) == ("agent", ["build-pool-*"], secret[:12])
        table = succeeded(await arbiter(as_admin, "admin", "keys"))
        assert table_row(table, pool_key["id"])[1:3] == [secret[:12], "agent"]
        assert secret not in table

        rotated = succeeded(await arbiter(as_admin, "admin", "rotate-key", secret[:12])).strip()
        assert rotated.startswith("arb_") and rotated != secret
        revoked = succeeded(await arbiter(as_admin, "admin", "revoke-key", pool_key["id"]))
        assert f"revoked key {rotated[:12]}" in revoked
        audit = json.loads(succeeded(await arbiter(as_admin, "admin", "audit", "--rpc", "RevokeApiKey", "--json")))
        assert [(event["status"], event["resource_id"]) for event in audit] == [("OK", pool_key["id"])]


async def test_admin_commands_refuse_a_key_that_is_not_an_admins(database_url: str) -> None:
    async with running_stack(database_url) as stack:
        as_viewer = stack_environment(stack, database_url, key=stack.keys[Role.VIEWER])
        refused = await arbiter(as_viewer, "admin", "keys")
    assert_one_line_error(refused, 1, "arbiter: PERMISSION_DENIED: role 'viewer' may not call ListApiKeys")


async def test_admin_audit_shows_refused_calls_newest_first(database_url: str) -> None:
    async with running_stack(database_url) as stack:
        as_viewer = stack_environment(stack, database_url, key=stack.keys[Role.VIEWER])
        assert (await arbiter(as_viewer, "tasks", "submit", "echo")).returncode == 1
        as_admin = stack_environment(stack, database_url)

        async def refusals() -> list[str]:
            shown = await arbiter(as_admin, "admin", "audit", "--status", "permission_denied")
            rows = succeeded(shown).splitlines()
            return [row for row in rows if "SubmitTask" in row]

        [row] = await eventually(refusals, "the refused submission in the audit log")
        assert "PERMISSION_DENIED" in row and "viewer" in row
