"""What the SDK raises: one error type for every refused call, and the handler's way to say "don't retry"."""

from __future__ import annotations

import grpc


class PermanentError(Exception):
    """Raise from a handler when retrying cannot help (bad input, a rule the payload breaks): the task
    is FAILED at once with this message. Any other exception fails the attempt as retryable, so the
    task runs again while it has attempts left."""


class ArbiterError(Exception):
    """A call the service refused or could not complete, with its gRPC status code and message,
    e.g. `NOT_FOUND: task 5f0c… does not exist`."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def from_rpc_error(cls, error: grpc.aio.AioRpcError, address: str) -> ArbiterError:
        code = error.code()
        message = error.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE:
            message = f"cannot reach {address}: {message}"
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            message = f"{address} did not answer in time: {message}"
        return cls(code, message)


class WaitTimeout(TimeoutError):
    """`Client.wait` gave up before the task finished; the task itself goes on."""
