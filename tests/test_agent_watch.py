"""WatchAgents against the real registry: a snapshot of every agent, then every change (registration,
heartbeat, outcome, deregistration, silence) within a bounded wait, through the feed losing its
database connection, until the caller leaves, falls behind or the registry stops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import psycopg
import pytest

from arbiter.v1 import agent_pb2, registry_service_pb2_grpc
from arbiter.v1 import registry_service_pb2 as rpb
from services.registry.agent_feed import APPLICATION_NAME, AgentFeed
from services.registry.app import create_registry
from services.registry.domain import AgentRegistration, Silence
from services.registry.storage import AgentStore
from shared.api_keys import Role
from shared.database import open_pool
from shared.errors import Unavailable
from tests.support.database import PostgresForTests
from tests.support.stack import Stack, config_for_tests, create_keys, metadata, running_stack

TASK_TYPE = "echo"
# Every change must reach a watcher within this long.
CHANGE_SECONDS = 10.0


class Watch:
    """One WatchAgents stream, read with bounded waits."""

    def __init__(self, stub: registry_service_pb2_grpc.RegistryServiceStub, key_metadata: tuple[tuple[str, str], ...]):
        self.call = stub.WatchAgents(rpb.WatchAgentsRequest(), metadata=key_metadata)

    async def read(self, timeout: float = CHANGE_SECONDS) -> rpb.WatchAgentsResponse:
        async with asyncio.timeout(timeout):
            message = await self.call.read()
        assert message is not grpc.aio.EOF, "the stream ended"
        return message  # type: ignore[no-any-return]

    async def snapshot(self) -> list[rpb.WatchAgentsResponse]:
        """The messages up to and including the one marked snapshot_complete."""
        messages = [await self.read()]
        while not messages[-1].snapshot_complete:
            messages.append(await self.read())
        return messages

    async def agent_until(self, matches: Callable[[agent_pb2.Agent], bool]) -> agent_pb2.Agent:
        """The first agent in a later message that `matches`; fails if none comes within CHANGE_SECONDS."""
        async with asyncio.timeout(CHANGE_SECONDS):
            while True:
                for agent in (await self.read()).agents:
                    if matches(agent):
                        return agent

    async def agents_until(self, matchers: dict[str, Callable[[agent_pb2.Agent], bool]]) -> None:
        """Until each agent named has come in a later message matching its test (in one message or several)."""
        waiting = dict(matchers)
        async with asyncio.timeout(CHANGE_SECONDS):
            while waiting:
                for agent in (await self.read()).agents:
                    if agent.id in waiting and waiting[agent.id](agent):
                        del waiting[agent.id]

    async def removal_of(self, agent_id: str) -> None:
        async with asyncio.timeout(CHANGE_SECONDS):
            while agent_id not in (await self.read()).removed_agent_ids:
                pass


def watch(stack: Stack) -> Watch:
    return Watch(stack.registry(), stack.as_role(Role.VIEWER))


async def watch_seeing(stack: Stack, agent_id: str) -> Watch:
    """A watch past its snapshot and past `agent_id`'s registration (the feed follows the database a few
    milliseconds behind, so a registration just made may come after the snapshot)."""
    watcher = watch(stack)
    if agent_id not in snapshot_ids(await watcher.snapshot()):
        await watcher.agent_until(lambda agent: agent.id == agent_id)
    return watcher


def snapshot_ids(messages: list[rpb.WatchAgentsResponse]) -> list[str]:
    return [agent.id for message in messages for agent in message.agents]


async def register(stack: Stack, agent_id: str) -> None:
    await stack.registry().RegisterAgent(
        rpb.RegisterAgentRequest(
            agent=agent_pb2.Agent(id=agent_id, capabilities=agent_pb2.AgentCapabilities(task_types=[TASK_TYPE]))
        ),
        metadata=stack.as_role(Role.AGENT),
    )


async def record_success(stack: Stack, agent_id: str) -> None:
    await stack.registry().RecordOutcome(
        rpb.RecordOutcomeRequest(agent_id=agent_id, task_type=TASK_TYPE, success=True, latency_ms=10),
        metadata=stack.as_role(Role.SERVICE),
    )


# The snapshot.


async def test_an_empty_registry_sends_one_empty_snapshot_message_marked_complete(stack: Stack) -> None:
    (message,) = await watch(stack).snapshot()
    assert (list(message.agents), list(message.removed_agent_ids)) == ([], [])


async def test_the_snapshot_holds_every_agent_registered_before_the_watch(stack: Stack) -> None:
    for agent_id in ("agent-b", "agent-a"):
        await register(stack, agent_id)
    # Once the feed has the last registration it has the first: notifications come in commit order.
    await watch_seeing(stack, "agent-a")
    assert snapshot_ids(await watch(stack).snapshot()) == ["agent-a", "agent-b"]


async def test_a_large_snapshot_comes_in_pages_of_at_most_500_agents(stack: Stack, database_url: str) -> None:
    first = watch(stack)
    await first.snapshot()
    agent_ids = {f"agent-{index:04d}" for index in range(600)}
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as connection:
        # Test setup: 600 registrations in one statement.
        await connection.execute(
            """
            INSERT INTO agents (id, task_types, max_concurrent_tasks, status)
            SELECT 'default/' || id, ARRAY['echo'], 1, 'online' FROM unnest(%s::text[]) AS ids (id)
            """,
            (sorted(agent_ids),),
        )
    seen: set[str] = set()
    async with asyncio.timeout(CHANGE_SECONDS):
        while seen != agent_ids:
            seen |= {agent.id for agent in (await first.read()).agents}
    pages = await watch(stack).snapshot()
    assert [len(page.agents) for page in pages] == [500, 100]
    assert [page.snapshot_complete for page in pages] == [False, True]
    assert snapshot_ids(pages) == sorted(agent_ids)


async def test_a_second_watcher_gets_the_same_snapshot(stack: Stack) -> None:
    await register(stack, "agent-1")
    first = await watch_seeing(stack, "agent-1")
    await record_success(stack, "agent-1")
    await first.agent_until(lambda agent: agent.performance.task_count == 1)
    first_again, second = watch(stack), watch(stack)
    assert await first_again.snapshot() == await second.snapshot()


# Changes.


async def test_a_registration_arrives_as_a_change(stack: Stack) -> None:
    watcher = watch(stack)
    await watcher.snapshot()
    await register(stack, "agent-1")
    agent = await watcher.agent_until(lambda agent: agent.id == "agent-1")
    assert list(agent.capabilities.task_types) == [TASK_TYPE]


async def test_a_draining_heartbeat_arrives_as_a_change(stack: Stack) -> None:
    await register(stack, "agent-1")
    watcher = await watch_seeing(stack, "agent-1")
    await stack.registry().Heartbeat(
        rpb.HeartbeatRequest(agent_id="agent-1", active_tasks=1, status=agent_pb2.AGENT_STATUS_DRAINING),
        metadata=stack.as_role(Role.AGENT),
    )
    agent = await watcher.agent_until(lambda agent: agent.status == agent_pb2.AGENT_STATUS_DRAINING)
    assert agent.load.active_tasks == 1


async def test_a_recorded_outcome_arrives_with_the_new_record_and_no_windows(stack: Stack) -> None:
    await register(stack, "agent-1")
    watcher = await watch_seeing(stack, "agent-1")
    await record_success(stack, "agent-1")
    agent = await watcher.agent_until(lambda agent: agent.performance.task_count == 1)
    assert agent.performance.success_rate == pytest.approx(1.7 / 2)
    assert [each.task_count for each in agent.performance.by_task_type] == [1]
    assert list(agent.performance.windows) == []


async def test_a_deregistration_arrives_as_a_removal(stack: Stack) -> None:
    await register(stack, "agent-1")
    watcher = await watch_seeing(stack, "agent-1")
    await stack.registry().DeregisterAgent(
        rpb.DeregisterAgentRequest(agent_id="agent-1"), metadata=stack.as_role(Role.AGENT)
    )
    await watcher.removal_of("agent-1")


async def test_a_silent_agent_turns_unhealthy_then_offline_in_the_stream(database_url: str) -> None:
    async with running_stack(database_url, heartbeat_interval_seconds=0.3) as stack:
        await register(stack, "agent-1")
        watcher = watch(stack)
        messages = await watcher.snapshot()
        statuses = [agent.status for message in messages for agent in message.agents]
        async with asyncio.timeout(CHANGE_SECONDS):
            while agent_pb2.AGENT_STATUS_OFFLINE not in statuses:
                statuses += [agent.status for agent in (await watcher.read()).agents]
    # Silent for 3 intervals: UNHEALTHY; for 6: OFFLINE.
    assert statuses[-2:] == [agent_pb2.AGENT_STATUS_UNHEALTHY, agent_pb2.AGENT_STATUS_OFFLINE]


# The feed's connection.


async def feed_backend_pids(postgres: PostgresForTests, database_url: str) -> list[int]:
    database = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    async with await psycopg.AsyncConnection.connect(postgres.admin_url, autocommit=True) as connection:
        cursor = await connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
            (database, APPLICATION_NAME),
        )
        return [pid for (pid,) in await cursor.fetchall()]


async def kill_feed_connection(postgres: PostgresForTests, database_url: str) -> int:
    (pid,) = await feed_backend_pids(postgres, database_url)
    async with await psycopg.AsyncConnection.connect(postgres.admin_url, autocommit=True) as connection:
        await connection.execute("SELECT pg_terminate_backend(%s)", (pid,))
    return pid


async def wait_for_new_feed_connection(postgres: PostgresForTests, database_url: str, old_pid: int) -> None:
    async with asyncio.timeout(CHANGE_SECONDS):
        while (await feed_backend_pids(postgres, database_url)) in ([], [old_pid]):
            await asyncio.sleep(0.05)


def allow_connections(postgres: PostgresForTests, database_url: str, allowed: bool) -> None:
    """New connections to the test database refused (or allowed again); open ones carry on."""
    database = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    with psycopg.connect(postgres.admin_url, autocommit=True) as connection:
        connection.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {"true" if allowed else "false"}')


async def test_changes_made_while_the_feed_is_disconnected_arrive_once_it_reconnects(
    stack: Stack, database_url: str, test_postgres: PostgresForTests
) -> None:
    await register(stack, "agent-1")
    watcher = await watch_seeing(stack, "agent-1")
    allow_connections(test_postgres, database_url, False)
    try:
        # The feed cannot reconnect; the registry's pooled connections still serve calls.
        await kill_feed_connection(test_postgres, database_url)
        await record_success(stack, "agent-1")
        await register(stack, "agent-2")
    finally:
        allow_connections(test_postgres, database_url, True)
    await watcher.agents_until(
        {"agent-1": lambda agent: agent.performance.task_count == 1, "agent-2": lambda agent: True}
    )


async def test_the_feed_listens_again_after_its_connection_is_killed(
    stack: Stack, database_url: str, test_postgres: PostgresForTests
) -> None:
    await register(stack, "agent-1")
    watcher = await watch_seeing(stack, "agent-1")
    old_pid = await kill_feed_connection(test_postgres, database_url)
    await wait_for_new_feed_connection(test_postgres, database_url, old_pid)
    # An outcome changes no status, so only a notification can bring it.
    await record_success(stack, "agent-1")
    await watcher.agent_until(lambda agent: agent.performance.task_count == 1)


# How streams end.


async def test_stopping_the_registry_ends_open_watch_streams_at_once(database_url: str) -> None:
    keys = await create_keys(database_url)
    app = await create_registry(config_for_tests(database_url))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        watcher = Watch(registry_service_pb2_grpc.RegistryServiceStub(channel), metadata(keys[Role.VIEWER]))
        await watcher.snapshot()
        grace = 30.0
        async with asyncio.timeout(grace / 3):
            await app.stop(grace)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await watcher.read()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in (caught.value.details() or "")


async def test_a_subscriber_that_falls_behind_is_dropped_and_told_to_resynchronise(database_url: str) -> None:
    pool = await open_pool(database_url, 1, 2, name="test-feed")
    store = AgentStore(pool, Silence.for_interval(5.0))
    feed = AgentFeed(database_url, store, 5.0, subscriber_queue_messages=2)
    following = asyncio.create_task(feed.run())
    try:
        async with asyncio.timeout(CHANGE_SECONDS):
            await feed.ready.wait()
        with feed.subscribe() as slow, feed.subscribe() as keeping_up:
            changes: AsyncIterator[object] = keeping_up.changes()
            # Three messages, one at a time (the subscriber that keeps up shows each was sent).
            for index in range(3):
                await store.upsert(AgentRegistration(f"default/agent-{index}", "", "", [TASK_TYPE], [], [], {}, 1))
                async with asyncio.timeout(CHANGE_SECONDS):
                    await anext(changes)
            assert len(slow.snapshot_pages()) == 1
            with pytest.raises(Unavailable, match="fell behind the agent feed; reconnect to resynchronise"):
                await anext(slow.changes())
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
        await pool.close()
