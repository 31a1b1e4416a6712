"""The gate every RPC passes through, except health and reflection.

For each call: `authorization: Bearer <key>` names the key (UNAUTHENTICATED without a live one), the
key's rate limit is taken (RESOURCE_EXHAUSTED with the delay), the service's permission table is
checked (PERMISSION_DENIED), the request is decoded (INVALID_ARGUMENT when it is not the message the
method expects, where gRPC itself would answer INTERNAL), and the caller is made known to the servicer.
Denied calls and calls that change something are written to the audit log; a change whose audit row
cannot be written fails with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import psycopg
from google.protobuf.message import DecodeError, Message

from shared.api_keys import KeyCache, Role, StoredKey
from shared.audit import AuditEvent, AuditLog, AuditUnavailable, trace_id_from_metadata
from shared.callers import Caller, set_current_caller
from shared.config import Config
from shared.database import Pool
from shared.errors import InvalidArgument, status_for
from shared.permissions import MUTATING_RPCS
from shared.rate_limits import RateLimiter, rate_limited_status

logger = logging.getLogger(__name__)

# Probes and tooling must work without a key (Kubernetes gRPC probes cannot send metadata).
OPEN_SERVICE_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
MAX_AUDIT_MESSAGE_LENGTH = 500
# How long a change waits for its audit row before it fails (UNAVAILABLE) instead.
AUDIT_WAIT_SECONDS = 5.0
# Fields that name what a call acted on, looked for in the request and then the response.
_RESOURCE_ID_FIELDS = ("task_id", "agent_id", "key_id", "id_or_prefix")
_RESOURCE_MESSAGE_FIELDS = ("task", "agent", "key")

Permissions = Mapping[str, frozenset[Role]]


class CallRejected(Exception):
    """Raised inside the gate after the call was aborted."""


@dataclass(frozen=True)
class CallOrigin:
    """Where a call came from, read when it starts: once a stream has ended its context must not be
    asked (the underlying call may be gone)."""

    peer: str
    trace_id: str

    @classmethod
    def of(cls, context: grpc.aio.ServicerContext) -> CallOrigin:
        return cls(context.peer() or "", trace_id_from_metadata(context.invocation_metadata()))


def _bearer_secret(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, secret = text.partition(" ")
            if scheme.lower() == "bearer" and secret.strip():
                return secret.strip()
            return None
    return None


def _id_of(message: Any) -> str:
    """A message's own `id` field, or ''."""
    if isinstance(message, Message) and "id" in message.DESCRIPTOR.fields_by_name:
        return str(message.id)  # type: ignore[attr-defined]
    return ""


def _resource_id(message: Any) -> str:
    """The id of the task, agent or key a request or response is about, or ''."""
    if not isinstance(message, Message):
        return ""
    fields = message.DESCRIPTOR.fields_by_name
    for name in _RESOURCE_ID_FIELDS:
        if name in fields and fields[name].type == fields[name].TYPE_STRING and getattr(message, name):
            return str(getattr(message, name))
    for name in _RESOURCE_MESSAGE_FIELDS:
        if name in fields and fields[name].message_type is not None and message.HasField(name):
            if found := _id_of(getattr(message, name)):
                return found
    if "tasks" in fields and fields["tasks"].message_type is not None:
        ids = [found for task in message.tasks if (found := _id_of(task))]  # type: ignore[attr-defined]
        return ",".join(ids[:5]) + (f" (+{len(ids) - 5} more)" if len(ids) > 5 else "")
    return ""


class _AuditedContext:
    """The servicer context as a handler sees it, except that a refusal (`abort`, `abort_with_status`)
    is audited before its status goes out."""

    def __init__(
        self, context: grpc.aio.ServicerContext, audit_refusal: Callable[[grpc.StatusCode, str], Awaitable[None]]
    ) -> None:
        self._context = context
        self._audit_refusal = audit_refusal
        self.refusal_audited = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        await self._audited(code, details)
        await self._context.abort(code, details, trailing_metadata)

    async def abort_with_status(self, status: grpc.Status) -> None:
        await self._audited(status.code, status.details)
        await self._context.abort_with_status(status)

    async def _audited(self, code: grpc.StatusCode, details: str) -> None:
        self.refusal_audited = True
        await self._audit_refusal(code, details)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(
        self,
        keys: KeyCache,
        permissions: Permissions,
        *,
        mutating_rpcs: frozenset[str],
        audit: AuditLog,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        self._keys = keys
        self._permissions = permissions
        self._mutating_rpcs = mutating_rpcs
        self._audit = audit
        self._rate_limiter = rate_limiter
        self._background_writes: set[asyncio.Task[None]] = set()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(OPEN_SERVICE_PREFIXES):
            return handler
        return self._guarded(handler, method)

    def _guarded(self, handler: grpc.RpcMethodHandler, method: str) -> Any:
        """A handler of the same shape that runs the gate first. It takes the raw request bytes
        (no deserializer), so a request that does not decode gets a proper INVALID_ARGUMENT."""
        audited = method.rsplit("/", 1)[-1] in self._mutating_rpcs

        async def guard_unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            origin = CallOrigin.of(context)
            caller = await self._admit(method, context, origin)
            request = await self._decode(raw, handler.request_deserializer, context)
            seen_by_handler: Any = context
            if audited:
                # A refusal is audited before its status goes out, like a success.
                async def audit_refusal(code: grpc.StatusCode, message: str) -> None:
                    await self._record(caller, origin, method, request, None, code, message, wait=False)

                seen_by_handler = _AuditedContext(context, audit_refusal)
            try:
                response = await handler.unary_unary(request, seen_by_handler)
            except BaseException:
                if audited and not seen_by_handler.refusal_audited:
                    await self._record_outcome(caller, origin, method, context, request, None, failed=True)
                raise
            if audited:
                await self._record_outcome(caller, origin, method, context, request, response, failed=False)
            return response

        async def guard_stream(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            origin = CallOrigin.of(context)
            caller = await self._admit(method, context, origin)
            request = await self._decode(raw, handler.request_deserializer, context)
            failed = True
            try:
                async for item in handler.unary_stream(request, context):
                    yield item
                failed = False
            finally:
                # A stream is audited when it ends, with how it ended.
                if audited:
                    await self._record_outcome(
                        caller, origin, method, context, request, None, failed=failed, ended=True
                    )

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(guard_unary, None, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(guard_stream, None, handler.response_serializer)
        raise NotImplementedError("only unary and server-streaming methods are served")

    async def _admit(self, method: str, context: grpc.aio.ServicerContext, origin: CallOrigin) -> Caller:
        """The caller, or the call is aborted (and the denial audited)."""
        secret = _bearer_secret(context.invocation_metadata())
        if secret is None:
            await self._deny(
                context,
                origin,
                method,
                None,
                grpc.StatusCode.UNAUTHENTICATED,
                "missing API key: send metadata 'authorization: Bearer <key>'",
            )
        assert secret is not None
        try:
            key = await self._keys.key_for(secret)
        except psycopg.Error as error:
            logger.error("API key check failed: %s", error)
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "cannot check the API key: the database is unreachable; retry shortly"
            )
            raise CallRejected from error
        if key is None:
            await self._deny(
                context, origin, method, None, grpc.StatusCode.UNAUTHENTICATED, "unknown, expired or revoked API key"
            )
        assert key is not None
        if self._rate_limiter is not None:
            retry_after = self._rate_limiter.acquire(key.id, key.role.value)
            if retry_after is not None:
                status = rate_limited_status(key.role.value, retry_after)
                await self._deny(context, origin, method, key, status.code, status.details, status)
        allowed = self._permissions.get(method, frozenset())
        if key.role not in allowed:
            rpc = method.rsplit("/", 1)[-1]
            await self._deny(
                context,
                origin,
                method,
                key,
                grpc.StatusCode.PERMISSION_DENIED,
                f"role '{key.role}' may not call {rpc}; roles allowed: {', '.join(sorted(allowed)) or 'none'}",
            )
        caller = Caller(key)
        set_current_caller(caller)
        return caller

    async def _deny(
        self,
        context: grpc.aio.ServicerContext,
        origin: CallOrigin,
        method: str,
        key: StoredKey | None,
        code: grpc.StatusCode,
        message: str,
        status: grpc.Status | None = None,
    ) -> None:
        self._record_in_background(self._event(origin, method, key, "", code, message))
        if status is not None:
            await context.abort_with_status(status)
        await context.abort(code, message)
        raise CallRejected

    async def _decode(
        self, raw: bytes, deserializer: Callable[[bytes], Any] | None, context: grpc.aio.ServicerContext
    ) -> Any:
        if deserializer is None:
            return raw
        try:
            return deserializer(raw)
        except (DecodeError, ValueError, TypeError, RecursionError):
            await context.abort_with_status(
                status_for(InvalidArgument("request", "is not a valid protobuf message of the type this RPC takes"))
            )
            raise CallRejected from None

    async def _record_outcome(
        self,
        caller: Caller,
        origin: CallOrigin,
        method: str,
        context: grpc.aio.ServicerContext,
        request: Any,
        response: Any,
        *,
        failed: bool,
        ended: bool = False,
    ) -> None:
        """Audits a call that got through the gate, with the status it ended with. A successful unary
        call whose row cannot be written fails (`ended`: a stream that is over, which can only be logged)."""
        code = context.code()
        if not isinstance(code, grpc.StatusCode):
            code = grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
        details = context.details() or ""
        message = details.decode(errors="replace") if isinstance(details, bytes) else details
        written = await self._record(caller, origin, method, request, response, code, message)
        if not written and not failed and not ended:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the change was made but its audit record could not be written (the database is unreachable); "
                "check the result before retrying",
            )

    async def _record(
        self,
        caller: Caller,
        origin: CallOrigin,
        method: str,
        request: Any,
        response: Any,
        code: grpc.StatusCode,
        message: str,
        *,
        wait: bool = True,
    ) -> bool:
        """Writes the event and waits (a bounded time) for it to be committed; False (and logged) when it
        could not be. Without `wait`, the event is written in the background."""
        event = self._event(origin, method, caller.key, _resource_id(request) or _resource_id(response), code, message)
        if not wait:
            self._record_in_background(event)
            return True
        try:
            async with asyncio.timeout(AUDIT_WAIT_SECONDS):
                await self._audit.record(event)
        except (AuditUnavailable, TimeoutError) as error:
            logger.error("could not audit %s (%s) by key %s: %s", method, code.name, event.key_id, error or "timed out")
            return False
        return True

    def _record_in_background(self, event: AuditEvent) -> None:
        """For refused calls: their answer goes out at once (a refusal must be fast, even when the
        database is down), and their event is written with the next batch. One that cannot be written
        is logged, never dropped silently."""

        async def write() -> None:
            try:
                await self._audit.record(event)
            except AuditUnavailable as error:
                logger.error(
                    "could not audit a refused call: %s %s by key %s: %s",
                    event.rpc,
                    event.status,
                    event.key_id or "(none)",
                    error,
                )

        task = asyncio.create_task(write())
        self._background_writes.add(task)
        task.add_done_callback(self._background_writes.discard)

    @staticmethod
    def _event(
        origin: CallOrigin,
        method: str,
        key: StoredKey | None,
        resource_id: str,
        code: grpc.StatusCode,
        message: str | bytes,
    ) -> AuditEvent:
        text = message.decode(errors="replace") if isinstance(message, bytes) else message
        return AuditEvent(
            at=datetime.now(UTC),
            tenant=key.tenant if key else "",
            key_id=key.id if key else None,
            role=key.role.value if key else None,
            rpc=method,
            resource_id=resource_id[:200],
            status=code.name,
            message=text[:MAX_AUDIT_MESSAGE_LENGTH],
            peer=origin.peer,
            trace_id=origin.trace_id,
        )


@dataclass
class Gate:
    """The interceptor and the audit log it writes to (closed, and so flushed, when the service stops)."""

    interceptor: ApiKeyInterceptor
    audit: AuditLog

    async def close(self) -> None:
        await self.audit.close()


async def open_gate(config: Config, pool: Pool, permissions: Permissions) -> Gate:
    # No lingering: events that arrive while a batch is being written go in the next one, so batches
    # grow with load and a lone call waits only for its own INSERT.
    audit = AuditLog(pool, flush_interval_seconds=0.0)
    await audit.start()
    interceptor = ApiKeyInterceptor(
        KeyCache(pool, config.key_hasher(), config.auth_cache_seconds),
        permissions,
        mutating_rpcs=MUTATING_RPCS,
        audit=audit,
        rate_limiter=RateLimiter(config.rate_limits),
    )
    return Gate(interceptor, audit)
