"""The registry's pure rules, without a database: track records, degradation, candidate ranking and the
checks on outcomes and candidate queries."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from services.registry.domain import (
    AgentRecord,
    AgentRegistration,
    AgentStatus,
    CandidateQuery,
    OutcomeTotals,
    judge_degradation,
    rank_candidates,
    validate_candidate_query,
    validate_outcome,
    validate_outcome_batch_size,
)
from shared.errors import InvalidArgument
from shared.matching import Requirements

MIN_OUTCOMES = 5
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def totals(outcomes: int, successes: int, latency_ms: float = 100.0) -> OutcomeTotals:
    """`outcomes` outcomes, `successes` of them successful, each taking `latency_ms`."""
    return OutcomeTotals(outcomes=outcomes, successes=successes, latency_ms_sum=outcomes * latency_ms)


def agent(
    agent_id: str,
    *,
    task_types: tuple[str, ...] = ("code-review",),
    languages: tuple[str, ...] = (),
    specializations: tuple[str, ...] = (),
    active_tasks: int = 0,
    max_concurrent_tasks: int = 4,
    history: dict[str, OutcomeTotals] | None = None,
) -> AgentRecord:
    return AgentRecord(
        registration=AgentRegistration(
            id=agent_id,
            name="",
            model_family="",
            task_types=list(task_types),
            languages=list(languages),
            specializations=list(specializations),
            labels={},
            max_concurrent_tasks=max_concurrent_tasks,
        ),
        status=AgentStatus.ONLINE,
        active_tasks=active_tasks,
        registered_at=NOW,
        last_heartbeat_at=NOW,
        totals_by_task_type=history or {},
    )


def query(
    task_type: str = "code-review", *, languages: tuple[str, ...] = (), minimum: float = 0.0, limit: int = 10
) -> CandidateQuery:
    return CandidateQuery(Requirements(task_type, languages=frozenset(languages)), 1.0, minimum, limit)


# Track records.


def test_two_successes_and_one_failure_give_a_success_rate_of_0_675_with_the_prior() -> None:
    assert totals(3, 2).success_rate_with_prior == pytest.approx(0.675)


def test_an_empty_record_reads_as_the_priors_with_zero_latency_and_zero_raw_rates() -> None:
    empty = OutcomeTotals()
    assert (empty.success_rate_with_prior, empty.quality_with_prior) == (pytest.approx(0.7), pytest.approx(0.7))
    assert (empty.average_latency_ms, empty.success_rate, empty.average_quality) == (0.0, 0.0, 0.0)


def test_quality_averages_only_the_outcomes_that_reported_one() -> None:
    record = OutcomeTotals(outcomes=3, successes=3, quality_sum=1.8, quality_count=2, latency_ms_sum=300)
    assert record.average_quality == pytest.approx(0.9)
    assert record.quality_with_prior == pytest.approx((1.8 + 0.7) / 3)


def test_performance_lists_every_offered_task_type_and_every_one_with_history_by_name() -> None:
    record = agent("a", task_types=("summarize", "code-review"), history={"translate": totals(2, 2)})
    assert record.totals_by_offered_task_type() == [
        ("code-review", OutcomeTotals()),
        ("summarize", OutcomeTotals()),
        ("translate", totals(2, 2)),
    ]


def test_the_overall_record_is_the_sum_over_task_types() -> None:
    record = agent("a", history={"code-review": totals(3, 2, 100), "translate": totals(1, 1, 500)})
    assert record.overall == OutcomeTotals(outcomes=4, successes=3, latency_ms_sum=800)


# Degradation.


def test_tripled_latency_is_degraded_with_both_figures_in_the_reason() -> None:
    judged = judge_degradation(totals(10, 10, 930), totals(100, 100, 300), MIN_OUTCOMES)
    assert judged.degraded
    assert judged.reason == "average latency 930 ms in the last 5 min against 300 ms over the 24 h before"


def test_success_rate_down_by_a_quarter_is_degraded_with_both_rates_in_the_reason() -> None:
    judged = judge_degradation(totals(10, 4), totals(100, 95), MIN_OUTCOMES)
    assert judged.degraded
    assert judged.reason == "success rate 0.40 in the last 5 min against 0.95 over the 24 h before"


def test_both_slower_and_failing_gives_both_reasons() -> None:
    judged = judge_degradation(totals(10, 4, 930), totals(100, 95, 300), MIN_OUTCOMES)
    assert judged.reason.startswith("average latency 930 ms") and "; success rate 0.40" in judged.reason


def test_exactly_three_times_the_latency_is_degraded() -> None:
    assert judge_degradation(totals(10, 10, 900), totals(100, 100, 300), MIN_OUTCOMES).degraded


def test_exactly_three_quarters_of_the_success_rate_is_degraded() -> None:
    assert judge_degradation(totals(10, 6), totals(10, 8), MIN_OUTCOMES).degraded


@pytest.mark.parametrize(
    ("recent", "baseline"),
    [
        (totals(10, 10, 890), totals(100, 100, 300)),  # latency not quite tripled
        (totals(10, 8), totals(100, 95)),  # success rate down by less than a quarter
        (totals(4, 0, 5000), totals(100, 100, 300)),  # too few recent outcomes
        (totals(10, 0, 5000), totals(4, 4, 300)),  # too short a baseline
        (totals(10, 10, 500), totals(100, 100, 0)),  # no baseline latency to compare against
        (totals(10, 0), totals(100, 0)),  # never succeeded: nothing to fall from
    ],
    ids=["latency-2.97x", "success-0.84x", "few-recent", "few-baseline", "zero-latency-baseline", "zero-baseline"],
)
def test_not_degraded(recent: OutcomeTotals, baseline: OutcomeTotals) -> None:
    judged = judge_degradation(recent, baseline, MIN_OUTCOMES)
    assert (judged.degraded, judged.reason) == (False, "")


# Candidates.


def test_candidates_rank_by_success_rate_on_the_task_type_first() -> None:
    agents = [
        agent("weaker", languages=("python",), history={"code-review": totals(10, 5)}),
        agent("stronger", languages=("python", "go", "rust"), history={"code-review": totals(10, 9)}),
    ]
    ranked = rank_candidates(query(languages=("python",)), agents)
    assert [candidate.agent.registration.id for candidate in ranked] == ["stronger", "weaker"]


def test_equal_success_rates_rank_by_match_score_then_utilization_then_id() -> None:
    agents = [
        agent("b-busy", languages=("python",), active_tasks=2),
        agent("a-generalist", languages=("python", "go"), active_tasks=0),
        agent("d-idle", languages=("python",), active_tasks=0),
        agent("c-idle", languages=("python",), active_tasks=0),
    ]
    ranked = rank_candidates(query(languages=("python",)), agents)
    assert [candidate.agent.registration.id for candidate in ranked] == ["c-idle", "d-idle", "b-busy", "a-generalist"]


def test_success_rate_on_another_task_type_does_not_count() -> None:
    (candidate,) = rank_candidates(query(), [agent("a", history={"translate": totals(10, 10)})])
    assert candidate.success_rate == pytest.approx(0.7)


def test_candidates_below_the_minimum_success_rate_are_left_out() -> None:
    agents = [agent("good", history={"code-review": totals(9, 9)}), agent("bad", history={"code-review": totals(9, 1)})]
    ranked = rank_candidates(query(minimum=0.5), agents)
    assert [candidate.agent.registration.id for candidate in ranked] == ["good"]


def test_candidates_are_cut_to_the_limit() -> None:
    ranked = rank_candidates(query(limit=2), [agent(f"agent-{index}") for index in range(5)])
    assert [candidate.agent.registration.id for candidate in ranked] == ["agent-0", "agent-1"]


def test_candidate_score_weighs_fit_and_success_rate() -> None:
    record = agent("a", languages=("python", "go"), history={"code-review": totals(3, 2)})
    (candidate,) = rank_candidates(query(languages=("python",)), [record])
    assert candidate.score == pytest.approx(0.25 * 0.5 + 0.25 * 1 + 0.5 * 0.675)


def test_candidate_reason_says_what_it_offers_its_record_load_and_match() -> None:
    record = agent("a", languages=("python",), active_tasks=1, history={"code-review": totals(40, 37)})
    (candidate,) = rank_candidates(query(languages=("python",)), [record])
    assert candidate.reason == (
        f"offers code-review with python; success {(37 + 0.7) / 41:.2f} over 40 code-review tasks; "
        f"25% utilized; match {candidate.score:.2f}"
    )


def test_candidate_reason_without_history_says_the_rate_is_the_prior() -> None:
    (candidate,) = rank_candidates(query(), [agent("a")])
    assert (
        candidate.reason
        == "offers code-review; success 0.70 (prior; no code-review tasks yet); 0% utilized; match 0.85"
    )


# Checks on input.


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"agent_id": ""}, "agent_id"),
        ({"agent_id": "bad id!"}, "agent_id"),
        ({"task_type": ""}, "task_type"),
        ({"task_type": " padded "}, "task_type"),
        ({"latency_ms": -1.0}, "latency_ms"),
        ({"latency_ms": math.inf}, "latency_ms"),
        ({"latency_ms": math.nan}, "latency_ms"),
        ({"quality": 1.5}, "quality"),
        ({"quality": -0.1}, "quality"),
        ({"quality": math.nan}, "quality"),
    ],
)
def test_a_bad_outcome_is_rejected_naming_its_field(arguments: dict[str, object], field: str) -> None:
    values: dict[str, object] = {
        "agent_id": "a",
        "task_type": "echo",
        "success": True,
        "latency_ms": 1.0,
        "quality": None,
    }
    values.update(arguments)
    with pytest.raises(InvalidArgument) as caught:
        validate_outcome("outcomes[3].", **values)  # type: ignore[arg-type]
    assert caught.value.field == f"outcomes[3].{field}"


def test_an_outcome_may_leave_quality_unset_and_take_zero_latency() -> None:
    outcome = validate_outcome("", "a", "echo", False, 0.0, None)
    assert (outcome.latency_ms, outcome.quality) == (0.0, None)


@pytest.mark.parametrize("count", [0, 1001])
def test_a_batch_must_hold_1_to_1000_outcomes(count: int) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_outcome_batch_size(count)
    assert caught.value.field == "outcomes"


def test_a_candidate_query_defaults_to_full_utilization_and_ten_candidates() -> None:
    checked = validate_candidate_query("echo", [], [], {}, None, 0.0, 0)
    assert (checked.max_utilization, checked.limit) == (1.0, 10)


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"task_type": ""}, "task_type"),
        ({"languages": [""]}, "languages[0]"),
        ({"specializations": ["ok", " x"]}, "specializations[1]"),
        ({"labels": {"": "v"}}, "labels['']"),
        ({"max_utilization": 1.5}, "max_utilization"),
        ({"max_utilization": -0.1}, "max_utilization"),
        ({"max_utilization": math.nan}, "max_utilization"),
        ({"min_success_rate": 2.0}, "min_success_rate"),
        ({"min_success_rate": math.nan}, "min_success_rate"),
        ({"limit": 501}, "limit"),
        ({"limit": -1}, "limit"),
    ],
)
def test_a_bad_candidate_query_is_rejected_naming_its_field(arguments: dict[str, object], field: str) -> None:
    values: dict[str, object] = {
        "task_type": "echo",
        "languages": [],
        "specializations": [],
        "labels": {},
        "max_utilization": None,
        "min_success_rate": 0.0,
        "limit": 0,
    }
    values.update(arguments)
    with pytest.raises(InvalidArgument) as caught:
        validate_candidate_query(**values)  # type: ignore[arg-type]
    assert caught.value.field == field
