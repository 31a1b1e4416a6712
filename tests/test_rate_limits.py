"""Per-key token buckets: bursts, refill, independence of keys, per-role limits, the retry delay, bounded
memory, the ARBITER_RATE_LIMITS format, and the status a refused call gets."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from shared.api_keys import Role
from shared.config import Config, ConfigError
from shared.rate_limits import (
    DEFAULT_RATE_LIMITS,
    ROLES,
    BucketLimit,
    RateLimiter,
    parse_rate_limits,
    rate_limited_status,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def allowed_in_a_row(limiter: RateLimiter, key_id: str, role: str) -> int:
    count = 0
    while limiter.acquire(key_id, role) is None:
        count += 1
        assert count < 100_000, "never refused"
    return count


def test_a_fresh_key_may_make_a_whole_burst_at_once_and_no_more(clock: FakeClock) -> None:
    limiter = RateLimiter({"agent": BucketLimit(rate_per_second=10, burst=25)}, clock)
    assert allowed_in_a_row(limiter, "key-1", "agent") == 25


def test_tokens_come_back_at_the_rate_up_to_the_burst(clock: FakeClock) -> None:
    limiter = RateLimiter({"agent": BucketLimit(rate_per_second=10, burst=25)}, clock)
    allowed_in_a_row(limiter, "key-1", "agent")
    clock.advance(0.5)
    assert allowed_in_a_row(limiter, "key-1", "agent") == 5
    clock.advance(3600)
    assert allowed_in_a_row(limiter, "key-1", "agent") == 25


def test_one_key_using_up_its_bucket_leaves_other_keys_alone(clock: FakeClock) -> None:
    limiter = RateLimiter({"agent": BucketLimit(rate_per_second=1, burst=3)}, clock)
    allowed_in_a_row(limiter, "busy", "agent")
    assert limiter.acquire("quiet", "agent") is None
    assert allowed_in_a_row(limiter, "other", "agent") == 3


def test_each_role_gets_its_own_limit(clock: FakeClock) -> None:
    limiter = RateLimiter(
        {"viewer": BucketLimit(rate_per_second=1, burst=2), "service": BucketLimit(rate_per_second=1, burst=50)}, clock
    )
    assert allowed_in_a_row(limiter, "dashboard", "viewer") == 2
    assert allowed_in_a_row(limiter, "orchestrator", "service") == 50


def test_a_role_without_a_limit_is_never_refused(clock: FakeClock) -> None:
    limiter = RateLimiter({"viewer": BucketLimit(rate_per_second=1, burst=1)}, clock)
    for _ in range(10_000):
        assert limiter.acquire("admin-key", "admin") is None
    assert limiter.tracked_keys == 0


def test_the_retry_delay_is_exactly_when_the_call_would_be_allowed(clock: FakeClock) -> None:
    limiter = RateLimiter({"submitter": BucketLimit(rate_per_second=4, burst=2)}, clock)
    allowed_in_a_row(limiter, "key-1", "submitter")
    delay = limiter.acquire("key-1", "submitter")
    assert delay == pytest.approx(0.25)
    assert delay is not None
    clock.advance(delay * 0.99)
    assert limiter.acquire("key-1", "submitter") == pytest.approx(0.25 * 0.01)
    clock.advance(delay * 0.01)
    assert limiter.acquire("key-1", "submitter") is None


def test_a_refused_call_takes_no_tokens(clock: FakeClock) -> None:
    limiter = RateLimiter({"agent": BucketLimit(rate_per_second=1, burst=1)}, clock)
    assert limiter.acquire("key-1", "agent") is None
    for _ in range(100):
        assert limiter.acquire("key-1", "agent") == pytest.approx(1.0)
    clock.advance(1.0)
    assert limiter.acquire("key-1", "agent") is None


def test_a_costly_call_waits_for_enough_tokens(clock: FakeClock) -> None:
    limiter = RateLimiter({"submitter": BucketLimit(rate_per_second=10, burst=100)}, clock)
    assert limiter.acquire("key-1", "submitter", cost=60) is None
    assert limiter.acquire("key-1", "submitter", cost=60) == pytest.approx(2.0)


def test_a_call_costing_more_than_the_burst_is_allowed_on_a_full_bucket(clock: FakeClock) -> None:
    limiter = RateLimiter({"submitter": BucketLimit(rate_per_second=10, burst=100)}, clock)
    assert limiter.acquire("key-1", "submitter", cost=500) is None
    assert limiter.acquire("key-1", "submitter", cost=500) == pytest.approx(10.0)


def test_buckets_that_have_refilled_are_forgotten(clock: FakeClock) -> None:
    limiter = RateLimiter({"agent": BucketLimit(rate_per_second=10, burst=20)}, clock, sweep_seconds=60)
    for number in range(10_000):
        limiter.acquire(f"key-{number}", "agent")
    limiter.acquire("busy", "agent", cost=20)
    assert limiter.tracked_keys == 10_001
    clock.advance(61)
    limiter.acquire("busy", "agent")
    assert limiter.tracked_keys == 1


def test_a_bucket_still_refilling_is_remembered_across_sweeps(clock: FakeClock) -> None:
    limiter = RateLimiter({"agent": BucketLimit(rate_per_second=0.01, burst=2)}, clock, sweep_seconds=60)
    allowed_in_a_row(limiter, "slow", "agent")
    clock.advance(61)
    limiter.acquire("someone-else", "agent")
    assert limiter.tracked_keys == 2
    assert limiter.acquire("slow", "agent") == pytest.approx(100 - 61)


def test_tracked_keys_never_exceed_the_cap_even_when_all_are_busy(clock: FakeClock) -> None:
    limiter = RateLimiter({"agent": BucketLimit(rate_per_second=1, burst=5)}, clock, max_tracked_keys=100)
    for number in range(5_000):
        limiter.acquire(f"key-{number}", "agent")
        assert limiter.tracked_keys <= 100
    # The most recently seen keys are the ones kept.
    assert limiter.acquire("key-4999", "agent", cost=5) == pytest.approx(1.0)


def test_the_roles_are_the_api_key_roles() -> None:
    assert set(ROLES) == {role.value for role in Role}


def test_the_defaults_give_every_role_a_limit() -> None:
    assert set(parse_rate_limits("")) == set(ROLES)
    assert parse_rate_limits("") == parse_rate_limits(DEFAULT_RATE_LIMITS)


def test_roles_named_in_the_setting_override_only_their_own_default() -> None:
    defaults = parse_rate_limits("")
    limits = parse_rate_limits(" agent = 5/10 , viewer=0.5/1 ")
    assert limits["agent"] == BucketLimit(rate_per_second=5, burst=10)
    assert limits["viewer"] == BucketLimit(rate_per_second=0.5, burst=1)
    assert limits["submitter"] == defaults["submitter"]


def test_unlimited_turns_a_roles_limit_off() -> None:
    limits = parse_rate_limits("admin=unlimited")
    assert "admin" not in limits
    assert "agent" in limits


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("agnet=10/20", "unknown role 'agnet'"),
        ("agent=10", "expected calls per second/burst"),
        ("agent=ten/20", "expected calls per second/burst"),
        ("agent", "expected role=rate/burst"),
        ("agent=0/20", "rate 0/s: expected a number above 0 (`unlimited` turns it off)"),
        ("agent=-1/20", "rate -1/s"),
        ("agent=10/0.5", "burst 0.5: expected a number of at least 1"),
        ("agent=nan/20", "rate nan/s"),
        ("agent=10/inf", "burst inf"),
        ("agent=1/2,agent=3/4", "role 'agent' is given twice"),
    ],
)
def test_a_malformed_setting_is_refused_naming_the_pair(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=r"^'") as raised:
        parse_rate_limits(text)
    assert complaint in str(raised.value)


def test_a_malformed_setting_stops_start_up_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"ARBITER_RATE_LIMITS='agent=0/5'.*rate 0/s"):
        Config.from_env({"ARBITER_RATE_LIMITS": "agent=0/5"})


def test_the_parsed_limits_are_on_the_config() -> None:
    config = Config.from_env({"ARBITER_RATE_LIMITS": "service=5000/20000"})
    assert config.rate_limits["service"] == BucketLimit(rate_per_second=5000, burst=20000)


def retry_delay_seconds(status: grpc.Status) -> float:
    (details,) = [value for key, value in status.trailing_metadata if key == "grpc-status-details-bin"]
    (detail,) = status_pb2.Status.FromString(details).details
    retry_info = error_details_pb2.RetryInfo()
    assert detail.Unpack(retry_info)
    return float(retry_info.retry_delay.ToMilliseconds()) / 1000


def test_a_refusal_is_resource_exhausted_with_the_delay_rounded_up_to_the_millisecond() -> None:
    status = rate_limited_status("agent", 0.2501)
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_delay_seconds(status) == 0.251
    assert "role 'agent'" in status.details
    assert "retry in 0.251 s" in status.details
    assert "ARBITER_RATE_LIMITS" in status.details


def test_a_tiny_delay_is_still_at_least_a_millisecond() -> None:
    assert retry_delay_seconds(rate_limited_status("viewer", 1e-12)) == 0.001


@pytest.fixture
async def refusing_server() -> AsyncIterator[str]:
    """A real server whose one method refuses like a rate-limited call."""

    async def refuse(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort_with_status(rate_limited_status("submitter", 1.5))
        raise AssertionError("abort_with_status returned")

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("test.Limited", {"Call": grpc.unary_unary_rpc_method_handler(refuse)})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def test_a_client_reads_the_retry_delay_from_the_status_details(refusing_server: str) -> None:
    async with grpc.aio.insecure_channel(refusing_server) as channel:
        call = channel.unary_unary("/test.Limited/Call")(b"")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = await rpc_status.aio.from_call(call)
    assert status is not None
    retry_info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(retry_info)
    assert retry_info.retry_delay.ToMilliseconds() == 1500
