"""`arbiter db seed`: demo agents and tasks in a dev database, written through the services' own
validation and storage, so they are rows the services could have made.

Demo rows are recognisable: agents `demo-*` carrying the label arbiter-demo=seed, tasks with an
idempotency key `arbiter-demo-seed-*` that require that label (so only demo agents could ever take
them). Both live in the default tenant, where `make run`'s dev keys see them. Seeding again adds
only what is missing; a database holding anything else is refused unless --force.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass, replace

from arbiter.cli.output import print_json
from services.orchestrator.domain import NewTask, TaskRequirements, validate_submission
from services.orchestrator.storage import Submission, TaskStore
from services.registry.domain import AgentRegistration, Silence, validate_registration
from services.registry.storage import AgentStore
from shared import tenancy
from shared.config import Config
from shared.database import Pool, migrate, open_pool
from shared.embedded_postgres import database_url

DEMO_LABEL_KEY, DEMO_LABEL_VALUE = "arbiter-demo", "seed"
DEMO_IDEMPOTENCY_PREFIX = "arbiter-demo-seed-"
TENANT = tenancy.DEFAULT_TENANT

# count_foreign_rows: agents and tasks the seed did not make (every tenant's).
_COUNT_FOREIGN_ROWS = """
    SELECT (SELECT count(*) FROM agents
            WHERE NOT labels @> jsonb_build_object(%(label_key)s::text, %(label_value)s::text)) AS agents,
           (SELECT count(*) FROM tasks
            WHERE idempotency_key IS NULL OR NOT starts_with(idempotency_key, %(prefix)s)) AS tasks
"""


class SeedRefused(Exception):
    """The database holds rows the seed did not make, and --force was not given."""


@dataclass(frozen=True)
class DemoAgent:
    id: str
    model_family: str
    task_types: list[str]
    languages: list[str]
    specializations: list[str]
    max_concurrent_tasks: int


@dataclass(frozen=True)
class DemoTask:
    key: str
    task_type: str
    title: str
    priority: int = 0
    languages: tuple[str, ...] = ()


DEMO_AGENTS = (
    DemoAgent("demo-reviewer", "demo-large", ["code-review"], ["python", "go"], ["security"], 4),
    DemoAgent("demo-translator", "demo-small", ["translate"], ["en", "fr", "de"], [], 8),
    DemoAgent("demo-summarizer", "demo-small", ["summarize"], ["en"], [], 8),
    DemoAgent("demo-generalist", "demo-large", ["code-review", "summarize", "translate"], ["python", "en"], [], 2),
)

DEMO_TASKS = (
    DemoTask("review-1", "code-review", "Review the retry backoff change", 5, ("python",)),
    DemoTask("review-2", "code-review", "Review the new TLS options", 3, ("python",)),
    DemoTask("review-3", "code-review", "Review the Go agent example", 0, ("go",)),
    DemoTask("review-4", "code-review", "Review the audit log pruning", 8, ("python",)),
    DemoTask("translate-1", "translate", "Translate the README introduction to French", 0, ("fr",)),
    DemoTask("translate-2", "translate", "Translate the error messages to German", 2, ("de",)),
    DemoTask("translate-3", "translate", "Translate the release notes to French", 1, ("fr",)),
    DemoTask("summarize-1", "summarize", "Summarize last week's incidents", 4),
    DemoTask("summarize-2", "summarize", "Summarize the routing design notes", 0),
    DemoTask("summarize-3", "summarize", "Summarize the benchmark results", 6),
)


@dataclass(frozen=True)
class SeedResult:
    migrations_applied: list[int]
    agents: int
    agents_created: int
    tasks: int
    tasks_created: int


def demo_registration(agent: DemoAgent) -> AgentRegistration:
    registration = validate_registration(
        agent_id=agent.id,
        name=f"{agent.id} (demo)",
        model_family=agent.model_family,
        task_types=agent.task_types,
        languages=agent.languages,
        specializations=agent.specializations,
        labels={DEMO_LABEL_KEY: DEMO_LABEL_VALUE},
        max_concurrent_tasks=agent.max_concurrent_tasks,
    )
    return replace(registration, id=tenancy.qualify(TENANT, registration.id))


def demo_submission(task: DemoTask, max_payload_bytes: int) -> NewTask:
    payload = {"demo": True, "title": task.title}
    new_task = validate_submission(
        task_type=task.task_type,
        payload=payload,
        payload_bytes=len(json.dumps(payload).encode()),
        max_payload_bytes=max_payload_bytes,
        priority=task.priority,
        requirements=TaskRequirements(languages=list(task.languages), labels={DEMO_LABEL_KEY: DEMO_LABEL_VALUE}),
        max_attempts=0,
        timeout_ms=None,
        idempotency_key=DEMO_IDEMPOTENCY_PREFIX + task.key,
    )
    return replace(new_task, tenant=TENANT)


def run_seed(arguments: argparse.Namespace) -> int:
    config = Config.from_env()
    with database_url(config) as url:
        result = asyncio.run(seed(url, config, force=arguments.force))
    if arguments.json:
        print_json(result)
    else:
        if result.migrations_applied:
            print(f"applied migrations: {result.migrations_applied}")
        print(
            f"demo data in tenant {TENANT}: {result.agents} agents ({result.agents_created} new), "
            f"{result.tasks} tasks ({result.tasks_created} new); they carry the label "
            f"{DEMO_LABEL_KEY}={DEMO_LABEL_VALUE}"
        )
    return 0


async def seed(url: str, config: Config, *, force: bool) -> SeedResult:
    """Migrates if needed, refuses a database with rows of its own (unless `force`), then adds the demo
    agents and tasks that are missing."""
    applied = await migrate(url)
    pool = await open_pool(url, 1, 1, name="arbiter-db-seed")
    try:
        foreign_agents, foreign_tasks = await count_foreign_rows(pool)
        if (foreign_agents or foreign_tasks) and not force:
            counts = [count_of(foreign_agents, "agent"), count_of(foreign_tasks, "task")]
            raise SeedRefused(
                f"the database holds {' and '.join(count for count in counts if count)} that `arbiter db seed` did "
                "not make: demo data belongs in a dev database; add it anyway with `arbiter db seed --force`"
            )
        silence = Silence.for_interval(config.heartbeat_interval_seconds)
        agents_created = await add_demo_agents(AgentStore(pool, silence))
        tasks_created = await add_demo_tasks(TaskStore(pool, config.lease_seconds), config.max_payload_bytes)
    finally:
        await pool.close()
    return SeedResult(applied, len(DEMO_AGENTS), agents_created, len(DEMO_TASKS), tasks_created)


def count_of(number: int, noun: str) -> str:
    """`3 tasks`, `1 task`; empty for none."""
    return "" if number == 0 else f"{number} {noun}{'' if number == 1 else 's'}"


async def count_foreign_rows(pool: Pool) -> tuple[int, int]:
    async with pool.connection() as connection:
        cursor = await connection.execute(
            _COUNT_FOREIGN_ROWS,
            {"label_key": DEMO_LABEL_KEY, "label_value": DEMO_LABEL_VALUE, "prefix": DEMO_IDEMPOTENCY_PREFIX},
        )
        row = await cursor.fetchone()
    assert row is not None
    return row["agents"], row["tasks"]


async def add_demo_agents(store: AgentStore) -> int:
    """Registers the demo agents not registered yet (one already there is left as it is); returns how many."""
    created = 0
    for agent in DEMO_AGENTS:
        registration = demo_registration(agent)
        if await store.get(registration.id) is None:
            await store.upsert(registration)
            created += 1
    return created


async def add_demo_tasks(store: TaskStore, max_payload_bytes: int) -> int:
    """Submits the demo tasks in one batch; their idempotency keys keep a second run from adding them again.
    Returns how many were new."""
    submission = Submission.of([demo_submission(task, max_payload_bytes) for task in DEMO_TASKS])
    submitted = await store.submitted(submission, await store.insert_many(submission))
    return sum(1 for task in submitted if task.created)
