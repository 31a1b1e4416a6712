"""What `arbiter smoke` asks of a deployment besides its API: grpc.health.v1, server reflection, and the
Prometheus endpoint. Each probe returns a short line saying what held, or raises `CheckFailed`."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from arbiter.errors import ArbiterError

# Sample name and labels -> value.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
HANDLED = "grpc_server_handled_total"


class CheckFailed(Exception):
    """A check that did not hold: `reason` starts with a word in capitals saying what kind (a gRPC
    status name, NOT_SERVING, HTTP_404…), then what was seen and what it means."""


async def check_health(channel: grpc.aio.Channel, address: str, service_names: Sequence[str], timeout: float) -> str:
    """Every name SERVING on grpc.health.v1 Check: "" (the process) and each service's own name (ready).
    A service just started may not be ready yet (the orchestrator waits for the registry's agent feed):
    one that is not is watched until it is, for most of `timeout`."""
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", *service_names):
        try:
            response = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=timeout)
            if response.status != health_pb2.HealthCheckResponse.SERVING:
                await _until_serving(health, name, address, timeout * WATCH_SHARE)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise CheckFailed(
                    f"NOT_FOUND: the health service at {address} does not know {name}: is this the right "
                    "service's port?"
                ) from None
            raise ArbiterError.from_rpc_error(error, address) from None
    return "SERVING: " + ", ".join(name or "overall" for name in ("", *service_names))


# Of a step's deadline, how long a service that is not ready yet is watched (the rest is for saying so).
WATCH_SHARE = 0.9


async def _until_serving(health: health_pb2_grpc.HealthStub, name: str, address: str, seconds: float) -> None:
    """Returns once Watch says SERVING; CheckFailed with the last status after `seconds`."""
    status = health_pb2.HealthCheckResponse.UNKNOWN
    call = health.Watch(health_pb2.HealthCheckRequest(service=name))
    try:
        async with asyncio.timeout(seconds):
            async for response in call:
                status = response.status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
    except TimeoutError:
        pass
    finally:
        call.cancel()
    status_name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    raise CheckFailed(
        f"{status_name}: {name or 'the process'} is still {status_name} at {address} after {seconds:g} s (a "
        "service is SERVING only while its database answers, and the orchestrator only while its link to the "
        "registry is up; see its log)"
    )


async def check_reflection(channel: grpc.aio.Channel, address: str, expected: Iterable[str], timeout: float) -> str:
    """Server reflection (v1alpha, what grpcurl uses) lists every expected service."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=timeout)
    try:
        response = await call.read()
    except grpc.aio.AioRpcError as error:
        raise ArbiterError.from_rpc_error(error, address) from None
    finally:
        call.cancel()
    if response is grpc.aio.EOF or not response.HasField("list_services_response"):
        raise CheckFailed(f"UNKNOWN: reflection at {address} did not list its services")
    listed = {service.name for service in response.list_services_response.service}
    missing = sorted(set(expected) - listed)
    if missing:
        raise CheckFailed(
            f"MISSING: reflection at {address} lists {', '.join(sorted(listed)) or 'nothing'}, "
            f"not {', '.join(missing)}: is this the right service's port?"
        )
    return "lists " + ", ".join(sorted(expected))


@dataclass(frozen=True)
class Call:
    """One RPC as the gRPC server metrics label it."""

    service: str
    method: str
    kind: str = "unary"

    def labels(self, code: str = "OK") -> frozenset[tuple[str, str]]:
        return frozenset(
            {
                ("grpc_type", self.kind),
                ("grpc_service", self.service),
                ("grpc_method", self.method),
                ("grpc_code", code),
            }
        )


def scrape(url: str, timeout: float) -> Samples:
    """The samples at `url` (Prometheus text format); CheckFailed saying why when there are none."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body: bytes = response.read()
    except urllib.error.HTTPError as error:
        raise CheckFailed(
            f"HTTP_{error.code}: {url} answered {error.code} {error.reason}: is it the service's "
            "ARBITER_METRICS_ADDR, path /metrics?"
        ) from None
    except (urllib.error.URLError, OSError) as error:
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        raise CheckFailed(f"UNREACHABLE: cannot fetch {url}: {reason}") from None
    try:
        families = list(text_string_to_metric_families(body.decode("utf-8", errors="replace")))
    except ValueError as error:
        raise CheckFailed(f"UNPARSABLE: {url} did not answer in the Prometheus text format: {error}") from None
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in families
        for sample in family.samples
    }


async def scrape_quietly(url: str, timeout: float) -> Samples:
    """The samples now, or none when they cannot be read (the metrics step says why, later)."""
    try:
        return await asyncio.to_thread(scrape, url, timeout)
    except CheckFailed:
        return {}


async def check_calls_counted(url: str, before: Samples, calls: Sequence[Call], timeout: float) -> str:
    """The endpoint parses and its grpc_server_handled_total counted each of `calls` as OK since `before`."""
    after = await asyncio.to_thread(scrape, url, timeout)
    if not any(name == HANDLED for name, _ in after):
        raise CheckFailed(f"NO_GRPC_METRICS: {url} has no {HANDLED}: is it an Arbiter service's metrics endpoint?")
    grown = []
    for call in calls:
        key = (HANDLED, call.labels())
        growth = after.get(key, 0.0) - before.get(key, 0.0)
        if growth < 1:
            raise CheckFailed(
                f"NOT_COUNTED: {HANDLED} at {url} did not count the smoke's {call.method} call (OK): these "
                "metrics come from another process than the one that served it (with several replicas, "
                "port-forward the gRPC and metrics ports of one pod)"
            )
        grown.append(f"{call.method} +{growth:g}")
    return f"{HANDLED} counted " + ", ".join(grown)
