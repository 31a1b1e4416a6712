"""Protobuf <-> orchestrator domain."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct

from arbiter.v1 import orchestrator_service_pb2, task_pb2
from services.orchestrator.domain import (
    AttemptCancellation,
    NewTask,
    OrchestratorDraining,
    RecordedDecision,
    TaskCount,
    TaskEvent,
    TaskRecord,
    TaskRequirements,
    TaskState,
    validate_submission,
)
from services.orchestrator.routing import ScoredAgent, Strategy
from shared import tenancy
from shared.errors import STATUS_BY_ERROR, ArbiterError, InvalidArgument
from shared.timestamps import to_timestamp

STRATEGY_TO_PB = {
    Strategy.CAPABILITY: task_pb2.ROUTING_STRATEGY_CAPABILITY,
    Strategy.LEAST_LOADED: task_pb2.ROUTING_STRATEGY_LEAST_LOADED,
    Strategy.EPSILON_GREEDY: task_pb2.ROUTING_STRATEGY_EPSILON_GREEDY,
    Strategy.UCB: task_pb2.ROUTING_STRATEGY_UCB,
}

_STATE_TO_PB = {
    TaskState.PENDING: task_pb2.TASK_STATE_PENDING,
    TaskState.ASSIGNED: task_pb2.TASK_STATE_ASSIGNED,
    TaskState.RUNNING: task_pb2.TASK_STATE_RUNNING,
    TaskState.COMPLETED: task_pb2.TASK_STATE_COMPLETED,
    TaskState.FAILED: task_pb2.TASK_STATE_FAILED,
    TaskState.CANCELLED: task_pb2.TASK_STATE_CANCELLED,
}
_STATE_FROM_PB = {value: key for key, value in _STATE_TO_PB.items()}


def state_from_pb(field: str, state: int) -> TaskState | None:
    """None for UNSPECIFIED."""
    if state == task_pb2.TASK_STATE_UNSPECIFIED:
        return None
    if state not in _STATE_FROM_PB:
        raise InvalidArgument(field, f"{state} is not a TaskState")
    return _STATE_FROM_PB[state]  # type: ignore[index]


def struct_to_dict(field: str, struct: Struct) -> dict[str, Any]:
    try:
        return json_format.MessageToDict(struct)
    except ValueError:
        # protobuf refuses NaN and infinities here: JSON (and jsonb) has no such numbers.
        raise InvalidArgument(field, "holds NaN or an infinity, which JSON cannot represent") from None


def _struct(values: dict[str, Any] | None) -> Struct | None:
    if values is None:
        return None
    struct = Struct()
    struct.update(values)
    return struct


def _duration_ms(request: orchestrator_service_pb2.SubmitTaskRequest, field: str) -> int | None:
    if not request.HasField(field):
        return None
    duration: Duration = getattr(request, field)
    if duration.seconds < 0 or duration.nanos < 0:
        raise InvalidArgument(field, "must be positive and at most 7 days, or unset for none")
    milliseconds: int = duration.ToMilliseconds()
    if milliseconds == 0 and (duration.seconds or duration.nanos):
        # Under a millisecond, but set: the shortest timeout there is, not none at all.
        return 1
    return milliseconds or None


def submission_from_pb(request: orchestrator_service_pb2.SubmitTaskRequest, max_payload_bytes: int) -> NewTask:
    requirements = request.requirements
    return validate_submission(
        task_type=request.task_type,
        payload=struct_to_dict("payload", request.payload),
        payload_bytes=request.payload.ByteSize(),
        max_payload_bytes=max_payload_bytes,
        priority=request.priority,
        requirements=TaskRequirements(
            languages=list(requirements.languages),
            specializations=list(requirements.specializations),
            labels=dict(requirements.labels),
        ),
        max_attempts=request.max_attempts,
        timeout_ms=_duration_ms(request, "timeout"),
        idempotency_key=request.idempotency_key,
        schedule_to_start_timeout_ms=_duration_ms(request, "schedule_to_start_timeout"),
    )


def submissions_from_pb(
    requests: Sequence[orchestrator_service_pb2.SubmitTaskRequest], max_payload_bytes: int
) -> list[NewTask]:
    """Every task of a batch, or INVALID_ARGUMENT naming the first bad one, e.g. `tasks[3].priority`."""
    tasks = []
    for index, request in enumerate(requests):
        try:
            tasks.append(submission_from_pb(request, max_payload_bytes))
        except InvalidArgument as error:
            raise InvalidArgument(f"tasks[{index}].{error.field}", error.description) from None
    return tasks


def task_count_to_pb(count: TaskCount) -> orchestrator_service_pb2.TaskCount:
    return orchestrator_service_pb2.TaskCount(
        task_type=count.task_type,
        state=_STATE_TO_PB[count.state],
        count=count.count,
        oldest_created_at=to_timestamp(count.oldest_created_at),
    )


def _duration(milliseconds: int | None) -> Duration | None:
    if milliseconds is None:
        return None
    duration = Duration()
    duration.FromMilliseconds(milliseconds)
    return duration


def task_event_to_pb(event: TaskEvent) -> orchestrator_service_pb2.TaskEvent:
    return orchestrator_service_pb2.TaskEvent(
        time=to_timestamp(event.at),
        from_state=_STATE_TO_PB[event.from_state] if event.from_state else task_pb2.TASK_STATE_UNSPECIFIED,
        to_state=_STATE_TO_PB[event.to_state],
        attempt=event.attempt,
        agent_id=tenancy.plain(event.agent_id or ""),
        reason=event.reason,
    )


def scored_agent_to_pb(scored: ScoredAgent) -> task_pb2.ScoredAgent:
    return task_pb2.ScoredAgent(agent_id=tenancy.plain(scored.agent_id), score=scored.score, reason=scored.reason)


def routing_decision_to_pb(recorded: RecordedDecision) -> task_pb2.RoutingDecision:
    decision = recorded.decision
    return task_pb2.RoutingDecision(
        attempt=recorded.attempt,
        agent_id=tenancy.plain(decision.agent_id),
        strategy=STRATEGY_TO_PB[decision.strategy],
        confidence=decision.confidence,
        reason=decision.reason,
        score=decision.score,
        alternatives=[scored_agent_to_pb(alternative) for alternative in decision.alternatives],
        decided_at=to_timestamp(recorded.decided_at),
        explored=decision.explored,
    )


def task_to_pb(task: TaskRecord) -> task_pb2.Task:
    return task_pb2.Task(
        id=task.id,
        task_type=task.task_type,
        state=_STATE_TO_PB[task.state],
        payload=_struct(task.payload),
        result=_struct(task.result),
        error=task.error,
        priority=task.priority,
        requirements=task_pb2.TaskRequirements(
            languages=task.requirements.languages,
            specializations=task.requirements.specializations,
            labels=task.requirements.labels,
        ),
        attempt=task.attempt,
        max_attempts=task.max_attempts,
        assigned_agent_id=tenancy.plain(task.assigned_agent_id or ""),
        idempotency_key=task.idempotency_key or "",
        created_at=to_timestamp(task.created_at),
        updated_at=to_timestamp(task.updated_at),
        timeout=_duration(task.timeout_ms),
        progress=task.progress,
        progress_message=task.progress_message,
        lease_expires_at=to_timestamp(task.lease_expires_at),
        not_before=to_timestamp(task.not_before),
        schedule_to_start_timeout=_duration(task.schedule_to_start_timeout_ms),
        routing=routing_decision_to_pb(task.routing) if task.routing else None,
        pending_reason=task.pending_reason,
    )


def stream_message_to_pb(
    message: TaskRecord | AttemptCancellation | OrchestratorDraining,
) -> orchestrator_service_pb2.StreamAssignmentsResponse:
    if isinstance(message, OrchestratorDraining):
        return orchestrator_service_pb2.StreamAssignmentsResponse(
            draining=orchestrator_service_pb2.Draining(reason=message.reason)
        )
    if isinstance(message, AttemptCancellation):
        return orchestrator_service_pb2.StreamAssignmentsResponse(
            cancellation=orchestrator_service_pb2.Cancellation(
                task_id=message.task_id, attempt=message.attempt, reason=message.reason
            )
        )
    task = message
    return orchestrator_service_pb2.StreamAssignmentsResponse(
        assignment=orchestrator_service_pb2.Assignment(
            task=task_to_pb(task),
            attempt=task.attempt,
            lease_expires_at=to_timestamp(task.lease_expires_at),
            trace_context=task.trace_context,
        )
    )


def completion_result_to_pb(
    task_id: str, attempt: int, refusal: ArbiterError | None
) -> orchestrator_service_pb2.CompletionResult:
    """One entry of a CompleteTasks answer: OK, or the status CompleteTask would have given it alone."""
    if refusal is None:
        return orchestrator_service_pb2.CompletionResult(task_id=task_id, attempt=attempt)
    return orchestrator_service_pb2.CompletionResult(
        task_id=task_id, attempt=attempt, code=STATUS_BY_ERROR[type(refusal)].value[0], message=str(refusal)
    )
