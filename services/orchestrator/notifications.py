"""What other orchestrators (and this one) changed, heard over PostgreSQL LISTEN/NOTIFY.

The tasks table's triggers notify on every change (see migrations 0005, 0006 and 0009). One connection
per orchestrator listens and turns notifications into wake-ups: new PENDING work and a slot another
process freed wake the dispatcher, an attempt taken back sends a cancellation down its agent's stream,
and a changed task wakes its watchers. While the connection is down, the safety poll, lease extensions
and watchers' own re-reads keep everything correct, only slower; on reconnect everyone looks again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator

import psycopg
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from services.orchestrator.domain import AttemptCancellation
from services.orchestrator.sessions import AgentSessions

logger = logging.getLogger(__name__)

CHANNELS = ("arbiter_task", "arbiter_work", "arbiter_revoke", "arbiter_slot")


class TaskNotifications:
    def __init__(
        self,
        database_url: str,
        sessions: AgentSessions,
        wake_dispatcher: Callable[[], None],
        application_name: str,
    ) -> None:
        """`application_name` is the one this process's pool connections carry (see migration 0009)."""
        self._database_url = database_url
        self._application_name = application_name
        self._sessions = sessions
        self._wake_dispatcher = wake_dispatcher
        self._watchers: dict[str, set[asyncio.Event]] = defaultdict(set)
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def watch(self, task_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever the task changes (or changes may have been missed)."""
        changed = asyncio.Event()
        self._watchers[task_id].add(changed)
        try:
            yield changed
        finally:
            self._watchers[task_id].discard(changed)
            if not self._watchers[task_id]:
                del self._watchers[task_id]

    async def run(self) -> None:
        """Listens until cancelled, reconnecting with backoff whenever the connection is lost."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(psycopg.Error),
            wait=wait_exponential_jitter(multiplier=0.1, max=5.0, jitter=0.25),
            before_sleep=lambda state: logger.warning(
                "notification listener lost the database; reconnecting: %s",
                state.outcome.exception() if state.outcome else "",
            ),
        ):
            with attempt:
                await self._listen()

    async def _listen(self) -> None:
        connection = await psycopg.AsyncConnection.connect(self._database_url, autocommit=True)
        try:
            for channel in CHANNELS:
                await connection.execute(f"LISTEN {channel}")
            self.listening.set()
            self._everyone_looks_again()
            async for notification in connection.notifies():
                self._dispatch(notification.channel, notification.payload)
        finally:
            self.listening.clear()
            await connection.close()

    def _everyone_looks_again(self) -> None:
        self._wake_dispatcher()
        self._sessions.wake_all()
        for watchers in self._watchers.values():
            for changed in watchers:
                changed.set()

    def _dispatch(self, channel: str, payload: str) -> None:
        if channel == "arbiter_task":
            for task_id in payload.split(","):
                for changed in self._watchers.get(task_id, ()):
                    changed.set()
        elif channel == "arbiter_work":
            # Work this process submitted or put back was seen by its own dispatch round already.
            if json.loads(payload)["by"] != self._application_name:
                self._wake_dispatcher()
        elif channel == "arbiter_slot":
            freed = json.loads(payload)
            # A slot this process freed woke its dispatcher already: only others' news is news.
            if freed["by"] != self._application_name and freed["agent"] in self._sessions:
                self._wake_dispatcher()
        elif channel == "arbiter_revoke":
            revoked = json.loads(payload)
            if revoked["agent"]:
                self._sessions.send_cancellation(
                    revoked["agent"],
                    AttemptCancellation(revoked["task"], revoked["attempt"], revoked["reason"] or "taken back"),
                )
