"""Domain errors, and the one table that maps them to gRPC status codes.

Domain code raises these; servicers never build status codes themselves.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import psycopg
import psycopg.errors
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

logger = logging.getLogger(__name__)


class ArbiterError(Exception):
    """An error a caller can act on; its message is shown to them as is."""


class InvalidArgument(ArbiterError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message


class NotFound(ArbiterError):
    pass


class FailedPrecondition(ArbiterError):
    pass


class PermissionDenied(ArbiterError):
    pass


class AlreadyExists(ArbiterError):
    pass


class Unavailable(ArbiterError):
    pass


class Aborted(ArbiterError):
    pass


class Internal(ArbiterError):
    """A fault of this deployment (e.g. misconfiguration), not of the caller's request."""


STATUS_BY_ERROR: dict[type[ArbiterError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Aborted: grpc.StatusCode.ABORTED,
    Internal: grpc.StatusCode.INTERNAL,
}


def _database_error(error: psycopg.Error) -> ArbiterError:
    """A lost connection is worth retrying; text PostgreSQL cannot store is the caller's to fix;
    anything else is a fault of this server, logged in full."""
    if isinstance(error, psycopg.errors.UntranslatableCharacter) or (
        isinstance(error, psycopg.DataError) and "NUL (0x00)" in str(error)
    ):
        return InvalidArgument("request", "a text field contains a NUL character (\\u0000), which cannot be stored")
    # InterfaceError: a pooled connection the server closed (e.g. it restarted) was used.
    if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
        logger.warning("database unavailable: %s", error)
        return Unavailable("the database is unavailable; retry shortly")
    logger.exception("database error", exc_info=error)
    return Internal("internal database error; see the server log")


def status_for(error: ArbiterError) -> grpc.Status:
    code = STATUS_BY_ERROR[type(error)]
    status = status_pb2.Status(code=code.value[0], message=str(error))
    if isinstance(error, InvalidArgument):
        # Field-level detail for clients that read google.rpc.BadRequest.
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=error.field, description=error.description)
                ]
            )
        )
        status.details.append(detail)
    return rpc_status.to_status(status)


Request = TypeVar("Request")
Response = TypeVar("Response")


def unary_errors(
    method: Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Response]],
) -> Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Response]]:
    """Turns domain errors raised by a unary servicer method into their gRPC status."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Request, context: grpc.aio.ServicerContext) -> Response:
        try:
            return await method(self, request, context)
        except ArbiterError as error:
            await context.abort_with_status(status_for(error))
            raise AssertionError("abort_with_status returned") from error
        except psycopg.Error as error:
            await context.abort_with_status(status_for(_database_error(error)))
            raise AssertionError("abort_with_status returned") from error

    return wrapper


def stream_errors(
    method: Callable[[Any, Request, grpc.aio.ServicerContext], AsyncIterator[Response]],
) -> Callable[[Any, Request, grpc.aio.ServicerContext], AsyncIterator[Response]]:
    """Turns domain errors raised by a server-streaming servicer method into their gRPC status."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Request, context: grpc.aio.ServicerContext) -> AsyncIterator[Response]:
        try:
            async for item in method(self, request, context):
                yield item
        except ArbiterError as error:
            await context.abort_with_status(status_for(error))
        except psycopg.Error as error:
            await context.abort_with_status(status_for(_database_error(error)))

    return wrapper
