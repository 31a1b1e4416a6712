"""Per-key rate limits: a token bucket for each API key, sized by the key's role.

Decisions a reader might otherwise guess at:
- A role with no limit (absent from the mapping, e.g. `agent=unlimited`, or a role added later
  without a default) is not limited. Refusing every call of a role is what permissions are for;
  a rate limiter that did it by accident would be an outage.
- A rate must be above 0 and a burst at least 1: either would otherwise refuse calls forever, so
  the setting is rejected at start instead (write `role=unlimited` to turn a limit off).
- A refused call takes no tokens, so a client that retries too early is not pushed further back.
- A call costing more than the burst is charged the whole burst: it waits for a full bucket
  rather than never being allowed.
- Buckets live in this process only: N replicas behind a balancer allow N times the rate.

Not thread-safe: the services call it from their one asyncio event loop.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

# The values of shared.api_keys.Role; kept as strings so that config parsing needs no database code.
ROLES = ("admin", "operator", "submitter", "agent", "viewer", "service")

UNLIMITED = "unlimited"

# Per key, per process. An agent key is often shared by a whole pool: 500 agents heartbeat 100 times
# a second, and report progress and completions to the orchestrator at a few hundred a second, with
# a reconnect storm of registrations and streams on top. The orchestrators' one `service` key carries
# every outcome report and agent look-up of the fleet. Admins, operators and viewers are people or
# their dashboards; submitters batch with SubmitTasks and watch each task they wait on.
DEFAULT_RATE_LIMITS = "admin=50/200,operator=50/200,submitter=200/1000,agent=1000/2000,viewer=50/200,service=2000/10000"

# Forgetting an idle bucket that has refilled is exact (a new bucket starts full), so sweeping them is
# free; the cap bounds memory even if every key is busy, at the price of a fresh burst for the key
# evicted (the least recently seen).
SWEEP_SECONDS = 60.0
MAX_TRACKED_KEYS = 100_000

# Refill arithmetic in floating point may land a hair short of the cost after exactly the delay given.
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class BucketLimit:
    """Sustained calls per second, and how many may come at once after a quiet spell."""

    rate_per_second: float
    burst: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate_per_second) and self.rate_per_second > 0):
            raise ValueError(f"rate {self.rate_per_second:g}/s: expected a number above 0 (`unlimited` turns it off)")
        if not (math.isfinite(self.burst) and self.burst >= 1):
            raise ValueError(f"burst {self.burst:g}: expected a number of at least 1")

    def __str__(self) -> str:
        return f"{self.rate_per_second:g}/{self.burst:g}"


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float
    # When the bucket will be full again if left alone: from then on it can be forgotten.
    full_at: float


class RateLimiter:
    """One token bucket per API key id; each call of `acquire` takes `cost` tokens or says how long to wait."""

    def __init__(
        self,
        limits: Mapping[str, BucketLimit],
        clock: Callable[[], float] = time.monotonic,
        max_tracked_keys: int = MAX_TRACKED_KEYS,
        sweep_seconds: float = SWEEP_SECONDS,
    ) -> None:
        self._limits = dict(limits)
        self._clock = clock
        self._max_tracked_keys = max_tracked_keys
        self._sweep_seconds = sweep_seconds
        # Least recently used first, so the cap evicts the key idle longest.
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._next_sweep = clock() + sweep_seconds

    @property
    def tracked_keys(self) -> int:
        return len(self._buckets)

    def acquire(self, key_id: str, role: str, cost: float = 1.0) -> float | None:
        """None when allowed; otherwise the seconds until the call would be allowed."""
        if cost <= 0:
            raise ValueError(f"cost {cost:g}: expected a number above 0")
        limit = self._limits.get(role)
        if limit is None:
            return None
        now = self._clock()
        if now >= self._next_sweep:
            self._forget_full_buckets(now)
        cost = min(cost, limit.burst)
        bucket = self._buckets.pop(key_id, None)
        if bucket is None:
            tokens = limit.burst
        else:
            tokens = min(limit.burst, bucket.tokens + max(0.0, now - bucket.updated) * limit.rate_per_second)
        wait: float | None = None
        if tokens + _TOLERANCE >= cost:
            tokens = max(0.0, tokens - cost)
        else:
            wait = (cost - tokens) / limit.rate_per_second
        self._buckets[key_id] = _Bucket(tokens, now, now + (limit.burst - tokens) / limit.rate_per_second)
        while len(self._buckets) > self._max_tracked_keys:
            self._buckets.popitem(last=False)
        return wait

    def _forget_full_buckets(self, now: float) -> None:
        for key_id in [key_id for key_id, bucket in self._buckets.items() if bucket.full_at <= now]:
            del self._buckets[key_id]
        self._next_sweep = now + self._sweep_seconds


def parse_rate_limits(text: str) -> dict[str, BucketLimit]:
    """`role=rate/burst` pairs separated by commas (`agent=1000/2000,viewer=unlimited`); roles not
    named keep their default. Raises ValueError naming the pair that is wrong."""
    limits = _parse_pairs(DEFAULT_RATE_LIMITS)
    limits.update(_parse_pairs(text))
    return {role: limit for role, limit in limits.items() if limit is not None}


def _parse_pairs(text: str) -> dict[str, BucketLimit | None]:
    parsed: dict[str, BucketLimit | None] = {}
    for pair in (part.strip() for part in text.split(",")):
        if not pair:
            continue
        role, separator, value = (piece.strip() for piece in pair.partition("="))
        if not separator:
            raise ValueError(f"'{pair}': expected role=rate/burst, e.g. agent=1000/2000")
        if role not in ROLES:
            raise ValueError(f"'{pair}': unknown role '{role}'; roles are {', '.join(ROLES)}")
        if role in parsed:
            raise ValueError(f"'{pair}': role '{role}' is given twice")
        try:
            parsed[role] = None if value.lower() == UNLIMITED else _bucket_limit(value)
        except ValueError as error:
            raise ValueError(f"'{pair}': {error}") from None
    return parsed


def _bucket_limit(value: str) -> BucketLimit:
    rate, separator, burst = value.partition("/")
    try:
        if not separator:
            raise ValueError
        numbers = float(rate), float(burst)
    except ValueError:
        raise ValueError("expected calls per second/burst, e.g. 1000/2000, or `unlimited`") from None
    # BucketLimit names the number that is out of range.
    return BucketLimit(*numbers)


def rate_limited_status(role: str, retry_after_seconds: float) -> grpc.Status:
    """RESOURCE_EXHAUSTED with a message a person can act on and google.rpc.RetryInfo (retry_delay) in
    the details."""
    # Rounded up to the millisecond: a client that waits exactly the delay given must not be refused.
    delay_ms = max(1, math.ceil(retry_after_seconds * 1000))
    retry_delay = duration_pb2.Duration()
    retry_delay.FromMilliseconds(delay_ms)
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=retry_delay))
    status = status_pb2.Status(
        code=code_pb2.RESOURCE_EXHAUSTED,
        message=(
            f"rate limit of this API key (role '{role}') exceeded: retry in {delay_ms / 1000:.3f} s. "
            "Slow down or batch calls (e.g. SubmitTasks); an admin can raise the role's limit "
            "(ARBITER_RATE_LIMITS)."
        ),
        details=[detail],
    )
    return rpc_status.to_status(status)
