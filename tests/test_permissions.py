"""Who may call what: every (role, RPC) pair of the permission table against the real servers,
plus the calls that must work, or fail, without a valid key."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from arbiter.v1 import admin_service_pb2 as apb
from arbiter.v1 import agent_pb2
from arbiter.v1 import orchestrator_service_pb2 as opb
from arbiter.v1 import registry_service_pb2 as rpb
from shared.api_keys import Role
from shared.permissions import (
    ADMIN_ROLES,
    ADMIN_SERVICE,
    ORCHESTRATOR_ROLES,
    ORCHESTRATOR_SERVICE,
    REGISTRY_ROLES,
    REGISTRY_SERVICE,
)
from tests.support.stack import Stack

UNKNOWN_TASK_ID = "9b2f3c1e-4d5a-4e6f-8a7b-0c1d2e3f4a5b"
UNKNOWN_AGENT_ID = "nobody"
# A bound on every call, so that a wrong answer fails the test instead of hanging it.
CALL_TIMEOUT_SECONDS = 10.0

OK = grpc.StatusCode.OK
NOT_FOUND = grpc.StatusCode.NOT_FOUND

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Service:
    name: str
    pb2: ModuleType
    roles: dict[str, frozenset[Role]]

    def address(self, stack: Stack) -> str:
        # AdminService is served by the registry.
        return stack.orchestrator_address if self.name == ORCHESTRATOR_SERVICE else stack.registry_address

    def stub(self, stack: Stack) -> Any:
        return {REGISTRY_SERVICE: stack.registry, ORCHESTRATOR_SERVICE: stack.orchestrator, ADMIN_SERVICE: stack.admin}[
            self.name
        ]()

    @property
    def descriptor(self) -> ServiceDescriptor:
        return self.pb2.DESCRIPTOR.services_by_name[self.name.rsplit(".", 1)[-1]]


SERVICES = {
    REGISTRY_SERVICE: Service(REGISTRY_SERVICE, rpb, REGISTRY_ROLES),
    ORCHESTRATOR_SERVICE: Service(ORCHESTRATOR_SERVICE, opb, ORCHESTRATOR_ROLES),
    ADMIN_SERVICE: Service(ADMIN_SERVICE, apb, ADMIN_ROLES),
}


@dataclass(frozen=True)
class Probe:
    """A request whose answer is known for a caller who is allowed to send it."""

    request: Callable[[], Message]
    allowed_code: grpc.StatusCode


PROBES: dict[str, Probe] = {
    # OrchestratorService.
    "SubmitTask": Probe(lambda: opb.SubmitTaskRequest(task_type="echo"), OK),
    "SubmitTasks": Probe(lambda: opb.SubmitTasksRequest(tasks=[opb.SubmitTaskRequest(task_type="echo")]), OK),
    "GetQueueStats": Probe(lambda: opb.GetQueueStatsRequest(), OK),
    "GetTask": Probe(lambda: opb.GetTaskRequest(task_id=UNKNOWN_TASK_ID), NOT_FOUND),
    "WatchTask": Probe(lambda: opb.WatchTaskRequest(task_id=UNKNOWN_TASK_ID), NOT_FOUND),
    "GetTaskHistory": Probe(lambda: opb.GetTaskHistoryRequest(task_id=UNKNOWN_TASK_ID), NOT_FOUND),
    "ListTasks": Probe(lambda: opb.ListTasksRequest(), OK),
    "CancelTask": Probe(lambda: opb.CancelTaskRequest(task_id=UNKNOWN_TASK_ID), NOT_FOUND),
    "StreamAssignments": Probe(lambda: opb.StreamAssignmentsRequest(agent_id=UNKNOWN_AGENT_ID), NOT_FOUND),
    "ReportProgress": Probe(
        lambda: opb.ReportProgressRequest(task_id=UNKNOWN_TASK_ID, agent_id=UNKNOWN_AGENT_ID, attempt=1), NOT_FOUND
    ),
    "CompleteTask": Probe(
        lambda: opb.CompleteTaskRequest(task_id=UNKNOWN_TASK_ID, agent_id=UNKNOWN_AGENT_ID, attempt=1), NOT_FOUND
    ),
    # Refusals of single completions are in the answer (here NOT_FOUND); the call itself succeeds.
    "CompleteTasks": Probe(
        lambda: opb.CompleteTasksRequest(
            completions=[opb.CompleteTaskRequest(task_id=UNKNOWN_TASK_ID, agent_id=UNKNOWN_AGENT_ID, attempt=1)]
        ),
        OK,
    ),
    "FailTask": Probe(
        lambda: opb.FailTaskRequest(task_id=UNKNOWN_TASK_ID, agent_id=UNKNOWN_AGENT_ID, attempt=1, error="boom"),
        NOT_FOUND,
    ),
    "ExplainRouting": Probe(lambda: opb.ExplainRoutingRequest(task_id=UNKNOWN_TASK_ID), NOT_FOUND),
    # RegistryService.
    "FindCandidates": Probe(lambda: rpb.FindCandidatesRequest(task_type="echo"), OK),
    "RecordOutcome": Probe(
        lambda: rpb.RecordOutcomeRequest(agent_id=UNKNOWN_AGENT_ID, task_type="echo", success=True), NOT_FOUND
    ),
    "RecordOutcomes": Probe(
        lambda: rpb.RecordOutcomesRequest(
            outcomes=[rpb.RecordOutcomeRequest(agent_id=UNKNOWN_AGENT_ID, task_type="echo", success=True)]
        ),
        OK,
    ),
    "WatchAgents": Probe(lambda: rpb.WatchAgentsRequest(), OK),
    "RegisterAgent": Probe(
        lambda: rpb.RegisterAgentRequest(
            agent=agent_pb2.Agent(id="agent-1", capabilities=agent_pb2.AgentCapabilities(task_types=["echo"]))
        ),
        OK,
    ),
    "Heartbeat": Probe(lambda: rpb.HeartbeatRequest(agent_id=UNKNOWN_AGENT_ID), NOT_FOUND),
    "GetAgent": Probe(lambda: rpb.GetAgentRequest(agent_id=UNKNOWN_AGENT_ID), NOT_FOUND),
    "ListAgents": Probe(lambda: rpb.ListAgentsRequest(), OK),
    "DeregisterAgent": Probe(lambda: rpb.DeregisterAgentRequest(agent_id=UNKNOWN_AGENT_ID), NOT_FOUND),
    # AdminService.
    "CreateApiKey": Probe(lambda: apb.CreateApiKeyRequest(role=apb.ROLE_VIEWER, description="probe"), OK),
    "ListApiKeys": Probe(lambda: apb.ListApiKeysRequest(), OK),
    "RotateApiKey": Probe(lambda: apb.RotateApiKeyRequest(key_id=UNKNOWN_TASK_ID), NOT_FOUND),
    "RevokeApiKey": Probe(lambda: apb.RevokeApiKeyRequest(key_id=UNKNOWN_TASK_ID), NOT_FOUND),
    "ListAuditEvents": Probe(lambda: apb.ListAuditEventsRequest(), OK),
}

# Every (service, RPC, role) the permission table speaks of.
PAIRS = [(service, rpc, role) for service in SERVICES.values() for rpc in service.roles for role in Role]


async def status_of(stack: Stack, service: Service, rpc: str, metadata: Metadata | None) -> grpc.StatusCode:
    """The code one call of the RPC's probe ends with; a stream is read up to its first message."""
    method = getattr(service.stub(stack), rpc)
    call = method(PROBES[rpc].request(), metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
    try:
        if service.descriptor.methods_by_name[rpc].server_streaming:
            await call.read()
            call.cancel()
        else:
            await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return OK


def pair_id(pair: tuple[Service, str, Role]) -> str:
    _, rpc, role = pair
    return f"{rpc}-{role}"


@pytest.mark.parametrize("pair", PAIRS, ids=map(pair_id, PAIRS))
async def test_each_role_gets_exactly_what_the_permission_table_allows(
    stack: Stack, pair: tuple[Service, str, Role]
) -> None:
    service, rpc, role = pair
    expected = PROBES[rpc].allowed_code if role in service.roles[rpc] else grpc.StatusCode.PERMISSION_DENIED
    assert await status_of(stack, service, rpc, stack.as_role(role)) == expected


@pytest.mark.parametrize("service", SERVICES.values(), ids=SERVICES.keys())
def test_permission_table_lists_exactly_the_rpcs_the_service_defines(service: Service) -> None:
    assert service.descriptor.full_name == service.name
    assert set(service.roles) == {method.name for method in service.descriptor.methods}


def test_every_rpc_in_the_permission_table_has_a_probe() -> None:
    assert set(PROBES) == set(REGISTRY_ROLES) | set(ORCHESTRATOR_ROLES) | set(ADMIN_ROLES)


def test_the_readme_permission_table_says_what_the_permission_table_does() -> None:
    """Each README row names RPCs and ticks roles; together they must be exactly shared/permissions.py."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## API keys and roles", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header[0] == "RPC" and set(header[1:]) == {role.value for role in Role}
    documented: dict[str, frozenset[Role]] = {}
    for line in lines[1:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        roles = frozenset(Role(role) for role, cell in zip(header[1:], cells[1:], strict=True) if cell == "✓")
        for rpc in cells[0].split(","):
            documented[rpc.strip()] = roles
    assert documented == {**REGISTRY_ROLES, **ORCHESTRATOR_ROLES, **ADMIN_ROLES}


BAD_CREDENTIALS: dict[str, Metadata | None] = {
    "no metadata": None,
    "unknown key": (("authorization", "Bearer arb_nope"),),
    "basic scheme": (("authorization", "Basic xyz"),),
    "bearer without a key": (("authorization", "Bearer "),),
}


@pytest.mark.parametrize("metadata", BAD_CREDENTIALS.values(), ids=BAD_CREDENTIALS.keys())
async def test_every_rpc_rejects_a_missing_unknown_or_malformed_key_as_unauthenticated(
    stack: Stack, metadata: Metadata | None
) -> None:
    codes = {rpc: await status_of(stack, service, rpc, metadata) for service, rpc, _ in PAIRS}
    assert codes == dict.fromkeys(codes, grpc.StatusCode.UNAUTHENTICATED)


@pytest.mark.parametrize("service", SERVICES.values(), ids=SERVICES.keys())
async def test_health_check_answers_serving_without_a_key(stack: Stack, service: Service) -> None:
    async with grpc.aio.insecure_channel(service.address(stack)) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT_SECONDS
        )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("service", SERVICES.values(), ids=SERVICES.keys())
async def test_reflection_lists_the_service_without_a_key(stack: Stack, service: Service) -> None:
    async with grpc.aio.insecure_channel(service.address(stack)) as channel:
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(timeout=CALL_TIMEOUT_SECONDS)
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        response = await call.read()
        await call.done_writing()
    listed = {entry.name for entry in response.list_services_response.service}
    assert {service.name, "grpc.health.v1.Health"} <= listed
