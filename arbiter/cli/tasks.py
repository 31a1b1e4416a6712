"""`arbiter tasks`: submit, get, list, watch, trace the history of, explain the routing of, and cancel
tasks."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from arbiter.cli.options import (
    Connection,
    Subcommands,
    UsageError,
    add_requirement_options,
    calls_services,
    positive_int,
    positive_seconds,
    service_options,
)
from arbiter.cli.output import (
    compact_json,
    format_age,
    format_clock,
    format_labels,
    format_list,
    format_percent,
    format_score,
    format_time,
    note,
    print_fields,
    print_json,
    print_json_line,
    print_section,
    print_table,
)
from arbiter.errors import WaitTimeout
from arbiter.models import RoutingDecision, RoutingExplanation, TaskInfo, TaskState

EXIT_CODES = """exit codes (watch, and submit --wait):
  0    the task is COMPLETED
  1    the task is FAILED or CANCELLED, or a call was refused
  124  --timeout / --wait-timeout passed first (the task goes on)"""

STATE_NAMES = [state.name.lower() for state in TaskState]
JSON_TYPE_NAMES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true or false"}


def add_commands(commands: Subcommands) -> None:
    tasks = commands.add_parser(
        "tasks",
        help="submit, get, list, watch, history, explain and cancel tasks",
        description="Submit, get, list, watch, trace, explain the routing of, and cancel tasks.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    task_commands = tasks.add_subparsers(dest="tasks_command", required=True, title="commands", metavar="COMMAND")
    # submit and watch have a --timeout of their own; the call deadline is --call-timeout there.
    with_deadline_flag = service_options(timeout_flags=("--call-timeout",))

    submit = task_commands.add_parser(
        "submit",
        parents=[with_deadline_flag],
        help="submit a task",
        description="Submit one task and print it; with --wait, wait until it finishes and print that.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    submit.add_argument("task_type", metavar="TYPE", help="the task type, e.g. code-review")
    payload = submit.add_mutually_exclusive_group()
    payload.add_argument("--payload", metavar="JSON", help="a JSON object, e.g. '{\"pullRequest\": 7}'")
    payload.add_argument("--payload-file", metavar="PATH", help="read the JSON object from a file (- for stdin)")
    submit.add_argument(
        "--priority", type=int, default=0, metavar="N", help="-1000..1000, higher runs first (default: 0)"
    )
    submit.add_argument("--max-attempts", type=int, default=0, metavar="N", help="1..100 (default: the server's, 3)")
    submit.add_argument("--timeout", type=positive_seconds, metavar="SECONDS", help="bound on one attempt")
    submit.add_argument(
        "--schedule-to-start-timeout",
        type=positive_seconds,
        metavar="SECONDS",
        help="fail the task if no agent starts it within this long",
    )
    submit.add_argument("--idempotency-key", default="", metavar="KEY", help="a repeat returns the first task")
    add_requirement_options(submit)
    submit.add_argument("--wait", action="store_true", help="wait until the task is finished")
    submit.add_argument(
        "--wait-timeout", type=positive_seconds, metavar="SECONDS", help="stop waiting after this long (implies --wait)"
    )
    submit.set_defaults(run=calls_services(submit_task))

    get = task_commands.add_parser("get", parents=[service_options()], help="show one task")
    get.add_argument("task_id", metavar="ID")
    get.set_defaults(run=calls_services(get_task))

    listing = task_commands.add_parser("list", parents=[service_options()], help="list tasks, newest first")
    listing.add_argument("--state", type=str.lower, choices=STATE_NAMES)
    listing.add_argument("--type", dest="task_type", default="", metavar="TYPE")
    listing.add_argument("--limit", type=positive_int, default=50, metavar="N", help="at most N tasks (default: 50)")
    listing.set_defaults(run=calls_services(list_tasks))

    watch = task_commands.add_parser(
        "watch",
        parents=[with_deadline_flag],
        help="print a task and each change until it is finished",
        description="Print the task now and each time it changes, one line each, until it is finished. "
        "With --json, one JSON object per line.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    watch.add_argument("task_id", metavar="ID")
    watch.add_argument("--timeout", type=positive_seconds, metavar="SECONDS", help="stop watching after this long")
    watch.set_defaults(run=calls_services(watch_task))

    history = task_commands.add_parser(
        "history", parents=[service_options()], help="every state change of a task, and why"
    )
    history.add_argument("task_id", metavar="ID")
    history.set_defaults(run=calls_services(task_history))

    explain = task_commands.add_parser(
        "explain",
        parents=[service_options()],
        help="why a task went to its agent, or why it still waits",
        description="Every routing decision of a task (attempt, agent, strategy, confidence, score, whether "
        "it explored, why, and the other agents weighed), and while it is PENDING why it waits and how the "
        "agents that could take it score now.",
    )
    explain.add_argument("task_id", metavar="ID")
    explain.set_defaults(run=calls_services(explain_task))

    cancel = task_commands.add_parser("cancel", parents=[service_options()], help="cancel an unfinished task")
    cancel.add_argument("task_id", metavar="ID")
    cancel.add_argument("--reason", default="", help="recorded as the task's error")
    cancel.set_defaults(run=calls_services(cancel_task))


def read_payload(arguments: argparse.Namespace) -> dict[str, Any]:
    if arguments.payload_file is not None:
        source = "--payload-file"
        try:
            text = sys.stdin.read() if arguments.payload_file == "-" else Path(arguments.payload_file).read_text()
        except OSError as error:
            raise UsageError(f"cannot read --payload-file {arguments.payload_file}: {error.strerror}") from None
    elif arguments.payload is not None:
        source, text = "--payload", arguments.payload
    else:
        return {}
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"{source} is not valid JSON: {error}") from None
    if not isinstance(payload, dict):
        got = JSON_TYPE_NAMES.get(type(payload), "null")
        raise UsageError(f'{source} must be a JSON object, e.g. \'{{"text": "hello"}}\'; got {got}')
    return payload


def finished_exit_code(task: TaskInfo) -> int:
    return 0 if task.state == TaskState.COMPLETED else 1


async def submit_task(arguments: argparse.Namespace, connection: Connection) -> int:
    payload = read_payload(arguments)
    wait = arguments.wait or arguments.wait_timeout is not None
    async with connection.client() as client:
        task = await client.submit(
            arguments.task_type,
            payload,
            priority=arguments.priority,
            max_attempts=arguments.max_attempts,
            timeout=arguments.timeout,
            idempotency_key=arguments.idempotency_key,
            languages=arguments.languages,
            specializations=arguments.specializations,
            labels=dict(arguments.labels),
            schedule_to_start_timeout=arguments.schedule_to_start_timeout,
        )
        if not task.created:
            note(f"a task with idempotency key '{arguments.idempotency_key}' already exists: this is that task")
        if wait:
            task = await client.wait(task.id, timeout=arguments.wait_timeout)
    show_task(task, as_json=arguments.json)
    return finished_exit_code(task) if wait else 0


async def get_task(arguments: argparse.Namespace, connection: Connection) -> int:
    async with connection.client() as client:
        task = await client.get(arguments.task_id)
    show_task(task, as_json=arguments.json)
    return 0


async def list_tasks(arguments: argparse.Namespace, connection: Connection) -> int:
    state = TaskState.parse(arguments.state) if arguments.state else None
    async with connection.client() as client:
        tasks = await client.list_tasks(state=state, task_type=arguments.task_type, limit=arguments.limit)
    if arguments.json:
        print_json(tasks)
        return 0
    print_table(
        ["ID", "TYPE", "STATE", "PRIORITY", "ATTEMPT", "AGENT", "PROGRESS", "CREATED", "UPDATED"],
        (
            [
                task.id,
                task.task_type,
                task.state.name.lower(),
                str(task.priority),
                f"{task.attempt}/{task.max_attempts}",
                task.assigned_agent_id or "-",
                format_percent(task.progress),
                format_age(task.created_at),
                format_age(task.updated_at),
            ]
            for task in tasks
        ),
        empty="no tasks match" if state or arguments.task_type else "no tasks",
    )
    return 0


async def watch_task(arguments: argparse.Namespace, connection: Connection) -> int:
    async with connection.client() as client:
        watching = client.watch(arguments.task_id)
        task: TaskInfo | None = None
        try:
            async with asyncio.timeout(arguments.timeout):
                async for task in watching:
                    if arguments.json:
                        print_json_line(task)
                    else:
                        print(watch_line(task), flush=True)
        except TimeoutError:
            state = task.state.name if task else "unknown"
            raise WaitTimeout(
                f"task {arguments.task_id} is still {state} after {arguments.timeout:g} s (--timeout); it goes on"
            ) from None
        finally:
            await watching.aclose()
    assert task is not None  # watch() always yields the task first
    return finished_exit_code(task)


async def task_history(arguments: argparse.Namespace, connection: Connection) -> int:
    async with connection.client() as client:
        events = await client.history(arguments.task_id)
    if arguments.json:
        print_json(events)
        return 0
    print_table(
        ["TIME", "FROM", "TO", "ATTEMPT", "AGENT", "REASON"],
        (
            [
                format_clock(event.time),
                event.from_state.name.lower() if event.from_state else "-",
                event.to_state.name.lower(),
                str(event.attempt),
                event.agent_id or "-",
                event.reason or "-",
            ]
            for event in events
        ),
        empty="no events",
    )
    return 0


async def explain_task(arguments: argparse.Namespace, connection: Connection) -> int:
    async with connection.client() as client:
        explanation = await client.explain_routing(arguments.task_id)
    if arguments.json:
        print_json(explanation)
    else:
        show_explanation(explanation)
    return 0


def show_explanation(explanation: RoutingExplanation) -> None:
    """The task's routing in brief, then a table of decisions, one of the alternatives they weighed, and
    while PENDING one of the candidates as they score now."""
    task = explanation.task
    print_fields(
        [
            ("id", task.id),
            ("type", task.task_type),
            ("state", task.state.name.lower()),
            ("attempt", f"{task.attempt} of {task.max_attempts}"),
            ("agent", task.assigned_agent_id or "-"),
            ("strategy", f"{explanation.strategy or '-'} (the answering orchestrator's)"),
            *routing_fields(task),
        ]
    )
    decisions = explanation.decisions
    print_section(
        "decisions",
        ["ATTEMPT", "AGENT", "STRATEGY", "CONFIDENCE", "SCORE", "EXPLORED", "DECIDED", "REASON"],
        (
            [
                str(decision.attempt),
                decision.agent_id,
                decision.strategy or "-",
                format_score(decision.confidence),
                format_score(decision.score),
                "yes" if decision.explored else "no",
                format_clock(decision.decided_at),
                decision.reason or "-",
            ]
            for decision in decisions
        ),
        empty="no routing decisions yet: no attempt has been assigned",
    )
    print_section(
        "alternatives weighed",
        ["ATTEMPT", "AGENT", "SCORE", "REASON"],
        (
            [str(decision.attempt), alternative.agent_id, format_score(alternative.score), alternative.reason or "-"]
            for decision in decisions
            for alternative in decision.alternatives
        ),
    )
    if task.state == TaskState.PENDING:
        print_section(
            "candidates now",
            ["AGENT", "SCORE", "REASON"],
            (
                [candidate.agent_id, format_score(candidate.score), candidate.reason or "-"]
                for candidate in explanation.candidates
            ),
            empty="no registered agent can take this task now",
        )


def routing_fields(task: TaskInfo) -> list[tuple[str, str]]:
    """Why the task waits, and how its current (or last) attempt was routed, when there is something to say."""
    fields = []
    if task.pending_reason:
        fields.append(("waiting", task.pending_reason))
    if task.routing is not None:
        fields.append(("routing", routing_summary(task.routing)))
    return fields


def routing_summary(decision: RoutingDecision) -> str:
    """`attempt 1 to reviewer-1 by ucb (explored): highest UCB score 1.70 (…) among 2 agents`."""
    explored = " (explored)" if decision.explored else ""
    return f"attempt {decision.attempt} to {decision.agent_id} by {decision.strategy}{explored}: {decision.reason}"


async def cancel_task(arguments: argparse.Namespace, connection: Connection) -> int:
    async with connection.client() as client:
        task = await client.cancel(arguments.task_id, arguments.reason)
    show_task(task, as_json=arguments.json)
    return 0


def show_task(task: TaskInfo, *, as_json: bool) -> None:
    if as_json:
        print_json(task)
        return
    fields = [
        ("id", task.id),
        ("type", task.task_type),
        ("state", task.state.name.lower()),
        ("priority", str(task.priority)),
        ("attempt", f"{task.attempt} of {task.max_attempts}"),
        ("agent", task.assigned_agent_id or "-"),
        ("progress", " ".join(filter(None, [format_percent(task.progress), task.progress_message]))),
        ("timeout", f"{task.timeout.total_seconds():g} s" if task.timeout else "-"),
        ("languages", format_list(task.languages)),
        ("specializations", format_list(task.specializations)),
        ("labels", format_labels(task.labels)),
        ("idempotency key", task.idempotency_key or "-"),
        ("created", format_time(task.created_at)),
        ("updated", format_time(task.updated_at)),
        ("lease expires", format_time(task.lease_expires_at)),
        ("not before", format_time(task.not_before)),
        *routing_fields(task),
        ("payload", compact_json(task.payload)),
    ]
    if task.result is not None:
        fields.append(("result", compact_json(task.result)))
    if task.error:
        fields.append(("error", task.error))
    print_fields(fields)


def watch_line(task: TaskInfo) -> str:
    """`12:00:03.214  running    attempt 1/3  agent reviewer-1  progress 50% halfway`."""
    clock = task.updated_at.astimezone().strftime("%H:%M:%S.%f")[:-3] if task.updated_at else "--:--:--.---"
    parts = [
        clock,
        f"{task.state.name.lower():<9}",
        f"attempt {task.attempt}/{task.max_attempts}",
        f"agent {task.assigned_agent_id or '-'}",
        " ".join(filter(None, ["progress", format_percent(task.progress), task.progress_message])),
    ]
    if task.result is not None:
        parts.append(f"result {compact_json(task.result)}")
    if task.error:
        parts.append(f"error {task.error}")
    return "  ".join(parts)
