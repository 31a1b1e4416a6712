"""PostgreSQL restarted under load, with both services and two SDK agents as real processes: while the
database is down the services say NOT_SERVING and refuse calls with UNAVAILABLE (never INTERNAL); once
it is back they serve again without being restarted, the agents carry on by themselves, and every task
acknowledged before or after completes exactly once.

The shared test PostgreSQL serves other tests in parallel, so this test runs a private one (pgserver)
that it can stop and start again on the same data folder and socket.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf.struct_pb2 import Struct
from grpc_health.v1 import health_pb2, health_pb2_grpc

from arbiter import Client, TaskSpec
from arbiter.v1 import (
    agent_pb2,
    orchestrator_service_pb2,
    orchestrator_service_pb2_grpc,
    registry_service_pb2,
    registry_service_pb2_grpc,
)
from shared.api_keys import Role
from shared.database import migrate
from tests.support.processes import ServiceProcesses
from tests.support.sdk_agent import start_sdk_agent, wait_for
from tests.support.stack import create_keys, metadata
from tests.support.stub_agent import AgentProcess

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
AGENTS = 2
CONCURRENCY = 6
TASKS_BEFORE = 240
TASKS_AFTER = 60
WORK_MS = 60
# The database goes down once this many tasks are done: well into the first batch, well before its end.
COMPLETED_BEFORE_OUTAGE = 40
# Health is checked every 2 s, and a check gives the database 2 s to answer.
HEALTH_CHANGE_SECONDS = 6.0
# The SDK's default deadline: a call refused while the database is down must say so within it.
SDK_DEADLINE_SECONDS = 10.0
# Keys checked before the outage stay cached through it, so some calls pass the key check and fail later.
AUTH_CACHE_SECONDS = "600"
# The database stays down this long (a restart with crash recovery, a managed failover), calls going to
# both services all the while. Reconnection attempts whose delays doubled from 1 s (at ~1, 3, 7, 15, 31, 63 s)
# would leave the services NOT_SERVING for another ~25 s; they must be back within RECOVERY_SECONDS.
OUTAGE_SECONDS = 35.0
# Both services SERVING again within this long of PostgreSQL accepting connections again (health is
# checked every 2 s, with 2 s to get a connection).
RECOVERY_SECONDS = 8.0
# The agents reconnect by themselves (backoff of at most 5 s). After an outage longer than 30 s the registry
# reads them OFFLINE (no heartbeat could be stored) until their next heartbeat, and an orchestrator re-reads
# a stream's agent every 10 s: the first task may take up to ~20 s to complete.
FIRST_COMPLETION_SECONDS = 25.0
ALL_DONE_SECONDS = 60.0


class PrivatePostgres:
    """A PostgreSQL of this test's own, on a unix socket in its data folder; as root, pgserver runs it as
    an unprivileged user of its own. `stop` and `start` keep the data folder and the socket, so the URL
    stays valid."""

    def __init__(self, directory: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR is unset on servers
            from pgserver import get_server, pg_ctl

        self._pg_ctl = pg_ctl
        self._server: Any = get_server(directory, cleanup_mode="delete")
        with psycopg.connect(self._server.get_uri("postgres"), autocommit=True) as connection:
            connection.execute('CREATE DATABASE "arbiter"')
        self.url: str = self._server.get_uri("arbiter")

    def stop(self) -> None:
        """Fast shutdown, as an operator's restart does: open sessions are ended, not waited for."""
        self._pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self._server.pgdata, user=self._server.system_user)

    def start(self) -> None:
        """Starts it again with the same options (same socket); returns once it accepts connections."""
        self._server.ensure_postgres_running()

    def close(self) -> None:
        """Stops it if it runs, and deletes its data folder."""
        self._server.cleanup()


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    # A short path: the socket lives in the data folder, and unix socket paths are limited to ~100 bytes.
    directory = Path(tempfile.mkdtemp(prefix="arbiter-outage-pg-"))
    postgres = PrivatePostgres(directory / "pgdata")
    try:
        yield postgres
    finally:
        postgres.close()
        shutil.rmtree(directory, ignore_errors=True)


@asynccontextmanager
async def health_stubs(
    services: ServiceProcesses,
) -> AsyncIterator[dict[str, tuple[health_pb2_grpc.HealthStub, str]]]:
    """Each service's health stub and the name its readiness is reported under."""
    async with (
        grpc.aio.insecure_channel(services.registry_address) as registry,
        grpc.aio.insecure_channel(services.orchestrator_address) as orchestrator,
    ):
        yield {
            "registry": (health_pb2_grpc.HealthStub(registry), "arbiter.v1.RegistryService"),
            "orchestrator": (health_pb2_grpc.HealthStub(orchestrator), "arbiter.v1.OrchestratorService"),
        }


async def wait_for_health(
    stubs: dict[str, tuple[health_pb2_grpc.HealthStub, str]], expected: int, timeout: float
) -> dict[str, float]:
    """Seconds until each service's readiness (no key needed) said `expected`."""
    started = time.monotonic()
    reached: dict[str, float] = {}

    async def all_reached() -> bool:
        for name, (stub, service) in stubs.items():
            if name not in reached:
                response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                if response.status == expected:
                    reached[name] = time.monotonic() - started
        return len(reached) == len(stubs)

    name = health_pb2.HealthCheckResponse.ServingStatus.Name(expected)
    await wait_for(all_reached, f"both services to say {name} (so far: {reached})", timeout=timeout)
    return reached


async def status_of(call: Awaitable[Any]) -> tuple[grpc.StatusCode, float]:
    """How a call ended, and after how many seconds."""
    started = time.monotonic()
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code(), time.monotonic() - started
    return grpc.StatusCode.OK, time.monotonic() - started


async def calls_while_down(services: ServiceProcesses, known_task_id: str) -> dict[str, tuple[grpc.StatusCode, float]]:
    """Reads and writes on both services, all at once, each with the SDK's default deadline: once with a
    key the service has already checked and cached (so the call itself needs the database), once with the
    admin key, never used before (so the key check needs it)."""
    payload = Struct()
    payload.update({"ms": 1})
    async with (
        grpc.aio.insecure_channel(services.registry_address) as registry_channel,
        grpc.aio.insecure_channel(services.orchestrator_address) as orchestrator_channel,
    ):
        registry = registry_service_pb2_grpc.RegistryServiceStub(registry_channel)
        orchestrator = orchestrator_service_pb2_grpc.OrchestratorServiceStub(orchestrator_channel)
        rpcs: dict[str, tuple[Callable[..., Awaitable[Any]], Any, Role]] = {
            "RegisterAgent": (
                registry.RegisterAgent,
                registry_service_pb2.RegisterAgentRequest(
                    agent=agent_pb2.Agent(
                        id="outage-probe",
                        max_concurrent_tasks=1,
                        capabilities=agent_pb2.AgentCapabilities(task_types=["nobody-runs-this"]),
                    )
                ),
                Role.AGENT,
            ),
            "GetAgent": (registry.GetAgent, registry_service_pb2.GetAgentRequest(agent_id="agent-0"), Role.VIEWER),
            "ListAgents": (registry.ListAgents, registry_service_pb2.ListAgentsRequest(), Role.VIEWER),
            "SubmitTask": (
                orchestrator.SubmitTask,
                orchestrator_service_pb2.SubmitTaskRequest(
                    task_type="work", payload=payload, idempotency_key="submitted-while-down"
                ),
                Role.SUBMITTER,
            ),
            "GetTask": (
                orchestrator.GetTask,
                orchestrator_service_pb2.GetTaskRequest(task_id=known_task_id),
                Role.VIEWER,
            ),
            "ListTasks": (orchestrator.ListTasks, orchestrator_service_pb2.ListTasksRequest(), Role.VIEWER),
            "GetQueueStats": (orchestrator.GetQueueStats, orchestrator_service_pb2.GetQueueStatsRequest(), Role.VIEWER),
        }
        calls = {
            f"{rpc} ({role})": method(request, metadata=metadata(services.keys[role]), timeout=SDK_DEADLINE_SECONDS)
            for rpc, (method, request, cached_role) in rpcs.items()
            for role in (cached_role, Role.ADMIN)
        }
        outcomes = await asyncio.gather(*(status_of(call) for call in calls.values()))
        return dict(zip(calls, outcomes, strict=True))


async def warm_up_keys(services: ServiceProcesses) -> None:
    """Has both services check and cache the viewer key (agents and the submitter use theirs already)."""
    viewer = metadata(services.keys[Role.VIEWER])
    async with (
        grpc.aio.insecure_channel(services.registry_address) as registry_channel,
        grpc.aio.insecure_channel(services.orchestrator_address) as orchestrator_channel,
    ):
        await registry_service_pb2_grpc.RegistryServiceStub(registry_channel).ListAgents(
            registry_service_pb2.ListAgentsRequest(), metadata=viewer, timeout=5
        )
        await orchestrator_service_pb2_grpc.OrchestratorServiceStub(orchestrator_channel).GetQueueStats(
            orchestrator_service_pb2.GetQueueStatsRequest(), metadata=viewer, timeout=5
        )


def completion_counts(url: str) -> dict[str, tuple[int, int]]:
    """Per task id, how many `completed` events its history has, and the attempt that completed it."""
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            """
            SELECT tasks.id::text, count(task_events.id) FILTER (WHERE task_events.to_state = 'completed'),
                   tasks.attempt
            FROM tasks LEFT JOIN task_events ON task_events.task_id = tasks.id
            GROUP BY tasks.id
            """
        ).fetchall()
    return {task_id: (count, attempt) for task_id, count, attempt in rows}


def states(url: str) -> dict[str, str]:
    with psycopg.connect(url) as connection:
        return dict(connection.execute("SELECT id::text, state FROM tasks").fetchall())


def first_completion_since(url: str, since: float) -> float | None:
    """The wall-clock time of the first completion recorded at or after `since` (a Unix time)."""
    with psycopg.connect(url) as connection:
        row = connection.execute(
            """
            SELECT extract(epoch FROM min(at)) FROM task_events
            WHERE to_state = 'completed' AND at >= to_timestamp(%s)
            """,
            (since,),
        ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def work(count: int, first_value: int) -> list[TaskSpec]:
    return [TaskSpec("work", {"ms": WORK_MS, "value": first_value + n}) for n in range(count)]


@dataclass
class Outage:
    not_serving_after: dict[str, float]
    calls: dict[str, list[tuple[grpc.StatusCode, float]]]
    down_for: float
    # The Unix time PostgreSQL accepted connections again.
    back_at: float
    serving_after: dict[str, float]


async def restart_postgres(postgres: PrivatePostgres, services: ServiceProcesses, known_task_id: str) -> Outage:
    """Stops PostgreSQL for OUTAGE_SECONDS, calling both services all the while, then starts it again;
    returns once both services say SERVING."""
    await warm_up_keys(services)
    async with health_stubs(services) as health:
        await wait_for_health(health, SERVING, timeout=5)
        await asyncio.to_thread(postgres.stop)
        stopped_at = time.monotonic()
        not_serving_after = await wait_for_health(health, NOT_SERVING, timeout=HEALTH_CHANGE_SECONDS)
        calls: dict[str, list[tuple[grpc.StatusCode, float]]] = {}
        while time.monotonic() - stopped_at < OUTAGE_SECONDS:
            for rpc, outcome in (await calls_while_down(services, known_task_id)).items():
                calls.setdefault(rpc, []).append(outcome)
        # Still NOT_SERVING at the end: no flapping while the database stays away.
        await wait_for_health(health, NOT_SERVING, timeout=0)
        down_for = time.monotonic() - stopped_at

        await asyncio.to_thread(postgres.start)
        back_at = time.time()
        serving_after = await wait_for_health(health, SERVING, timeout=RECOVERY_SECONDS)
    return Outage(not_serving_after, calls, down_for, back_at, serving_after)


def describe(outage: Outage, first_completed_at: float, completions: dict[str, tuple[int, int]]) -> str:
    def seconds_by_service(seconds: dict[str, float]) -> str:
        return ", ".join(f"{name} {value:.2f} s" for name, value in sorted(seconds.items()))

    calls = ", ".join(
        f"{rpc} {'/'.join(sorted({code.name for code, _ in ends}))} in <= {max(took for _, took in ends):.2f} s"
        for rpc, ends in outage.calls.items()
    )
    attempts = dict(sorted(Counter(attempt for _, attempt in completions.values()).items()))
    return (
        f"\nPostgreSQL down for {outage.down_for:.2f} s; "
        f"NOT_SERVING after {seconds_by_service(outage.not_serving_after)}"
        f"\n{sum(map(len, outage.calls.values()))} calls while down: {calls}"
        f"\nafter PostgreSQL was back: SERVING after {seconds_by_service(outage.serving_after)}; "
        f"first task completed after {first_completed_at - outage.back_at:.2f} s"
        f"\n{len(completions)} tasks completed, by attempt: {attempts}"
    )


async def test_a_postgresql_restart_mid_run_loses_nothing_and_the_services_recover_by_themselves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARBITER_AUTH_CACHE_SECONDS", AUTH_CACHE_SECONDS)
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    with private_postgres() as postgres:
        await migrate(postgres.url)
        services = ServiceProcesses(postgres.url, await create_keys(postgres.url), log_dir)
        agents: list[AgentProcess] = []
        try:
            services.start()
            pids = {name: process.pid for name, process in services.processes.items()}
            agents = [start_sdk_agent(services, f"agent-{n}", CONCURRENCY, log_dir) for n in range(AGENTS)]

            def agents_alive() -> None:
                for agent in agents:
                    agent.check_alive()

            async with Client(services.orchestrator_address, services.keys[Role.SUBMITTER]) as client:
                before = await client.submit_many(work(TASKS_BEFORE, 0))

                async def enough_done() -> bool:
                    agents_alive()
                    return list(states(postgres.url).values()).count("completed") >= COMPLETED_BEFORE_OUTAGE

                await wait_for(enough_done, f"{COMPLETED_BEFORE_OUTAGE} tasks to complete", timeout=30)
                outage = await restart_postgres(postgres, services, before[0].id)
                # Submitted as soon as both say SERVING, without retrying: it must be accepted at once.
                after = await client.submit_many(work(TASKS_AFTER, TASKS_BEFORE))

            async def completed_after_outage() -> float | None:
                agents_alive()
                return first_completion_since(postgres.url, outage.back_at)

            first_completed_at = await wait_for(
                completed_after_outage, "a task to complete after the outage", timeout=FIRST_COMPLETION_SECONDS
            )

            async def all_done() -> bool:
                agents_alive()
                return set(states(postgres.url).values()) == {"completed"}

            await wait_for(all_done, "every task to complete", timeout=ALL_DONE_SECONDS)
            completions = completion_counts(postgres.url)

            # Neither service was restarted: the same processes served throughout.
            assert {name: process.pid for name, process in services.processes.items()} == pids
            assert all(process.poll() is None for process in services.processes.values()), services.logs()
            for agent in agents:
                assert agent.stop() == 0, agent.report()
        finally:
            for agent in agents:
                agent.stop()
            codes = services.stop()
        service_logs = services.logs()
        assert codes == {"orchestrator": 0, "registry": 0}, service_logs
    agent_logs = "\n".join(agent.stderr_path.read_text(errors="replace") for agent in agents)
    print(describe(outage, first_completed_at, completions))

    # While down: UNAVAILABLE from every call, within the SDK's default deadline.
    unavailable = {grpc.StatusCode.UNAVAILABLE}
    assert {rpc: {code for code, _ in ends} for rpc, ends in outage.calls.items()} == {
        rpc: unavailable for rpc in outage.calls
    }
    # Nothing acknowledged is lost, nothing refused was stored, and each task completed exactly once.
    assert set(completions) == {task.id for task in before + after}
    assert [task_id for task_id, (count, _) in completions.items() if count != 1] == []
    # Nothing was answered INTERNAL: no database error was taken for the server's own fault, and no agent
    # saw INTERNAL on its stream or its reports.
    assert "shared.errors: database error" not in service_logs, service_logs
    assert "INTERNAL" not in agent_logs, agent_logs
