"""ARBITER_DATABASE_READ_URL with a second real database standing in for the replica (both migrated, no
replication between them, so each row says which database answered): the read-only RPCs read from it,
writes and reads of one's own writes go to the primary, a task the replica lacks is found on the primary,
and a replica that does not answer (at start or later) never fails a call nor stops the services."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
import yaml
from prometheus_client import REGISTRY

from arbiter.v1 import admin_service_pb2 as apb
from arbiter.v1 import agent_pb2, orchestrator_service_pb2_grpc, task_pb2
from arbiter.v1 import orchestrator_service_pb2 as opb
from arbiter.v1 import registry_service_pb2 as rpb
from services.orchestrator.domain import NewTask, TaskRequirements
from services.orchestrator.storage import Submission, TaskStore
from services.registry.domain import AgentRegistration, Silence
from services.registry.storage import AgentStore
from shared import replica as replica_module
from shared.api_keys import Role
from shared.config import Config, ConfigError
from shared.database import open_pool
from tests.support.database import PostgresForTests
from tests.support.processes import REPO_ROOT, ServiceProcesses, free_port, running_services
from tests.support.stack import Stack, metadata, running_stack
from tests.support.waiting import eventually

AUDITED_ON_REPLICA = "/arbiter.v1.OrchestratorService/CancelTask"


@pytest.fixture
def replica_url(test_postgres: PostgresForTests) -> Iterator[str]:
    """A second migrated database, the stand-in for a read replica of `database_url`."""
    url = test_postgres.create_database()
    yield url
    test_postgres.drop_database(url)


@pytest.fixture
async def replicated(database_url: str, replica_url: str) -> AsyncIterator[Stack]:
    async with running_stack(database_url, database_read_url=replica_url) as stack:
        yield stack


def closed_port_url(password: str = "") -> str:
    """A URL of a PostgreSQL that is not there: nothing listens on the port."""
    credentials = f"postgres:{password}" if password else "postgres"
    return f"postgresql://{credentials}@127.0.0.1:{free_port()}/replica"


def fallbacks(service: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "arbiter_database_replica_fallbacks_total", {"service": service, "reason": reason}
    )
    return value or 0.0


def replica_up(service: str) -> float | None:
    return REGISTRY.get_sample_value("arbiter_database_replica_up", {"service": service})


async def task_only_on(url: str, task_type: str) -> str:
    """Inserts a PENDING task of the default tenant straight into that database; returns its id."""
    pool = await open_pool(url, 1, 1, name="test-seed")
    try:
        submission = Submission.of([NewTask(task_type, {"where": url[-12:]}, 0, TaskRequirements(), 3, None, None)])
        inserted = await TaskStore(pool, 30).insert_many(submission)
    finally:
        await pool.close()
    (task_id,) = inserted
    return task_id


async def agent_only_on(url: str, agent_id: str) -> None:
    pool = await open_pool(url, 1, 1, name="test-seed")
    try:
        registration = AgentRegistration(f"default/{agent_id}", agent_id, "test", ["replicated"], [], [], {}, 1)
        await AgentStore(pool, Silence.for_interval(5)).upsert(registration)
    finally:
        await pool.close()


async def audit_event_only_on(url: str, resource_id: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
        await connection.execute(
            """
            INSERT INTO audit_events (at, tenant, key_id, role, rpc, resource_id, status, message, peer, trace_id)
            VALUES (now(), 'default', NULL, 'admin', %s, %s, 'OK', '', 'ipv4:127.0.0.1:1', '')
            """,
            (AUDITED_ON_REPLICA, resource_id),
        )


async def task_ids_in(url: str) -> set[str]:
    async with await psycopg.AsyncConnection.connect(url) as connection:
        cursor = await connection.execute("SELECT id::text FROM tasks")
        return {row[0] for row in await cursor.fetchall()}


async def submit(stack: Stack, task_type: str) -> str:
    response = await stack.orchestrator().SubmitTask(
        opb.SubmitTaskRequest(task_type=task_type), metadata=stack.as_role(Role.SUBMITTER)
    )
    return str(response.task.id)


async def test_get_task_reads_from_the_replica(replicated: Stack, replica_url: str) -> None:
    task_id = await task_only_on(replica_url, "on-replica")
    response = await replicated.orchestrator().GetTask(
        opb.GetTaskRequest(task_id=task_id), metadata=replicated.as_role(Role.VIEWER)
    )
    assert response.task.task_type == "on-replica"


async def test_list_tasks_reads_from_the_replica_while_submissions_go_to_the_primary(
    replicated: Stack, database_url: str, replica_url: str
) -> None:
    on_replica = await task_only_on(replica_url, "on-replica")
    submitted = await submit(replicated, "submitted")
    response = await replicated.orchestrator().ListTasks(
        opb.ListTasksRequest(page_size=10), metadata=replicated.as_role(Role.VIEWER)
    )
    assert [task.id for task in response.tasks] == [on_replica]
    assert await task_ids_in(database_url) == {submitted}
    assert await task_ids_in(replica_url) == {on_replica}


async def test_get_task_history_reads_from_the_replica(replicated: Stack, replica_url: str) -> None:
    task_id = await task_only_on(replica_url, "on-replica")
    response = await replicated.orchestrator().GetTaskHistory(
        opb.GetTaskHistoryRequest(task_id=task_id), metadata=replicated.as_role(Role.VIEWER)
    )
    assert [event.to_state for event in response.events] == [task_pb2.TASK_STATE_PENDING]


async def test_list_agents_reads_from_the_replica_while_registration_goes_to_the_primary(
    replicated: Stack, replica_url: str
) -> None:
    await agent_only_on(replica_url, "replica-agent")
    registered = agent_pb2.Agent(
        id="primary-agent", capabilities=agent_pb2.AgentCapabilities(task_types=["replicated"])
    )
    await replicated.registry().RegisterAgent(
        rpb.RegisterAgentRequest(agent=registered), metadata=replicated.as_role(Role.AGENT)
    )
    listed = await replicated.registry().ListAgents(rpb.ListAgentsRequest(), metadata=replicated.as_role(Role.VIEWER))
    assert [agent.id for agent in listed.agents] == ["replica-agent"]
    # Its own write, read back: GetAgent stays on the primary.
    got = await replicated.registry().GetAgent(
        rpb.GetAgentRequest(agent_id="primary-agent"), metadata=replicated.as_role(Role.VIEWER)
    )
    assert got.agent.id == "primary-agent"


async def test_the_audit_log_listing_reads_from_the_replica(replicated: Stack, replica_url: str) -> None:
    resource_id = f"only-on-replica-{uuid.uuid4().hex[:8]}"
    await audit_event_only_on(replica_url, resource_id)
    # Audited on the primary (a mutating call), so the primary's log is not empty.
    await submit(replicated, "audited")
    listed = await replicated.admin().ListAuditEvents(
        apb.ListAuditEventsRequest(page_size=50), metadata=replicated.as_role(Role.ADMIN)
    )
    assert [(event.rpc, event.resource_id) for event in listed.events] == [(AUDITED_ON_REPLICA, resource_id)]


async def test_a_task_the_replica_lacks_yet_is_answered_from_the_primary_not_as_not_found(
    replicated: Stack, replica_url: str
) -> None:
    before = fallbacks("orchestrator", "not_found")
    task_id = await submit(replicated, "just-submitted")
    assert task_id not in await task_ids_in(replica_url)
    as_submitter = replicated.as_role(Role.SUBMITTER)
    got = await replicated.orchestrator().GetTask(opb.GetTaskRequest(task_id=task_id), metadata=as_submitter)
    assert got.task.id == task_id
    history = await replicated.orchestrator().GetTaskHistory(
        opb.GetTaskHistoryRequest(task_id=task_id), metadata=as_submitter
    )
    assert [event.to_state for event in history.events] == [task_pb2.TASK_STATE_PENDING]
    assert fallbacks("orchestrator", "not_found") - before == 2
    unknown = str(uuid.uuid4())
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await replicated.orchestrator().GetTask(opb.GetTaskRequest(task_id=unknown), metadata=as_submitter)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_watch_and_cancel_read_their_task_from_the_primary(replicated: Stack) -> None:
    task_id = await submit(replicated, "watched")
    watch = replicated.orchestrator().WatchTask(
        opb.WatchTaskRequest(task_id=task_id), metadata=replicated.as_role(Role.SUBMITTER)
    )
    first = await watch.read()
    assert isinstance(first, opb.WatchTaskResponse) and first.task.id == task_id
    cancelled = await replicated.orchestrator().CancelTask(
        opb.CancelTaskRequest(task_id=task_id), metadata=replicated.as_role(Role.SUBMITTER)
    )
    assert cancelled.task.state == task_pb2.TASK_STATE_CANCELLED
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await replicated.orchestrator().CancelTask(
            opb.CancelTaskRequest(task_id=task_id), metadata=replicated.as_role(Role.SUBMITTER)
        )
    # The answer names the state the primary holds, which the replica never saw.
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "CANCELLED" in str(raised.value.details())
    watch.cancel()


async def test_without_a_read_url_there_is_no_second_pool(stack: Stack) -> None:
    assert stack.orchestrator_app.replica is None and stack.registry_app.replica is None
    task_id = await submit(stack, "unreplicated")
    got = await stack.orchestrator().GetTask(opb.GetTaskRequest(task_id=task_id), metadata=stack.as_role(Role.VIEWER))
    assert got.task.id == task_id


async def test_an_unreachable_replica_at_start_leaves_reads_on_the_primary(database_url: str) -> None:
    async with running_stack(database_url, database_read_url=closed_port_url()) as stack:
        assert replica_up("orchestrator") == 0 and replica_up("registry") == 0
        before = {service: fallbacks(service, "replica_down") for service in ("orchestrator", "registry")}
        task_id = await submit(stack, "primary-only")
        viewer = stack.as_role(Role.VIEWER)
        got = await stack.orchestrator().GetTask(opb.GetTaskRequest(task_id=task_id), metadata=viewer)
        assert got.task.id == task_id
        listed = await stack.orchestrator().ListTasks(opb.ListTasksRequest(), metadata=viewer)
        assert [task.id for task in listed.tasks] == [task_id]
        history = await stack.orchestrator().GetTaskHistory(opb.GetTaskHistoryRequest(task_id=task_id), metadata=viewer)
        assert len(history.events) == 1
        await stack.registry().ListAgents(rpb.ListAgentsRequest(), metadata=viewer)
        audit = await stack.admin().ListAuditEvents(apb.ListAuditEventsRequest(), metadata=stack.as_role(Role.ADMIN))
        assert any(event.resource_id == task_id for event in audit.events)
        assert fallbacks("orchestrator", "replica_down") - before["orchestrator"] == 3
        assert fallbacks("registry", "replica_down") - before["registry"] == 2


async def test_a_replica_lost_later_sends_reads_to_the_primary_until_it_is_back(
    database_url: str, replica_url: str, test_postgres: PostgresForTests, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replica_module, "REPLICA_CHECK_SECONDS", 0.1)
    async with running_stack(database_url, database_read_url=replica_url) as stack:
        viewer = stack.as_role(Role.VIEWER)
        submitted = await submit(stack, "submitted")
        listed = await stack.orchestrator().ListTasks(opb.ListTasksRequest(), metadata=viewer)
        assert list(listed.tasks) == []  # the replica's (empty) view
        before = fallbacks("orchestrator", "query_failed") + fallbacks("orchestrator", "replica_down")
        test_postgres.drop_database(replica_url)  # its connections end, and no new one can be made
        listed = await stack.orchestrator().ListTasks(opb.ListTasksRequest(), metadata=viewer)
        assert [task.id for task in listed.tasks] == [submitted]
        assert fallbacks("orchestrator", "query_failed") + fallbacks("orchestrator", "replica_down") > before
        await eventually(lambda: replica_up("orchestrator") == 0, "the replica marked down")
        name = psycopg.conninfo.conninfo_to_dict(replica_url)["dbname"]
        with psycopg.connect(test_postgres.admin_url, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}" TEMPLATE "{test_postgres.template}"')
        await eventually(lambda: replica_up("orchestrator") == 1, "the replica marked up again")
        listed = await stack.orchestrator().ListTasks(opb.ListTasksRequest(), metadata=viewer)
        assert list(listed.tasks) == []


async def test_the_services_start_and_serve_reads_while_the_replica_is_down(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    monkeypatch.setenv("ARBITER_DATABASE_READ_URL", closed_port_url(password))
    async with running_services(database_url, tmp_path / "service-logs") as services:
        async with grpc.aio.insecure_channel(services.orchestrator_address) as channel:
            orchestrator = orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel)
            submitted = await orchestrator.SubmitTask(
                opb.SubmitTaskRequest(task_type="primary-only"), metadata=metadata(services.keys[Role.SUBMITTER])
            )
            got = await orchestrator.GetTask(
                opb.GetTaskRequest(task_id=submitted.task.id), metadata=metadata(services.keys[Role.VIEWER])
            )
            assert got.task.id == submitted.task.id
    logs = services.logs()  # both stopped cleanly (running_services checks)
    assert logs.count("does not answer") >= 2, logs  # each service warned
    assert password not in logs


@pytest.mark.parametrize("variable", ["ARBITER_DATABASE_READ_URL", "ARBITER_DATABASE_URL"])
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://arbiter:{password}@db:70000/arbiter", "a port is a number from 1 to 65535"),
        ("host=db password={password} dbname", "libpq can parse"),
        ("mysql://arbiter:{password}@db/arbiter", "libpq can parse"),
    ],
)
def test_a_bad_database_url_is_refused_without_showing_its_password(variable: str, url: str, expected: str) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    with pytest.raises(ConfigError) as raised:
        Config.from_env({variable: url.format(password=password)})
    assert f"{variable} " in str(raised.value) and expected in str(raised.value)
    assert password not in str(raised.value)


def test_a_service_with_a_bad_read_url_exits_2_naming_it(database_url: str) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    environment = {
        **ServiceProcesses(database_url, {Role.SERVICE: "unused"}, Path(".")).environment(),
        "ARBITER_DATABASE_READ_URL": f"postgresql://arbiter:{password}@db:0/arbiter",
    }
    finished = subprocess.run(
        [sys.executable, "-m", "services.registry"],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == 2, finished.stderr
    assert "ARBITER_DATABASE_READ_URL" in finished.stderr and "1 to 65535" in finished.stderr
    assert password not in finished.stderr + finished.stdout


def test_the_replica_alert_watches_the_replica_gauge_and_has_a_runbook_entry() -> None:
    rules = yaml.safe_load((REPO_ROOT / "deploy" / "monitoring" / "prometheus-rules.yaml").read_text())
    (alert,) = [
        rule
        for group in rules["spec"]["groups"]
        for rule in group["rules"]
        if rule.get("alert") == "ArbiterDatabaseReplicaDown"
    ]
    assert "arbiter_database_replica_up" in alert["expr"]
    assert alert["annotations"]["runbook"] == "docs/operations.md#arbiterdatabasereplicadown"
    operations = (REPO_ROOT / "docs" / "operations.md").read_text()
    assert "\n### ArbiterDatabaseReplicaDown\n" in operations
