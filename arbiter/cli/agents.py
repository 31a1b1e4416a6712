"""`arbiter agents`: list and show the agents the registry knows."""

from __future__ import annotations

import argparse

from arbiter.cli.options import Connection, Subcommands, calls_services, positive_int, service_options
from arbiter.cli.output import (
    format_age,
    format_labels,
    format_list,
    format_percent,
    format_time,
    print_fields,
    print_json,
    print_table,
)
from arbiter.models import AgentInfo, AgentStatus

STATUS_NAMES = [status.name.lower() for status in AgentStatus if status != AgentStatus.UNKNOWN]


def add_commands(commands: Subcommands) -> None:
    agents = commands.add_parser("agents", help="list and show agents", description="List and show agents.")
    agent_commands = agents.add_subparsers(dest="agents_command", required=True, title="commands", metavar="COMMAND")

    listing = agent_commands.add_parser("list", parents=[service_options()], help="list agents")
    listing.add_argument("--task-type", default="", metavar="T", help="only agents that take this task type")
    listing.add_argument("--status", type=str.lower, choices=STATUS_NAMES)
    listing.add_argument("--limit", type=positive_int, default=100, metavar="N", help="at most N agents (default: 100)")
    listing.set_defaults(run=calls_services(list_agents))

    show = agent_commands.add_parser("show", parents=[service_options()], help="show one agent")
    show.add_argument("agent_id", metavar="ID")
    show.set_defaults(run=calls_services(show_agent))


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
        (
            "success rate",
            f"{format_percent(agent.success_rate)} of {agent.task_count} tasks" if agent.task_count else "-",
        ),
        ("registered", format_time(agent.registered_at)),
        ("last heartbeat", f"{format_time(agent.last_heartbeat_at)} ({format_age(agent.last_heartbeat_at)})"),
    ]
