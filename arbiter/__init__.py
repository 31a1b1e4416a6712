"""Arbiter's Python SDK: `Agent` to run work, `Client` to submit and follow it.

The generated protobuf code lives in `arbiter.v1`, for callers who want the raw messages.
"""

from arbiter.agent import Agent, Task
from arbiter.client import Client
from arbiter.errors import ArbiterError, PermanentError, WaitTimeout
from arbiter.models import AgentInfo, AgentStatus, TaskCount, TaskEvent, TaskInfo, TaskSpec, TaskState

__all__ = [
    "Agent",
    "AgentInfo",
    "AgentStatus",
    "ArbiterError",
    "Client",
    "PermanentError",
    "Task",
    "TaskCount",
    "TaskEvent",
    "TaskInfo",
    "TaskSpec",
    "TaskState",
    "WaitTimeout",
]
