"""The README walk-through, against the services as real processes: once with generated stubs, once
with the real grpcurl binary over reflection against what `make run` starts (embedded PostgreSQL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from google.protobuf.struct_pb2 import Struct
from psycopg.conninfo import conninfo_to_dict

from arbiter.v1 import (
    agent_pb2,
    orchestrator_service_pb2,
    orchestrator_service_pb2_grpc,
    registry_service_pb2,
    registry_service_pb2_grpc,
    task_pb2,
)
from shared.api_keys import Role
from shared.devstack import DEV_KEY_DESCRIPTION, wait_until_serving
from shared.libpq_environment import LIBPQ_VARIABLES
from tests.support.grpcurl import GRPCURL, grpcurl, wait_for
from tests.support.processes import REPO_ROOT, ServiceProcesses, free_port
from tests.support.stack import metadata

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]

# Trust authentication ignores it; it must show up in no log either way.
PASSWORD_NOT_TO_LOG = "pg-password-never-logged"


async def test_readme_walkthrough_with_generated_stubs(services: ServiceProcesses) -> None:
    agent_key, submitter_key = metadata(services.keys[Role.AGENT]), metadata(services.keys[Role.SUBMITTER])
    async with (
        grpc.aio.insecure_channel(services.registry_address) as registry_channel,
        grpc.aio.insecure_channel(services.orchestrator_address) as orchestrator_channel,
    ):
        registry = registry_service_pb2_grpc.RegistryServiceStub(registry_channel)
        orchestrator = orchestrator_service_pb2_grpc.OrchestratorServiceStub(orchestrator_channel)
        agent = agent_pb2.Agent(
            id="reviewer-1",
            name="Reviewer",
            capabilities=agent_pb2.AgentCapabilities(task_types=["code-review"], languages=["python"]),
            max_concurrent_tasks=2,
        )
        registered = await registry.RegisterAgent(
            registry_service_pb2.RegisterAgentRequest(agent=agent), metadata=agent_key
        )
        assert registered.agent.status == agent_pb2.AGENT_STATUS_ONLINE
        heartbeat = await registry.Heartbeat(
            registry_service_pb2.HeartbeatRequest(agent_id="reviewer-1", active_tasks=0), metadata=agent_key
        )
        assert heartbeat.heartbeat_interval.seconds == 5

        stream = orchestrator.StreamAssignments(
            orchestrator_service_pb2.StreamAssignmentsRequest(agent_id="reviewer-1"), metadata=agent_key
        )
        payload = Struct()
        payload.update({"repository": "arbiter", "pull_request": 7})
        submitted = await orchestrator.SubmitTask(
            orchestrator_service_pb2.SubmitTaskRequest(
                task_type="code-review",
                payload=payload,
                priority=5,
                requirements=task_pb2.TaskRequirements(languages=["python"]),
            ),
            metadata=submitter_key,
        )
        assert submitted.task.state == task_pb2.TASK_STATE_PENDING

        message = await stream.read()
        assignment = message.assignment
        assert assignment.task.id == submitted.task.id
        assert assignment.attempt == 1
        assert assignment.task.state == task_pb2.TASK_STATE_ASSIGNED

        progress = await orchestrator.ReportProgress(
            orchestrator_service_pb2.ReportProgressRequest(
                task_id=submitted.task.id, agent_id="reviewer-1", attempt=1, progress=0.5, message="halfway"
            ),
            metadata=agent_key,
        )
        assert progress.lease_expires_at.ToDatetime() >= assignment.lease_expires_at.ToDatetime()
        result = Struct()
        result.update({"verdict": "approve"})
        await orchestrator.CompleteTask(
            orchestrator_service_pb2.CompleteTaskRequest(
                task_id=submitted.task.id, agent_id="reviewer-1", attempt=1, result=result
            ),
            metadata=agent_key,
        )
        stream.cancel()

        final = await orchestrator.GetTask(
            orchestrator_service_pb2.GetTaskRequest(task_id=submitted.task.id), metadata=submitter_key
        )
        assert final.task.state == task_pb2.TASK_STATE_COMPLETED
        assert dict(final.task.result) == {"verdict": "approve"}
        assert final.task.progress == 1.0


class MakeRun:
    """`python -m shared.devstack`, exactly what `make run` runs, with no ARBITER_DATABASE_URL nor PG*
    variables unless start() is given some."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.registry_address = f"127.0.0.1:{free_port()}"
        self.orchestrator_address = f"127.0.0.1:{free_port()}"
        self.log = state_dir / "make-run.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, **variables: str) -> None:
        environment = {
            key: value
            for key, value in os.environ.items()
            if key not in ("ARBITER_DATABASE_URL", "ARBITER_SERVICE_KEY", *LIBPQ_VARIABLES)
        }
        environment.update(
            ARBITER_STATE_DIR=str(self.state_dir),
            ARBITER_REGISTRY_ADDR=self.registry_address,
            ARBITER_ORCHESTRATOR_ADDR=self.orchestrator_address,
            **variables,
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "shared.devstack"],
            cwd=REPO_ROOT,
            env=environment,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_until_serving(self.registry_address, self.process, timeout=60)
        wait_until_serving(self.orchestrator_address, self.process, timeout=60)
        wait_for(lambda: "Arbiter is running" in self.log.read_text(), 30, "the banner")

    def keys(self) -> dict[str, str]:
        """What `source .arbiter/dev-keys.env` hands to the commands a shell runs."""
        shell = subprocess.run(
            ["bash", "-c", f"source {self.state_dir / 'dev-keys.env'} && env"],
            env={"PATH": os.environ["PATH"]},
            capture_output=True,
            text=True,
            check=True,
        )
        lines = [line for line in shell.stdout.splitlines() if line.startswith("ARBITER_")]
        return dict(line.split("=", 1) for line in lines)

    def interrupt(self) -> int:
        """Ctrl-C, as a terminal sends it."""
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=60)


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[MakeRun]:
    run = MakeRun(tmp_path / "state")
    run.state_dir.mkdir()
    yield run
    if run.process is not None and run.process.poll() is None:
        # Ctrl-C first: killing make run outright would leave its services (own sessions) running.
        run.process.send_signal(signal.SIGINT)
        try:
            run.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            run.process.kill()
            run.process.wait()


def test_make_run_serves_the_grpcurl_walkthrough_on_embedded_postgres_and_keeps_data(make_run: MakeRun) -> None:
    make_run.start()
    keys = make_run.keys()
    assert set(keys) == {f"ARBITER_{role.name}_KEY" for role in Role} | {"ARBITER_API_KEY", "ARBITER_API_KEY_PEPPER"}
    assert keys["ARBITER_API_KEY"] == keys["ARBITER_ADMIN_KEY"]
    registry, orchestrator = make_run.registry_address, make_run.orchestrator_address
    agent_key, submitter_key = keys["ARBITER_AGENT_KEY"], keys["ARBITER_SUBMITTER_KEY"]

    listed = subprocess.run([GRPCURL, "-plaintext", orchestrator, "list"], capture_output=True, text=True, check=True)
    assert "arbiter.v1.OrchestratorService" in listed.stdout.split()
    described = subprocess.run(
        [GRPCURL, "-plaintext", registry, "describe", "arbiter.v1.RegistryService"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "rpc RegisterAgent" in described.stdout

    grpcurl(
        agent_key,
        registry,
        "arbiter.v1.RegistryService/RegisterAgent",
        {"agent": {"id": "echo-1", "capabilities": {"taskTypes": ["echo"]}, "maxConcurrentTasks": 1}},
    )
    stream_output = make_run.state_dir / "stream.json"
    stream = subprocess.Popen(
        [
            GRPCURL,
            "-plaintext",
            "-H",
            f"authorization: Bearer {agent_key}",
            "-d",
            '{"agentId": "echo-1"}',
            orchestrator,
            "arbiter.v1.OrchestratorService/StreamAssignments",
        ],
        stdout=stream_output.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        task = grpcurl(
            submitter_key,
            orchestrator,
            "arbiter.v1.OrchestratorService/SubmitTask",
            {"taskType": "echo", "payload": {"text": "hello"}},
        )["task"]
        task_id = task["id"]  # type: ignore[index]
        wait_for(lambda: task_id in stream_output.read_text(), 15, "the assignment on the grpcurl stream")
        assignment = json.loads(stream_output.read_text())["assignment"]
        assert assignment["attempt"] == 1
        # Completed while the stream is open: a closed stream hands its agent's tasks to others.
        grpcurl(
            agent_key,
            orchestrator,
            "arbiter.v1.OrchestratorService/CompleteTask",
            {"taskId": task_id, "agentId": "echo-1", "attempt": 1, "result": {"echo": "hello"}},
        )
    finally:
        stream.terminate()
        stream.wait(timeout=10)
    done = grpcurl(submitter_key, orchestrator, "arbiter.v1.OrchestratorService/GetTask", {"taskId": task_id})
    assert done["task"]["state"] == "TASK_STATE_COMPLETED"  # type: ignore[index]

    assert make_run.interrupt() == 0

    # A second `make run` reuses the same data and the same keys.
    make_run.start()
    assert make_run.keys() == keys
    again = grpcurl(submitter_key, orchestrator, "arbiter.v1.OrchestratorService/GetTask", {"taskId": task_id})
    assert again["task"]["result"] == {"echo": "hello"}  # type: ignore[index]
    agent = grpcurl(agent_key, registry, "arbiter.v1.RegistryService/GetAgent", {"agentId": "echo-1"})
    assert agent["agent"]["id"] == "echo-1"  # type: ignore[index]
    assert make_run.interrupt() == 0


def test_make_run_uses_the_postgresql_the_pg_variables_name_instead_of_the_embedded_one(
    make_run: MakeRun, database_url: str
) -> None:
    parts = conninfo_to_dict(database_url)
    make_run.start(
        PGHOST=str(parts["host"]),
        PGPORT=str(parts["port"]),
        PGDATABASE=str(parts["dbname"]),
        PGUSER=str(parts["user"]),
        PGPASSWORD=PASSWORD_NOT_TO_LOG,
    )
    with psycopg.connect(database_url) as connection:
        dev_keys = connection.execute("SELECT count(*) FROM api_keys WHERE description = %s", (DEV_KEY_DESCRIPTION,))
        assert dev_keys.fetchone() == (len(Role),)
    assert not (make_run.state_dir / "pgdata").exists()
    log = make_run.log.read_text()
    assert "make run: ARBITER_DATABASE_URL is unset; using the PostgreSQL PGHOST, PGPORT, PGDATABASE" in log
    assert f"dbname={parts['dbname']}" in log
    assert PASSWORD_NOT_TO_LOG not in log
    assert make_run.interrupt() == 0
