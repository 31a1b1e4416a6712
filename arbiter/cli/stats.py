"""`arbiter stats`: how many tasks of each type are in each state, and how long the oldest has waited."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import UTC, datetime

from arbiter.cli.options import Connection, Subcommands, calls_services, service_options
from arbiter.cli.output import format_age, print_json, print_table
from arbiter.models import TaskCount, TaskState


@dataclass
class QueueDepth:
    """One task type's row: a count per state (each field named as the state), and when its oldest
    pending task was submitted."""

    task_type: str
    pending: int = 0
    assigned: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    oldest_pending_created_at: datetime | None = None
    oldest_pending_age_seconds: float | None = None


def add_commands(commands: Subcommands) -> None:
    stats = commands.add_parser(
        "stats",
        parents=[service_options()],
        help="queue depth by task type and state",
        description="How many tasks of each type are in each state, and the age of the oldest pending one.",
    )
    stats.set_defaults(run=calls_services(show_stats))


def queue_depths(counts: list[TaskCount], now: datetime) -> list[QueueDepth]:
    depths: dict[str, QueueDepth] = {}
    for count in counts:
        depth = depths.setdefault(count.task_type, QueueDepth(count.task_type))
        setattr(depth, count.state.name.lower(), count.count)
        if count.state == TaskState.PENDING and count.oldest_created_at is not None:
            depth.oldest_pending_created_at = count.oldest_created_at
            depth.oldest_pending_age_seconds = max(0.0, (now - count.oldest_created_at).total_seconds())
    return sorted(depths.values(), key=lambda depth: depth.task_type)


async def show_stats(arguments: argparse.Namespace, connection: Connection) -> int:
    async with connection.client() as client:
        counts = await client.queue_stats()
    depths = queue_depths(counts, datetime.now(UTC))
    if arguments.json:
        print_json(depths)
        return 0
    print_table(
        ["TYPE", "PENDING", "ASSIGNED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "OLDEST PENDING"],
        (
            [
                depth.task_type,
                *(
                    str(count)
                    for count in (
                        depth.pending,
                        depth.assigned,
                        depth.running,
                        depth.completed,
                        depth.failed,
                        depth.cancelled,
                    )
                ),
                format_age(depth.oldest_pending_created_at),
            ]
            for depth in depths
        ),
        empty="no tasks",
    )
    return 0
