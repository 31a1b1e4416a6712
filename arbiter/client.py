"""`Client`: submit, follow and cancel tasks, and look at agents, without touching protobuf.

    async with Client("127.0.0.1:50052", api_key) as client:
        task = await client.submit("code-review", {"pullRequest": 7})
        done = await client.wait(task.id, timeout=60)

Every call has a deadline (`timeout`, 10 s by default); a refused call raises `ArbiterError` with
the gRPC status code and the server's message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

import grpc
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

from arbiter import settings
from arbiter._grpc import TRANSIENT_CODES, PemPath, key_metadata, open_channel, traced
from arbiter.errors import ArbiterError, WaitTimeout
from arbiter.models import (
    AgentInfo,
    AgentStatus,
    ApiKeyInfo,
    AuditEventInfo,
    Candidate,
    CreatedApiKey,
    RoutingExplanation,
    TaskCount,
    TaskEvent,
    TaskInfo,
    TaskSpec,
    TaskState,
)
from arbiter.v1 import admin_service_pb2 as apb
from arbiter.v1 import admin_service_pb2_grpc as apb_grpc
from arbiter.v1 import agent_pb2, task_pb2
from arbiter.v1 import orchestrator_service_pb2 as opb
from arbiter.v1 import orchestrator_service_pb2_grpc as opb_grpc
from arbiter.v1 import registry_service_pb2 as rpb
from arbiter.v1 import registry_service_pb2_grpc as rpb_grpc

# What SubmitTasks takes in one call; submit_many splits longer lists into calls of this size.
MAX_BATCH_SIZE = 1000
DEFAULT_TIMEOUT_SECONDS = 10.0
# watch() reopens a broken stream with backoff for this long before giving up.
WATCH_RECONNECT_SECONDS = 60.0
MAX_RECONNECT_SECONDS = 5.0

Response = TypeVar("Response")


class Client:
    def __init__(
        self,
        address: str | None = None,
        api_key: str | None = None,
        *,
        registry_address: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        tls: bool | None = None,
        tls_ca: PemPath | None = None,
        tls_client_cert: PemPath | None = None,
        tls_client_key: PemPath | None = None,
    ) -> None:
        """`address` is the orchestrator's; the registry's serves the agent calls. Those not given come
        from ARBITER_ORCHESTRATOR_ADDR, ARBITER_REGISTRY_TARGET (or ARBITER_REGISTRY_ADDR) and
        ARBITER_API_KEY; the addresses default to 127.0.0.1:50052 and 127.0.0.1:50051.

        Plaintext unless TLS is asked for: `tls=True` (the system's roots), or a PEM file in `tls_ca`
        (roots to trust) or `tls_client_cert`/`tls_client_key` (for mutual TLS), or their variables
        ARBITER_TLS_CA, ARBITER_TLS_CLIENT_CERT and ARBITER_TLS_CLIENT_KEY."""
        self._address = address or settings.orchestrator_address()
        self._registry_address = registry_address or settings.registry_address()
        self._metadata = key_metadata(settings.api_key(api_key))
        self._timeout = timeout
        self._credentials = settings.transport_credentials(tls, tls_ca, tls_client_cert, tls_client_key)
        self._channel = open_channel(self._address, self._credentials)
        self._orchestrator = opb_grpc.OrchestratorServiceStub(self._channel)
        self._registry_channel: grpc.aio.Channel | None = None
        self._registry: rpb_grpc.RegistryServiceStub | None = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()
        if self._registry_channel is not None:
            await self._registry_channel.close()

    async def _call(self, address: str, method: Callable[..., Awaitable[Response]], request: Any) -> Response:
        try:
            return await method(request, metadata=traced(self._metadata), timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            raise ArbiterError.from_rpc_error(error, address) from None

    async def _orchestrator_call(self, method: Callable[..., Awaitable[Response]], request: Any) -> Response:
        return await self._call(self._address, method, request)

    def _registry_stub(self) -> tuple[str, rpb_grpc.RegistryServiceStub]:
        if self._registry is None:
            self._registry_channel = open_channel(self._registry_address, self._credentials)
            self._registry = rpb_grpc.RegistryServiceStub(self._registry_channel)
        return self._registry_address, self._registry

    # Tasks.

    async def submit(
        self,
        task_type: str,
        payload: dict[str, Any] | None = None,
        *,
        priority: int = 0,
        max_attempts: int = 0,
        timeout: timedelta | float | None = None,
        idempotency_key: str = "",
        languages: Iterable[str] = (),
        specializations: Iterable[str] = (),
        labels: dict[str, str] | None = None,
        schedule_to_start_timeout: timedelta | float | None = None,
    ) -> TaskInfo:
        """Submits one task. With an idempotency key, a repeat returns the first task (`created` False).
        `timeout` bounds one attempt; `schedule_to_start_timeout` fails the task if no agent starts it in time."""
        spec = TaskSpec(
            task_type=task_type,
            payload=payload or {},
            priority=priority,
            max_attempts=max_attempts,
            timeout=timeout,
            idempotency_key=idempotency_key,
            languages=list(languages),
            specializations=list(specializations),
            labels=dict(labels or {}),
            schedule_to_start_timeout=schedule_to_start_timeout,
        )
        response = await self._orchestrator_call(self._orchestrator.SubmitTask, spec.to_pb())
        return TaskInfo.from_pb(response.task, created=response.created)

    async def submit_many(self, tasks: Iterable[TaskSpec]) -> list[TaskInfo]:
        """Submits tasks in calls of up to 1000; each call is stored all-or-nothing. Results are in order."""
        requests = [spec.to_pb() for spec in tasks]
        submitted: list[TaskInfo] = []
        for start in range(0, len(requests), MAX_BATCH_SIZE):
            response = await self._orchestrator_call(
                self._orchestrator.SubmitTasks, opb.SubmitTasksRequest(tasks=requests[start : start + MAX_BATCH_SIZE])
            )
            submitted.extend(
                TaskInfo.from_pb(task, created) for task, created in zip(response.tasks, response.created, strict=True)
            )
        return submitted

    async def get(self, task_id: str) -> TaskInfo:
        response = await self._orchestrator_call(self._orchestrator.GetTask, opb.GetTaskRequest(task_id=task_id))
        return TaskInfo.from_pb(response.task)

    async def cancel(self, task_id: str, reason: str = "") -> TaskInfo:
        response = await self._orchestrator_call(
            self._orchestrator.CancelTask, opb.CancelTaskRequest(task_id=task_id, reason=reason)
        )
        return TaskInfo.from_pb(response.task)

    async def list_tasks(
        self, *, state: TaskState | None = None, task_type: str = "", limit: int = 50
    ) -> list[TaskInfo]:
        """Up to `limit` tasks, newest first, following pages as needed."""

        async def page(size: int, token: str) -> tuple[list[TaskInfo], str]:
            response = await self._orchestrator_call(
                self._orchestrator.ListTasks,
                opb.ListTasksRequest(
                    state=state.value if state else task_pb2.TASK_STATE_UNSPECIFIED,
                    task_type=task_type,
                    page_size=size,
                    page_token=token,
                ),
            )
            return [TaskInfo.from_pb(task) for task in response.tasks], response.next_page_token

        return await _collect_pages(page, limit)

    async def queue_stats(self) -> list[TaskCount]:
        response = await self._orchestrator_call(self._orchestrator.GetQueueStats, opb.GetQueueStatsRequest())
        return [TaskCount.from_pb(count) for count in response.counts]

    async def watch(self, task_id: str) -> AsyncGenerator[TaskInfo, None]:
        """The task now, then after each change, until it is finished (the last one yielded). Changes in
        quick succession may come as one. If the stream breaks (an orchestrator restarts), it is opened
        again with backoff and picks up from the task's current state."""
        last: TaskInfo | None = None
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(lambda error: isinstance(error, ArbiterError) and error.code in TRANSIENT_CODES),
            wait=wait_exponential_jitter(multiplier=0.1, max=MAX_RECONNECT_SECONDS, jitter=0.25),
            stop=stop_after_delay(WATCH_RECONNECT_SECONDS),
            reraise=True,
        ):
            with attempt:
                call = self._orchestrator.WatchTask(opb.WatchTaskRequest(task_id=task_id), metadata=self._metadata)
                try:
                    async for response in call:
                        task = TaskInfo.from_pb(response.task)
                        if task != last:
                            last = task
                            yield task
                except grpc.aio.AioRpcError as error:
                    raise ArbiterError.from_rpc_error(error, self._address) from None
                finally:
                    call.cancel()
                if last is not None and last.state.is_terminal:
                    return
                raise ArbiterError(grpc.StatusCode.UNAVAILABLE, "the watch stream ended before the task finished")

    async def history(self, task_id: str) -> list[TaskEvent]:
        """Every state change of the task, oldest first, with the reason (why it was retried or failed)."""
        response = await self._orchestrator_call(
            self._orchestrator.GetTaskHistory, opb.GetTaskHistoryRequest(task_id=task_id)
        )
        return [TaskEvent.from_pb(event) for event in response.events]

    async def explain_routing(self, task_id: str) -> RoutingExplanation:
        """Why the task went where it went: every attempt's routing decision (agent, strategy, score,
        alternatives), and while it is PENDING why it waits and how the agents that could take it score now."""
        response = await self._orchestrator_call(
            self._orchestrator.ExplainRouting, opb.ExplainRoutingRequest(task_id=task_id)
        )
        return RoutingExplanation.from_pb(response)

    async def wait(self, task_id: str, timeout: float | None = None) -> TaskInfo:
        """The task once it is COMPLETED, FAILED or CANCELLED; `WaitTimeout` after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        watching = self.watch(task_id)
        try:
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                try:
                    task = await asyncio.wait_for(anext(watching), remaining)
                except TimeoutError:
                    raise WaitTimeout(f"task {task_id} did not finish within {timeout} s") from None
                if task.state.is_terminal:
                    return task
        finally:
            await watching.aclose()

    # Agents.

    async def get_agent(self, agent_id: str) -> AgentInfo:
        address, registry = self._registry_stub()
        response = await self._call(address, registry.GetAgent, rpb.GetAgentRequest(agent_id=agent_id))
        return AgentInfo.from_pb(response.agent)

    async def deregister(self, agent_id: str) -> None:
        """Removes the agent from the registry (admins and operators any of their tenant's, an agent key
        only those it acts as); `ArbiterError` NOT_FOUND when there is no such agent. A still-running
        agent that heartbeats registers again: stop it first."""
        address, registry = self._registry_stub()
        await self._call(address, registry.DeregisterAgent, rpb.DeregisterAgentRequest(agent_id=agent_id))

    async def list_agents(
        self, *, task_type: str = "", status: AgentStatus | None = None, limit: int = 100
    ) -> list[AgentInfo]:
        """Up to `limit` agents, following pages as needed."""
        address, registry = self._registry_stub()

        async def page(size: int, token: str) -> tuple[list[AgentInfo], str]:
            response = await self._call(
                address,
                registry.ListAgents,
                rpb.ListAgentsRequest(
                    task_type=task_type,
                    status=status.value if status else agent_pb2.AGENT_STATUS_UNSPECIFIED,
                    page_size=size,
                    page_token=token,
                ),
            )
            return [AgentInfo.from_pb(agent) for agent in response.agents], response.next_page_token

        return await _collect_pages(page, limit)

    async def find_candidates(
        self,
        task_type: str,
        *,
        languages: Iterable[str] = (),
        specializations: Iterable[str] = (),
        labels: dict[str, str] | None = None,
        max_utilization: float | None = None,
        min_success_rate: float = 0.0,
        limit: int = 10,
    ) -> list[Candidate]:
        """The ONLINE and BUSY agents that could take a task with these requirements now, best first (by
        success rate on the task type, then match score), each with its score and why. `max_utilization`
        (0..1, None for any) and `min_success_rate` (0..1) narrow them; `limit` is 1..500."""
        address, registry = self._registry_stub()
        request = rpb.FindCandidatesRequest(
            task_type=task_type,
            languages=list(languages),
            specializations=list(specializations),
            labels=dict(labels or {}),
            min_success_rate=min_success_rate,
            limit=limit,
        )
        if max_utilization is not None:
            request.max_utilization = max_utilization
        response = await self._call(address, registry.FindCandidates, request)
        return [Candidate.from_pb(candidate) for candidate in response.candidates]

    # API keys and the audit log (AdminService, on the registry; admin keys only, within their tenant).

    def _admin_stub(self) -> tuple[str, apb_grpc.AdminServiceStub]:
        address, _ = self._registry_stub()
        assert self._registry_channel is not None
        return address, apb_grpc.AdminServiceStub(self._registry_channel)

    async def create_api_key(
        self,
        role: str,
        *,
        description: str = "",
        expires_at: datetime | None = None,
        agent_ids: Iterable[str] = (),
        sees_tenant_tasks: bool = False,
        tenant: str = "",
    ) -> CreatedApiKey:
        """A new key for `role` ("admin", "operator", "service", "submitter", "agent" or "viewer"). Agent
        keys may be bound to agent ids or prefixes ending in '*'; `tenant` only with an every-tenant key.
        The secret is in the result only."""
        address, admin = self._admin_stub()
        request = apb.CreateApiKeyRequest(
            role=_role_to_pb(role),
            tenant=tenant,
            description=description,
            agent_ids=list(agent_ids),
            sees_tenant_tasks=sees_tenant_tasks,
        )
        if expires_at is not None:
            request.expires_at.FromDatetime(expires_at)
        response = await self._call(address, admin.CreateApiKey, request)
        return CreatedApiKey(ApiKeyInfo.from_pb(response.key), response.secret)

    async def list_api_keys(self, *, include_revoked: bool = False) -> list[ApiKeyInfo]:
        """The tenant's keys, oldest first: prefixes, never secrets."""
        address, admin = self._admin_stub()
        response = await self._call(address, admin.ListApiKeys, apb.ListApiKeysRequest(include_revoked=include_revoked))
        return [ApiKeyInfo.from_pb(key) for key in response.keys]

    async def rotate_api_key(self, key_id: str, *, grace: timedelta | float = 0) -> CreatedApiKey:
        """A new secret for the key (its id or prefix); the old one works `grace` longer (up to 7 days)."""
        address, admin = self._admin_stub()
        request = apb.RotateApiKeyRequest(key_id=key_id)
        request.grace_period.FromTimedelta(grace if isinstance(grace, timedelta) else timedelta(seconds=grace))
        response = await self._call(address, admin.RotateApiKey, request)
        return CreatedApiKey(ApiKeyInfo.from_pb(response.key), response.secret)

    async def revoke_api_key(self, key_id: str) -> tuple[ApiKeyInfo, bool]:
        """Revokes the key (its id or prefix); True when it was revoked now, False when it was already."""
        address, admin = self._admin_stub()
        response = await self._call(address, admin.RevokeApiKey, apb.RevokeApiKeyRequest(key_id=key_id))
        return ApiKeyInfo.from_pb(response.key), response.revoked_now

    async def audit_events(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        rpc: str = "",
        key_id: str = "",
        status: str = "",
        resource_id: str = "",
        limit: int = 100,
    ) -> list[AuditEventInfo]:
        """Audited calls, newest first: every change and every refused call. `rpc` is a method name such
        as "SubmitTask"; `status` a code name such as "PERMISSION_DENIED"."""
        address, admin = self._admin_stub()

        async def page(size: int, token: str) -> tuple[list[AuditEventInfo], str]:
            request = apb.ListAuditEventsRequest(
                rpc=rpc, key_id=key_id, status=status, resource_id=resource_id, page_size=size, page_token=token
            )
            if since is not None:
                request.since.FromDatetime(since)
            if until is not None:
                request.until.FromDatetime(until)
            response = await self._call(address, admin.ListAuditEvents, request)
            return [AuditEventInfo.from_pb(event) for event in response.events], response.next_page_token

        return await _collect_pages(page, limit)


def _role_to_pb(role: str) -> str:
    """The Role enum's name for a role such as "viewer" (protobuf takes enum names too)."""
    name = f"ROLE_{role.upper()}"
    try:
        apb.Role.Value(name)
        return name
    except ValueError:
        raise ValueError(
            f"unknown role {role!r}: choose admin, operator, service, submitter, agent or viewer"
        ) from None


Item = TypeVar("Item")
# The servers' largest page.
MAX_PAGE_SIZE = 500


async def _collect_pages(fetch_page: Callable[[int, str], Awaitable[tuple[list[Item], str]]], limit: int) -> list[Item]:
    """Up to `limit` items, following next_page_token from page to page."""
    items: list[Item] = []
    token = ""
    while len(items) < limit:
        page, token = await fetch_page(min(MAX_PAGE_SIZE, limit - len(items)), token)
        items.extend(page)
        if not token:
            break
    return items
