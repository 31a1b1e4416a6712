import datetime

from arbiter.v1 import agent_pb2 as _agent_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterAgentRequest(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: _agent_pb2.Agent
    def __init__(self, agent: _Optional[_Union[_agent_pb2.Agent, _Mapping]] = ...) -> None: ...

class RegisterAgentResponse(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: _agent_pb2.Agent
    def __init__(self, agent: _Optional[_Union[_agent_pb2.Agent, _Mapping]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("agent_id", "active_tasks", "status")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_TASKS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    active_tasks: int
    status: _agent_pb2.AgentStatus
    def __init__(self, agent_id: _Optional[str] = ..., active_tasks: _Optional[int] = ..., status: _Optional[_Union[_agent_pb2.AgentStatus, str]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("agent", "heartbeat_interval")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    agent: _agent_pb2.Agent
    heartbeat_interval: _duration_pb2.Duration
    def __init__(self, agent: _Optional[_Union[_agent_pb2.Agent, _Mapping]] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class GetAgentRequest(_message.Message):
    __slots__ = ("agent_id", "tenant")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    tenant: str
    def __init__(self, agent_id: _Optional[str] = ..., tenant: _Optional[str] = ...) -> None: ...

class GetAgentResponse(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: _agent_pb2.Agent
    def __init__(self, agent: _Optional[_Union[_agent_pb2.Agent, _Mapping]] = ...) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "task_type", "status")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    task_type: str
    status: _agent_pb2.AgentStatus
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., task_type: _Optional[str] = ..., status: _Optional[_Union[_agent_pb2.AgentStatus, str]] = ...) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents", "next_page_token")
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[_agent_pb2.Agent]
    next_page_token: str
    def __init__(self, agents: _Optional[_Iterable[_Union[_agent_pb2.Agent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeregisterAgentRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class DeregisterAgentResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FindCandidatesRequest(_message.Message):
    __slots__ = ("task_type", "languages", "specializations", "labels", "max_utilization", "min_success_rate", "limit")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    LANGUAGES_FIELD_NUMBER: _ClassVar[int]
    SPECIALIZATIONS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MAX_UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    MIN_SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    task_type: str
    languages: _containers.RepeatedScalarFieldContainer[str]
    specializations: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    max_utilization: float
    min_success_rate: float
    limit: int
    def __init__(self, task_type: _Optional[str] = ..., languages: _Optional[_Iterable[str]] = ..., specializations: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., max_utilization: _Optional[float] = ..., min_success_rate: _Optional[float] = ..., limit: _Optional[int] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("agent", "score", "success_rate", "reason")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    agent: _agent_pb2.Agent
    score: float
    success_rate: float
    reason: str
    def __init__(self, agent: _Optional[_Union[_agent_pb2.Agent, _Mapping]] = ..., score: _Optional[float] = ..., success_rate: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class FindCandidatesResponse(_message.Message):
    __slots__ = ("candidates",)
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    def __init__(self, candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ...) -> None: ...

class RecordOutcomeRequest(_message.Message):
    __slots__ = ("agent_id", "task_type", "success", "latency_ms", "quality", "tenant")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    task_type: str
    success: bool
    latency_ms: float
    quality: float
    tenant: str
    def __init__(self, agent_id: _Optional[str] = ..., task_type: _Optional[str] = ..., success: _Optional[bool] = ..., latency_ms: _Optional[float] = ..., quality: _Optional[float] = ..., tenant: _Optional[str] = ...) -> None: ...

class RecordOutcomeResponse(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: _agent_pb2.Agent
    def __init__(self, agent: _Optional[_Union[_agent_pb2.Agent, _Mapping]] = ...) -> None: ...

class RecordOutcomesRequest(_message.Message):
    __slots__ = ("outcomes",)
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[RecordOutcomeRequest]
    def __init__(self, outcomes: _Optional[_Iterable[_Union[RecordOutcomeRequest, _Mapping]]] = ...) -> None: ...

class RecordOutcomesResponse(_message.Message):
    __slots__ = ("recorded", "unknown_agent_ids", "unknown_agents")
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_AGENT_IDS_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_AGENTS_FIELD_NUMBER: _ClassVar[int]
    recorded: int
    unknown_agent_ids: _containers.RepeatedScalarFieldContainer[str]
    unknown_agents: _containers.RepeatedCompositeFieldContainer[_agent_pb2.AgentReference]
    def __init__(self, recorded: _Optional[int] = ..., unknown_agent_ids: _Optional[_Iterable[str]] = ..., unknown_agents: _Optional[_Iterable[_Union[_agent_pb2.AgentReference, _Mapping]]] = ...) -> None: ...

class WatchAgentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchAgentsResponse(_message.Message):
    __slots__ = ("agents", "removed_agent_ids", "removed_agents", "snapshot_complete")
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_AGENT_IDS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_AGENTS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[_agent_pb2.Agent]
    removed_agent_ids: _containers.RepeatedScalarFieldContainer[str]
    removed_agents: _containers.RepeatedCompositeFieldContainer[_agent_pb2.AgentReference]
    snapshot_complete: bool
    def __init__(self, agents: _Optional[_Iterable[_Union[_agent_pb2.Agent, _Mapping]]] = ..., removed_agent_ids: _Optional[_Iterable[str]] = ..., removed_agents: _Optional[_Iterable[_Union[_agent_pb2.AgentReference, _Mapping]]] = ..., snapshot_complete: _Optional[bool] = ...) -> None: ...
