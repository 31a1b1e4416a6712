"""Which roles may call which RPC: the one table the README documents and the tests check."""

from __future__ import annotations

from shared.api_keys import Role

ADMIN, SERVICE, SUBMITTER, AGENT, VIEWER = Role.ADMIN, Role.SERVICE, Role.SUBMITTER, Role.AGENT, Role.VIEWER

REGISTRY_SERVICE = "arbiter.v1.RegistryService"
ORCHESTRATOR_SERVICE = "arbiter.v1.OrchestratorService"

# RPC name -> roles allowed. Agents act for themselves; submitters and services send work;
# viewers only read; admins may do everything.
REGISTRY_ROLES: dict[str, frozenset[Role]] = {
    "RegisterAgent": frozenset({ADMIN, AGENT}),
    "Heartbeat": frozenset({ADMIN, AGENT}),
    "GetAgent": frozenset({ADMIN, SERVICE, SUBMITTER, AGENT, VIEWER}),
    "ListAgents": frozenset({ADMIN, SERVICE, SUBMITTER, AGENT, VIEWER}),
    "DeregisterAgent": frozenset({ADMIN, AGENT}),
    "FindCandidates": frozenset({ADMIN, SERVICE, SUBMITTER, AGENT, VIEWER}),
    # Track records are written only by the orchestrators (their service key) and admins.
    "RecordOutcome": frozenset({ADMIN, SERVICE}),
    "RecordOutcomes": frozenset({ADMIN, SERVICE}),
    "WatchAgents": frozenset({ADMIN, SERVICE, VIEWER}),
}

ORCHESTRATOR_ROLES: dict[str, frozenset[Role]] = {
    "SubmitTask": frozenset({ADMIN, SERVICE, SUBMITTER}),
    "SubmitTasks": frozenset({ADMIN, SERVICE, SUBMITTER}),
    "GetTask": frozenset({ADMIN, SERVICE, SUBMITTER, AGENT, VIEWER}),
    "WatchTask": frozenset({ADMIN, SERVICE, SUBMITTER, AGENT, VIEWER}),
    "GetTaskHistory": frozenset({ADMIN, SERVICE, SUBMITTER, AGENT, VIEWER}),
    "ListTasks": frozenset({ADMIN, SERVICE, SUBMITTER, VIEWER}),
    "CancelTask": frozenset({ADMIN, SERVICE, SUBMITTER}),
    "GetQueueStats": frozenset({ADMIN, SERVICE, SUBMITTER, VIEWER}),
    "StreamAssignments": frozenset({ADMIN, AGENT}),
    "ReportProgress": frozenset({ADMIN, AGENT}),
    "CompleteTask": frozenset({ADMIN, AGENT}),
    "FailTask": frozenset({ADMIN, AGENT}),
    "ExplainRouting": frozenset({ADMIN, SERVICE, SUBMITTER, AGENT, VIEWER}),
}


def method_permissions(service: str, roles_by_rpc: dict[str, frozenset[Role]]) -> dict[str, frozenset[Role]]:
    """The table keyed by full gRPC method path, as interceptors see it."""
    return {f"/{service}/{rpc}": roles for rpc, roles in roles_by_rpc.items()}
