"""The API-key check every RPC passes through, except health and reflection.

`authorization: Bearer <key>` metadata names the caller; the service's permission table says
which roles may call which method.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
import psycopg

from shared.api_keys import KeyCache, Role

logger = logging.getLogger(__name__)

# Probes and tooling must work without a key (Kubernetes gRPC probes cannot send metadata).
OPEN_SERVICE_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

Permissions = Mapping[str, frozenset[Role]]


def _bearer_secret(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, secret = text.partition(" ")
            if scheme.lower() == "bearer" and secret.strip():
                return secret.strip()
            return None
    return None


def _rejecting_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> Any:
    """A handler of the same shape as `handler` that only fails with `code`."""

    async def reject_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def reject_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            reject_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            reject_stream, handler.request_deserializer, handler.response_serializer
        )
    raise NotImplementedError("only unary and server-streaming methods are served")


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, keys: KeyCache, permissions: Permissions) -> None:
        self._keys = keys
        self._permissions = permissions

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(OPEN_SERVICE_PREFIXES):
            return handler
        secret = _bearer_secret(handler_call_details.invocation_metadata)
        if secret is None:
            return _rejecting_handler(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "missing API key: send metadata 'authorization: Bearer <key>'",
            )
        try:
            role = await self._keys.role_for(secret)
        except psycopg.Error as error:
            logger.error("API key check failed: %s", error)
            return _rejecting_handler(
                handler, grpc.StatusCode.UNAVAILABLE, "cannot check the API key: the database is unreachable"
            )
        if role is None:
            return _rejecting_handler(handler, grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked API key")
        allowed = self._permissions.get(method, frozenset())
        if role not in allowed:
            rpc = method.rsplit("/", 1)[-1]
            return _rejecting_handler(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"role '{role}' may not call {rpc}; roles allowed: {', '.join(sorted(allowed)) or 'none'}",
            )
        return handler
