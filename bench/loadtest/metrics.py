"""The services' own view of a run, from their Prometheus /metrics: calls handled by method and status
code (grpc_server_handled_total) and handling time (grpc_server_handling_seconds), as the difference
between a scrape before the load and one after the drain."""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families

from shared.metrics import code_label

SCRAPE_TIMEOUT_SECONDS = 10.0
# The services label codes as go-grpc-prometheus spells them (Canceled, ResourceExhausted); the report
# uses the status names the clients see (CANCELLED, RESOURCE_EXHAUSTED), so both sides compare.
STATUS_NAMES = {code_label(code): code.name for code in grpc.StatusCode}


@dataclass
class ServerSample:
    """method ("Service/Method") → code → calls, method → [(upper bound s, cumulative count)], and
    method → its grpc_type (unary, server_stream, …)."""

    handled: dict[str, dict[str, float]] = field(default_factory=dict)
    buckets: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=SCRAPE_TIMEOUT_SECONDS) as response:
        text: str = response.read().decode()
    return text


def parse(texts: Sequence[str]) -> ServerSample:
    """One sample from the /metrics texts of several services (their methods do not overlap)."""
    sample = ServerSample()
    for text in texts:
        for family in text_string_to_metric_families(text):
            for metric in family.samples:
                labels = metric.labels
                if "grpc_method" not in labels:
                    continue
                method = f"{labels['grpc_service'].rsplit('.', 1)[-1]}/{labels['grpc_method']}"
                sample.types[method] = labels.get("grpc_type", "")
                if metric.name == "grpc_server_handled_total":
                    codes = sample.handled.setdefault(method, {})
                    code = STATUS_NAMES.get(labels["grpc_code"], labels["grpc_code"])
                    codes[code] = codes.get(code, 0.0) + metric.value
                elif metric.name == "grpc_server_handling_seconds_bucket":
                    sample.buckets.setdefault(method, []).append((float(labels["le"]), metric.value))
    for bounds in sample.buckets.values():
        bounds.sort()
    return sample


def difference(after: ServerSample, before: ServerSample) -> ServerSample:
    """What happened between two samples of the same processes (counters only grow)."""
    handled = {
        method: {code: count - before.handled.get(method, {}).get(code, 0.0) for code, count in codes.items()}
        for method, codes in after.handled.items()
    }
    buckets = {}
    for method, bounds in after.buckets.items():
        earlier = dict(before.buckets.get(method, []))
        buckets[method] = [(bound, count - earlier.get(bound, 0.0)) for bound, count in bounds]
    return ServerSample(
        handled={method: codes for method, codes in handled.items() if any(codes.values())},
        buckets={method: bounds for method, bounds in buckets.items() if bounds and bounds[-1][1] > 0},
        types=after.types,
    )


def histogram_quantile(bounds: Sequence[tuple[float, float]], fraction: float) -> float:
    """Prometheus' estimate: linear within the bucket holding the rank; the last finite bound when the
    rank falls in the +Inf bucket; NaN with no observations. `bounds` are sorted, cumulative."""
    if not bounds or bounds[-1][1] <= 0:
        return math.nan
    rank = fraction * bounds[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in bounds:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def server_figures(sample: ServerSample) -> dict[str, dict[str, Any]]:
    """Per method: its type, calls by code and estimated p95/p99 handling time in ms (for a stream, the
    time it stayed open)."""
    figures: dict[str, dict[str, Any]] = {}
    for method in sorted(set(sample.handled) | set(sample.buckets)):
        bounds = sample.buckets.get(method, [])
        figures[method] = {
            "type": sample.types.get(method, ""),
            "codes": {code: int(count) for code, count in sorted(sample.handled.get(method, {}).items()) if count},
            "p95_ms": histogram_quantile(bounds, 0.95) * 1000,
            "p99_ms": histogram_quantile(bounds, 0.99) * 1000,
        }
    return figures
