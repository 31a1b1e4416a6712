"""The benchmark's aggregation and table (bench.report): pure functions over result dicts, no database."""

from __future__ import annotations

from typing import Any

import pytest

from bench import report


def repetition(system: str, scenario: str, number: int, tasks_per_second: float, **figures: Any) -> dict[str, Any]:
    return {
        "system": system,
        "scenario": scenario,
        "repetition": number,
        "tasks": 1000,
        "seconds": 1000 / tasks_per_second,
        "tasks_per_second": tasks_per_second,
        **figures,
        "extra": {"cpus": 2},
    }


def latency_repetition(system: str, number: int, p50: float, p99: float, completion_p50: float) -> dict[str, Any]:
    result = repetition(system, "latency", number, 200.0, p50_ms=p50, p95_ms=p99 - 0.5, p99_ms=p99)
    result["extra"]["submit_to_completion_ms"] = {"p50_ms": completion_p50, "p95_ms": 9.0, "p99_ms": 10.0}
    return result


def three_runs() -> list[dict[str, Any]]:
    return [
        repetition("arbiter", "throughput", 1, 1500.0),
        repetition("arbiter", "throughput", 2, 1300.0),
        repetition("arbiter", "throughput", 3, 1400.0),
        repetition("celery-redis", "throughput", 1, 900.0),
        repetition("celery-redis", "throughput", 2, 700.0),
        repetition("celery-redis", "throughput", 3, 800.0),
        repetition("sql-floor", "throughput", 1, 2800.0),
    ]


def test_summary_gives_the_median_min_and_max_of_each_system_in_each_scenario() -> None:
    summary = report.summarize(three_runs())

    arbiter, celery = summary["throughput"]["arbiter"], summary["throughput"]["celery-redis"]
    assert arbiter["figures"]["tasks_per_second"] == {"median": 1400.0, "min": 1300.0, "max": 1500.0}
    assert celery["figures"]["tasks_per_second"] == {"median": 800.0, "min": 700.0, "max": 900.0}
    assert summary["throughput"]["arbiter"]["repetitions"] == 3


def test_summary_of_latency_holds_start_and_completion_percentiles() -> None:
    summary = report.summarize(
        [latency_repetition("arbiter", number, p50, p50 + 1, p50 + 2) for number, p50 in enumerate((1.0, 3.0, 2.0))]
    )

    latency = summary["latency"]["arbiter"]["figures"]
    assert latency["p50_ms"] == {"median": 2.0, "min": 1.0, "max": 3.0}
    assert latency["p99_ms"]["median"] == 3.0
    assert latency["completion_p50_ms"] == {"median": 4.0, "min": 3.0, "max": 5.0}


def test_a_failed_repetition_is_counted_and_left_out_of_the_figures() -> None:
    results = [
        *three_runs(),
        {"system": "celery-redis", "scenario": "throughput", "repetition": 4, "error": "TimeoutError: stuck"},
    ]

    entry = report.summarize(results)["throughput"]["celery-redis"]

    assert entry["errors"] == 1
    assert entry["repetitions"] == 3
    assert entry["figures"]["tasks_per_second"]["median"] == 800.0


def test_ratios_are_arbiters_median_over_each_other_systems_median() -> None:
    ratios = report.arbiter_ratios(report.summarize(three_runs()))

    assert ratios["throughput"]["celery-redis"]["tasks_per_second"] == pytest.approx(1400 / 800, abs=0.001)
    assert ratios["throughput"]["sql-floor"]["tasks_per_second"] == pytest.approx(0.5)
    assert "arbiter" not in ratios["throughput"]


def test_goals_pass_miss_or_say_not_measured() -> None:
    summary = report.summarize(three_runs())

    verdicts = {goal["goal"]: goal["passed"] for goal in report.goals(summary, scale=None)}

    assert verdicts["throughput end to end ≥ 1,300 tasks/s"] is True
    assert verdicts["throughput ≥ 1.5× Celery+Redis (its faster variant)"] is True
    assert verdicts["throughput ≥ ½ the bare-SQL floor"] is True
    assert verdicts["throughput ≥ 2× procrastinate"] is None
    assert verdicts["drain ≥ 2,000 tasks/s"] is None


def test_the_claim_goal_takes_the_worst_p99_over_claim_sizes() -> None:
    scale = {"agents": 1000, "pending_tasks": 1_000_000, "orchestrator_rss_mb": 150.0}
    scale |= {"claim_4_p99_ms": 2.5, "claim_32_p99_ms": 6.0, "claim_32_p50_ms": 1.0}

    found = {goal["goal"]: goal for goal in report.goals({}, scale)}

    claim = found["claim p99 < 5 ms with 1,000,000 pending (worst claim size)"]
    assert (claim["measured"], claim["passed"]) == (6.0, False)
    assert found["orchestrator RSS < 200 MB with 1,000 agents"]["passed"] is True


def test_a_skipped_peer_is_shown_as_skipped_with_its_reason() -> None:
    results = three_runs()
    summary = report.summarize(results)
    data = {
        "scenarios": ["throughput"],
        "summary": summary,
        "ratios": report.arbiter_ratios(summary),
        "goals": report.goals(summary, None),
        "skipped": {"celery-redis-acks-late": "Redis at redis://127.0.0.1:6379/9 did not answer"},
        "results": results,
    }

    table = report.markdown(data)

    assert "| celery-redis-acks-late | skipped: Redis at redis://127.0.0.1:6379/9 did not answer |" in table
    assert "| celery-redis | 800 [700–900] | 1.75× |" in table
    assert "| arbiter | 1,400 [1,300–1,500] | 1× |" in table


def test_a_run_whose_code_changed_between_repetitions_says_so() -> None:
    results = three_runs()
    results[0]["extra"]["working_tree"] = "clean"
    results[1]["extra"]["working_tree"] = "25549a0d55b8"
    data = report.aggregate({"scenarios": ["throughput"], "skipped": {}, "results": results})

    assert "The working tree changed during the run (2 versions)" in report.markdown(data)


def test_a_scale_scenario_that_failed_is_shown_as_not_measured() -> None:
    data = report.aggregate({"scenarios": [], "skipped": {}, "results": [], "scale": {"error": "TypeError: boom"}})

    table = report.markdown(data)

    assert "not measured: TypeError: boom" in table
    assert "| orchestrator RSS < 200 MB with 1,000 agents | – | not measured |" in table
