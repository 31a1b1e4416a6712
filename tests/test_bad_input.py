"""Every bad input gets its exact status code, and a rejected call writes nothing."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct

from arbiter.v1 import agent_pb2, task_pb2
from arbiter.v1 import orchestrator_service_pb2 as opb
from arbiter.v1 import registry_service_pb2 as rpb
from shared.api_keys import Role
from shared.validation import AGENT_ID_PATTERN
from tests.support.stack import Stack

AGENT_ID = "agent-1"
OTHER_AGENT_ID = "agent-2"
TASK_TYPE = "echo"
UNKNOWN_TASK_ID = "9b2f3c1e-4d5a-4e6f-8a7b-0c1d2e3f4a5b"
UNKNOWN_AGENT_ID = "nobody"
MALFORMED_TASK_IDS = ["nope", ""]
MALFORMED_AGENT_IDS = ["bad id!", ""]

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


# Helpers.


def struct(values: dict[str, Any]) -> Struct:
    result = Struct()
    result.update(values)
    return result


def page_token(position: dict[str, Any]) -> str:
    """A well-formed token (base64 JSON) carrying whatever position it is given."""
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode()


def agent(agent_id: str = AGENT_ID, **fields: Any) -> agent_pb2.Agent:
    """A valid agent for TASK_TYPE, with `fields` overriding."""
    capabilities = agent_pb2.AgentCapabilities(
        task_types=fields.pop("task_types", [TASK_TYPE]), labels=fields.pop("labels", {})
    )
    return agent_pb2.Agent(
        id=agent_id, capabilities=capabilities, max_concurrent_tasks=fields.pop("max_concurrent_tasks", 1), **fields
    )


async def rejected(call: Awaitable[Any], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return caught.value


async def rejected_as_invalid(call: Awaitable[Any], field: str) -> None:
    """INVALID_ARGUMENT whose message starts with the field (or one of its entries, `field[...]`)."""
    error = await rejected(call, INVALID)
    assert error.details().startswith((f"{field}:", f"{field}[")), error.details()


class Api:
    """Both services, called with the role each side normally uses."""

    def __init__(self, stack: Stack) -> None:
        self.registry = stack.registry()
        self.orchestrator = stack.orchestrator()
        self.admin = stack.as_role(Role.ADMIN)
        self.agent = stack.as_role(Role.AGENT)
        self.submitter = stack.as_role(Role.SUBMITTER)

    def submit_call(self, request: opb.SubmitTaskRequest) -> Awaitable[opb.SubmitTaskResponse]:
        return self.orchestrator.SubmitTask(request, metadata=self.submitter)

    async def submit(self, **fields: Any) -> task_pb2.Task:
        fields.setdefault("task_type", TASK_TYPE)
        return (await self.submit_call(opb.SubmitTaskRequest(**fields))).task

    async def get_task(self, task_id: str) -> task_pb2.Task:
        return (await self.orchestrator.GetTask(opb.GetTaskRequest(task_id=task_id), metadata=self.admin)).task

    def cancel_call(self, task_id: str, reason: str = "") -> Awaitable[opb.CancelTaskResponse]:
        return self.orchestrator.CancelTask(opb.CancelTaskRequest(task_id=task_id, reason=reason), metadata=self.admin)

    async def list_tasks(self, page_size: int = 0, page_token: str = "") -> opb.ListTasksResponse:
        return await self.orchestrator.ListTasks(
            opb.ListTasksRequest(page_size=page_size, page_token=page_token), metadata=self.admin
        )

    async def register(self, agent_id: str = AGENT_ID) -> None:
        await self.registry.RegisterAgent(rpb.RegisterAgentRequest(agent=agent(agent_id)), metadata=self.agent)

    async def get_agent(self, agent_id: str = AGENT_ID) -> agent_pb2.Agent:
        return (await self.registry.GetAgent(rpb.GetAgentRequest(agent_id=agent_id), metadata=self.admin)).agent

    async def list_agents(self, page_size: int = 0, page_token: str = "") -> rpb.ListAgentsResponse:
        return await self.registry.ListAgents(
            rpb.ListAgentsRequest(page_size=page_size, page_token=page_token), metadata=self.admin
        )

    def stream(self, agent_id: str = AGENT_ID) -> grpc.aio.UnaryStreamCall:
        return self.orchestrator.StreamAssignments(opb.StreamAssignmentsRequest(agent_id=agent_id), metadata=self.agent)

    def report_call(self, rpc: str, task_id: str, agent_id: str, attempt: int, **fields: Any) -> Awaitable[Any]:
        """ReportProgress, CompleteTask or FailTask, otherwise valid unless `fields` say so."""
        request = REPORTS[rpc](task_id=task_id, agent_id=agent_id, attempt=attempt)
        for name, value in fields.items():
            setattr(request, name, value)
        return getattr(self.orchestrator, rpc)(request, metadata=self.agent)


REPORTS: dict[str, Callable[..., Message]] = {
    "ReportProgress": lambda **ids: opb.ReportProgressRequest(**ids, progress=0.5),
    "CompleteTask": lambda **ids: opb.CompleteTaskRequest(**ids, result=struct({"ok": True})),
    "FailTask": lambda **ids: opb.FailTaskRequest(**ids, error="boom", retryable=True),
}


@dataclass
class Assigned:
    task_id: str
    attempt: int
    stream: grpc.aio.UnaryStreamCall

    def report(self, api: Api, rpc: str, **fields: Any) -> Awaitable[Any]:
        """A report on this attempt by its holder; `fields` may override agent_id, attempt or anything else."""
        agent_id = fields.pop("agent_id", AGENT_ID)
        attempt = fields.pop("attempt", self.attempt)
        return api.report_call(rpc, self.task_id, agent_id, attempt, **fields)


@pytest.fixture
def api(stack: Stack) -> Api:
    return Api(stack)


async def assign_task(api: Api, **submit_fields: Any) -> Assigned:
    """A registered agent with its stream open, holding a freshly submitted task."""
    await api.register()
    stream = api.stream()
    task = await api.submit(**submit_fields)
    message = await stream.read()
    assert message.assignment.task.id == task.id
    return Assigned(task.id, message.assignment.attempt, stream)


async def assert_still_assigned(api: Api, assigned: Assigned) -> None:
    task = await api.get_task(assigned.task_id)
    assert task.state == task_pb2.TASK_STATE_ASSIGNED
    assert task.attempt == assigned.attempt
    assert task.assigned_agent_id == AGENT_ID
    assert task.progress == 0.0


# SubmitTask.

BAD_SUBMISSIONS = {
    "empty task_type": (opb.SubmitTaskRequest(task_type=""), "task_type"),
    "task_type over 128 chars": (opb.SubmitTaskRequest(task_type="t" * 129), "task_type"),
    "priority -1001": (opb.SubmitTaskRequest(task_type=TASK_TYPE, priority=-1001), "priority"),
    "priority 1001": (opb.SubmitTaskRequest(task_type=TASK_TYPE, priority=1001), "priority"),
    "payload over 1 MiB": (
        opb.SubmitTaskRequest(task_type=TASK_TYPE, payload=struct({"blob": "x" * 1_100_000})),
        "payload",
    ),
    "max_attempts 101": (opb.SubmitTaskRequest(task_type=TASK_TYPE, max_attempts=101), "max_attempts"),
    "max_attempts -1": (opb.SubmitTaskRequest(task_type=TASK_TYPE, max_attempts=-1), "max_attempts"),
    "negative timeout": (opb.SubmitTaskRequest(task_type=TASK_TYPE, timeout=Duration(seconds=-1)), "timeout"),
    "idempotency_key over 256 chars": (
        opb.SubmitTaskRequest(task_type=TASK_TYPE, idempotency_key="k" * 257),
        "idempotency_key",
    ),
    "65 required languages": (
        opb.SubmitTaskRequest(
            task_type=TASK_TYPE, requirements=task_pb2.TaskRequirements(languages=[f"lang{i}" for i in range(65)])
        ),
        "requirements.languages",
    ),
    "NUL in a payload string": (opb.SubmitTaskRequest(task_type=TASK_TYPE, payload=struct({"a": "x\x00y"})), "payload"),
    "NUL in task_type": (opb.SubmitTaskRequest(task_type="ec\x00ho"), "task_type"),
    "empty required language": (
        opb.SubmitTaskRequest(task_type=TASK_TYPE, requirements=task_pb2.TaskRequirements(languages=[""])),
        "requirements.languages",
    ),
}


@pytest.mark.parametrize(("request_", "field"), BAD_SUBMISSIONS.values(), ids=BAD_SUBMISSIONS.keys())
async def test_submit_task_rejects_bad_input_naming_the_field_and_stores_nothing(
    api: Api, request_: opb.SubmitTaskRequest, field: str
) -> None:
    await rejected_as_invalid(api.submit_call(request_), field)
    assert list((await api.list_tasks()).tasks) == []


@pytest.mark.parametrize(("request_", "field"), BAD_SUBMISSIONS.values(), ids=BAD_SUBMISSIONS.keys())
async def test_submit_tasks_names_the_bad_task_and_field_and_stores_none_of_the_batch(
    api: Api, request_: opb.SubmitTaskRequest, field: str
) -> None:
    good = opb.SubmitTaskRequest(task_type=TASK_TYPE, idempotency_key="good-one")
    batch = opb.SubmitTasksRequest(tasks=[good, request_, opb.SubmitTaskRequest(task_type=TASK_TYPE)])
    error = await rejected(api.orchestrator.SubmitTasks(batch, metadata=api.submitter), INVALID)
    assert error.details().startswith((f"tasks[1].{field}:", f"tasks[1].{field}[")), error.details()
    assert list((await api.list_tasks()).tasks) == []


@pytest.mark.parametrize("size", [0, 1001], ids=["empty", "over-1000"])
async def test_submit_tasks_refuses_an_empty_or_oversized_batch_and_stores_nothing(api: Api, size: int) -> None:
    batch = opb.SubmitTasksRequest(tasks=[opb.SubmitTaskRequest(task_type=TASK_TYPE)] * size)
    await rejected_as_invalid(api.orchestrator.SubmitTasks(batch, metadata=api.submitter), "tasks")
    assert list((await api.list_tasks()).tasks) == []


async def test_submit_task_with_a_repeated_idempotency_key_returns_the_first_task(api: Api) -> None:
    first = await api.submit(idempotency_key="order-1")
    second = await api.submit(idempotency_key="order-1")
    assert second.id == first.id


async def test_concurrent_submissions_with_one_idempotency_key_create_one_task(api: Api) -> None:
    tasks = await asyncio.gather(*(api.submit(idempotency_key="order-1") for _ in range(20)))
    assert len({task.id for task in tasks}) == 1
    assert [task.id for task in (await api.list_tasks()).tasks] == [tasks[0].id]


# GetTask and CancelTask by id.

TASK_ID_RPCS = {
    "GetTask": lambda api, task_id: api.orchestrator.GetTask(opb.GetTaskRequest(task_id=task_id), metadata=api.admin),
    "CancelTask": lambda api, task_id: api.cancel_call(task_id),
}


@pytest.mark.parametrize("task_id", MALFORMED_TASK_IDS)
@pytest.mark.parametrize("rpc", TASK_ID_RPCS)
async def test_malformed_task_id_is_invalid_argument_naming_task_id(api: Api, rpc: str, task_id: str) -> None:
    await rejected_as_invalid(TASK_ID_RPCS[rpc](api, task_id), "task_id")


@pytest.mark.parametrize("rpc", TASK_ID_RPCS)
async def test_unknown_task_id_is_not_found(api: Api, rpc: str) -> None:
    await rejected(TASK_ID_RPCS[rpc](api, UNKNOWN_TASK_ID), NOT_FOUND)


# Reports on an attempt: ReportProgress, CompleteTask, FailTask.


@pytest.mark.parametrize("progress", [-0.1, 1.5, math.nan], ids=["negative", "above-one", "nan"])
async def test_report_progress_out_of_range_is_invalid_argument_and_leaves_the_task_unchanged(
    api: Api, progress: float
) -> None:
    assigned = await assign_task(api)
    await rejected_as_invalid(assigned.report(api, "ReportProgress", progress=progress), "progress")
    await assert_still_assigned(api, assigned)


@pytest.mark.parametrize("rpc", REPORTS)
async def test_report_with_attempt_zero_is_invalid_argument_and_leaves_the_task_unchanged(api: Api, rpc: str) -> None:
    assigned = await assign_task(api)
    await rejected_as_invalid(assigned.report(api, rpc, attempt=0), "attempt")
    await assert_still_assigned(api, assigned)


@pytest.mark.parametrize("who", ["stale-attempt", "foreign-agent"])
@pytest.mark.parametrize("rpc", REPORTS)
async def test_stale_or_foreign_report_is_failed_precondition_and_leaves_the_task_unchanged(
    api: Api, rpc: str, who: str
) -> None:
    assigned = await assign_task(api)
    wrong = {"attempt": assigned.attempt + 1} if who == "stale-attempt" else {"agent_id": OTHER_AGENT_ID}
    await rejected(assigned.report(api, rpc, **wrong), FAILED_PRECONDITION)
    await assert_still_assigned(api, assigned)


NUL_IN_REPORTS = {
    "CompleteTask result": ("CompleteTask", {"result": struct({"nested": {"text": "a\x00b"}})}, "result"),
    "FailTask error": ("FailTask", {"error": "broke\x00"}, "error"),
    "ReportProgress message": ("ReportProgress", {"message": "half\x00way"}, "message"),
}


@pytest.mark.parametrize(("rpc", "fields", "field"), NUL_IN_REPORTS.values(), ids=NUL_IN_REPORTS.keys())
async def test_a_nul_character_in_a_report_is_invalid_argument_and_leaves_the_task_unchanged(
    api: Api, rpc: str, fields: dict[str, Any], field: str
) -> None:
    assigned = await assign_task(api)
    await rejected_as_invalid(assigned.report(api, rpc, **fields), field)
    await assert_still_assigned(api, assigned)


@pytest.mark.parametrize("rpc", REPORTS)
async def test_report_on_an_unknown_task_is_not_found(api: Api, rpc: str) -> None:
    await rejected(api.report_call(rpc, UNKNOWN_TASK_ID, AGENT_ID, 1), NOT_FOUND)


async def test_complete_task_after_the_task_completed_is_failed_precondition(api: Api) -> None:
    assigned = await assign_task(api)
    await assigned.report(api, "CompleteTask")
    await rejected(assigned.report(api, "CompleteTask"), FAILED_PRECONDITION)
    assert (await api.get_task(assigned.task_id)).state == task_pb2.TASK_STATE_COMPLETED


@pytest.mark.parametrize("error", ["", "   "], ids=["empty", "blank"])
async def test_fail_task_without_an_error_is_invalid_argument_and_leaves_the_task_unchanged(
    api: Api, error: str
) -> None:
    assigned = await assign_task(api)
    await rejected_as_invalid(assigned.report(api, "FailTask", error=error), "error")
    await assert_still_assigned(api, assigned)


async def test_retryable_failure_with_attempts_left_puts_the_task_back_to_pending_at_the_next_attempt(
    api: Api,
) -> None:
    assigned = await assign_task(api, max_attempts=3)
    # The open stream may claim the task again at once, so the answer is the state the failure left.
    task = (await assigned.report(api, "FailTask", retryable=True)).task
    assert task.state == task_pb2.TASK_STATE_PENDING
    assert task.attempt == 2
    assert task.assigned_agent_id == ""
    assert task.error == "boom"


@pytest.mark.parametrize(
    ("max_attempts", "retryable"), [(3, False), (1, True)], ids=["non-retryable", "retryable-on-last-attempt"]
)
async def test_failure_without_a_retry_left_fails_the_task(api: Api, max_attempts: int, retryable: bool) -> None:
    assigned = await assign_task(api, max_attempts=max_attempts)
    response = await assigned.report(api, "FailTask", retryable=retryable)
    assert response.task.state == task_pb2.TASK_STATE_FAILED
    stored = await api.get_task(assigned.task_id)
    assert (stored.state, stored.attempt, stored.assigned_agent_id, stored.error) == (
        task_pb2.TASK_STATE_FAILED,
        assigned.attempt,
        AGENT_ID,  # a failed task shows who failed it
        "boom",
    )


# CancelTask.


async def test_cancel_pending_task_cancels_it_with_the_reason_as_its_error(api: Api) -> None:
    task = await api.submit()
    cancelled = (await api.cancel_call(task.id, "no longer needed")).task
    assert (cancelled.state, cancelled.error) == (task_pb2.TASK_STATE_CANCELLED, "no longer needed")
    stored = await api.get_task(task.id)
    assert (stored.state, stored.error) == (task_pb2.TASK_STATE_CANCELLED, "no longer needed")


async def test_cancel_completed_task_is_failed_precondition(api: Api) -> None:
    assigned = await assign_task(api)
    await assigned.report(api, "CompleteTask")
    await rejected(api.cancel_call(assigned.task_id), FAILED_PRECONDITION)
    assert (await api.get_task(assigned.task_id)).state == task_pb2.TASK_STATE_COMPLETED


async def test_cancel_already_cancelled_task_is_failed_precondition_and_keeps_the_first_reason(api: Api) -> None:
    task = await api.submit()
    await api.cancel_call(task.id, "first")
    await rejected(api.cancel_call(task.id, "second"), FAILED_PRECONDITION)
    assert (await api.get_task(task.id)).error == "first"


async def test_late_completion_of_a_cancelled_assigned_task_is_failed_precondition(api: Api) -> None:
    assigned = await assign_task(api)
    await api.cancel_call(assigned.task_id, "stop")
    await rejected(assigned.report(api, "CompleteTask"), FAILED_PRECONDITION)
    stored = await api.get_task(assigned.task_id)
    assert (stored.state, stored.error) == (task_pb2.TASK_STATE_CANCELLED, "stop")


# RegisterAgent.

BAD_REGISTRATIONS = {
    "missing agent": (rpb.RegisterAgentRequest(), "agent"),
    "id with a space and '!'": (rpb.RegisterAgentRequest(agent=agent("bad id!")), "agent.id"),
    "id with a leading '-'": (rpb.RegisterAgentRequest(agent=agent("-leading")), "agent.id"),
    "id of 65 chars": (rpb.RegisterAgentRequest(agent=agent("a" * 65)), "agent.id"),
    "empty id": (rpb.RegisterAgentRequest(agent=agent("")), "agent.id"),
    "no task types": (rpb.RegisterAgentRequest(agent=agent(task_types=[])), "agent.capabilities.task_types"),
    "max_concurrent_tasks 1001": (
        rpb.RegisterAgentRequest(agent=agent(max_concurrent_tasks=1001)),
        "agent.max_concurrent_tasks",
    ),
    "max_concurrent_tasks -1": (
        rpb.RegisterAgentRequest(agent=agent(max_concurrent_tasks=-1)),
        "agent.max_concurrent_tasks",
    ),
    "prefetch_tasks -1": (rpb.RegisterAgentRequest(agent=agent(prefetch_tasks=-1)), "agent.prefetch_tasks"),
    "label with an empty key": (rpb.RegisterAgentRequest(agent=agent(labels={"": "x"})), "agent.capabilities.labels"),
}


@pytest.mark.parametrize(("request_", "field"), BAD_REGISTRATIONS.values(), ids=BAD_REGISTRATIONS.keys())
async def test_register_agent_rejects_bad_input_naming_the_field_and_stores_nothing(
    api: Api, request_: rpb.RegisterAgentRequest, field: str
) -> None:
    await rejected_as_invalid(api.registry.RegisterAgent(request_, metadata=api.agent), field)
    if AGENT_ID_PATTERN.match(request_.agent.id):
        await rejected(api.get_agent(request_.agent.id), NOT_FOUND)
    assert list((await api.list_agents()).agents) == []


# Heartbeat, GetAgent, DeregisterAgent.


async def test_heartbeat_from_an_unknown_agent_is_not_found(api: Api) -> None:
    request = rpb.HeartbeatRequest(agent_id=UNKNOWN_AGENT_ID)
    await rejected(api.registry.Heartbeat(request, metadata=api.agent), NOT_FOUND)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (rpb.HeartbeatRequest(agent_id=AGENT_ID, active_tasks=-1), "active_tasks"),
        (rpb.HeartbeatRequest(agent_id=AGENT_ID, status=agent_pb2.AGENT_STATUS_UNHEALTHY), "status"),
        (rpb.HeartbeatRequest(agent_id=AGENT_ID, status=agent_pb2.AGENT_STATUS_OFFLINE), "status"),
    ],
    ids=["negative active_tasks", "UNHEALTHY", "OFFLINE"],
)
async def test_bad_heartbeat_is_invalid_argument_and_leaves_the_agent_unchanged(
    api: Api, request_: rpb.HeartbeatRequest, field: str
) -> None:
    await api.register()
    before = await api.get_agent()
    await rejected_as_invalid(api.registry.Heartbeat(request_, metadata=api.agent), field)
    after = await api.get_agent()
    assert (after.status, after.load.active_tasks, after.last_heartbeat_at) == (
        agent_pb2.AGENT_STATUS_ONLINE,
        0,
        before.last_heartbeat_at,
    )


AGENT_ID_RPCS = {
    "GetAgent": lambda api, agent_id: api.registry.GetAgent(rpb.GetAgentRequest(agent_id=agent_id), metadata=api.admin),
    "DeregisterAgent": lambda api, agent_id: api.registry.DeregisterAgent(
        rpb.DeregisterAgentRequest(agent_id=agent_id), metadata=api.agent
    ),
}


@pytest.mark.parametrize("agent_id", MALFORMED_AGENT_IDS)
@pytest.mark.parametrize("rpc", AGENT_ID_RPCS)
async def test_malformed_agent_id_is_invalid_argument_naming_agent_id(api: Api, rpc: str, agent_id: str) -> None:
    await rejected_as_invalid(AGENT_ID_RPCS[rpc](api, agent_id), "agent_id")


@pytest.mark.parametrize("rpc", AGENT_ID_RPCS)
async def test_unknown_agent_id_is_not_found(api: Api, rpc: str) -> None:
    await rejected(AGENT_ID_RPCS[rpc](api, UNKNOWN_AGENT_ID), NOT_FOUND)


# StreamAssignments.


async def test_stream_assignments_for_an_unregistered_agent_is_not_found(api: Api) -> None:
    await rejected(api.stream(UNKNOWN_AGENT_ID).read(), NOT_FOUND)


@pytest.mark.parametrize("agent_id", MALFORMED_AGENT_IDS)
async def test_stream_assignments_for_a_malformed_agent_id_is_invalid_argument(api: Api, agent_id: str) -> None:
    await rejected_as_invalid(api.stream(agent_id).read(), "agent_id")


# ListTasks and ListAgents paging.

LISTS = {
    "ListTasks": lambda api, **paging: api.list_tasks(**paging),
    "ListAgents": lambda api, **paging: api.list_agents(**paging),
}
BAD_PAGE_TOKENS = {
    "not base64": "not-a-token",
    "base64 of text": base64.urlsafe_b64encode(b"hello").decode(),
    "foreign position": page_token({"page": 2}),
}


@pytest.mark.parametrize("page_size", [501, -1])
@pytest.mark.parametrize("rpc", LISTS)
async def test_page_size_out_of_range_is_invalid_argument(api: Api, rpc: str, page_size: int) -> None:
    await rejected_as_invalid(LISTS[rpc](api, page_size=page_size), "page_size")


@pytest.mark.parametrize("token", BAD_PAGE_TOKENS.values(), ids=BAD_PAGE_TOKENS.keys())
@pytest.mark.parametrize("rpc", LISTS)
async def test_garbage_page_token_is_invalid_argument_naming_page_token(api: Api, rpc: str, token: str) -> None:
    await rejected_as_invalid(LISTS[rpc](api, page_token=token), "page_token")


async def test_list_tasks_page_token_with_a_bad_position_is_invalid_argument(api: Api) -> None:
    token = page_token({"created_at": "yesterday", "id": "nope"})
    await rejected_as_invalid(api.list_tasks(page_token=token), "page_token")


async def all_pages(fetch: Callable[..., Awaitable[Any]], items: str) -> list[list[str]]:
    """The ids on each page, following next_page_token to the end."""
    pages: list[list[str]] = []
    token = ""
    for _ in range(10):
        response = await fetch(page_size=2, page_token=token)
        pages.append([item.id for item in getattr(response, items)])
        token = response.next_page_token
        if not token:
            return pages
    raise AssertionError(f"paging did not end after {len(pages)} pages")


async def test_list_tasks_pages_through_every_task_exactly_once(api: Api) -> None:
    created = {(await api.submit()).id for _ in range(5)}
    pages = await all_pages(api.list_tasks, "tasks")
    assert [len(page) for page in pages] == [2, 2, 1]
    assert sorted(itertools.chain(*pages)) == sorted(created)


async def test_list_agents_pages_through_every_agent_exactly_once(api: Api) -> None:
    created = [f"agent-{index}" for index in range(5)]
    for agent_id in created:
        await api.register(agent_id)
    pages = await all_pages(api.list_agents, "agents")
    assert pages == [created[0:2], created[2:4], created[4:5]]
