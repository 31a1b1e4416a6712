"""Every documented limit (README, "Limits"; shared/validation.py) against the real servers: one value
past it answers INVALID_ARGUMENT whose google.rpc.BadRequest detail names the field, and the value right
at it is accepted (the call may still fail for another reason, e.g. NOT_FOUND, but not for the field)."""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from arbiter.v1 import admin_service_pb2 as apb
from arbiter.v1 import agent_pb2, task_pb2
from arbiter.v1 import orchestrator_service_pb2 as opb
from arbiter.v1 import registry_service_pb2 as rpb
from shared import validation
from tests.support.database import PostgresForTests
from tests.support.rpcs import RPCS_BY_NAME, Servers, bad_request_fields, call_once, serving_every_rpc

# One pair of servers for the whole file: every call here is refused or harmless.
in_module_loop = pytest.mark.asyncio(loop_scope="module")

TASK_ID = "9b2f3c1e-4d5a-4e6f-8a7b-0c1d2e3f4a5b"
AGENT_ID = "limits-agent"
TASK_TYPE = "echo"
# The services' default ARBITER_MAX_PAYLOAD_BYTES.
MAX_PAYLOAD_BYTES = 1024 * 1024
CALL_SECONDS = 20.0
# No value "at the limit" to try (the limit is not a size, or the value is not a token we can make).
NONE = object()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def servers(test_postgres: PostgresForTests) -> AsyncIterator[Servers]:
    async with serving_every_rpc(test_postgres) as running:
        yield running


@dataclass(frozen=True)
class Limit:
    """A request built around one value of one field, with the value just past the limit, the value
    right at it, and the documented constant it enforces."""

    rpc: str
    field: str
    request: Callable[[Any], Message]
    over: Any
    at: Any = NONE
    constant: str | None = None


def agent(**fields: Any) -> agent_pb2.Agent:
    """A valid agent registration with `fields` overriding (capabilities' own fields included)."""
    capabilities = {
        name: fields.pop(name) for name in ("task_types", "languages", "specializations", "labels") if name in fields
    }
    capabilities.setdefault("task_types", [TASK_TYPE])
    fields.setdefault("id", AGENT_ID)
    return agent_pb2.Agent(capabilities=agent_pb2.AgentCapabilities(**capabilities), **fields)


def struct(values: dict[str, Any]) -> Struct:
    result = Struct()
    result.update(values)
    return result


def names(count: int) -> list[str]:
    return [f"name-{index}" for index in range(count)]


def labels(count: int) -> dict[str, str]:
    return {f"key-{index}": "value" for index in range(count)}


def milliseconds(value: int) -> Duration:
    duration = Duration()
    duration.FromMilliseconds(value)
    return duration


def report(rpc: type[Message], **fields: Any) -> Message:
    """A report on an attempt no agent holds: valid in form, so only `fields` can be wrong."""
    fields.setdefault("attempt", 1)
    return rpc(task_id=TASK_ID, agent_id=AGENT_ID, **fields)


V = validation

LIMITS: dict[str, Limit] = {
    # Ids and names.
    "agent id length": Limit(
        "RegisterAgent",
        "agent.id",
        lambda n: rpb.RegisterAgentRequest(agent=agent(id="a" * n)),
        over=V.MAX_AGENT_ID_LENGTH + 1,
        at=V.MAX_AGENT_ID_LENGTH,
        constant="MAX_AGENT_ID_LENGTH",
    ),
    "heartbeat agent id length": Limit(
        "Heartbeat",
        "agent_id",
        lambda n: rpb.HeartbeatRequest(agent_id="a" * n),
        over=V.MAX_AGENT_ID_LENGTH + 1,
        at=V.MAX_AGENT_ID_LENGTH,
        constant="MAX_AGENT_ID_LENGTH",
    ),
    "stream agent id length": Limit(
        "StreamAssignments",
        "agent_id",
        lambda n: opb.StreamAssignmentsRequest(agent_id="a" * n),
        over=V.MAX_AGENT_ID_LENGTH + 1,
        constant="MAX_AGENT_ID_LENGTH",
    ),
    "task id": Limit("GetTask", "task_id", lambda value: opb.GetTaskRequest(task_id=value), over="not-a-uuid"),
    "task type length": Limit(
        "SubmitTask",
        "task_type",
        lambda n: opb.SubmitTaskRequest(task_type="t" * n),
        over=V.MAX_NAME_LENGTH + 1,
        at=V.MAX_NAME_LENGTH,
        constant="MAX_NAME_LENGTH",
    ),
    "agent name length": Limit(
        "RegisterAgent",
        "agent.name",
        lambda n: rpb.RegisterAgentRequest(agent=agent(name="n" * n)),
        over=V.MAX_NAME_LENGTH + 1,
        at=V.MAX_NAME_LENGTH,
        constant="MAX_NAME_LENGTH",
    ),
    "model family length": Limit(
        "RegisterAgent",
        "agent.model_family",
        lambda n: rpb.RegisterAgentRequest(agent=agent(model_family="m" * n)),
        over=V.MAX_NAME_LENGTH + 1,
        at=V.MAX_NAME_LENGTH,
        constant="MAX_NAME_LENGTH",
    ),
    "task type filter length": Limit(
        "ListTasks",
        "task_type",
        lambda n: opb.ListTasksRequest(task_type="t" * n),
        over=V.MAX_NAME_LENGTH + 1,
        at=V.MAX_NAME_LENGTH,
        constant="MAX_NAME_LENGTH",
    ),
    "agent task type filter length": Limit(
        "ListAgents",
        "task_type",
        lambda n: rpb.ListAgentsRequest(task_type="t" * n),
        over=V.MAX_NAME_LENGTH + 1,
        at=V.MAX_NAME_LENGTH,
        constant="MAX_NAME_LENGTH",
    ),
    "outcome task type length": Limit(
        "RecordOutcome",
        "task_type",
        lambda n: rpb.RecordOutcomeRequest(agent_id=AGENT_ID, task_type="t" * n),
        over=V.MAX_NAME_LENGTH + 1,
        at=V.MAX_NAME_LENGTH,
        constant="MAX_NAME_LENGTH",
    ),
    "language length": Limit(
        "FindCandidates",
        "languages[0]",
        lambda n: rpb.FindCandidatesRequest(task_type=TASK_TYPE, languages=["l" * n]),
        over=V.MAX_NAME_LENGTH + 1,
        at=V.MAX_NAME_LENGTH,
        constant="MAX_NAME_LENGTH",
    ),
    # Lists and maps.
    "agent task types": Limit(
        "RegisterAgent",
        "agent.capabilities.task_types",
        lambda n: rpb.RegisterAgentRequest(agent=agent(task_types=names(n))),
        over=V.MAX_LIST_ITEMS + 1,
        at=V.MAX_LIST_ITEMS,
        constant="MAX_LIST_ITEMS",
    ),
    "agent specializations": Limit(
        "RegisterAgent",
        "agent.capabilities.specializations",
        lambda n: rpb.RegisterAgentRequest(agent=agent(specializations=names(n))),
        over=V.MAX_LIST_ITEMS + 1,
        at=V.MAX_LIST_ITEMS,
        constant="MAX_LIST_ITEMS",
    ),
    "required languages": Limit(
        "SubmitTask",
        "requirements.languages",
        lambda n: opb.SubmitTaskRequest(
            task_type=TASK_TYPE, requirements=task_pb2.TaskRequirements(languages=names(n))
        ),
        over=V.MAX_LIST_ITEMS + 1,
        at=V.MAX_LIST_ITEMS,
        constant="MAX_LIST_ITEMS",
    ),
    "candidate specializations": Limit(
        "FindCandidates",
        "specializations",
        lambda n: rpb.FindCandidatesRequest(task_type=TASK_TYPE, specializations=names(n)),
        over=V.MAX_LIST_ITEMS + 1,
        at=V.MAX_LIST_ITEMS,
        constant="MAX_LIST_ITEMS",
    ),
    "agent labels": Limit(
        "RegisterAgent",
        "agent.capabilities.labels",
        lambda n: rpb.RegisterAgentRequest(agent=agent(labels=labels(n))),
        over=V.MAX_LABELS + 1,
        at=V.MAX_LABELS,
        constant="MAX_LABELS",
    ),
    "required labels": Limit(
        "SubmitTask",
        "requirements.labels",
        lambda n: opb.SubmitTaskRequest(task_type=TASK_TYPE, requirements=task_pb2.TaskRequirements(labels=labels(n))),
        over=V.MAX_LABELS + 1,
        at=V.MAX_LABELS,
        constant="MAX_LABELS",
    ),
    "candidate label key length": Limit(
        "FindCandidates",
        "labels",
        lambda n: rpb.FindCandidatesRequest(task_type=TASK_TYPE, labels={"k" * n: "v"}),
        over=V.MAX_LABEL_KEY_LENGTH + 1,
        at=V.MAX_LABEL_KEY_LENGTH,
        constant="MAX_LABEL_KEY_LENGTH",
    ),
    "required label value length": Limit(
        "SubmitTask",
        "requirements.labels",
        lambda n: opb.SubmitTaskRequest(
            task_type=TASK_TYPE, requirements=task_pb2.TaskRequirements(labels={"gpu": "v" * n})
        ),
        over=V.MAX_LABEL_VALUE_LENGTH + 1,
        at=V.MAX_LABEL_VALUE_LENGTH,
        constant="MAX_LABEL_VALUE_LENGTH",
    ),
    "tasks per batch": Limit(
        "SubmitTasks",
        "tasks",
        lambda n: opb.SubmitTasksRequest(tasks=[opb.SubmitTaskRequest(task_type=TASK_TYPE)] * n),
        over=V.MAX_TASKS_PER_BATCH + 1,
        at=V.MAX_TASKS_PER_BATCH,
        constant="MAX_TASKS_PER_BATCH",
    ),
    "empty batch": Limit("SubmitTasks", "tasks", lambda n: opb.SubmitTasksRequest(), over=0),
    "outcomes per batch": Limit(
        "RecordOutcomes",
        "outcomes",
        lambda n: rpb.RecordOutcomesRequest(
            outcomes=[rpb.RecordOutcomeRequest(agent_id=AGENT_ID, task_type=TASK_TYPE)] * n
        ),
        over=V.MAX_OUTCOMES_PER_BATCH + 1,
        at=V.MAX_OUTCOMES_PER_BATCH,
        constant="MAX_OUTCOMES_PER_BATCH",
    ),
    # Numbers.
    "max concurrent tasks": Limit(
        "RegisterAgent",
        "agent.max_concurrent_tasks",
        lambda n: rpb.RegisterAgentRequest(agent=agent(max_concurrent_tasks=n)),
        over=V.MAX_CONCURRENT_TASKS + 1,
        at=V.MAX_CONCURRENT_TASKS,
        constant="MAX_CONCURRENT_TASKS",
    ),
    "prefetch tasks": Limit(
        "RegisterAgent",
        "agent.prefetch_tasks",
        lambda n: rpb.RegisterAgentRequest(agent=agent(prefetch_tasks=n)),
        over=V.MAX_PREFETCH_TASKS + 1,
        at=V.MAX_PREFETCH_TASKS,
        constant="MAX_PREFETCH_TASKS",
    ),
    "active tasks": Limit(
        "Heartbeat",
        "active_tasks",
        lambda n: rpb.HeartbeatRequest(agent_id=AGENT_ID, active_tasks=n),
        over=V.MAX_ACTIVE_TASKS + 1,
        at=V.MAX_ACTIVE_TASKS,
        constant="MAX_ACTIVE_TASKS",
    ),
    "negative active tasks": Limit(
        "Heartbeat", "active_tasks", lambda n: rpb.HeartbeatRequest(agent_id=AGENT_ID, active_tasks=n), over=-1, at=0
    ),
    "priority too high": Limit(
        "SubmitTask",
        "priority",
        lambda n: opb.SubmitTaskRequest(task_type=TASK_TYPE, priority=n),
        over=V.MAX_PRIORITY + 1,
        at=V.MAX_PRIORITY,
        constant="MAX_PRIORITY",
    ),
    "priority too low": Limit(
        "SubmitTask",
        "priority",
        lambda n: opb.SubmitTaskRequest(task_type=TASK_TYPE, priority=n),
        over=V.MIN_PRIORITY - 1,
        at=V.MIN_PRIORITY,
        constant="MIN_PRIORITY",
    ),
    "max attempts": Limit(
        "SubmitTask",
        "max_attempts",
        lambda n: opb.SubmitTaskRequest(task_type=TASK_TYPE, max_attempts=n),
        over=V.MAX_ATTEMPTS + 1,
        at=V.MAX_ATTEMPTS,
        constant="MAX_ATTEMPTS",
    ),
    "report attempt": Limit(
        "ReportProgress",
        "attempt",
        lambda n: report(opb.ReportProgressRequest, attempt=n),
        over=V.MAX_ATTEMPTS + 1,
        at=V.MAX_ATTEMPTS,
        constant="MAX_ATTEMPTS",
    ),
    "failure attempt zero": Limit(
        "FailTask", "attempt", lambda n: report(opb.FailTaskRequest, attempt=n, error="boom"), over=0, at=1
    ),
    "timeout": Limit(
        "SubmitTask",
        "timeout",
        lambda n: opb.SubmitTaskRequest(task_type=TASK_TYPE, timeout=milliseconds(n)),
        over=V.MAX_TIMEOUT_MS + 1,
        at=V.MAX_TIMEOUT_MS,
        constant="MAX_TIMEOUT_MS",
    ),
    "schedule to start timeout": Limit(
        "SubmitTask",
        "schedule_to_start_timeout",
        lambda n: opb.SubmitTaskRequest(task_type=TASK_TYPE, schedule_to_start_timeout=milliseconds(n)),
        over=V.MAX_TIMEOUT_MS + 1,
        at=V.MAX_TIMEOUT_MS,
        constant="MAX_TIMEOUT_MS",
    ),
    "negative timeout": Limit(
        "SubmitTask",
        "timeout",
        lambda n: opb.SubmitTaskRequest(task_type=TASK_TYPE, timeout=milliseconds(n)),
        over=-1,
        at=1,
    ),
    "page size": Limit(
        "ListTasks",
        "page_size",
        lambda n: opb.ListTasksRequest(page_size=n),
        over=V.MAX_PAGE_SIZE + 1,
        at=V.MAX_PAGE_SIZE,
        constant="MAX_PAGE_SIZE",
    ),
    "agent page size": Limit(
        "ListAgents",
        "page_size",
        lambda n: rpb.ListAgentsRequest(page_size=n),
        over=V.MAX_PAGE_SIZE + 1,
        at=V.MAX_PAGE_SIZE,
        constant="MAX_PAGE_SIZE",
    ),
    "audit page size": Limit(
        "ListAuditEvents",
        "page_size",
        lambda n: apb.ListAuditEventsRequest(page_size=n),
        over=V.MAX_PAGE_SIZE + 1,
        at=V.MAX_PAGE_SIZE,
        constant="MAX_PAGE_SIZE",
    ),
    "candidate limit": Limit(
        "FindCandidates",
        "limit",
        lambda n: rpb.FindCandidatesRequest(task_type=TASK_TYPE, limit=n),
        over=V.MAX_CANDIDATE_LIMIT + 1,
        at=V.MAX_CANDIDATE_LIMIT,
        constant="MAX_CANDIDATE_LIMIT",
    ),
    "latency": Limit(
        "RecordOutcome",
        "latency_ms",
        lambda value: rpb.RecordOutcomeRequest(agent_id=AGENT_ID, task_type=TASK_TYPE, latency_ms=value),
        over=V.MAX_LATENCY_MS * 1.01,
        at=float(V.MAX_LATENCY_MS),
        constant="MAX_LATENCY_MS",
    ),
    "latency in a batch": Limit(
        "RecordOutcomes",
        "outcomes[0].latency_ms",
        lambda value: rpb.RecordOutcomesRequest(
            outcomes=[rpb.RecordOutcomeRequest(agent_id=AGENT_ID, task_type=TASK_TYPE, latency_ms=value)]
        ),
        over=math.inf,
        at=0.0,
    ),
    "outcome quality": Limit(
        "RecordOutcome",
        "quality",
        lambda value: rpb.RecordOutcomeRequest(agent_id=AGENT_ID, task_type=TASK_TYPE, quality=value),
        over=1.5,
        at=1.0,
    ),
    "completion quality": Limit(
        "CompleteTask", "quality", lambda value: report(opb.CompleteTaskRequest, quality=value), over=math.nan, at=1.0
    ),
    "progress": Limit(
        "ReportProgress", "progress", lambda value: report(opb.ReportProgressRequest, progress=value), over=1.01, at=1.0
    ),
    "max utilization": Limit(
        "FindCandidates",
        "max_utilization",
        lambda value: rpb.FindCandidatesRequest(task_type=TASK_TYPE, max_utilization=value),
        over=1.5,
        at=1.0,
    ),
    "min success rate": Limit(
        "FindCandidates",
        "min_success_rate",
        lambda value: rpb.FindCandidatesRequest(task_type=TASK_TYPE, min_success_rate=value),
        over=-0.1,
        at=0.0,
    ),
    # Enumerations.
    "unknown task state": Limit("ListTasks", "state", lambda value: opb.ListTasksRequest(state=value), over=99),
    "unknown agent status": Limit("ListAgents", "status", lambda value: rpb.ListAgentsRequest(status=value), over=99),
    "heartbeat claiming OFFLINE": Limit(
        "Heartbeat",
        "status",
        lambda value: rpb.HeartbeatRequest(agent_id=AGENT_ID, status=value),
        over=agent_pb2.AGENT_STATUS_OFFLINE,
        at=agent_pb2.AGENT_STATUS_DRAINING,
    ),
    "unspecified key role": Limit("CreateApiKey", "role", lambda value: apb.CreateApiKeyRequest(role=value), over=0),
    # Free text.
    "idempotency key length": Limit(
        "SubmitTask",
        "idempotency_key",
        lambda n: opb.SubmitTaskRequest(task_type=TASK_TYPE, idempotency_key="k" * n),
        over=V.MAX_IDEMPOTENCY_KEY_LENGTH + 1,
        at=V.MAX_IDEMPOTENCY_KEY_LENGTH,
        constant="MAX_IDEMPOTENCY_KEY_LENGTH",
    ),
    "NUL in an idempotency key": Limit(
        "SubmitTask",
        "idempotency_key",
        lambda key: opb.SubmitTaskRequest(task_type=TASK_TYPE, idempotency_key=key),
        over="a\x00b",
    ),
    "cancel reason length": Limit(
        "CancelTask",
        "reason",
        lambda n: opb.CancelTaskRequest(task_id=TASK_ID, reason="r" * n),
        over=V.MAX_CANCEL_REASON_LENGTH + 1,
        at=V.MAX_CANCEL_REASON_LENGTH,
        constant="MAX_CANCEL_REASON_LENGTH",
    ),
    "NUL in a cancel reason": Limit(
        "CancelTask", "reason", lambda reason: opb.CancelTaskRequest(task_id=TASK_ID, reason=reason), over="why\x00"
    ),
    "progress message length": Limit(
        "ReportProgress",
        "message",
        lambda n: report(opb.ReportProgressRequest, message="m" * n),
        over=V.MAX_PROGRESS_MESSAGE_LENGTH + 1,
        at=V.MAX_PROGRESS_MESSAGE_LENGTH,
        constant="MAX_PROGRESS_MESSAGE_LENGTH",
    ),
    "error length": Limit(
        "FailTask",
        "error",
        lambda n: report(opb.FailTaskRequest, error="e" * n),
        over=V.MAX_ERROR_LENGTH + 1,
        at=V.MAX_ERROR_LENGTH,
        constant="MAX_ERROR_LENGTH",
    ),
    "empty error": Limit("FailTask", "error", lambda text: report(opb.FailTaskRequest, error=text), over=" ", at="x"),
    "page token length": Limit(
        "ListTasks",
        "page_token",
        lambda n: opb.ListTasksRequest(page_token="A" * n),
        over=V.MAX_PAGE_TOKEN_LENGTH + 1,
        constant="MAX_PAGE_TOKEN_LENGTH",
    ),
    "agent page token length": Limit(
        "ListAgents",
        "page_token",
        lambda n: rpb.ListAgentsRequest(page_token="A" * n),
        over=V.MAX_PAGE_TOKEN_LENGTH + 1,
        constant="MAX_PAGE_TOKEN_LENGTH",
    ),
    "audit page token length": Limit(
        "ListAuditEvents",
        "page_token",
        lambda n: apb.ListAuditEventsRequest(page_token="A" * n),
        over=V.MAX_PAGE_TOKEN_LENGTH + 1,
        constant="MAX_PAGE_TOKEN_LENGTH",
    ),
    # Payloads.
    "payload size": Limit(
        "SubmitTask",
        "payload",
        lambda n: opb.SubmitTaskRequest(task_type=TASK_TYPE, payload=struct({"blob": "x" * n})),
        over=MAX_PAYLOAD_BYTES,
    ),
    "result size": Limit(
        "CompleteTask",
        "result",
        lambda n: report(opb.CompleteTaskRequest, result=struct({"blob": "x" * n})),
        over=MAX_PAYLOAD_BYTES,
    ),
    "NaN in a payload": Limit(
        "SubmitTask",
        "payload",
        lambda value: opb.SubmitTaskRequest(task_type=TASK_TYPE, payload=struct({"n": value})),
        over=math.nan,
        at=1.5,
    ),
    "infinity in a result": Limit(
        "CompleteTask",
        "result",
        lambda value: report(opb.CompleteTaskRequest, result=struct({"n": value})),
        over=math.inf,
        at=1.5,
    ),
    "payload in a batch": Limit(
        "SubmitTasks",
        "tasks[0].payload",
        lambda value: opb.SubmitTasksRequest(tasks=[opb.SubmitTaskRequest(task_type=TASK_TYPE, payload=struct(value))]),
        over={"text": "a\x00b"},
    ),
    # AdminService.
    "key description length": Limit(
        "CreateApiKey",
        "description",
        lambda n: apb.CreateApiKeyRequest(role=apb.ROLE_VIEWER, description="d" * n),
        over=V.MAX_KEY_DESCRIPTION_LENGTH + 1,
        at=V.MAX_KEY_DESCRIPTION_LENGTH,
        constant="MAX_KEY_DESCRIPTION_LENGTH",
    ),
    "key agent ids": Limit(
        "CreateApiKey",
        "agent_ids",
        lambda n: apb.CreateApiKeyRequest(role=apb.ROLE_AGENT, agent_ids=names(n)),
        over=V.MAX_KEY_AGENT_IDS + 1,
        at=V.MAX_KEY_AGENT_IDS,
        constant="MAX_KEY_AGENT_IDS",
    ),
    "key expiry not a valid time": Limit(
        "CreateApiKey",
        "expires_at",
        lambda seconds: apb.CreateApiKeyRequest(role=apb.ROLE_VIEWER, expires_at=Timestamp(seconds=seconds)),
        over=2**62,
        at=253402300799,
    ),
    "key reference length": Limit(
        "RevokeApiKey",
        "key_id",
        lambda n: apb.RevokeApiKeyRequest(key_id="k" * n),
        over=V.MAX_KEY_REFERENCE_LENGTH + 1,
        at=V.MAX_KEY_REFERENCE_LENGTH,
        constant="MAX_KEY_REFERENCE_LENGTH",
    ),
    "rotation grace period": Limit(
        "RotateApiKey",
        "grace_period",
        lambda n: apb.RotateApiKeyRequest(key_id="arb_unknown1", grace_period=milliseconds(n)),
        over=V.MAX_ROTATION_GRACE_MS + 1,
        at=V.MAX_ROTATION_GRACE_MS,
        constant="MAX_ROTATION_GRACE_MS",
    ),
    "huge rotation grace period": Limit(
        "RotateApiKey",
        "grace_period",
        lambda seconds: apb.RotateApiKeyRequest(key_id="arb_unknown1", grace_period=Duration(seconds=seconds)),
        over=2**62,
    ),
    "audit filter length": Limit(
        "ListAuditEvents",
        "resource_id",
        lambda n: apb.ListAuditEventsRequest(resource_id="r" * n),
        over=V.MAX_AUDIT_FILTER_LENGTH + 1,
        at=V.MAX_AUDIT_FILTER_LENGTH,
        constant="MAX_AUDIT_FILTER_LENGTH",
    ),
    "audit since not a valid time": Limit(
        "ListAuditEvents",
        "since",
        lambda nanos: apb.ListAuditEventsRequest(since=Timestamp(seconds=1, nanos=nanos)),
        over=-1,
        at=0,
    ),
}


def _names_the_field(named: list[str], field: str) -> bool:
    """The detail names the field itself, or one entry of it (`field[3]`, `field['key']`)."""
    return any(each == field or each.startswith(f"{field}[") for each in named)


async def answer(servers: Servers, limit: Limit, value: Any) -> grpc.aio.AioRpcError | None:
    rpc = RPCS_BY_NAME[limit.rpc]
    return await call_once(servers.channel_for(rpc), rpc, limit.request(value), servers.admin, timeout=CALL_SECONDS)


@in_module_loop
@pytest.mark.parametrize("limit", LIMITS.values(), ids=LIMITS.keys())
async def test_a_value_past_the_limit_is_invalid_argument_naming_the_field(servers: Servers, limit: Limit) -> None:
    error = await answer(servers, limit, limit.over)
    assert error is not None, f"{limit.rpc} accepted {limit.field} = {limit.over!r:.80}"
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert _names_the_field(bad_request_fields(error), limit.field), (bad_request_fields(error), error.details())
    assert (error.details() or "").startswith(limit.field.split("[")[0]), error.details()


AT_THE_LIMIT = {name: limit for name, limit in LIMITS.items() if limit.at is not NONE}


@in_module_loop
@pytest.mark.parametrize("limit", AT_THE_LIMIT.values(), ids=AT_THE_LIMIT.keys())
async def test_the_value_at_the_limit_is_accepted(servers: Servers, limit: Limit) -> None:
    error = await answer(servers, limit, limit.at)
    refused_for_the_field = (
        error is not None
        and error.code() == grpc.StatusCode.INVALID_ARGUMENT
        and _names_the_field(bad_request_fields(error), limit.field)
    )
    assert not refused_for_the_field, error.details() if error else ""


def test_every_documented_limit_constant_is_tested() -> None:
    documented = {name for name in vars(validation) if re.match(r"^(MAX|MIN)_", name)}
    tested = {limit.constant for limit in LIMITS.values()}
    assert sorted(documented - tested) == []
