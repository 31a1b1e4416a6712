"""OrchestratorService over gRPC: protobuf in, domain call, protobuf out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import grpc

from arbiter.v1 import orchestrator_service_pb2 as pb
from arbiter.v1 import orchestrator_service_pb2_grpc as pb_grpc
from services.orchestrator.convert import (
    STRATEGY_TO_PB,
    completion_result_to_pb,
    routing_decision_to_pb,
    scored_agent_to_pb,
    state_from_pb,
    stream_message_to_pb,
    struct_to_dict,
    submission_from_pb,
    submissions_from_pb,
    task_count_to_pb,
    task_event_to_pb,
    task_to_pb,
)
from services.orchestrator.domain import Completion, NewTask, validate_batch_size
from services.orchestrator.service import Orchestrator
from shared.callers import Caller, current_caller
from shared.errors import ArbiterError, InvalidArgument, stream_errors, unary_errors


def _owned(caller: Caller, task: NewTask) -> NewTask:
    """The submission as the caller's: in its tenant, submitted by its key."""
    return replace(task, tenant=caller.submitting_tenant(), submitted_by=caller.key.id)


class OrchestratorServicer(pb_grpc.OrchestratorServiceServicer):
    def __init__(self, orchestrator: Orchestrator) -> None:
        self._orchestrator = orchestrator

    @unary_errors
    async def SubmitTask(
        self, request: pb.SubmitTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitTaskResponse:
        submission = submission_from_pb(request, self._orchestrator.max_payload_bytes)
        submitted = await self._orchestrator.submit(_owned(current_caller(), submission))
        return pb.SubmitTaskResponse(task=task_to_pb(submitted.task), created=submitted.created)

    @unary_errors
    async def SubmitTasks(
        self, request: pb.SubmitTasksRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitTasksResponse:
        # Size first, so a huge batch is refused before each task is converted.
        validate_batch_size(len(request.tasks))
        caller = current_caller()
        submitted = await self._orchestrator.submit_many(
            [
                _owned(caller, submission)
                for submission in submissions_from_pb(request.tasks, self._orchestrator.max_payload_bytes)
            ]
        )
        return pb.SubmitTasksResponse(
            tasks=[task_to_pb(each.task) for each in submitted], created=[each.created for each in submitted]
        )

    @unary_errors
    async def GetTask(self, request: pb.GetTaskRequest, context: grpc.aio.ServicerContext) -> pb.GetTaskResponse:
        task = await self._orchestrator.get(request.task_id, current_caller().task_scope())
        return pb.GetTaskResponse(task=task_to_pb(task))

    @stream_errors
    async def WatchTask(
        self, request: pb.WatchTaskRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchTaskResponse]:
        async for task in self._orchestrator.watch(request.task_id, current_caller().task_scope()):
            yield pb.WatchTaskResponse(task=task_to_pb(task))

    @unary_errors
    async def GetTaskHistory(
        self, request: pb.GetTaskHistoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetTaskHistoryResponse:
        events = await self._orchestrator.history(request.task_id, current_caller().task_scope())
        return pb.GetTaskHistoryResponse(events=[task_event_to_pb(event) for event in events])

    @unary_errors
    async def ListTasks(self, request: pb.ListTasksRequest, context: grpc.aio.ServicerContext) -> pb.ListTasksResponse:
        page = await self._orchestrator.list_tasks(
            current_caller().task_scope(),
            state_from_pb("state", request.state),
            request.task_type,
            request.page_size,
            request.page_token,
        )
        return pb.ListTasksResponse(
            tasks=[task_to_pb(task) for task in page.tasks], next_page_token=page.next_page_token
        )

    @unary_errors
    async def CancelTask(
        self, request: pb.CancelTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelTaskResponse:
        task = await self._orchestrator.cancel(request.task_id, request.reason, current_caller().task_scope())
        return pb.CancelTaskResponse(task=task_to_pb(task))

    @unary_errors
    async def GetQueueStats(
        self, request: pb.GetQueueStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetQueueStatsResponse:
        return pb.GetQueueStatsResponse(
            counts=[
                task_count_to_pb(count) for count in await self._orchestrator.queue_stats(current_caller().task_scope())
            ]
        )

    @stream_errors
    async def StreamAssignments(
        self, request: pb.StreamAssignmentsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamAssignmentsResponse]:
        agent_id = current_caller().acting_agent("agent_id", request.agent_id)
        # Headers at once, so an agent knows its stream is open before the first assignment.
        await context.send_initial_metadata(())
        async for message in self._orchestrator.assignments(agent_id):
            yield stream_message_to_pb(message)

    @unary_errors
    async def ReportProgress(
        self, request: pb.ReportProgressRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReportProgressResponse:
        agent_id = current_caller().acting_agent("agent_id", request.agent_id)
        task = await self._orchestrator.report_progress(
            request.task_id, agent_id, request.attempt, request.progress, request.message
        )
        response = pb.ReportProgressResponse()
        if task.lease_expires_at is not None:
            response.lease_expires_at.FromDatetime(task.lease_expires_at)
        return response

    @unary_errors
    async def CompleteTask(
        self, request: pb.CompleteTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.CompleteTaskResponse:
        task = await self._orchestrator.complete(self._completion(current_caller(), request))
        return pb.CompleteTaskResponse(task=task_to_pb(task))

    @unary_errors
    async def CompleteTasks(
        self, request: pb.CompleteTasksRequest, context: grpc.aio.ServicerContext
    ) -> pb.CompleteTasksResponse:
        validate_batch_size(len(request.completions), "completions")
        caller = current_caller()
        checked: list[Completion | ArbiterError] = []
        for completion in request.completions:
            try:
                checked.append(self._completion(caller, completion))
            except ArbiterError as refused:
                checked.append(refused)
        refusals = await self._orchestrator.complete_many(checked)
        return pb.CompleteTasksResponse(
            results=[
                completion_result_to_pb(completion.task_id, completion.attempt, refusal)
                for completion, refusal in zip(request.completions, refusals, strict=True)
            ]
        )

    def _completion(self, caller: Caller, request: pb.CompleteTaskRequest) -> Completion:
        size = request.result.ByteSize()
        if size > self._orchestrator.max_payload_bytes:
            raise InvalidArgument("result", f"is {size} bytes; the limit is {self._orchestrator.max_payload_bytes}")
        return self._orchestrator.check_completion(
            request.task_id,
            caller.acting_agent("agent_id", request.agent_id),
            request.attempt,
            struct_to_dict("result", request.result),
            request.quality if request.HasField("quality") else None,
        )

    @unary_errors
    async def FailTask(self, request: pb.FailTaskRequest, context: grpc.aio.ServicerContext) -> pb.FailTaskResponse:
        agent_id = current_caller().acting_agent("agent_id", request.agent_id)
        task = await self._orchestrator.fail(
            request.task_id, agent_id, request.attempt, request.error, request.retryable
        )
        return pb.FailTaskResponse(task=task_to_pb(task))

    @unary_errors
    async def ExplainRouting(
        self, request: pb.ExplainRoutingRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExplainRoutingResponse:
        explanation = await self._orchestrator.explain_routing(request.task_id, current_caller().task_scope())
        return pb.ExplainRoutingResponse(
            task=task_to_pb(explanation.task),
            decisions=[routing_decision_to_pb(decision) for decision in explanation.decisions],
            strategy=STRATEGY_TO_PB[explanation.strategy],
            candidates=[scored_agent_to_pb(candidate) for candidate in explanation.candidates],
        )
