"""The audit trail as callers leave it: every call that changes something and every refused call is
in ListAuditEvents with who, what, on which resource, how it ended, from where and in which trace; a
change whose audit row cannot be written fails; rate limits answer RESOURCE_EXHAUSTED with a delay."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from arbiter.v1 import admin_service_pb2 as apb
from arbiter.v1 import orchestrator_service_pb2 as opb
from shared.api_keys import Role
from shared.database import open_pool
from shared.rate_limits import BucketLimit
from tests.support.stack import Stack, metadata, running_stack
from tests.support.waiting import eventually

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
SUBMIT = "/arbiter.v1.OrchestratorService/SubmitTask"


async def audit_events(stack: Stack, **filters: object) -> list[apb.AuditEvent]:
    listed = await stack.admin().ListAuditEvents(
        apb.ListAuditEventsRequest(page_size=500, **filters),  # type: ignore[arg-type]
        metadata=stack.as_role(Role.ADMIN),
    )
    return list(listed.events)


async def key_id_of(stack: Stack, role: Role) -> str:
    listed = await stack.admin().ListApiKeys(apb.ListApiKeysRequest(), metadata=stack.as_role(Role.ADMIN))
    return next(key.id for key in listed.keys if key.prefix == stack.keys[role][:12])


async def test_a_submission_is_audited_with_key_role_resource_peer_and_trace(stack: Stack) -> None:
    submitted = await stack.orchestrator().SubmitTask(
        opb.SubmitTaskRequest(task_type="echo"),
        metadata=(*stack.as_role(Role.SUBMITTER), ("traceparent", TRACEPARENT)),
    )
    [event] = await audit_events(stack, rpc=SUBMIT)
    assert event.tenant == "default"
    assert event.key_id == await key_id_of(stack, Role.SUBMITTER)
    assert event.role == "submitter"
    assert event.resource_id == submitted.task.id
    assert event.status == "OK"
    assert event.peer.startswith("ipv4:127.0.0.1:")
    assert event.trace_id == TRACE_ID


async def test_reads_are_not_audited_but_refusals_are(stack: Stack) -> None:
    await stack.orchestrator().ListTasks(opb.ListTasksRequest(), metadata=stack.as_role(Role.VIEWER))
    with pytest.raises(grpc.aio.AioRpcError):
        await stack.orchestrator().SubmitTask(
            opb.SubmitTaskRequest(task_type="echo"), metadata=stack.as_role(Role.VIEWER)
        )
    with pytest.raises(grpc.aio.AioRpcError):
        await stack.orchestrator().ListTasks(opb.ListTasksRequest(), metadata=metadata("arb_not-a-key"))
    # A refusal answers at once; its event follows with the next batch.
    events = await eventually(
        lambda: audit_events(stack, status="PERMISSION_DENIED"), "the refused submission's audit event"
    )
    events = await audit_events(stack)
    seen = {(event.rpc.rsplit("/", 1)[-1], event.status, event.role) for event in events}
    assert ("SubmitTask", "PERMISSION_DENIED", "viewer") in seen
    assert ("ListTasks", "UNAUTHENTICATED", "") not in seen  # unknown keys have no tenant: not this admin's
    assert not any(event.rpc.endswith("/ListTasks") and event.status == "OK" for event in events)


async def test_a_failed_change_is_audited_with_its_status(stack: Stack) -> None:
    unknown = "9b2f3c1e-4d5a-4e6f-8a7b-0c1d2e3f4a5b"
    with pytest.raises(grpc.aio.AioRpcError):
        await stack.orchestrator().CancelTask(
            opb.CancelTaskRequest(task_id=unknown), metadata=stack.as_role(Role.SUBMITTER)
        )
    # The RPC's name alone stands for its full method.
    [event] = await eventually(lambda: audit_events(stack, rpc="CancelTask"), "the refused cancellation")
    assert (event.status, event.resource_id) == ("NOT_FOUND", unknown)
    assert "does not exist" in event.message


async def test_audit_events_page_through_newest_first(stack: Stack) -> None:
    for _ in range(7):
        await stack.orchestrator().SubmitTask(
            opb.SubmitTaskRequest(task_type="echo"), metadata=stack.as_role(Role.SUBMITTER)
        )
    seen: list[str] = []
    token = ""
    while True:
        page = await stack.admin().ListAuditEvents(
            apb.ListAuditEventsRequest(rpc=SUBMIT, page_size=3, page_token=token), metadata=stack.as_role(Role.ADMIN)
        )
        seen.extend(event.resource_id for event in page.events)
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == 7 == len(set(seen))
    listed = await stack.orchestrator().ListTasks(opb.ListTasksRequest(), metadata=stack.as_role(Role.ADMIN))
    assert seen == [task.id for task in listed.tasks]


async def test_a_change_whose_audit_row_cannot_be_written_fails_and_later_ones_work(
    stack: Stack, database_url: str
) -> None:
    """Fault: the audit table is out of reach (renamed away) while a task is submitted."""
    pool = await open_pool(database_url, 1, 1, name="test-fault")
    try:
        async with pool.connection() as connection:
            await connection.execute("ALTER TABLE audit_events RENAME TO audit_events_away")
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stack.orchestrator().SubmitTask(
                opb.SubmitTaskRequest(task_type="echo"), metadata=stack.as_role(Role.SUBMITTER)
            )
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "audit" in (failed.value.details() or "")
    finally:
        async with pool.connection() as connection:
            await connection.execute("ALTER TABLE audit_events_away RENAME TO audit_events")
        await pool.close()
    submitted = await stack.orchestrator().SubmitTask(
        opb.SubmitTaskRequest(task_type="echo"), metadata=stack.as_role(Role.SUBMITTER)
    )
    events = await eventually(lambda: audit_events(stack, rpc=SUBMIT), "the next submission is audited")
    assert [event.resource_id for event in events] == [submitted.task.id]


async def test_a_key_over_its_rate_answers_resource_exhausted_with_a_retry_delay(database_url: str) -> None:
    limits = {"viewer": BucketLimit(rate_per_second=0.5, burst=2)}
    async with running_stack(database_url, rate_limits=limits) as stack:
        as_viewer = stack.as_role(Role.VIEWER)
        for _ in range(2):
            await stack.orchestrator().GetQueueStats(opb.GetQueueStatsRequest(), metadata=as_viewer)
        with pytest.raises(grpc.aio.AioRpcError) as limited:
            await stack.orchestrator().GetQueueStats(opb.GetQueueStatsRequest(), metadata=as_viewer)
        assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        status = rpc_status.from_call(limited.value)
        assert status is not None
        retry = error_details_pb2.RetryInfo()
        assert any(detail.Unpack(retry) for detail in status.details)
        assert 0 < retry.retry_delay.ToTimedelta().total_seconds() <= 2.0
        # Another key of another role is not held back by the viewer's bucket.
        await stack.orchestrator().GetQueueStats(opb.GetQueueStatsRequest(), metadata=stack.as_role(Role.ADMIN))
        [event] = await eventually(lambda: audit_events(stack, status="RESOURCE_EXHAUSTED"), "the refusal's event")
        assert event.role == "viewer"


async def test_a_request_that_is_not_the_expected_message_is_invalid_argument(stack: Stack) -> None:
    channel = grpc.aio.insecure_channel(stack.orchestrator_address)
    try:
        raw_call = channel.unary_unary(SUBMIT, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await raw_call(b"\xff\xff\xff\xff", metadata=stack.as_role(Role.SUBMITTER), timeout=5)
    finally:
        await channel.close()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request: is not a valid protobuf message" in (refused.value.details() or "")
