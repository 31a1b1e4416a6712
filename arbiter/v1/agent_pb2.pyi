import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_STATUS_UNSPECIFIED: _ClassVar[AgentStatus]
    AGENT_STATUS_ONLINE: _ClassVar[AgentStatus]
    AGENT_STATUS_BUSY: _ClassVar[AgentStatus]
    AGENT_STATUS_DRAINING: _ClassVar[AgentStatus]
    AGENT_STATUS_UNHEALTHY: _ClassVar[AgentStatus]
    AGENT_STATUS_OFFLINE: _ClassVar[AgentStatus]
AGENT_STATUS_UNSPECIFIED: AgentStatus
AGENT_STATUS_ONLINE: AgentStatus
AGENT_STATUS_BUSY: AgentStatus
AGENT_STATUS_DRAINING: AgentStatus
AGENT_STATUS_UNHEALTHY: AgentStatus
AGENT_STATUS_OFFLINE: AgentStatus

class AgentCapabilities(_message.Message):
    __slots__ = ("task_types", "languages", "specializations", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_TYPES_FIELD_NUMBER: _ClassVar[int]
    LANGUAGES_FIELD_NUMBER: _ClassVar[int]
    SPECIALIZATIONS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    task_types: _containers.RepeatedScalarFieldContainer[str]
    languages: _containers.RepeatedScalarFieldContainer[str]
    specializations: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    def __init__(self, task_types: _Optional[_Iterable[str]] = ..., languages: _Optional[_Iterable[str]] = ..., specializations: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class AgentPerformance(_message.Message):
    __slots__ = ("success_rate", "average_quality", "average_latency_ms", "task_count", "by_task_type", "windows", "degraded", "degraded_reason")
    SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_QUALITY_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    TASK_COUNT_FIELD_NUMBER: _ClassVar[int]
    BY_TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASON_FIELD_NUMBER: _ClassVar[int]
    success_rate: float
    average_quality: float
    average_latency_ms: float
    task_count: int
    by_task_type: _containers.RepeatedCompositeFieldContainer[TaskTypePerformance]
    windows: _containers.RepeatedCompositeFieldContainer[PerformanceWindow]
    degraded: bool
    degraded_reason: str
    def __init__(self, success_rate: _Optional[float] = ..., average_quality: _Optional[float] = ..., average_latency_ms: _Optional[float] = ..., task_count: _Optional[int] = ..., by_task_type: _Optional[_Iterable[_Union[TaskTypePerformance, _Mapping]]] = ..., windows: _Optional[_Iterable[_Union[PerformanceWindow, _Mapping]]] = ..., degraded: _Optional[bool] = ..., degraded_reason: _Optional[str] = ...) -> None: ...

class TaskTypePerformance(_message.Message):
    __slots__ = ("task_type", "success_rate", "average_quality", "average_latency_ms", "task_count")
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_QUALITY_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    TASK_COUNT_FIELD_NUMBER: _ClassVar[int]
    task_type: str
    success_rate: float
    average_quality: float
    average_latency_ms: float
    task_count: int
    def __init__(self, task_type: _Optional[str] = ..., success_rate: _Optional[float] = ..., average_quality: _Optional[float] = ..., average_latency_ms: _Optional[float] = ..., task_count: _Optional[int] = ...) -> None: ...

class PerformanceWindow(_message.Message):
    __slots__ = ("length", "task_count", "success_rate", "average_latency_ms", "average_quality")
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    TASK_COUNT_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_QUALITY_FIELD_NUMBER: _ClassVar[int]
    length: _duration_pb2.Duration
    task_count: int
    success_rate: float
    average_latency_ms: float
    average_quality: float
    def __init__(self, length: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., task_count: _Optional[int] = ..., success_rate: _Optional[float] = ..., average_latency_ms: _Optional[float] = ..., average_quality: _Optional[float] = ...) -> None: ...

class AgentLoad(_message.Message):
    __slots__ = ("active_tasks", "utilization")
    ACTIVE_TASKS_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    active_tasks: int
    utilization: float
    def __init__(self, active_tasks: _Optional[int] = ..., utilization: _Optional[float] = ...) -> None: ...

class Agent(_message.Message):
    __slots__ = ("id", "name", "model_family", "capabilities", "max_concurrent_tasks", "status", "performance", "load", "registered_at", "last_heartbeat_at", "tenant", "prefetch_tasks")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FAMILY_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_TASKS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PERFORMANCE_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_AT_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PREFETCH_TASKS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    model_family: str
    capabilities: AgentCapabilities
    max_concurrent_tasks: int
    status: AgentStatus
    performance: AgentPerformance
    load: AgentLoad
    registered_at: _timestamp_pb2.Timestamp
    last_heartbeat_at: _timestamp_pb2.Timestamp
    tenant: str
    prefetch_tasks: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., model_family: _Optional[str] = ..., capabilities: _Optional[_Union[AgentCapabilities, _Mapping]] = ..., max_concurrent_tasks: _Optional[int] = ..., status: _Optional[_Union[AgentStatus, str]] = ..., performance: _Optional[_Union[AgentPerformance, _Mapping]] = ..., load: _Optional[_Union[AgentLoad, _Mapping]] = ..., registered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_heartbeat_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., tenant: _Optional[str] = ..., prefetch_tasks: _Optional[int] = ...) -> None: ...

class AgentReference(_message.Message):
    __slots__ = ("tenant", "agent_id")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    agent_id: str
    def __init__(self, tenant: _Optional[str] = ..., agent_id: _Optional[str] = ...) -> None: ...
