"""The backup procedure of docs/operations.md, on real databases: pg_dump --format=custom of a database the
services filled, pg_restore into a new one, and the services serve it with the same keys, agents and tasks."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from arbiter import Client, PermanentError, Task, TaskState
from shared.api_keys import Role
from tests.support.pg_tools import client_program, server_major_version
from tests.support.processes import ServiceProcesses
from tests.support.schema import read_schema, schema_differences
from tests.support.stack import running_stack, serving_agent
from tests.test_cli import arbiter, environment, succeeded

AGENT_ID = "backup-agent"


async def echo(task: Task) -> dict[str, Any]:
    return {"echo": task.payload}


async def refuse(task: Task) -> dict[str, Any]:
    raise PermanentError("refused on purpose")


async def fill_through_the_services(database_url: str) -> dict[Role, str]:
    """Completed, failed and waiting tasks, an agent with a track record, keys and their audit trail; returns
    the keys (one per role)."""
    async with running_stack(database_url) as stack:
        async with (
            serving_agent(stack, AGENT_ID, {"echo": echo, "refuse": refuse}),
            Client(
                stack.orchestrator_address, stack.keys[Role.SUBMITTER], registry_address=stack.registry_address
            ) as client,
        ):
            finished = [await client.submit("echo", {"n": n}) for n in range(10)]
            finished.append(await client.submit("refuse", {"n": 10}, max_attempts=1))
            for task in finished:
                await client.wait(task.id, timeout=30)
            # No agent serves this type: they stay PENDING.
            for n in range(5):
                await client.submit("nobody-serves-this", {"n": n}, idempotency_key=f"waiting-{n}")
    return stack.keys


def row_counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as connection:
        tables = [
            row[0]
            for row in connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
        ]
        counts = {}
        for table in tables:
            row = connection.execute(f'SELECT count(*) FROM "{table}"').fetchone()
            assert row is not None
            counts[table] = int(row[0])
        return counts


def run(*command: str | Path) -> None:
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{command}: exit {result.returncode}\n{result.stderr}"


@pytest.fixture
def backup_tools(database_url: str) -> tuple[Path, Path]:
    major = server_major_version(database_url)
    return client_program("pg_dump", major), client_program("pg_restore", major)


async def test_a_restored_backup_serves_the_same_tasks_agents_and_keys(
    database_url: str, empty_database_url: str, backup_tools: tuple[Path, Path], tmp_path: Path
) -> None:
    pg_dump, pg_restore = backup_tools
    keys = await fill_through_the_services(database_url)
    counts = row_counts(database_url)
    assert counts["tasks"] == 16 and counts["task_events"] > counts["tasks"] and counts["audit_events"] > 0

    dump = tmp_path / "arbiter.dump"
    # The commands docs/operations.md gives (there, with "$ARBITER_DATABASE_URL" and a new database's URL).
    run(pg_dump, "--format=custom", "--no-owner", "--no-privileges", f"--file={dump}", database_url)
    run(
        pg_restore,
        "--no-owner",
        "--no-privileges",
        "--exit-on-error",
        "--single-transaction",
        f"--dbname={empty_database_url}",
        dump,
    )
    restored = empty_database_url

    assert row_counts(restored) == counts
    assert schema_differences(read_schema(database_url), read_schema(restored)) == []
    succeeded(await arbiter(environment(ARBITER_DATABASE_URL=restored), "db", "check"))

    # The keys made before the backup still authenticate: the orchestrator's service key with the registry,
    # and the submitter's and viewer's with the services, under the same pepper (tests' TEST_PEPPER).
    (tmp_path / "logs").mkdir()
    processes = ServiceProcesses(restored, keys, tmp_path / "logs")
    try:
        processes.start()
        async with Client(
            processes.orchestrator_address, keys[Role.SUBMITTER], registry_address=processes.registry_address
        ) as client:
            tasks = await client.list_tasks(limit=100)
            by_state = sorted(task.state.name for task in tasks)
            assert by_state == ["COMPLETED"] * 10 + ["FAILED"] + ["PENDING"] * 5
            completed = [task for task in tasks if task.state is TaskState.COMPLETED]
            assert sorted(task.result["echo"]["n"] for task in completed) == list(range(10))
            assert {task.assigned_agent_id for task in completed} == {AGENT_ID}
            # The idempotency keys came along: submitting again returns the restored task.
            again = await client.submit("nobody-serves-this", {"n": 0}, idempotency_key="waiting-0")
            assert not again.created
        async with Client(
            processes.orchestrator_address, keys[Role.VIEWER], registry_address=processes.registry_address
        ) as viewer:
            agent = await viewer.get_agent(AGENT_ID)
            assert agent.task_count == 11
    finally:
        codes = processes.stop()
    assert codes == {"orchestrator": 0, "registry": 0}, processes.logs()
