"""`make loadtest`: many concurrent clients and agents against a live Arbiter for a set time, then a drain.

    python -m bench.loadtest [--duration 60] [--clients 100] [--agents 50] [--out bench/results/loadtest.json]
        [--orchestrator ADDR --registry ADDR --key KEY [--agent-key KEY] [--database-url URL] [--metrics ADDR]...]

Without --orchestrator it starts its own stack: a fresh database (--database-name) on ARBITER_DATABASE_URL's
server (or libpq's PG* variables, or the embedded PostgreSQL `make run` uses), migrated, keys made, both
services as subprocesses with /metrics on. Rate limits are off there by default (--rate-limits): one
submitter key shared by a hundred clients would be refused at the submitter limit, which measures the
limiter rather than the service; `--rate-limits default` keeps the services' own.

Then --agents SDK agents in processes of --agents-per-process, and --clients clients (submitters, watchers,
readers; bench.loadtest.clients) over --client-processes processes, for --duration seconds; then the drain,
until every task a client was given is finished (at most --drain-timeout). Reports per RPC the latency the
clients saw (p50/p95/p99, calls, errors by code), the services' own counts by code and estimated p95/p99
from /metrics, and every submitted task's state in the database. Exits 1 when a task is lost or stuck, a
server error occurred (client or server side) or the error rate is above --max-error-rate; 2 when the
run could not be made.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from bench.arbiter_bench import backends_of, process_cpu_seconds
from bench.loadtest import metrics, report
from bench.loadtest.agents import AgentPlan, agent_process
from bench.loadtest.clients import ClientPlan, client_process, split_clients
from bench.loadtest.stack import UNLIMITED_RATE_LIMITS, Target, own_stack, service_logs
from shared.config import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "loadtest.json"
SHARES = {"submitter": 0.3, "watcher": 0.3, "reader": 0.4}
AGENTS_READY_SECONDS = 120.0
# Client processes connect and start up before the common start time.
CLIENT_START_SECONDS = 5.0
DRAIN_POLL_SECONDS = 0.5
# After the load: the clients' grace for in-flight calls (clients.END_GRACE_SECONDS), writing, exiting.
CLIENT_END_SECONDS = 60.0
STREAMS_CLOSED_SECONDS = 30.0
PROCESS_STOP_SECONDS = 30.0


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loadtest", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    load = parser.add_argument_group("load")
    load.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    load.add_argument("--clients", type=int, default=100, help="concurrent clients, all kinds (default 100)")
    load.add_argument("--client-processes", type=int, default=3, help="processes the clients share (default 3)")
    load.add_argument("--agents", type=int, default=50, help="SDK agents (default 50)")
    load.add_argument("--agents-per-process", type=int, default=10, help="agents per process (default 10)")
    load.add_argument("--think-ms", type=float, default=100.0, help="each client's mean pause between calls")
    load.add_argument("--batch-size", type=int, default=5, help="tasks per SubmitTasks call (default 5)")
    load.add_argument("--call-timeout", type=float, default=10.0, help="deadline of each unary call, seconds")
    load.add_argument("--drain-timeout", type=float, default=120.0, help="longest wait for the tasks to finish")
    load.add_argument("--max-error-rate", type=float, default=0.01, help="fail above this share of failed calls")
    load.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON report (default {DEFAULT_OUT})")
    load.add_argument("--keep-logs", type=Path, help="keep the services' logs and the clients' raw figures here")
    own = parser.add_argument_group("own stack (the default)")
    own.add_argument("--database-name", default="arbiter_loadtest", help="dropped and made afresh each run")
    own.add_argument(
        "--rate-limits",
        default="off",
        help="`off` (default), `default` (the services' own) or an ARBITER_RATE_LIMITS value",
    )
    existing = parser.add_argument_group("an existing deployment")
    existing.add_argument("--orchestrator", help="its address; the load goes there instead of an own stack")
    existing.add_argument("--registry", help="the registry's address")
    existing.add_argument("--key", help="the clients' API key (submitter or above)")
    existing.add_argument("--agent-key", help="the agents' API key (default: --key)")
    existing.add_argument("--database-url", help="its database, to count the tasks (default ARBITER_DATABASE_URL)")
    existing.add_argument("--metrics", action="append", default=[], help="a service's /metrics host:port (repeat)")
    arguments = parser.parse_args(argv)
    if arguments.orchestrator:
        arguments.database_url = arguments.database_url or os.environ.get("ARBITER_DATABASE_URL")
        missing = [name for name in ("registry", "key", "database_url") if not getattr(arguments, name)]
        if missing:
            parser.error(
                "against an existing deployment, also give "
                + ", ".join("--" + name.replace("_", "-") for name in missing)
                + " (the database through --database-url or ARBITER_DATABASE_URL, to count the tasks)"
            )
    if arguments.clients < 3 or arguments.agents < 1:
        parser.error("at least 3 clients (one of each kind) and 1 agent")
    if arguments.duration <= 0 or arguments.client_processes < 1 or arguments.agents_per_process < 1:
        parser.error("--duration, --client-processes and --agents-per-process must be above 0")
    return arguments


def rate_limits_setting(choice: str) -> str | None:
    return {"off": UNLIMITED_RATE_LIMITS, "default": None}.get(choice, choice)


@contextlib.contextmanager
def target_for(arguments: argparse.Namespace, log_dir: Path) -> Iterator[Target]:
    if arguments.orchestrator:
        yield Target(
            registry=arguments.registry,
            orchestrator=arguments.orchestrator,
            client_key=arguments.key,
            agent_key=arguments.agent_key or arguments.key,
            database_url=arguments.database_url,
            metrics=list(arguments.metrics),
        )
        return
    with own_stack(log_dir, arguments.database_name, rate_limits_setting(arguments.rate_limits)) as target:
        yield target


# Processes.

_SPAWN = multiprocessing.get_context("spawn")


def start_agents(target: Target, total: int, per_process: int, id_prefix: str) -> list[BaseProcess]:
    plans = [
        AgentPlan(
            index, min(per_process, total - begin), id_prefix, target.registry, target.orchestrator, target.agent_key
        )
        for index, begin in enumerate(range(0, total, per_process))
    ]
    processes: list[BaseProcess] = [_SPAWN.Process(target=agent_process, args=(plan,), daemon=True) for plan in plans]
    for process in processes:
        process.start()
    return processes


def stop_processes(processes: Sequence[BaseProcess]) -> None:
    """SIGTERM (agents drain), then a bounded wait, then SIGKILL."""
    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
    for process in processes:
        process.join(timeout=PROCESS_STOP_SECONDS)
        if process.is_alive():
            process.kill()
            process.join()


def check_alive(processes: Sequence[BaseProcess], what: str) -> None:
    for process in processes:
        if not process.is_alive() and process.exitcode not in (0, None):
            raise RuntimeError(f"a {what} process exited with code {process.exitcode}")


# The database: the system's own record, read from outside the services.


def open_streams(connection: psycopg.Connection[Any], id_prefix: str) -> int:
    """The assignment streams the orchestrator records as open for this run's agents."""
    row = connection.execute(
        "SELECT count(*) FROM agent_streams WHERE agent_id LIKE %s", (f"%{id_prefix}-%",)
    ).fetchone()
    return int(row[0]) if row else 0


def wait_for_agent_streams(database_url: str, id_prefix: str, expected: int, agents: Sequence[BaseProcess]) -> float:
    """Until the orchestrator records an open stream for each agent; the seconds it took."""
    started = time.monotonic()
    with psycopg.connect(database_url, autocommit=True) as connection:
        while (count := open_streams(connection, id_prefix)) < expected:
            check_alive(agents, "agent")
            if time.monotonic() - started > AGENTS_READY_SECONDS:
                raise RuntimeError(f"only {count} of {expected} agents opened their stream in time")
            time.sleep(DRAIN_POLL_SECONDS)
    return time.monotonic() - started


def wait_for_streams_closed(database_url: str, id_prefix: str) -> int:
    """After the agents stopped: until the orchestrator has seen every stream end (so that /metrics count
    them), at most STREAMS_CLOSED_SECONDS; how many it still holds open."""
    deadline = time.monotonic() + STREAMS_CLOSED_SECONDS
    with psycopg.connect(database_url, autocommit=True) as connection:
        while (count := open_streams(connection, id_prefix)) and time.monotonic() < deadline:
            time.sleep(DRAIN_POLL_SECONDS)
    return count


def unfinished_count(connection: psycopg.Connection[Any], task_ids: list[str]) -> int:
    row = connection.execute(
        "SELECT count(*) FROM tasks WHERE id = ANY(%s::uuid[]) AND NOT state = ANY(%s)",
        (task_ids, sorted(report.FINAL_STATES)),
    ).fetchone()
    return int(row[0]) if row else 0


def drain(database_url: str, task_ids: list[str], timeout: float) -> float:
    """Waits until none of `task_ids` is in a non-final state, at most `timeout`; the seconds it took."""
    started = time.monotonic()
    with psycopg.connect(database_url, autocommit=True) as connection:
        while unfinished_count(connection, task_ids) and time.monotonic() - started < timeout:
            time.sleep(DRAIN_POLL_SECONDS)
    return time.monotonic() - started


def task_states(database_url: str, task_ids: list[str]) -> dict[str, str]:
    with psycopg.connect(database_url) as connection:
        rows = connection.execute(
            "SELECT id::text, state FROM tasks WHERE id = ANY(%s::uuid[])", (task_ids,)
        ).fetchall()
    return {task_id: state for task_id, state in rows}


def machine_cpu_seconds() -> tuple[float, float]:
    """Busy and total CPU seconds of the whole machine since boot (/proc/stat), all cores together."""
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / ticks, sum(fields[:8]) / ticks


def cpu_seconds(target: Target) -> dict[str, float]:
    """CPU seconds used so far: the machine (busy, total) and, on an own stack, each service and the
    PostgreSQL backends serving its database (bench.arbiter_bench reads them the same way)."""
    busy, total = machine_cpu_seconds()
    used = {"machine_busy": busy, "machine_total": total}
    if len(target.processes) == 2:
        registry, orchestrator = target.processes
        database = conninfo_to_dict(target.database_url).get("dbname", "")
        used["registry"] = process_cpu_seconds(registry.pid)
        used["orchestrator"] = process_cpu_seconds(orchestrator.pid)
        used["postgres"] = sum(process_cpu_seconds(pid) for pid in backends_of(str(database)))
    return used


def cpu_share(before: dict[str, float], after: dict[str, float], cpus: int) -> dict[str, float]:
    """Over the load window: how busy the machine was (share of all its cores) and how many cores each
    part of the stack used on average."""
    elapsed = (after["machine_total"] - before["machine_total"]) / cpus
    shares = {"machine_busy": (after["machine_busy"] - before["machine_busy"]) / (elapsed * cpus)}
    for part in ("registry", "orchestrator", "postgres"):
        if part in before and part in after:
            shares[f"{part}_cores"] = (after[part] - before[part]) / elapsed
    return {name: round(value, 3) for name, value in shares.items()}


def scrape_all(addresses: Sequence[str]) -> metrics.ServerSample:
    return metrics.parse([metrics.scrape(address) for address in addresses])


# The run.


def run_load(arguments: argparse.Namespace, target: Target, scratch: Path) -> dict[str, Any]:
    id_prefix = f"loadtest-{secrets.token_hex(3)}"
    # Before the agents start, so that their registrations and streams are counted too.
    before = scrape_all(target.metrics)
    agents = start_agents(target, arguments.agents, arguments.agents_per_process, id_prefix)
    clients: list[BaseProcess] = []
    try:
        agents_ready_seconds = wait_for_agent_streams(target.database_url, id_prefix, arguments.agents, agents)
        start_at = time.time() + CLIENT_START_SECONDS
        # At least one client of each kind per process, so that its watchers and readers have its
        # submitters' tasks to look at.
        processes = max(1, min(arguments.client_processes, arguments.clients // len(SHARES)))
        splits = split_clients(arguments.clients, processes, SHARES)
        plans = [
            ClientPlan(
                process_index=index,
                clients=split,
                orchestrator=target.orchestrator,
                registry=target.registry,
                key=target.client_key,
                start_at=start_at,
                duration=arguments.duration,
                think_seconds=arguments.think_ms / 1000,
                batch_size=arguments.batch_size,
                call_timeout=arguments.call_timeout,
                out_path=str(scratch / f"clients-{index}.json"),
            )
            for index, split in enumerate(splits)
        ]
        load_before = os.getloadavg()
        cpu_before = cpu_seconds(target)
        clients = [_SPAWN.Process(target=client_process, args=(plan,), daemon=True) for plan in plans]
        for process in clients:
            process.start()
        # The clients stop themselves; the bound only guards against a hung one.
        for process in clients:
            process.join(timeout=max(0.0, start_at + arguments.duration - time.time()) + CLIENT_END_SECONDS)
        load_during = os.getloadavg()
        cpu_used = cpu_share(cpu_before, cpu_seconds(target), os.cpu_count() or 1)
        failed = [process.exitcode for process in clients if process.exitcode != 0]  # None: still running
        if failed:
            raise RuntimeError(f"{len(failed)} client process(es) failed (exit codes {failed}); see stderr")
        results = [json.loads(Path(plan.out_path).read_text()) for plan in plans]
        submitted = [task_id for result in results for task_id in result["submitted"]]
        drain_seconds = drain(target.database_url, submitted, arguments.drain_timeout)
    finally:
        stop_processes(clients)
        stop_processes(agents)
    streams_left_open = wait_for_streams_closed(target.database_url, id_prefix)
    after = scrape_all(target.metrics)
    states = task_states(target.database_url, submitted)
    return {
        "splits": splits,
        "results": results,
        "submitted": submitted,
        "states": states,
        "server": metrics.difference(after, before) if target.metrics else None,
        "agents_ready_seconds": agents_ready_seconds,
        "drain_seconds": drain_seconds,
        "streams_left_open": streams_left_open,
        "cpu": cpu_used,
        "load_average": {"before_clients": load_before, "after_clients": load_during},
    }


def build_report(
    arguments: argparse.Namespace, target: Target, measured: dict[str, Any], load_at_start: Any
) -> dict[str, Any]:
    results = measured["results"]
    latencies: dict[str, list[float]] = {}
    for result in results:
        for rpc, values in result["latencies_ms"].items():
            latencies.setdefault(rpc, []).extend(values)
    rpcs = report.rpc_figures(latencies, report.merge_counts(result["codes"] for result in results))
    errors = report.summarise_errors(rpcs)
    account = report.account_tasks(measured["submitted"], measured["states"])
    server = measured["server"]
    server_figures = metrics.server_figures(server) if server is not None else {}
    server_errors = report.server_side_errors(server.handled) if server is not None else {}
    failures = report.failures(errors, server_errors, account, arguments.max_error_rate)
    completed = account.by_state.get("completed", 0)
    return {
        "setup": {
            "duration_seconds": arguments.duration,
            "clients": dict(zip(report_kinds(), kind_totals(measured["splits"]), strict=True)),
            "client_processes": len(measured["splits"]),
            "agents": arguments.agents,
            "agent_processes": math.ceil(arguments.agents / arguments.agents_per_process),
            "think_ms": arguments.think_ms,
            "batch_size": arguments.batch_size,
            "call_timeout_seconds": arguments.call_timeout,
            "target": "existing deployment" if arguments.orchestrator else "own stack (fresh database)",
            "git_commit": git_commit(),
            "orchestrator": target.orchestrator,
            "registry": target.registry,
            "rate_limits": target.rate_limits,
            "cpus": os.cpu_count(),
            "load_average_1_5_15_at_start": [round(value, 2) for value in load_at_start],
            "load_average_1_5_15_after_load": [round(value, 2) for value in measured["load_average"]["after_clients"]],
            "cpu_during_load": measured["cpu"],
        },
        "rpcs": [asdict(figures) | {"errors": figures.errors} for figures in rpcs],
        "errors": asdict(errors) | {"errors": errors.errors, "error_rate": errors.error_rate},
        "calls_per_second": errors.calls / arguments.duration,
        "server": server_figures,
        "server_errors": server_errors,
        "tasks": asdict(account) | {"lost": account.lost, "stuck": account.stuck},
        "tasks_submitted_per_second": account.submitted / arguments.duration,
        "tasks_completed_per_second": completed / (arguments.duration + measured["drain_seconds"]),
        "agents_ready_seconds": round(measured["agents_ready_seconds"], 2),
        "drain_seconds": round(measured["drain_seconds"], 2),
        "agent_streams_left_open_after_stop": measured["streams_left_open"],
        "watches_open_at_end": sum(result["watches_open_at_end"] for result in results),
        "max_error_rate": arguments.max_error_rate,
        "failures": failures,
        "passed": not failures,
    }


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def report_kinds() -> tuple[str, ...]:
    return tuple(SHARES)


def kind_totals(splits: list[dict[str, int]]) -> list[int]:
    return [sum(split.get(kind, 0) for split in splits) for kind in SHARES]


def render(figures: dict[str, Any]) -> str:
    setup = figures["setup"]
    rpcs = [
        report.RpcFigures(**{key: value for key, value in rpc.items() if key != "errors"}) for rpc in figures["rpcs"]
    ]
    errors = figures["errors"]
    tasks = figures["tasks"]
    clients = ", ".join(f"{count} {kind}s" for kind, count in setup["clients"].items())
    lines = [
        f"Load test: {setup['duration_seconds']:g} s, {clients} in {setup['client_processes']} processes, "
        f"{setup['agents']} agents in {setup['agent_processes']} processes; {setup['target']}",
        f"rate limits: {setup['rate_limits']}; load average at start {setup['load_average_1_5_15_at_start']} "
        f"on {setup['cpus']} CPUs, after the load {setup['load_average_1_5_15_after_load']}",
        "CPU during the load: "
        + ", ".join(
            f"machine {value:.0%} busy"
            if name == "machine_busy"
            else f"{name.removesuffix('_cores')} {value:.2f} cores"
            for name, value in setup["cpu_during_load"].items()
        ),
        "",
        "Client side (every call, failed ones included):",
        report.rpc_table(rpcs, setup["duration_seconds"]),
        "",
        f"calls {errors['calls']} ({figures['calls_per_second']:.1f}/s); errors {errors['errors']} "
        f"(rate {errors['error_rate']:.4%}): refused (RESOURCE_EXHAUSTED) {errors['refused']}, "
        f"server errors {errors['server_errors']}, other {errors['other_errors']}",
    ]
    if figures["server"]:
        lines += ["", "Server side (grpc_server_handled_total; ~p95/p99 estimated from the histogram buckets):"]
        lines.append(report.server_table(figures["server"]))
    else:
        lines += ["", "Server side: not scraped (give --metrics host:port for each service)"]
    lost, stuck = tasks["lost"], tasks["stuck"]
    lines += [
        "",
        f"tasks: {tasks['submitted']} submitted ({figures['tasks_submitted_per_second']:.1f}/s), by state "
        f"{tasks['by_state']}; completed {figures['tasks_completed_per_second']:.1f}/s over the run and the "
        f"drain ({figures['drain_seconds']:g} s); lost {len(lost)}, stuck {len(stuck)}",
        "",
        "PASSED" if figures["passed"] else "FAILED:\n  " + "\n  ".join(figures["failures"]),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    load_at_start = os.getloadavg()
    with contextlib.ExitStack() as cleanup:
        if arguments.keep_logs:
            scratch_dir = arguments.keep_logs
            scratch_dir.mkdir(parents=True, exist_ok=True)
        else:
            scratch_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="arbiter-loadtest-")))
        try:
            with target_for(arguments, scratch_dir) as target:
                measured = run_load(arguments, target, scratch_dir)
        except (RuntimeError, OSError, psycopg.Error, ConfigError) as error:
            print(f"loadtest: the run could not be made: {error}", file=sys.stderr)
            print(service_logs(scratch_dir), file=sys.stderr)
            return 2
    figures = build_report(arguments, target, measured, load_at_start)
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(without_nan(figures), indent=2, allow_nan=False) + "\n")
    print(render(figures))
    print(f"\nwritten to {arguments.out}")
    return 0 if figures["passed"] else 1


def without_nan(value: Any) -> Any:
    """NaN (a figure with no calls behind it) as JSON null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: without_nan(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [without_nan(item) for item in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
