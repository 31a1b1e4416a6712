"""Protobuf <-> registry domain."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from arbiter.v1 import agent_pb2
from services.registry.domain import AgentRecord, AgentRegistration, AgentStatus, validate_registration
from shared.errors import InvalidArgument

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
    )


def agent_to_pb(record: AgentRecord) -> agent_pb2.Agent:
    registration = record.registration
    registered_at = Timestamp()
    registered_at.FromDatetime(record.registered_at)
    last_heartbeat_at = Timestamp()
    last_heartbeat_at.FromDatetime(record.last_heartbeat_at)
    return agent_pb2.Agent(
        id=registration.id,
        name=registration.name,
        model_family=registration.model_family,
        capabilities=agent_pb2.AgentCapabilities(
            task_types=registration.task_types,
            languages=registration.languages,
            specializations=registration.specializations,
            labels=registration.labels,
        ),
        max_concurrent_tasks=registration.max_concurrent_tasks,
        status=_STATUS_TO_PB[record.status],
        performance=agent_pb2.AgentPerformance(
            success_rate=record.success_rate,
            average_quality=record.average_quality,
            average_latency_ms=record.average_latency_ms,
            task_count=record.task_count,
        ),
        load=agent_pb2.AgentLoad(active_tasks=record.active_tasks, utilization=record.utilization),
        registered_at=registered_at,
        last_heartbeat_at=last_heartbeat_at,
    )
