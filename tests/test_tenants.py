"""Tenants: a key sees and acts only within its tenant. Another tenant's task, agent or key answers
exactly like one that does not exist, for every RPC; agents get only their own tenant's tasks;
submitter keys see only their own tasks; agent keys bound to ids act only as those agents."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest

from arbiter.v1 import admin_service_pb2 as apb
from arbiter.v1 import agent_pb2, task_pb2
from arbiter.v1 import orchestrator_service_pb2 as opb
from arbiter.v1 import registry_service_pb2 as rpb
from shared.api_keys import KeySpec, Role, create_key
from shared.database import open_pool
from shared.permissions import ADMIN_ROLES, ORCHESTRATOR_ROLES, REGISTRY_ROLES
from tests.support.stack import TEST_HASHER, Stack, create_keys, metadata
from tests.support.waiting import eventually

CALL_TIMEOUT_SECONDS = 10.0
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def agent(agent_id: str, *task_types: str, slots: int = 4) -> agent_pb2.Agent:
    return agent_pb2.Agent(
        id=agent_id, capabilities=agent_pb2.AgentCapabilities(task_types=list(task_types)), max_concurrent_tasks=slots
    )


@dataclass
class Tenant:
    """One tenant's keys, and what it made in the stack."""

    name: str
    keys: dict[Role, str]

    def as_role(self, role: Role) -> tuple[tuple[str, str], ...]:
        return metadata(self.keys[role])


async def tenant(stack: Stack, database_url: str, name: str) -> Tenant:
    return Tenant(name, await create_keys(database_url, name))


async def code_of(call: Awaitable[object]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def first_of_stream(call: grpc.aio.UnaryStreamCall) -> grpc.StatusCode:
    try:
        await call.read()
    except grpc.aio.AioRpcError as error:
        return error.code()
    finally:
        call.cancel()
    return grpc.StatusCode.OK


@dataclass
class Victim:
    """Tenant acme's task (finished), pending task, agent and key, which globex will try to reach."""

    task_id: str
    pending_task_id: str
    agent_id: str
    key_id: str
    key_prefix: str


async def make_victim(stack: Stack, acme: Tenant) -> Victim:
    registry, orchestrator = stack.registry(), stack.orchestrator()
    await registry.RegisterAgent(
        rpb.RegisterAgentRequest(agent=agent("worker-1", "acme-only")), metadata=acme.as_role(Role.AGENT)
    )
    submitted = await orchestrator.SubmitTask(
        opb.SubmitTaskRequest(task_type="acme-only", idempotency_key="same-key"), metadata=acme.as_role(Role.SUBMITTER)
    )
    pending = await orchestrator.SubmitTask(
        opb.SubmitTaskRequest(task_type="nobody-serves-this"), metadata=acme.as_role(Role.SUBMITTER)
    )
    keys = await stack.admin().ListApiKeys(apb.ListApiKeysRequest(), metadata=acme.as_role(Role.ADMIN))
    viewer = next(key for key in keys.keys if key.role == apb.ROLE_VIEWER)
    return Victim(submitted.task.id, pending.task.id, "worker-1", viewer.id, viewer.prefix)


# Each RPC, called by tenant globex's admin on tenant acme's things: the status it must answer, or a
# check of what it returned. Every RPC of every service appears once (a test below checks).
Probe = Callable[[Stack, Tenant, Victim], Awaitable[None]]


def expect_code(code: grpc.StatusCode, call: Callable[[Stack, Tenant, Victim], Awaitable[object]]) -> Probe:
    async def probe(stack: Stack, globex: Tenant, victim: Victim) -> None:
        assert await code_of(call(stack, globex, victim)) == code

    return probe


def expect_stream_code(code: grpc.StatusCode, call: Callable[[Stack, Tenant, Victim], object]) -> Probe:
    async def probe(stack: Stack, globex: Tenant, victim: Victim) -> None:
        assert await first_of_stream(call(stack, globex, victim)) == code  # type: ignore[arg-type]

    return probe


def admin(globex: Tenant) -> dict[str, object]:
    return {"metadata": globex.as_role(Role.ADMIN), "timeout": CALL_TIMEOUT_SECONDS}


async def lists_no_acme_task(stack: Stack, globex: Tenant, victim: Victim) -> None:
    listed = await stack.orchestrator().ListTasks(opb.ListTasksRequest(page_size=500), **admin(globex))
    assert {task.id for task in listed.tasks}.isdisjoint({victim.task_id, victim.pending_task_id})


async def counts_no_acme_task(stack: Stack, globex: Tenant, victim: Victim) -> None:
    stats = await stack.orchestrator().GetQueueStats(opb.GetQueueStatsRequest(), **admin(globex))
    assert {count.task_type for count in stats.counts}.isdisjoint({"acme-only", "nobody-serves-this"})


async def lists_no_acme_agent(stack: Stack, globex: Tenant, victim: Victim) -> None:
    listed = await stack.registry().ListAgents(rpb.ListAgentsRequest(), **admin(globex))
    assert [each.id for each in listed.agents] == []


async def finds_no_acme_agent(stack: Stack, globex: Tenant, victim: Victim) -> None:
    found = await stack.registry().FindCandidates(rpb.FindCandidatesRequest(task_type="acme-only"), **admin(globex))
    assert list(found.candidates) == []


async def watches_no_acme_agent(stack: Stack, globex: Tenant, victim: Victim) -> None:
    call = stack.registry().WatchAgents(rpb.WatchAgentsRequest(), **admin(globex))
    try:
        first = await call.read()
    finally:
        call.cancel()
    assert first.snapshot_complete and list(first.agents) == []


async def completes_no_acme_task(stack: Stack, globex: Tenant, victim: Victim) -> None:
    completed = await stack.orchestrator().CompleteTasks(
        opb.CompleteTasksRequest(
            completions=[opb.CompleteTaskRequest(task_id=victim.task_id, agent_id=victim.agent_id, attempt=1)]
        ),
        **admin(globex),
    )
    assert [result.code for result in completed.results] == [grpc.StatusCode.NOT_FOUND.value[0]]


async def records_no_outcome_for_acme(stack: Stack, globex: Tenant, victim: Victim) -> None:
    recorded = await stack.registry().RecordOutcomes(
        rpb.RecordOutcomesRequest(outcomes=[rpb.RecordOutcomeRequest(agent_id="worker-1", task_type="acme-only")]),
        **admin(globex),
    )
    assert recorded.recorded == 0 and list(recorded.unknown_agent_ids) == ["worker-1"]


async def registers_its_own_worker_1(stack: Stack, globex: Tenant, victim: Victim) -> None:
    """The same id in another tenant is another agent: acme's is untouched."""
    registered = await stack.registry().RegisterAgent(
        rpb.RegisterAgentRequest(agent=agent("worker-1", "globex-only")), **admin(globex)
    )
    assert registered.agent.tenant == "globex"
    acme_view = await stack.registry().GetAgent(
        rpb.GetAgentRequest(agent_id="worker-1"), metadata=stack_tenant_keys["acme"].as_role(Role.VIEWER)
    )
    assert list(acme_view.agent.capabilities.task_types) == ["acme-only"]
    await stack.registry().DeregisterAgent(rpb.DeregisterAgentRequest(agent_id="worker-1"), **admin(globex))


async def lists_no_acme_key(stack: Stack, globex: Tenant, victim: Victim) -> None:
    listed = await stack.admin().ListApiKeys(apb.ListApiKeysRequest(include_revoked=True), **admin(globex))
    assert {key.tenant for key in listed.keys} == {"globex"}
    assert victim.key_id not in {key.id for key in listed.keys}


async def lists_no_acme_audit_event(stack: Stack, globex: Tenant, victim: Victim) -> None:
    listed = await stack.admin().ListAuditEvents(apb.ListAuditEventsRequest(page_size=500), **admin(globex))
    assert listed.events and {event.tenant for event in listed.events} == {"globex"}


# Filled by the fixture below: the probes need acme's keys for one cross-check.
stack_tenant_keys: dict[str, Tenant] = {}

CROSS_TENANT_PROBES: dict[str, Probe] = {
    # OrchestratorService.
    "SubmitTask": expect_code(
        grpc.StatusCode.OK,
        lambda s, g, v: s.orchestrator().SubmitTask(
            opb.SubmitTaskRequest(task_type="globex-only", idempotency_key="same-key"), **admin(g)
        ),
    ),
    "SubmitTasks": expect_code(
        grpc.StatusCode.OK,
        lambda s, g, v: s.orchestrator().SubmitTasks(
            opb.SubmitTasksRequest(tasks=[opb.SubmitTaskRequest(task_type="globex-only")]), **admin(g)
        ),
    ),
    "GetTask": expect_code(
        NOT_FOUND, lambda s, g, v: s.orchestrator().GetTask(opb.GetTaskRequest(task_id=v.task_id), **admin(g))
    ),
    "WatchTask": expect_stream_code(
        NOT_FOUND,
        lambda s, g, v: s.orchestrator().WatchTask(opb.WatchTaskRequest(task_id=v.pending_task_id), **admin(g)),
    ),
    "GetTaskHistory": expect_code(
        NOT_FOUND,
        lambda s, g, v: s.orchestrator().GetTaskHistory(opb.GetTaskHistoryRequest(task_id=v.task_id), **admin(g)),
    ),
    "ListTasks": lists_no_acme_task,
    "CancelTask": expect_code(
        NOT_FOUND,
        lambda s, g, v: s.orchestrator().CancelTask(opb.CancelTaskRequest(task_id=v.pending_task_id), **admin(g)),
    ),
    "GetQueueStats": counts_no_acme_task,
    "StreamAssignments": expect_stream_code(
        NOT_FOUND,
        lambda s, g, v: s.orchestrator().StreamAssignments(
            opb.StreamAssignmentsRequest(agent_id=v.agent_id), **admin(g)
        ),
    ),
    "ReportProgress": expect_code(
        NOT_FOUND,
        lambda s, g, v: s.orchestrator().ReportProgress(
            opb.ReportProgressRequest(task_id=v.task_id, agent_id=v.agent_id, attempt=1, progress=0.5), **admin(g)
        ),
    ),
    "CompleteTask": expect_code(
        NOT_FOUND,
        lambda s, g, v: s.orchestrator().CompleteTask(
            opb.CompleteTaskRequest(task_id=v.task_id, agent_id=v.agent_id, attempt=1), **admin(g)
        ),
    ),
    "CompleteTasks": completes_no_acme_task,
    "FailTask": expect_code(
        NOT_FOUND,
        lambda s, g, v: s.orchestrator().FailTask(
            opb.FailTaskRequest(task_id=v.task_id, agent_id=v.agent_id, attempt=1, error="x"), **admin(g)
        ),
    ),
    "ExplainRouting": expect_code(
        NOT_FOUND,
        lambda s, g, v: s.orchestrator().ExplainRouting(
            opb.ExplainRoutingRequest(task_id=v.pending_task_id), **admin(g)
        ),
    ),
    # RegistryService.
    "RegisterAgent": registers_its_own_worker_1,
    "Heartbeat": expect_code(
        NOT_FOUND, lambda s, g, v: s.registry().Heartbeat(rpb.HeartbeatRequest(agent_id=v.agent_id), **admin(g))
    ),
    "GetAgent": expect_code(
        NOT_FOUND, lambda s, g, v: s.registry().GetAgent(rpb.GetAgentRequest(agent_id=v.agent_id), **admin(g))
    ),
    "ListAgents": lists_no_acme_agent,
    "DeregisterAgent": expect_code(
        NOT_FOUND,
        lambda s, g, v: s.registry().DeregisterAgent(rpb.DeregisterAgentRequest(agent_id=v.agent_id), **admin(g)),
    ),
    "FindCandidates": finds_no_acme_agent,
    "RecordOutcome": expect_code(
        NOT_FOUND,
        lambda s, g, v: s.registry().RecordOutcome(
            rpb.RecordOutcomeRequest(agent_id=v.agent_id, task_type="acme-only", success=False), **admin(g)
        ),
    ),
    "RecordOutcomes": records_no_outcome_for_acme,
    "WatchAgents": watches_no_acme_agent,
    # AdminService.
    "CreateApiKey": expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda s, g, v: s.admin().CreateApiKey(apb.CreateApiKeyRequest(role=apb.ROLE_ADMIN, tenant="acme"), **admin(g)),
    ),
    "ListApiKeys": lists_no_acme_key,
    "RotateApiKey": expect_code(
        NOT_FOUND, lambda s, g, v: s.admin().RotateApiKey(apb.RotateApiKeyRequest(key_id=v.key_id), **admin(g))
    ),
    "RevokeApiKey": expect_code(
        NOT_FOUND, lambda s, g, v: s.admin().RevokeApiKey(apb.RevokeApiKeyRequest(key_id=v.key_prefix), **admin(g))
    ),
    "ListAuditEvents": lists_no_acme_audit_event,
}


def test_every_rpc_has_a_cross_tenant_probe() -> None:
    assert set(CROSS_TENANT_PROBES) == set(REGISTRY_ROLES) | set(ORCHESTRATOR_ROLES) | set(ADMIN_ROLES)


async def test_no_rpc_reaches_another_tenants_tasks_agents_keys_or_audit_events(
    stack: Stack, database_url: str
) -> None:
    acme, globex = await tenant(stack, database_url, "acme"), await tenant(stack, database_url, "globex")
    stack_tenant_keys["acme"] = acme
    victim = await make_victim(stack, acme)
    failures = {}
    for rpc, probe in CROSS_TENANT_PROBES.items():
        try:
            await probe(stack, globex, victim)
        except AssertionError as error:
            failures[rpc] = str(error)
    assert failures == {}
    # And acme's things are all still there, untouched.
    as_acme = acme.as_role(Role.ADMIN)
    kept = await stack.orchestrator().GetTask(opb.GetTaskRequest(task_id=victim.pending_task_id), metadata=as_acme)
    assert kept.task.state == task_pb2.TASK_STATE_PENDING
    assert (
        await stack.registry().GetAgent(rpb.GetAgentRequest(agent_id="worker-1"), metadata=as_acme)
    ).agent.tenant == "acme"
    keys = await stack.admin().ListApiKeys(apb.ListApiKeysRequest(), metadata=as_acme)
    assert victim.key_id in {key.id for key in keys.keys}


async def test_an_agent_gets_only_its_own_tenants_tasks_even_with_the_same_id(stack: Stack, database_url: str) -> None:
    acme, globex = await tenant(stack, database_url, "acme"), await tenant(stack, database_url, "globex")
    registry, orchestrator = stack.registry(), stack.orchestrator()
    for each in (acme, globex):
        await registry.RegisterAgent(
            rpb.RegisterAgentRequest(agent=agent("worker-1", "echo", slots=10)), metadata=each.as_role(Role.AGENT)
        )
    submitted: dict[str, set[str]] = {}
    for each in (acme, globex):
        response = await orchestrator.SubmitTasks(
            opb.SubmitTasksRequest(tasks=[opb.SubmitTaskRequest(task_type="echo") for _ in range(4)]),
            metadata=each.as_role(Role.SUBMITTER),
        )
        submitted[each.name] = {task.id for task in response.tasks}
    received: dict[str, set[str]] = {"acme": set(), "globex": set()}

    async def stream(each: Tenant) -> None:
        call = orchestrator.StreamAssignments(
            opb.StreamAssignmentsRequest(agent_id="worker-1"), metadata=each.as_role(Role.AGENT)
        )
        try:
            async for message in call:
                if message.HasField("assignment"):
                    received[each.name].add(message.assignment.task.id)
        finally:
            call.cancel()

    streams = [asyncio.create_task(stream(each)) for each in (acme, globex)]
    try:
        await eventually(lambda: received == submitted, "each worker-1 got its own tenant's four tasks")
    finally:
        for each_stream in streams:
            each_stream.cancel()
        await asyncio.gather(*streams, return_exceptions=True)


async def test_idempotency_keys_are_per_tenant(stack: Stack, database_url: str) -> None:
    acme, globex = await tenant(stack, database_url, "acme"), await tenant(stack, database_url, "globex")
    request = opb.SubmitTaskRequest(task_type="echo", idempotency_key="nightly-build")
    first = await stack.orchestrator().SubmitTask(request, metadata=acme.as_role(Role.SUBMITTER))
    second = await stack.orchestrator().SubmitTask(request, metadata=globex.as_role(Role.SUBMITTER))
    again = await stack.orchestrator().SubmitTask(request, metadata=acme.as_role(Role.SUBMITTER))
    assert first.created and second.created and not again.created
    assert first.task.id != second.task.id and again.task.id == first.task.id


async def create_extra_key(database_url: str, spec: KeySpec) -> str:
    pool = await open_pool(database_url, 1, 1, name="test-keys")
    try:
        return (await create_key(pool, TEST_HASHER, spec)).secret
    finally:
        await pool.close()


async def test_a_submitter_key_sees_only_its_own_tasks_unless_granted_the_tenants(
    stack: Stack, database_url: str
) -> None:
    other_submitter = await create_extra_key(database_url, KeySpec(Role.SUBMITTER, "default", "other team"))
    wide_submitter = await create_extra_key(
        database_url, KeySpec(Role.SUBMITTER, "default", "dashboard", sees_tenant_tasks=True)
    )
    orchestrator = stack.orchestrator()
    mine = await orchestrator.SubmitTask(
        opb.SubmitTaskRequest(task_type="echo"), metadata=stack.as_role(Role.SUBMITTER)
    )
    theirs = await orchestrator.SubmitTask(opb.SubmitTaskRequest(task_type="echo"), metadata=metadata(other_submitter))

    as_me = stack.as_role(Role.SUBMITTER)
    assert await code_of(orchestrator.GetTask(opb.GetTaskRequest(task_id=theirs.task.id), metadata=as_me)) == NOT_FOUND
    assert (
        await code_of(orchestrator.CancelTask(opb.CancelTaskRequest(task_id=theirs.task.id), metadata=as_me))
        == NOT_FOUND
    )
    listed = await orchestrator.ListTasks(opb.ListTasksRequest(), metadata=as_me)
    assert [task.id for task in listed.tasks] == [mine.task.id]

    wide = await orchestrator.ListTasks(opb.ListTasksRequest(), metadata=metadata(wide_submitter))
    assert {task.id for task in wide.tasks} == {mine.task.id, theirs.task.id}
    viewer = await orchestrator.ListTasks(opb.ListTasksRequest(), metadata=stack.as_role(Role.VIEWER))
    assert {task.id for task in viewer.tasks} == {mine.task.id, theirs.task.id}


@pytest.mark.parametrize("agent_id", ["build-pool-1", "build-pool-zeta", "exact-one"])
async def test_a_bound_agent_key_acts_as_its_agents(stack: Stack, database_url: str, agent_id: str) -> None:
    bound = await create_extra_key(
        database_url, KeySpec(Role.AGENT, "default", "pool", agent_ids=("build-pool-*", "exact-one"))
    )
    registered = await stack.registry().RegisterAgent(
        rpb.RegisterAgentRequest(agent=agent(agent_id, "echo")), metadata=metadata(bound)
    )
    assert registered.agent.id == agent_id
    beat = await stack.registry().Heartbeat(rpb.HeartbeatRequest(agent_id=agent_id), metadata=metadata(bound))
    assert beat.agent.id == agent_id


async def test_a_bound_agent_key_cannot_act_as_any_other_agent(stack: Stack, database_url: str) -> None:
    bound = await create_extra_key(database_url, KeySpec(Role.AGENT, "default", "pool", agent_ids=("build-pool-*",)))
    # The other agent exists, registered with an unbound key.
    await stack.registry().RegisterAgent(
        rpb.RegisterAgentRequest(agent=agent("build-poo", "echo")), metadata=stack.as_role(Role.AGENT)
    )
    submitted = await stack.orchestrator().SubmitTask(
        opb.SubmitTaskRequest(task_type="echo"), metadata=stack.as_role(Role.SUBMITTER)
    )
    as_bound = metadata(bound)
    task_id = submitted.task.id
    calls: dict[str, Awaitable[object]] = {
        "RegisterAgent": stack.registry().RegisterAgent(
            rpb.RegisterAgentRequest(agent=agent("build-poo", "echo")), metadata=as_bound
        ),
        "Heartbeat": stack.registry().Heartbeat(rpb.HeartbeatRequest(agent_id="build-poo"), metadata=as_bound),
        "DeregisterAgent": stack.registry().DeregisterAgent(
            rpb.DeregisterAgentRequest(agent_id="build-poo"), metadata=as_bound
        ),
        "ReportProgress": stack.orchestrator().ReportProgress(
            opb.ReportProgressRequest(task_id=task_id, agent_id="build-poo", attempt=1), metadata=as_bound
        ),
        "CompleteTask": stack.orchestrator().CompleteTask(
            opb.CompleteTaskRequest(task_id=task_id, agent_id="build-poo", attempt=1), metadata=as_bound
        ),
        "FailTask": stack.orchestrator().FailTask(
            opb.FailTaskRequest(task_id=task_id, agent_id="build-poo", attempt=1, error="x"), metadata=as_bound
        ),
    }
    codes = {rpc: await code_of(call) for rpc, call in calls.items()}
    batch = await stack.orchestrator().CompleteTasks(
        opb.CompleteTasksRequest(
            completions=[opb.CompleteTaskRequest(task_id=task_id, agent_id="build-poo", attempt=1)]
        ),
        metadata=as_bound,
    )
    codes["CompleteTasks"] = (
        grpc.StatusCode.PERMISSION_DENIED
        if [result.code for result in batch.results] == [grpc.StatusCode.PERMISSION_DENIED.value[0]]
        else grpc.StatusCode.OK
    )
    codes["StreamAssignments"] = await first_of_stream(
        stack.orchestrator().StreamAssignments(opb.StreamAssignmentsRequest(agent_id="build-poo"), metadata=as_bound)
    )
    assert codes == dict.fromkeys(codes, grpc.StatusCode.PERMISSION_DENIED)
