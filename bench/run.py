"""One run of the whole benchmark of issue 7 on this machine, side by side: `make bench`.

Arbiter (bench.arbiter_bench), Celery + Redis with default acks and with acks_late, procrastinate (bench.peers)
and the bare-SQL floor (bench.sql_floor) through the throughput, drain and latency scenarios, interleaved:
repetition 1 of every system, then repetition 2, …, so that drift on the machine hits all alike. Then the
scale scenario (bench.scale, when it exists) and the routing micro-benchmark (bench.routing). A peer whose
server does not answer is reported as skipped, with the reason.

Writes bench/results/latest.json (after every repetition, so a run cut short keeps what it measured):
the machine, every raw repetition, per (scenario, system) the median/min/max of each figure, Arbiter's
ratios to every other system from this same run, the goals of the issue, and how timestamps were taken.
Then bench/results/latest.md and latest.png (bench.report). Exits non-zero when a repetition failed or
routing missed its budget, after writing everything.

    python -m bench.run [--scenarios throughput,drain,latency,scale,routing] [--systems arbiter,...]
        [--repetitions 3] [--tasks N] [--rate 200] [--scale-agents N] [--scale-pending N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg

from bench import report
from bench.arbiter_bench import (
    AGENT_CONCURRENCY,
    AGENT_PROCESSES,
    BATCH_SIZE,
    DEFAULT_TASKS,
    HELD_PER_WORKER_VARIABLE,
    LATENCY_RATE,
    SERVER_URL,
    held_per_worker,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("arbiter", "celery-redis", "celery-redis-acks-late", "procrastinate", "sql-floor")
TASK_SCENARIOS = ("throughput", "drain", "latency")
OTHER_PARTS = ("scale", "routing")
PORTS_WAIT_SECONDS = 300.0
TIMESTAMPS = (
    "bench.side_channel: each worker process appends (event, task key, time.time_ns()) to a list in memory "
    "in its handler (no I/O, no lock) and writes one JSON-lines file when it exits; the driver merges them "
    "after the run. The driver keeps each scheduled send time in memory and learns that the work is done "
    "from a counter in shared memory (read every 5 ms), so nothing polls the system under test. Completion "
    "as each system records it is read once after the run: Arbiter's and the SQL floor's tasks.updated_at, "
    "procrastinate's 'succeeded' event; Celery has no durable completion record without a result backend, "
    "so its handler's end stands for it."
)

RepetitionRunner = Callable[[str, int, int, float], dict[str, Any]]


# The systems.


def address_in_use(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((host, int(port))) == 0


def wait_for_free_addresses(addresses: tuple[str, ...], timeout: float = PORTS_WAIT_SECONDS) -> None:
    """Another Arbiter benchmark on this machine holds the same fixed ports; wait for it to end rather
    than fail on a service that cannot bind."""
    deadline = time.monotonic() + timeout
    while busy := [address for address in addresses if address_in_use(address)]:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{', '.join(busy)} stayed in use for {timeout:.0f} s: another Arbiter benchmark or service holds "
                "them; stop it and run again"
            )
        time.sleep(1)


def arbiter_runner() -> tuple[RepetitionRunner, tuple[str, ...]]:
    from bench.arbiter_bench import ORCHESTRATOR_ADDRESS, REGISTRY_ADDRESS, run_repetition

    def run(scenario: str, repetition: int, tasks: int, rate: float) -> dict[str, Any]:
        wait_for_free_addresses((REGISTRY_ADDRESS, ORCHESTRATOR_ADDRESS))
        return run_repetition(scenario, repetition, tasks, rate)

    return run, TASK_SCENARIOS


def peer_runner(name: str) -> tuple[RepetitionRunner | None, tuple[str, ...], str | None]:
    """The peer's repetition runner and scenarios, or the reason it is skipped."""
    try:
        from bench.peers import harness

        if name.startswith("celery"):
            from bench.peers.celery_bench import CelerySystem

            system: harness.PeerSystem = CelerySystem(acks_late=name.endswith("acks-late"))
        elif name == "procrastinate":
            from bench.peers.procrastinate_bench import ProcrastinateSystem

            system = ProcrastinateSystem()
        else:
            from bench.sql_floor import SqlFloorSystem

            system = SqlFloorSystem()
    except ImportError as error:
        return None, (), f"{error.name or error} is not installed: `make bench` installs bench/requirements.txt"
    reason = system.unavailable_reason()
    if reason is not None:
        return None, (), reason

    def run(scenario: str, repetition: int, tasks: int, rate: float) -> dict[str, Any]:
        return harness.run_repetition(system, scenario, repetition, tasks, rate)

    return run, system.scenarios, None


# The machine.


def _command_output(command: list[str]) -> str:
    try:
        return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def working_tree_fingerprint() -> str:
    """A short hash of the uncommitted changes to tracked files: when Arbiter's code is being edited while
    the benchmark runs, repetitions with different fingerprints measured different code."""
    diff = _command_output(["git", "diff", "HEAD"])
    return hashlib.sha256(diff.encode()).hexdigest()[:12] if diff else "clean"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def postgresql_facts() -> dict[str, Any]:
    try:
        with psycopg.connect(SERVER_URL, connect_timeout=5) as connection:
            facts = {"version": connection.execute("SHOW server_version").fetchone()[0]}  # type: ignore[index]
            for setting in ("fsync", "synchronous_commit", "shared_buffers", "max_connections"):
                facts[setting] = connection.execute(f"SHOW {setting}").fetchone()[0]  # type: ignore[index]
            return facts
    except psycopg.Error as error:
        return {"error": str(error)}


def package_versions() -> dict[str, str]:
    versions = {}
    for name in ("celery", "kombu", "redis", "procrastinate", "psycopg", "grpcio", "matplotlib"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def machine_facts() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory": next(
            (line.split(":", 1)[1].strip() for line in _meminfo() if line.startswith("MemTotal")), "unknown"
        ),
        "postgresql": postgresql_facts(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": _command_output(["git", "rev-parse", "HEAD"]) or "unknown",
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        "git_dirty": bool(_command_output(["git", "status", "--porcelain", "--untracked-files=no"])),
    }


def _meminfo() -> list[str]:
    try:
        return Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return []


# The parts that are not task scenarios.


def run_scale(agents: int | None, pending: int | None) -> dict[str, Any]:
    """bench.scale's one repetition (its own defaults unless given: 1,000 agents, 1,000,000 pending)."""
    try:
        from bench.scale import run_scale as measure_scale  # type: ignore[import-not-found,unused-ignore]
    except ImportError as error:
        return {"skipped": f"bench.scale is not available ({error})"}
    from bench.arbiter_bench import ORCHESTRATOR_ADDRESS, REGISTRY_ADDRESS

    sizes = {name: value for name, value in (("agents", agents), ("pending", pending)) if value is not None}
    wait_for_free_addresses((REGISTRY_ADDRESS, ORCHESTRATOR_ADDRESS))
    result: dict[str, Any] = measure_scale(**sizes)
    return result


def run_routing() -> dict[str, Any]:
    """bench.routing as `make bench` ran it before: its own process, its table on stderr, its results file."""
    completed = subprocess.run(
        [sys.executable, "-m", "bench.routing"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    sys.stderr.write(completed.stdout + completed.stderr)
    routing_json = REPO_ROOT / "bench" / "results" / "routing.json"
    passed = completed.returncode == 0
    return {
        "exit_code": completed.returncode,
        "passed": passed,
        "verdict": "every median within 1 ms" if passed else (completed.stderr.strip() or "failed"),
        "results": json.loads(routing_json.read_text()) if routing_json.exists() else None,
    }


# The run.


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join((*TASK_SCENARIOS, *OTHER_PARTS)), help="comma-separated")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--tasks", type=int, help="tasks per repetition (default 20,000; latency 4,000)")
    parser.add_argument("--rate", type=float, default=LATENCY_RATE, help="latency: tasks per second offered")
    parser.add_argument("--scale-agents", type=int, help="scale: simulated agent streams (default: bench.scale's)")
    parser.add_argument("--scale-pending", type=int, help="scale: pending rows for the claim (default: bench.scale's)")
    parser.add_argument(
        "--held-per-worker",
        type=int,
        help="tasks each worker process holds, running or queued, in Arbiter and Celery (default 16: Celery's)",
    )
    parser.add_argument("--out", type=Path, default=report.RESULTS_PATH)
    arguments = parser.parse_args()
    arguments.scenarios = _choices(arguments.scenarios, (*TASK_SCENARIOS, *OTHER_PARTS), "--scenarios", parser)
    arguments.systems = _choices(arguments.systems, SYSTEMS, "--systems", parser)
    return arguments


def _choices(text: str, allowed: tuple[str, ...], option: str, parser: argparse.ArgumentParser) -> list[str]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [part for part in chosen if part not in allowed]
    if unknown:
        parser.error(f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return chosen


def write_results(path: Path, data: dict[str, Any]) -> None:
    data.update(report.aggregate(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.partial")
    temporary.write_text(json.dumps(data, indent=2, default=str) + "\n")
    temporary.replace(path)


def main() -> int:
    arguments = parse_arguments()
    if arguments.held_per_worker is not None:
        # Read by the worker processes each system starts (they inherit the environment).
        os.environ[HELD_PER_WORKER_VARIABLE] = str(arguments.held_per_worker)
    held_per_worker()  # a figure the workers cannot use fails here, before anything runs
    data: dict[str, Any] = {
        "machine": machine_facts(),
        "repetitions": arguments.repetitions,
        "scenarios": [scenario for scenario in arguments.scenarios if scenario in TASK_SCENARIOS],
        "systems": arguments.systems,
        "method": {
            "workers": (
                f"{AGENT_PROCESSES} worker processes × {AGENT_CONCURRENCY} concurrency, no-op tasks; each worker "
                f"holds up to {held_per_worker()} tasks, running or queued (Arbiter: prefetch_tasks "
                f"{held_per_worker() - AGENT_CONCURRENCY}; Celery: worker_prefetch_multiplier "
                f"{held_per_worker() // AGENT_CONCURRENCY}; procrastinate has no prefetch)"
            ),
            "batch_size": BATCH_SIZE,
            "tasks": {scenario: arguments.tasks or DEFAULT_TASKS[scenario] for scenario in TASK_SCENARIOS},
            "latency_rate": arguments.rate,
            "interleaving": "within each scenario: repetition 1 of every system, then repetition 2, …",
            "ratios": "Arbiter's median ÷ the other system's median, same run",
            "timestamps": TIMESTAMPS,
        },
        "skipped": {},
        "results": [],
    }
    runners: dict[str, tuple[RepetitionRunner, tuple[str, ...]]] = {}
    for name in arguments.systems:
        if name == "arbiter":
            runners[name] = arbiter_runner()
            continue
        runner, scenarios, reason = peer_runner(name)
        if runner is None:
            print(f"{name}: skipped: {reason}", file=sys.stderr, flush=True)
            data["skipped"][name] = reason
            data["results"].append({"system": name, "skipped": reason})
        else:
            runners[name] = (runner, scenarios)
    failures = 0
    for scenario in data["scenarios"]:
        tasks = arguments.tasks or DEFAULT_TASKS[scenario]
        for repetition in range(1, arguments.repetitions + 1):
            for name, (runner, scenarios) in runners.items():
                if scenario not in scenarios:
                    continue
                started, fingerprint = time.monotonic(), working_tree_fingerprint()
                try:
                    result = runner(scenario, repetition, tasks, arguments.rate)
                except Exception as error:  # one failed repetition is reported, the rest of the run goes on
                    traceback.print_exc()
                    failures += 1
                    result = {
                        "system": name,
                        "scenario": scenario,
                        "repetition": repetition,
                        "error": f"{type(error).__name__}: {error}",
                    }
                # A load well above the CPU count after a repetition means other work competed with it.
                result.setdefault("extra", {})["load_average_1m_after"] = round(os.getloadavg()[0], 2)
                result["extra"]["working_tree"] = fingerprint
                data["results"].append(result)
                figures = {key: value for key, value in result.items() if key.endswith(("_second", "_ms"))}
                print(
                    f"{scenario} {repetition}/{arguments.repetitions} {name}: "
                    f"{result.get('error') or figures} ({time.monotonic() - started:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
                write_results(arguments.out, data)
    if "scale" in arguments.scenarios:
        try:
            data["scale"] = run_scale(arguments.scale_agents, arguments.scale_pending)
        except Exception as error:
            traceback.print_exc()
            failures += 1
            data["scale"] = {"error": f"{type(error).__name__}: {error}"}
        print(f"scale: {data['scale']}", file=sys.stderr, flush=True)
    if "routing" in arguments.scenarios:
        data["routing"] = run_routing()
        failures += 0 if data["routing"]["passed"] else 1
    write_results(arguments.out, data)
    for path in report.write_report(data, arguments.out.parent):
        print(f"wrote {path}", file=sys.stderr)
    print(f"wrote {arguments.out}", file=sys.stderr)
    print(report.markdown(data))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
