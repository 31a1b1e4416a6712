"""Protobuf <-> registry domain."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.duration_pb2 import Duration

from arbiter.v1 import agent_pb2
from arbiter.v1 import registry_service_pb2 as registry_pb2
from services.registry.domain import (
    AgentChanges,
    AgentRecord,
    AgentRegistration,
    AgentStatus,
    Candidate,
    CandidateQuery,
    Outcome,
    OutcomeTotals,
    WindowTotals,
    validate_candidate_query,
    validate_outcome,
    validate_outcome_batch_size,
    validate_registration,
)
from shared import tenancy
from shared.errors import InvalidArgument
from shared.timestamps import to_timestamp

_STATUS_TO_PB = {
    AgentStatus.ONLINE: agent_pb2.AGENT_STATUS_ONLINE,
    AgentStatus.BUSY: agent_pb2.AGENT_STATUS_BUSY,
    AgentStatus.DRAINING: agent_pb2.AGENT_STATUS_DRAINING,
    AgentStatus.UNHEALTHY: agent_pb2.AGENT_STATUS_UNHEALTHY,
    AgentStatus.OFFLINE: agent_pb2.AGENT_STATUS_OFFLINE,
}
_STATUS_FROM_PB = {value: key for key, value in _STATUS_TO_PB.items()}


def status_from_pb(field: str, status: int) -> AgentStatus | None:
    """None for UNSPECIFIED."""
    if status == agent_pb2.AGENT_STATUS_UNSPECIFIED:
        return None
    if status not in _STATUS_FROM_PB:
        raise InvalidArgument(field, f"{status} is not an AgentStatus")
    return _STATUS_FROM_PB[status]  # type: ignore[index]


def registration_from_pb(agent: agent_pb2.Agent) -> AgentRegistration:
    return validate_registration(
        agent_id=agent.id,
        name=agent.name,
        model_family=agent.model_family,
        task_types=list(agent.capabilities.task_types),
        languages=list(agent.capabilities.languages),
        specializations=list(agent.capabilities.specializations),
        labels=dict(agent.capabilities.labels),
        max_concurrent_tasks=agent.max_concurrent_tasks,
        prefetch_tasks=agent.prefetch_tasks,
    )


def outcome_from_pb(request: registry_pb2.RecordOutcomeRequest, field_prefix: str = "") -> Outcome:
    return validate_outcome(
        field_prefix,
        agent_id=request.agent_id,
        task_type=request.task_type,
        success=request.success,
        latency_ms=request.latency_ms,
        quality=request.quality if request.HasField("quality") else None,
    )


def outcomes_from_pb(requests: Sequence[registry_pb2.RecordOutcomeRequest]) -> list[Outcome]:
    # Size first, so a huge batch is refused before each outcome is converted.
    validate_outcome_batch_size(len(requests))
    return [outcome_from_pb(request, f"outcomes[{index}].") for index, request in enumerate(requests)]


def candidate_query_from_pb(request: registry_pb2.FindCandidatesRequest) -> CandidateQuery:
    return validate_candidate_query(
        task_type=request.task_type,
        languages=list(request.languages),
        specializations=list(request.specializations),
        labels=dict(request.labels),
        max_utilization=request.max_utilization if request.HasField("max_utilization") else None,
        min_success_rate=request.min_success_rate,
        limit=request.limit,
    )


def _task_type_performance(task_type: str, totals: OutcomeTotals) -> agent_pb2.TaskTypePerformance:
    return agent_pb2.TaskTypePerformance(
        task_type=task_type,
        success_rate=totals.success_rate_with_prior,
        average_quality=totals.quality_with_prior,
        average_latency_ms=totals.average_latency_ms,
        task_count=totals.outcomes,
    )


def _window(window: WindowTotals) -> agent_pb2.PerformanceWindow:
    length = Duration()
    length.FromTimedelta(window.length)
    # Raw figures: a window is about what happened in it, not about what to expect.
    return agent_pb2.PerformanceWindow(
        length=length,
        task_count=window.totals.outcomes,
        success_rate=window.totals.success_rate,
        average_latency_ms=window.totals.average_latency_ms,
        average_quality=window.totals.average_quality,
    )


def performance_to_pb(record: AgentRecord) -> agent_pb2.AgentPerformance:
    overall = record.overall
    return agent_pb2.AgentPerformance(
        success_rate=overall.success_rate_with_prior,
        average_quality=overall.quality_with_prior,
        average_latency_ms=overall.average_latency_ms,
        task_count=overall.outcomes,
        by_task_type=[
            _task_type_performance(task_type, totals) for task_type, totals in record.totals_by_offered_task_type()
        ],
        windows=[_window(window) for window in record.windows],
        degraded=record.degraded,
        degraded_reason=record.degraded_reason,
    )


def agent_to_pb(record: AgentRecord) -> agent_pb2.Agent:
    registration = record.registration
    tenant, agent_id = tenancy.split(registration.id)
    return agent_pb2.Agent(
        id=agent_id,
        tenant=tenant,
        name=registration.name,
        model_family=registration.model_family,
        capabilities=agent_pb2.AgentCapabilities(
            task_types=registration.task_types,
            languages=registration.languages,
            specializations=registration.specializations,
            labels=registration.labels,
        ),
        max_concurrent_tasks=registration.max_concurrent_tasks,
        prefetch_tasks=registration.prefetch_tasks,
        status=_STATUS_TO_PB[record.status],
        performance=performance_to_pb(record),
        load=agent_pb2.AgentLoad(active_tasks=record.active_tasks, utilization=record.utilization),
        registered_at=to_timestamp(record.registered_at),
        last_heartbeat_at=to_timestamp(record.last_heartbeat_at),
    )


def agent_reference_to_pb(qualified_id: str) -> agent_pb2.AgentReference:
    tenant, agent_id = tenancy.split(qualified_id)
    return agent_pb2.AgentReference(tenant=tenant, agent_id=agent_id)


def candidate_to_pb(candidate: Candidate) -> registry_pb2.Candidate:
    return registry_pb2.Candidate(
        agent=agent_to_pb(candidate.agent),
        score=candidate.score,
        success_rate=candidate.success_rate,
        reason=candidate.reason,
    )


def changes_to_pb(changes: AgentChanges) -> registry_pb2.WatchAgentsResponse:
    return registry_pb2.WatchAgentsResponse(
        agents=[agent_to_pb(record) for record in changes.upserted],
        removed_agent_ids=[tenancy.plain(agent_id) for agent_id in changes.removed_ids],
        removed_agents=[agent_reference_to_pb(agent_id) for agent_id in changes.removed_ids],
        snapshot_complete=changes.snapshot_complete,
    )
