"""What a load test run found, from what the clients, the services' /metrics and the database recorded:
pure functions, so the arithmetic and the verdict are tested without a stack."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Task states (tasks.state) from which a task never moves again.
FINAL_STATES = frozenset({"completed", "failed", "cancelled"})
OK = "OK"
# The service said no on purpose (a rate limit): the limiter working, not the service failing.
REFUSAL_CODES = frozenset({"RESOURCE_EXHAUSTED"})
# Codes that mean the service broke or could not answer in time, as opposed to judging the call: those
# the ArbiterErrorRatioHigh alert counts (deploy/monitoring/prometheus-rules.yaml), and UNIMPLEMENTED.
SERVER_ERROR_CODES = frozenset(
    {"UNKNOWN", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "DEADLINE_EXCEEDED", "UNIMPLEMENTED"}
)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest rank: the smallest value with at least `fraction` of the values at or below it."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class RpcFigures:
    """One RPC as its callers saw it: latency over every call (failed ones too), and how calls ended."""

    rpc: str
    calls: int
    codes: dict[str, int]
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @property
    def errors(self) -> int:
        return self.calls - self.codes.get(OK, 0)


def rpc_figures(
    latencies_ms: Mapping[str, Sequence[float]], codes: Mapping[str, Mapping[str, int]]
) -> list[RpcFigures]:
    """Per RPC, sorted by name; `codes` counts each RPC's calls by status code name."""
    figures = []
    for rpc in sorted(set(latencies_ms) | set(codes)):
        values = sorted(latencies_ms.get(rpc, ()))
        by_code = {code: count for code, count in sorted(codes.get(rpc, {}).items()) if count}
        figures.append(
            RpcFigures(
                rpc=rpc,
                calls=sum(by_code.values()),
                codes=by_code,
                p50_ms=percentile(values, 0.50),
                p95_ms=percentile(values, 0.95),
                p99_ms=percentile(values, 0.99),
                max_ms=values[-1] if values else math.nan,
            )
        )
    return figures


def merge_counts(parts: Iterable[Mapping[str, Mapping[str, int]]]) -> dict[str, dict[str, int]]:
    merged: dict[str, Counter[str]] = {}
    for part in parts:
        for rpc, by_code in part.items():
            merged.setdefault(rpc, Counter()).update(by_code)
    return {rpc: dict(counter) for rpc, counter in merged.items()}


@dataclass(frozen=True)
class ErrorSummary:
    calls: int
    refused: int
    server_errors: int
    other_errors: int

    @property
    def errors(self) -> int:
        return self.refused + self.server_errors + self.other_errors

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0


def summarise_errors(rpcs: Iterable[RpcFigures]) -> ErrorSummary:
    calls = refused = server = other = 0
    for figures in rpcs:
        calls += figures.calls
        for code, count in figures.codes.items():
            if code == OK:
                continue
            if code in REFUSAL_CODES:
                refused += count
            elif code in SERVER_ERROR_CODES:
                server += count
            else:
                other += count
    return ErrorSummary(calls, refused, server, other)


def server_side_errors(handled: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, int]]:
    """From grpc_server_handled_total deltas (method → code → count): the calls that ended with a server
    error code, by method."""
    found = {}
    for method, by_code in sorted(handled.items()):
        errors = {code: int(count) for code, count in by_code.items() if code in SERVER_ERROR_CODES and count}
        if errors:
            found[method] = errors
    return found


@dataclass(frozen=True)
class TaskAccount:
    """Every task id a client was given, looked up in the database after the drain."""

    submitted: int
    by_state: dict[str, int]
    lost: list[str] = field(default_factory=list)
    stuck: dict[str, str] = field(default_factory=dict)


def account_tasks(submitted_ids: Iterable[str], states: Mapping[str, str]) -> TaskAccount:
    """`states` maps the ids found in the database to their state. An id the database does not hold is
    lost; one in a state it can still leave (pending, assigned, running) is stuck."""
    ids = sorted(set(submitted_ids))
    lost = [task_id for task_id in ids if task_id not in states]
    stuck = {task_id: states[task_id] for task_id in ids if task_id in states and states[task_id] not in FINAL_STATES}
    by_state = dict(sorted(Counter(states[task_id] for task_id in ids if task_id in states).items()))
    return TaskAccount(submitted=len(ids), by_state=by_state, lost=lost, stuck=stuck)


SHOWN_IDS = 10


def failures(
    errors: ErrorSummary,
    server_errors: Mapping[str, Mapping[str, int]],
    account: TaskAccount,
    max_error_rate: float,
) -> list[str]:
    """Why the run fails, one line each; none when it passes."""
    found = []
    if account.lost:
        shown = ", ".join(account.lost[:SHOWN_IDS])
        more = f" and {len(account.lost) - SHOWN_IDS} more" if len(account.lost) > SHOWN_IDS else ""
        found.append(f"{len(account.lost)} task(s) lost (a client holds the id, the database does not): {shown}{more}")
    if account.stuck:
        listed = list(account.stuck.items())[:SHOWN_IDS]
        shown = ", ".join(f"{task_id} ({state})" for task_id, state in listed)
        more = f" and {len(account.stuck) - SHOWN_IDS} more" if len(account.stuck) > SHOWN_IDS else ""
        found.append(f"{len(account.stuck)} task(s) stuck in a non-final state after the drain: {shown}{more}")
    if errors.server_errors:
        found.append(f"{errors.server_errors} call(s) failed with a server error code on the client side")
    for method, by_code in server_errors.items():
        codes = ", ".join(f"{code} ×{count}" for code, count in sorted(by_code.items()))
        found.append(f"the services answered {method} with {codes} (grpc_server_handled_total)")
    if errors.error_rate > max_error_rate:
        found.append(f"error rate {errors.error_rate:.4%} is above the threshold {max_error_rate:.4%}")
    return found


def _milliseconds(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.1f}"


def rpc_table(rpcs: Sequence[RpcFigures], seconds: float) -> str:
    header = f"{'RPC':<18} {'calls':>8} {'calls/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}  errors"
    lines = [header, "-" * len(header)]
    for figures in rpcs:
        errors = ", ".join(f"{code} {count}" for code, count in figures.codes.items() if code != OK) or "0"
        rate = figures.calls / seconds if seconds > 0 else math.nan
        times = " ".join(
            f"{_milliseconds(value):>8}" for value in (figures.p50_ms, figures.p95_ms, figures.p99_ms, figures.max_ms)
        )
        lines.append(f"{figures.rpc:<18} {figures.calls:>8} {rate:>8.1f} {times}  {errors}")
    return "\n".join(lines)


def server_table(server: Mapping[str, Mapping[str, Any]]) -> str:
    """method → {"type", "codes": {code: count}, "p95_ms", "p99_ms"} from /metrics (bucket estimates)."""
    header = f"{'method (server side)':<36} {'handled':>8} {'~p95 ms':>8} {'~p99 ms':>8}  codes"
    lines = [header, "-" * len(header)]
    for method, figures in sorted(server.items()):
        codes = figures["codes"]
        handled = int(sum(codes.values()))
        shown = ", ".join(f"{code} {int(count)}" for code, count in sorted(codes.items()) if count)
        kind = "  (a stream: time open)" if figures.get("type", "").endswith("stream") else ""
        lines.append(
            f"{method:<36} {handled:>8} {_milliseconds(figures.get('p95_ms')):>8} "
            f"{_milliseconds(figures.get('p99_ms')):>8}  {shown}{kind}"
        )
    return "\n".join(lines)
