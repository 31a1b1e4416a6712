"""Which roles may call which RPC, and which RPCs change something (and so are audited): the one
table the README documents and the tests check."""

from __future__ import annotations

from shared.api_keys import Role

ADMIN, OPERATOR, SERVICE, SUBMITTER, AGENT, VIEWER = (
    Role.ADMIN,
    Role.OPERATOR,
    Role.SERVICE,
    Role.SUBMITTER,
    Role.AGENT,
    Role.VIEWER,
)
EVERYONE = frozenset(Role)

REGISTRY_SERVICE = "arbiter.v1.RegistryService"
ORCHESTRATOR_SERVICE = "arbiter.v1.OrchestratorService"
ADMIN_SERVICE = "arbiter.v1.AdminService"

# RPC name -> roles allowed. Agents act for themselves; submitters and services send work; operators
# watch and intervene (cancel, deregister) but neither submit nor act as agents; viewers only read;
# admins may do everything in their tenant, and alone manage keys and read the audit log.
REGISTRY_ROLES: dict[str, frozenset[Role]] = {
    "RegisterAgent": frozenset({ADMIN, AGENT}),
    "Heartbeat": frozenset({ADMIN, AGENT}),
    "GetAgent": EVERYONE,
    "ListAgents": EVERYONE,
    "DeregisterAgent": frozenset({ADMIN, OPERATOR, AGENT}),
    "FindCandidates": EVERYONE,
    # Track records are written only by the orchestrators (their service key) and admins.
    "RecordOutcome": frozenset({ADMIN, SERVICE}),
    "RecordOutcomes": frozenset({ADMIN, SERVICE}),
    "WatchAgents": frozenset({ADMIN, OPERATOR, SERVICE, VIEWER}),
}

ORCHESTRATOR_ROLES: dict[str, frozenset[Role]] = {
    "SubmitTask": frozenset({ADMIN, SERVICE, SUBMITTER}),
    "SubmitTasks": frozenset({ADMIN, SERVICE, SUBMITTER}),
    "GetTask": EVERYONE,
    "WatchTask": EVERYONE,
    "GetTaskHistory": EVERYONE,
    "ListTasks": frozenset({ADMIN, OPERATOR, SERVICE, SUBMITTER, VIEWER}),
    "CancelTask": frozenset({ADMIN, OPERATOR, SERVICE, SUBMITTER}),
    "GetQueueStats": frozenset({ADMIN, OPERATOR, SERVICE, SUBMITTER, VIEWER}),
    "StreamAssignments": frozenset({ADMIN, AGENT}),
    "ReportProgress": frozenset({ADMIN, AGENT}),
    "CompleteTask": frozenset({ADMIN, AGENT}),
    "CompleteTasks": frozenset({ADMIN, AGENT}),
    "FailTask": frozenset({ADMIN, AGENT}),
    "ExplainRouting": EVERYONE,
}

ADMIN_ROLES: dict[str, frozenset[Role]] = {
    "CreateApiKey": frozenset({ADMIN}),
    "ListApiKeys": frozenset({ADMIN}),
    "RotateApiKey": frozenset({ADMIN}),
    "RevokeApiKey": frozenset({ADMIN}),
    "ListAuditEvents": frozenset({ADMIN}),
}

# Every call of these is written to the audit log (denied calls of any RPC are too).
MUTATING_RPCS = frozenset(
    {
        "RegisterAgent",
        "Heartbeat",
        "DeregisterAgent",
        "RecordOutcome",
        "RecordOutcomes",
        "SubmitTask",
        "SubmitTasks",
        "CancelTask",
        "StreamAssignments",
        "ReportProgress",
        "CompleteTask",
        "CompleteTasks",
        "FailTask",
        "CreateApiKey",
        "RotateApiKey",
        "RevokeApiKey",
    }
)


def method_permissions(service: str, roles_by_rpc: dict[str, frozenset[Role]]) -> dict[str, frozenset[Role]]:
    """The table keyed by full gRPC method path, as interceptors see it."""
    return {f"/{service}/{rpc}": roles for rpc, roles in roles_by_rpc.items()}
