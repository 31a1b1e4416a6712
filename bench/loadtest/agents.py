"""The agents of a load test: processes each serving several SDK agents (arbiter.Agent) on one loop,
with a no-op handler. SIGTERM drains them (in-flight tasks finish and are reported) and the process exits."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass
from typing import Any

from bench.loadtest.clients import TASK_TYPE

AGENT_CONCURRENCY = 4


@dataclass(frozen=True)
class AgentPlan:
    process_index: int
    agents: int
    id_prefix: str
    registry: str
    orchestrator: str
    key: str


def agent_ids(plan: AgentPlan) -> list[str]:
    return [f"{plan.id_prefix}-{plan.process_index}-{number}" for number in range(plan.agents)]


def agent_process(plan: AgentPlan) -> None:
    from arbiter import Agent, Task

    agents = [
        Agent(
            agent_id,
            registry=plan.registry,
            orchestrator=plan.orchestrator,
            api_key=plan.key,
            max_concurrent_tasks=AGENT_CONCURRENCY,
        )
        for agent_id in agent_ids(plan)
    ]

    async def noop(task: Task) -> dict[str, Any]:
        return {}

    for agent in agents:
        agent.handler(TASK_TYPE)(noop)

    def drain_all() -> None:
        for agent in agents:
            agent.drain()

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, drain_all)
        await asyncio.gather(*(agent.serve() for agent in agents))

    asyncio.run(serve())
