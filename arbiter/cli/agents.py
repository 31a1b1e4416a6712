"""`arbiter agents`: list and show the agents the registry knows, find those that could take a task, and
deregister one."""

from __future__ import annotations

import argparse

from arbiter.cli.options import (
    Connection,
    Subcommands,
    add_requirement_options,
    calls_services,
    fraction,
    positive_int,
    service_options,
)
from arbiter.cli.output import (
    format_age,
    format_labels,
    format_list,
    format_milliseconds,
    format_percent,
    format_score,
    format_time,
    format_window,
    print_fields,
    print_json,
    print_table,
)
from arbiter.models import AgentInfo, AgentStatus, PerformanceWindow, TaskTypePerformance

STATUS_NAMES = [status.name.lower() for status in AgentStatus if status != AgentStatus.UNKNOWN]


def add_commands(commands: Subcommands) -> None:
    agents = commands.add_parser(
        "agents",
        help="list, show, find and deregister agents",
        description="List and show agents, find those that could take a task, and deregister one.",
    )
    agent_commands = agents.add_subparsers(dest="agents_command", required=True, title="commands", metavar="COMMAND")

    listing = agent_commands.add_parser("list", parents=[service_options()], help="list agents")
    listing.add_argument("--task-type", default="", metavar="T", help="only agents that take this task type")
    listing.add_argument("--status", type=str.lower, choices=STATUS_NAMES)
    listing.add_argument("--limit", type=positive_int, default=100, metavar="N", help="at most N agents (default: 100)")
    listing.set_defaults(run=calls_services(list_agents))

    show = agent_commands.add_parser("show", parents=[service_options()], help="show one agent")
    show.add_argument("agent_id", metavar="ID")
    show.set_defaults(run=calls_services(show_agent))

    deregister = agent_commands.add_parser(
        "deregister",
        parents=[service_options()],
        help="remove an agent from the registry",
        description="Remove an agent from the registry (an admin or operator key, or the agent's own key). An "
        "agent still running registers again at its next heartbeat: stop it first. Exit 1 with NOT_FOUND when "
        "there is no such agent.",
    )
    deregister.add_argument("agent_id", metavar="ID")
    deregister.set_defaults(run=calls_services(deregister_agent))

    find = agent_commands.add_parser(
        "find",
        parents=[service_options()],
        help="agents that could take a task now, best first",
        description="The ONLINE and BUSY agents that could take a task with these requirements now, best "
        "first (success rate on the task type, then match score), each with its score and why.",
    )
    find.add_argument("--task-type", required=True, metavar="T", help="the task type (required)")
    add_requirement_options(find)
    find.add_argument(
        "--max-utilization", type=fraction, metavar="X", help="only agents at most this busy, 0..1 (default: any)"
    )
    find.add_argument(
        "--min-success-rate",
        type=fraction,
        default=0.0,
        metavar="Y",
        help="only agents with at least this success rate on the task type, 0..1 (default: 0)",
    )
    find.add_argument(
        "--limit", type=positive_int, default=10, metavar="N", help="at most N agents, up to 500 (default: 10)"
    )
    find.set_defaults(run=calls_services(find_agents))


async def list_agents(arguments: argparse.Namespace, connection: Connection) -> int:
    status = AgentStatus[arguments.status.upper()] if arguments.status else None
    async with connection.client() as client:
        agents = await client.list_agents(task_type=arguments.task_type, status=status, limit=arguments.limit)
    if arguments.json:
        print_json(agents)
        return 0
    print_table(
        ["ID", "STATUS", "TASK TYPES", "ACTIVE", "UTILIZATION", "SUCCESS", "TASKS", "LAST HEARTBEAT"],
        (
            [
                agent.id,
                agent.status.name.lower(),
                format_list(agent.task_types),
                f"{agent.active_tasks}/{agent.max_concurrent_tasks}",
                format_percent(agent.utilization),
                format_percent(agent.success_rate) if agent.task_count else "-",
                str(agent.task_count),
                format_age(agent.last_heartbeat_at),
            ]
            for agent in agents
        ),
        empty="no agents match" if status or arguments.task_type else "no agents",
    )
    return 0


async def show_agent(arguments: argparse.Namespace, connection: Connection) -> int:
    async with connection.client() as client:
        agent = await client.get_agent(arguments.agent_id)
    if arguments.json:
        print_json(agent)
    else:
        print_fields(agent_fields(agent))
    return 0


async def deregister_agent(arguments: argparse.Namespace, connection: Connection) -> int:
    async with connection.client() as client:
        await client.deregister(arguments.agent_id)
    if arguments.json:
        print_json({"agent_id": arguments.agent_id, "deregistered": True})
    else:
        print(f"agent {arguments.agent_id} deregistered")
    return 0


async def find_agents(arguments: argparse.Namespace, connection: Connection) -> int:
    async with connection.client() as client:
        candidates = await client.find_candidates(
            arguments.task_type,
            languages=arguments.languages,
            specializations=arguments.specializations,
            labels=dict(arguments.labels),
            max_utilization=arguments.max_utilization,
            min_success_rate=arguments.min_success_rate,
            limit=arguments.limit,
        )
    if arguments.json:
        print_json(candidates)
        return 0
    print_table(
        ["ID", "STATUS", "SCORE", "SUCCESS", "ACTIVE", "REASON"],
        (
            [
                candidate.agent.id,
                candidate.agent.status.name.lower(),
                format_score(candidate.score),
                format_score(candidate.success_rate),
                f"{candidate.agent.active_tasks}/{candidate.agent.max_concurrent_tasks}",
                candidate.reason,
            ]
            for candidate in candidates
        ),
        empty=f"no ONLINE or BUSY agent can take such a '{arguments.task_type}' task",
    )
    return 0


def agent_fields(agent: AgentInfo) -> list[tuple[str, str]]:
    return [
        ("id", agent.id),
        ("name", agent.name or "-"),
        ("model family", agent.model_family or "-"),
        ("status", agent.status.name.lower()),
        ("task types", format_list(agent.task_types)),
        ("languages", format_list(agent.languages)),
        ("specializations", format_list(agent.specializations)),
        ("labels", format_labels(agent.labels)),
        ("active tasks", f"{agent.active_tasks} of {agent.max_concurrent_tasks} ({format_percent(agent.utilization)})"),
        ("prefetch", f"{agent.prefetch_tasks} more queued" if agent.prefetch_tasks else "-"),
        (
            "success rate",
            f"{format_percent(agent.success_rate)} of {agent.task_count} tasks" if agent.task_count else "-",
        ),
        ("average quality", format_score(agent.average_quality) if agent.task_count else "-"),
        ("average latency", format_milliseconds(agent.average_latency_ms) if agent.task_count else "-"),
        ("degraded", f"yes: {agent.degraded_reason}" if agent.degraded else "no"),
        *((f"on {performance.task_type}", task_type_record(performance)) for performance in agent.by_task_type),
        *((f"last {format_window(window.length)}", window_record(window)) for window in agent.windows),
        ("registered", format_time(agent.registered_at)),
        ("last heartbeat", f"{format_time(agent.last_heartbeat_at)} ({format_age(agent.last_heartbeat_at)})"),
    ]


def task_type_record(performance: TaskTypePerformance) -> str:
    """`success 75% of 4 tasks, quality 0.80, latency 120ms`; with no task yet, the priors it starts from."""
    if not performance.task_count:
        return (
            f"no tasks yet (starts at success {format_percent(performance.success_rate)}, "
            f"quality {format_score(performance.average_quality)})"
        )
    tasks = "task" if performance.task_count == 1 else "tasks"
    return (
        f"success {format_percent(performance.success_rate)} of {performance.task_count} {tasks}, "
        f"quality {format_score(performance.average_quality)}, "
        f"latency {format_milliseconds(performance.average_latency_ms)}"
    )


def window_record(window: PerformanceWindow) -> str:
    """`4 tasks, success 75%, quality 0.90, latency 120ms` (raw, no prior); `no tasks` when empty."""
    if not window.task_count:
        return "no tasks"
    tasks = "task" if window.task_count == 1 else "tasks"
    quality = format_score(window.average_quality) if window.average_quality else "-"
    return (
        f"{window.task_count} {tasks}, success {format_percent(window.success_rate)}, quality {quality}, "
        f"latency {format_milliseconds(window.average_latency_ms)}"
    )
