"""Arbiter's Python SDK: `Agent` to run work, `Client` to submit and follow it.

The generated protobuf code lives in `arbiter.v1`, for callers who want the raw messages.
"""

from arbiter.agent import Agent, Task
from arbiter.client import Client
from arbiter.errors import ArbiterError, PermanentError, WaitTimeout
from arbiter.models import (
    AgentInfo,
    AgentStatus,
    ApiKeyInfo,
    AuditEventInfo,
    Candidate,
    CreatedApiKey,
    PerformanceWindow,
    RoutingDecision,
    RoutingExplanation,
    ScoredAgent,
    TaskCount,
    TaskEvent,
    TaskInfo,
    TaskSpec,
    TaskState,
    TaskTypePerformance,
)

__all__ = [
    "Agent",
    "AgentInfo",
    "AgentStatus",
    "ApiKeyInfo",
    "ArbiterError",
    "AuditEventInfo",
    "Candidate",
    "Client",
    "CreatedApiKey",
    "PerformanceWindow",
    "PermanentError",
    "RoutingDecision",
    "RoutingExplanation",
    "ScoredAgent",
    "Task",
    "TaskCount",
    "TaskEvent",
    "TaskInfo",
    "TaskSpec",
    "TaskState",
    "TaskTypePerformance",
    "WaitTimeout",
]
