"""`python -m shared.healthcheck HOST:PORT [SERVICE]`: exit 0 when the gRPC health service there answers
SERVING for SERVICE ("" by default: the process as a whole), 1 otherwise. The container image's
HEALTHCHECK; Kubernetes uses its native gRPC probes instead."""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_SECONDS = 2.0


def check(address: str, service: str = "") -> str | None:
    """None when SERVING; otherwise what was wrong, for a person to read."""
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_SECONDS
            )
        except grpc.RpcError as error:
            return f"{address}: {error.code().name}: {error.details()}"
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        return f"{address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)}"
    return None


def main(arguments: list[str]) -> int:
    if not 1 <= len(arguments) <= 2:
        print("usage: python -m shared.healthcheck HOST:PORT [SERVICE]", file=sys.stderr)
        return 2
    problem = check(*arguments)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
