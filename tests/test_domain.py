"""Pure rules, without a database or a server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from arbiter.v1 import orchestrator_service_pb2
from services.orchestrator.convert import submission_from_pb
from services.orchestrator.domain import (
    AttemptReport,
    TaskRecord,
    TaskRequirements,
    TaskState,
    end_of_attempt,
    retry_backoff_seconds,
    state_after_failure,
    validate_submission,
    why_report_is_stale,
)
from services.registry.domain import AgentStatus, Silence, validate_heartbeat, validate_registration
from shared.errors import InvalidArgument
from shared.pagination import decode_page_token, encode_page_token

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def task(state: TaskState = TaskState.ASSIGNED, attempt: int = 1, max_attempts: int = 3) -> TaskRecord:
    return TaskRecord(
        id="1b4e28ba-2fa1-11d2-883f-0016d3cca427",
        task_type="echo",
        state=state,
        payload={},
        result=None,
        error="",
        priority=0,
        requirements=TaskRequirements(),
        attempt=attempt,
        max_attempts=max_attempts,
        timeout_ms=None,
        idempotency_key=None,
        assigned_agent_id="agent-1" if state.is_in_flight else None,
        progress=0.0,
        progress_message="",
        lease_expires_at=None,
        created_at=NOW,
        updated_at=NOW,
    )


def submission(**overrides: object) -> dict[str, object]:
    values: dict[str, object] = {
        "task_type": "echo",
        "payload": {},
        "payload_bytes": 0,
        "max_payload_bytes": 100,
        "priority": 0,
        "requirements": TaskRequirements(),
        "max_attempts": 0,
        "timeout_ms": None,
        "idempotency_key": "",
    }
    values.update(overrides)
    return values


def test_submission_defaults_to_three_attempts_and_no_idempotency_key() -> None:
    checked = validate_submission(**submission())  # type: ignore[arg-type]
    assert checked.max_attempts == 3
    assert checked.idempotency_key is None


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"task_type": ""}, "task_type"),
        ({"payload_bytes": 101}, "payload"),
        ({"priority": 1001}, "priority"),
        ({"priority": -1001}, "priority"),
        ({"max_attempts": 101}, "max_attempts"),
        ({"timeout_ms": 8 * 24 * 3600 * 1000}, "timeout"),
        ({"idempotency_key": "k" * 257}, "idempotency_key"),
        ({"requirements": TaskRequirements(languages=[""])}, "requirements.languages[0]"),
    ],
)
def test_submission_rejects_each_bad_field_by_name(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_submission(**submission(**overrides))  # type: ignore[arg-type]
    assert raised.value.field == field


def test_retryable_failure_with_attempts_left_goes_back_to_pending() -> None:
    assert state_after_failure(task(attempt=2, max_attempts=3), retryable=True) == TaskState.PENDING


def test_retryable_failure_on_the_last_attempt_fails_the_task() -> None:
    assert state_after_failure(task(attempt=3, max_attempts=3), retryable=True) == TaskState.FAILED


def test_permanent_failure_fails_the_task_whatever_attempts_are_left() -> None:
    assert state_after_failure(task(attempt=1, max_attempts=3), retryable=False) == TaskState.FAILED


@pytest.mark.parametrize(
    ("failed_attempt", "shortest", "longest"),
    [(1, 0.5, 1.0), (2, 1.0, 2.0), (7, 30.0, 60.0), (8, 30.0, 60.0), (20, 30.0, 60.0)],
)
def test_retry_backoff_doubles_per_attempt_up_to_a_minute_with_jitter_down_to_half(
    failed_attempt: int, shortest: float, longest: float
) -> None:
    assert retry_backoff_seconds(failed_attempt, 0.0) == shortest
    assert retry_backoff_seconds(failed_attempt, 1.0) == longest
    assert shortest < retry_backoff_seconds(failed_attempt, 0.5) < longest


def test_a_retryable_failure_with_attempts_left_is_pending_again_after_the_backoff() -> None:
    end = end_of_attempt(
        task(attempt=2, max_attempts=3), "boom", retryable=True, backoff=True, now=NOW, random_fraction=0.5
    )
    assert end.state == TaskState.PENDING
    assert end.not_before == NOW + timedelta(seconds=retry_backoff_seconds(2, 0.5))
    assert end.error == "boom"


def test_a_released_attempt_is_pending_again_at_once() -> None:
    end = end_of_attempt(
        task(attempt=1, max_attempts=3), "stream closed", retryable=True, backoff=False, now=NOW, random_fraction=1.0
    )
    assert (end.state, end.not_before, end.error) == (TaskState.PENDING, None, "stream closed")


@pytest.mark.parametrize("backoff", [True, False], ids=["failure", "release"])
def test_an_attempt_ending_when_attempts_are_spent_fails_the_task(backoff: bool) -> None:
    end = end_of_attempt(
        task(attempt=3, max_attempts=3), "boom", retryable=True, backoff=backoff, now=NOW, random_fraction=0.5
    )
    assert (end.state, end.not_before, end.error) == (TaskState.FAILED, None, "boom")


def test_an_attempt_ending_as_not_retryable_fails_the_task_with_attempts_left() -> None:
    end = end_of_attempt(
        task(attempt=1, max_attempts=3), "too late", retryable=False, backoff=False, now=NOW, random_fraction=0.5
    )
    assert (end.state, end.not_before, end.error) == (TaskState.FAILED, None, "too late")


@pytest.mark.parametrize("interval", [0.2, 5.0])
def test_an_agent_is_unhealthy_after_three_silent_heartbeat_intervals_and_offline_after_six(interval: float) -> None:
    silence = Silence.for_interval(interval)
    assert silence.unhealthy_after == pytest.approx(3 * interval)
    assert silence.offline_after == pytest.approx(6 * interval)


@pytest.mark.parametrize(
    ("current", "report", "expected"),
    [
        (task(TaskState.COMPLETED), AttemptReport("t", "agent-1", 1), "already COMPLETED"),
        (task(TaskState.ASSIGNED, attempt=2), AttemptReport("t", "agent-1", 1), "now at attempt 2"),
        (task(TaskState.ASSIGNED), AttemptReport("t", "agent-2", 1), "held by agent 'agent-1'"),
    ],
)
def test_stale_report_explanation_names_the_reason(current: TaskRecord, report: AttemptReport, expected: str) -> None:
    assert expected in why_report_is_stale(current, report)


def test_registration_defaults_concurrency_to_one_and_removes_duplicate_names() -> None:
    registration = validate_registration("a-1", "", "", ["echo", "echo"], ["python"], [], {}, 0)
    assert registration.max_concurrent_tasks == 1
    assert registration.task_types == ["echo"]


@pytest.mark.parametrize("agent_id", ["", "-x", "a b", "a" * 65, "ü"])
def test_registration_rejects_agent_ids_outside_the_pattern(agent_id: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_registration(agent_id, "", "", ["echo"], [], [], {}, 1)
    assert raised.value.field == "agent.id"


def test_heartbeat_without_status_means_online() -> None:
    assert validate_heartbeat("a-1", 0, None).status == AgentStatus.ONLINE


def test_heartbeat_may_not_claim_a_status_only_the_registry_sets() -> None:
    with pytest.raises(InvalidArgument):
        validate_heartbeat("a-1", 0, AgentStatus.OFFLINE)


def test_page_token_round_trips() -> None:
    token = encode_page_token({"after_id": "a-9"})
    assert decode_page_token("page_token", token, frozenset({"after_id"})) == {"after_id": "a-9"}


@pytest.mark.parametrize("token", ["garbage!", encode_page_token({"other": 1}), "e30="])
def test_foreign_page_tokens_are_rejected(token: str) -> None:
    with pytest.raises(InvalidArgument):
        decode_page_token("page_token", token, frozenset({"after_id"}))


def test_a_timeout_under_a_millisecond_is_the_shortest_timeout_not_none() -> None:
    request = orchestrator_service_pb2.SubmitTaskRequest(task_type="echo")
    request.timeout.FromNanoseconds(1)
    request.schedule_to_start_timeout.FromNanoseconds(999_999)
    submission = submission_from_pb(request, max_payload_bytes=1024)
    assert (submission.timeout_ms, submission.schedule_to_start_timeout_ms) == (1, 1)
    request.timeout.FromMilliseconds(0)
    assert submission_from_pb(request, max_payload_bytes=1024).timeout_ms is None
