"""The benchmark's summary, table and chart (issue 7): from raw repetitions to medians, ratios and goals.

`aggregate` is pure: bench.run calls it before it writes latest.json, and so does this module's command,
so the table always follows the raw repetitions. `write_report` renders the result as
bench/results/latest.md (a table per scenario, the goals passed or missed) and bench/results/latest.png
(bars at the median with min–max whiskers).

    python -m bench.report [--results bench/results/latest.json]

A ratio is always Arbiter's median divided by the other system's median, for every metric: above 1 means
more tasks/s for Arbiter, or more milliseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"
RESULTS_PATH = RESULTS_DIR / "latest.json"
REFERENCE = "arbiter"
SCENARIOS = ("throughput", "drain", "latency")
LATENCY_METRICS = ("p50_ms", "p95_ms", "p99_ms")
COMPLETION_METRICS = ("completion_p50_ms", "completion_p95_ms", "completion_p99_ms")
# What each scenario is compared on (a latency run's achieved rate is its offered rate, not a result).
COMPARED = {
    "throughput": ("tasks_per_second",),
    "drain": ("tasks_per_second",),
    "latency": (*LATENCY_METRICS, *COMPLETION_METRICS),
}
# The markdown tables: scenario, title, metrics (the ratio column shows the first and the last).
TABLES = (
    ("throughput", "throughput: tasks/s, first submit to last handler end", ("tasks_per_second",)),
    ("drain", "drain: tasks/s, first worker serving to last handler end", ("tasks_per_second",)),
    ("latency", "latency at the offered rate: ms from scheduled send to handler start", LATENCY_METRICS),
    ("latency", "latency at the offered rate: ms from scheduled send to completion recorded", COMPLETION_METRICS),
)
METRIC_LABELS = {"tasks_per_second": "tasks/s"} | {
    name: name.removeprefix("completion_").removesuffix("_ms") for name in (*LATENCY_METRICS, *COMPLETION_METRICS)
}
# bench.scale's top-level figures that are its settings, not its measurements.
SCALE_SETTINGS = ("system", "scenario", "agents", "pending_tasks", "repetition", "extra")
# The peers the goals name; for Celery the faster of its two variants counts, the stricter test.
CELERY_SYSTEMS = ("celery-redis", "celery-redis-acks-late")
PROCRASTINATE = "procrastinate"
SQL_FLOOR = "sql-floor"


# Aggregation.


def metric_values(result: dict[str, Any]) -> dict[str, float]:
    """The figures of one repetition: its headline fields, and for latency its schedule→completion
    percentiles (kept under extra by the scenario)."""
    values = {name: float(result[name]) for name in ("tasks_per_second", *LATENCY_METRICS) if name in result}
    completion = result.get("extra", {}).get("submit_to_completion_ms", {})
    for name in LATENCY_METRICS:
        if name in completion:
            values[f"completion_{name}"] = float(completion[name])
    return values


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(results: Iterable[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """scenario -> system -> {"repetitions", "errors", "figures": metric -> {median, min, max}}. A
    repetition that failed counts in "errors" and in no figure."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    errors: dict[tuple[str, str], int] = {}
    for result in results:
        key = (result["scenario"], result["system"])
        if "error" in result:
            errors[key] = errors.get(key, 0) + 1
            grouped.setdefault(key, [])
        else:
            grouped.setdefault(key, []).append(result)
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for (scenario, system), runs in grouped.items():
        by_metric: dict[str, list[float]] = {}
        for run in runs:
            for name, value in metric_values(run).items():
                by_metric.setdefault(name, []).append(value)
        summary.setdefault(scenario, {})[system] = {
            "repetitions": len(runs),
            "errors": errors.get((scenario, system), 0),
            "figures": {name: spread(values) for name, values in by_metric.items()},
        }
    return summary


def median_of(summary: dict[str, dict[str, dict[str, Any]]], scenario: str, system: str, metric: str) -> float | None:
    figure = summary.get(scenario, {}).get(system, {}).get("figures", {}).get(metric)
    return None if figure is None else float(figure["median"])


def arbiter_ratios(summary: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, float]]]:
    """scenario -> system -> metric -> Arbiter's median ÷ the system's median, from the same run."""
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    for scenario, systems in summary.items():
        if REFERENCE not in systems:
            continue
        for system in systems:
            if system == REFERENCE:
                continue
            for metric in COMPARED.get(scenario, ()):
                arbiter = median_of(summary, scenario, REFERENCE, metric)
                other = median_of(summary, scenario, system, metric)
                if arbiter is not None and other:
                    ratios.setdefault(scenario, {}).setdefault(system, {})[metric] = round(arbiter / other, 3)
    return ratios


# The goals.


def _number(found: Any) -> float | None:
    return float(found) if isinstance(found, int | float) and not isinstance(found, bool) else None


def worst_claim_p99_ms(scale: dict[str, Any]) -> float | None:
    """The highest p99 over the claim sizes bench.scale timed (its claim_<size>_p99_ms figures)."""
    figures = [
        value
        for name, found in scale.items()
        if name.startswith("claim_") and name.endswith("_p99_ms") and (value := _number(found)) is not None
    ]
    return max(figures, default=None)


def goals(summary: dict[str, dict[str, dict[str, Any]]], scale: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The issue's goals, each with its target, what this run measured, and whether it passed (None when
    the run did not measure it)."""

    def goal(text: str, measured: float | None, target: float, unit: str, at_least: bool) -> dict[str, Any]:
        passed = None if measured is None else (measured >= target if at_least else measured <= target)
        return {"goal": text, "target": target, "unit": unit, "measured": measured, "passed": passed}

    def arbiter(scenario: str, metric: str) -> float | None:
        return median_of(summary, scenario, REFERENCE, metric)

    throughput = arbiter("throughput", "tasks_per_second")

    def times(*peers: str) -> float | None:
        """Arbiter's throughput over the fastest of `peers`."""
        medians = [median_of(summary, "throughput", peer, "tasks_per_second") for peer in peers]
        fastest = max((median for median in medians if median), default=None)
        return None if throughput is None or fastest is None else round(throughput / fastest, 3)

    scale = scale or {}
    agents, pending = scale.get("agents", 1000), scale.get("pending_tasks", 1_000_000)
    return [
        goal("throughput end to end ≥ 1,300 tasks/s", throughput, 1300, "tasks/s", at_least=True),
        goal("throughput ≥ 1.5× Celery+Redis (its faster variant)", times(*CELERY_SYSTEMS), 1.5, "×", at_least=True),
        goal("throughput ≥ 2× procrastinate", times(PROCRASTINATE), 2.0, "×", at_least=True),
        goal("throughput ≥ ½ the bare-SQL floor", times(SQL_FLOOR), 0.5, "×", at_least=True),
        goal("drain ≥ 2,000 tasks/s", arbiter("drain", "tasks_per_second"), 2000, "tasks/s", at_least=True),
        goal("200 tasks/s: schedule→start p50 ≤ 2 ms", arbiter("latency", "p50_ms"), 2, "ms", at_least=False),
        goal("200 tasks/s: schedule→start p99 ≤ 3 ms", arbiter("latency", "p99_ms"), 3, "ms", at_least=False),
        goal(
            f"orchestrator RSS < 200 MB with {agents:,} agents",
            _number(scale.get("orchestrator_rss_mb")),
            200,
            "MB",
            at_least=False,
        ),
        goal(
            f"claim p99 < 5 ms with {pending:,} pending (worst claim size)",
            worst_claim_p99_ms(scale),
            5,
            "ms",
            at_least=False,
        ),
    ]


def aggregate(data: dict[str, Any]) -> dict[str, Any]:
    """`data` (a run's raw results, and its scale figures if any) with its summary, ratios and goals."""
    summary = summarize(result for result in data["results"] if "skipped" not in result)
    return {**data, "summary": summary, "ratios": arbiter_ratios(summary), "goals": goals(summary, data.get("scale"))}


# The markdown table.


def _number_text(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def _figure(entry: dict[str, Any], metric: str) -> str:
    figure = entry["figures"].get(metric)
    if figure is None:
        return "–"
    return f"{_number_text(figure['median'])} [{_number_text(figure['min'])}–{_number_text(figure['max'])}]"


def _scenario_table(scenario: str, title: str, metrics: tuple[str, ...], data: dict[str, Any]) -> list[str]:
    systems = data["summary"].get(scenario, {})
    ratios = data["ratios"].get(scenario, {})
    ratio_metrics = tuple(dict.fromkeys((metrics[0], metrics[-1])))
    ratio_labels = [METRIC_LABELS[metric] for metric in ratio_metrics]
    ratio_header = "Arbiter ÷ system" + (f" ({', '.join(ratio_labels)})" if len(ratio_labels) > 1 else "")
    header = ["system", *(f"{METRIC_LABELS[metric]} median [min–max]" for metric in metrics), ratio_header]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for system, entry in systems.items():
        ratio = ratios.get(system, {})
        if system == REFERENCE:
            ratio_text = "1×" if entry["figures"] else "–"
        else:
            ratio_text = " / ".join(f"{_number_text(ratio[name])}×" for name in ratio_metrics if name in ratio) or "–"
        name = system if not entry["errors"] else f"{system} ({entry['errors']} failed)"
        lines.append("| " + " | ".join([name, *(_figure(entry, metric) for metric in metrics), ratio_text]) + " |")
    for system, reason in data.get("skipped", {}).items():
        lines.append(f"| {system} | skipped: {reason} |" + " |" * (len(header) - 2))
    return [*lines, ""]


def _scale_section(scale: dict[str, Any]) -> list[str]:
    if "skipped" in scale or "error" in scale:
        return ["### scale", "", f"not measured: {scale.get('skipped') or scale.get('error')}", ""]
    lines = [f"### scale: {scale.get('agents', 0):,} agent streams, {scale.get('pending_tasks', 0):,} pending", ""]
    lines += ["| figure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in scale.items() if name not in SCALE_SETTINGS]
    return [*lines, ""]


def _goal_line(goal: dict[str, Any]) -> str:
    verdict = {True: "pass", False: "MISS", None: "not measured"}[goal["passed"]]
    unit = goal["unit"] if goal["unit"] == "×" else f" {goal['unit']}"
    measured = "–" if goal["measured"] is None else f"{_number_text(goal['measured'])}{unit}"
    return f"| {goal['goal']} | {measured} | {verdict} |"


def markdown(data: dict[str, Any]) -> str:
    machine = data.get("machine", {})
    lines = [
        "# Arbiter and its peers",
        "",
        f"{machine.get('date', '')}, commit {machine.get('git_commit', '?')}: {machine.get('cpus', '?')} CPUs "
        f"({machine.get('cpu_model', '?')}), PostgreSQL {machine.get('postgresql', {}).get('version', '?')}. "
        f"Median [min–max] of {data.get('repetitions', '?')} repetitions; "
        f"{data.get('method', {}).get('workers', '')}. Ratios: Arbiter's median ÷ the system's median.",
        "",
    ]
    results = data.get("results", [])
    loads = [
        result["extra"]["load_average_1m_after"]
        for result in results
        if "load_average_1m_after" in result.get("extra", {})
    ]
    if loads:
        lines += [
            f"1-minute load average after each repetition: {min(loads):.1f}–{max(loads):.1f} on "
            f"{machine.get('cpus', '?')} CPUs: the run keeps a few processes busy itself; far above that, other "
            "work competed with it.",
            "",
        ]
    versions = {result.get("extra", {}).get("working_tree") for result in results} - {None}
    if len(versions) > 1:
        lines += [
            f"**The working tree changed during the run ({len(versions)} versions): repetitions measured "
            "different code.**",
            "",
        ]
    scenarios = data.get("scenarios", SCENARIOS)
    for scenario, title, metrics in TABLES:
        if scenario in scenarios:
            lines += _scenario_table(scenario, title, metrics, data)
    if data.get("scale") is not None:
        lines += _scale_section(data["scale"])
    routing = data.get("routing")
    if routing is not None:
        lines += ["### routing", "", f"`python -m bench.routing`: {routing.get('verdict', '?')}", ""]
    lines += ["### goals (issue 7)", "", "| goal | measured | verdict |", "|---|---|---|"]
    lines += [_goal_line(goal) for goal in data.get("goals", [])]
    lines += ["", f"Timestamps: {data.get('method', {}).get('timestamps', '')}", ""]
    return "\n".join(lines)


# The chart.


def chart(data: dict[str, Any], path: Path) -> None:
    """Four panels: throughput, drain, latency p50 and p99 (schedule→start), each a bar per system at
    its median with a min–max whisker; a skipped system shows as a labelled empty slot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("throughput", "tasks_per_second", "throughput (tasks/s, higher is better)"),
        ("drain", "tasks_per_second", "drain (tasks/s, higher is better)"),
        ("latency", "p50_ms", "schedule→start p50 at 200/s (ms, lower is better)"),
        ("latency", "p99_ms", "schedule→start p99 at 200/s (ms, lower is better)"),
    ]
    figure, axes = plt.subplots(2, 2, figsize=(12, 8))
    skipped = data.get("skipped", {})
    for axis, (scenario, metric, title) in zip(axes.flat, panels, strict=True):
        systems = data["summary"].get(scenario, {})
        # (name, {median, min, max}) per system, None where every repetition failed or it was skipped.
        bars: list[tuple[str, dict[str, float] | None]] = [
            (name, entry["figures"].get(metric)) for name, entry in systems.items()
        ]
        bars += [(name, None) for name in skipped]
        names = [name for name, _ in bars]
        medians = [measured["median"] if measured else 0.0 for _, measured in bars]
        whiskers = [
            [measured["median"] - measured["min"] if measured else 0.0 for _, measured in bars],
            [measured["max"] - measured["median"] if measured else 0.0 for _, measured in bars],
        ]
        positions = list(range(len(bars)))
        colours = ["tab:blue" if name == REFERENCE else "tab:gray" for name in names]
        axis.bar(positions, medians, yerr=whiskers, capsize=4, color=colours)
        for position, (name, measured), median in zip(positions, bars, medians, strict=True):
            if measured:
                # Beside the whisker, not on it.
                axis.annotate(
                    _number_text(median), (position, median), xytext=(4, 2), textcoords="offset points", fontsize=8
                )
            else:
                label = "skipped" if name in skipped else "failed"
                axis.annotate(label, (position, 0.02), xycoords=("data", "axes fraction"), ha="center", fontsize=8)
        axis.set_xticks(positions, names, rotation=20, ha="right", fontsize=8)
        axis.set_title(title, fontsize=10)
        shown = [median for median in medians if median > 0]
        if shown and max(shown) / min(shown) > 50:
            # Systems that keep up and systems that fall behind differ by orders of magnitude.
            axis.set_yscale("log")
            axis.set_title(title + ", log scale", fontsize=10)
        axis.grid(axis="y", alpha=0.3)
    machine = data.get("machine", {})
    figure.suptitle(
        f"Arbiter and its peers: median of {data.get('repetitions', '?')}, min–max whiskers; "
        f"{machine.get('cpus', '?')} CPUs, {machine.get('git_commit', '?')[:10]}",
        fontsize=11,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(data: dict[str, Any], directory: Path = RESULTS_DIR) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    table, picture = directory / "latest.md", directory / "latest.png"
    table.write_text(markdown(data))
    chart(data, picture)
    return table, picture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS_PATH)
    arguments = parser.parse_args()
    data = aggregate(json.loads(arguments.results.read_text()))
    for path in write_report(data, arguments.results.parent):
        print(path)


if __name__ == "__main__":
    main()
