"""Running one service as a process: config, logging, migrations, serve until SIGTERM, stop cleanly."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Protocol

import psycopg
from opentelemetry.sdk.trace import TracerProvider

from shared.config import Config, ConfigError
from shared.database import MigrationError, migrate
from shared.logs import configure_logging
from shared.server import AddressInUse, wait_for_stop_signal
from shared.tls import require_transport_security
from shared.tracing import provider_from_env

logger = logging.getLogger(__name__)


class ServiceApp(Protocol):
    @property
    def port(self) -> int: ...

    async def stop(self, grace: float) -> None: ...


async def _serve(
    name: str, create: Callable[[Config, TracerProvider | None], Awaitable[ServiceApp]], config: Config
) -> None:
    await migrate(config.require_database_url())
    tracer_provider = provider_from_env(name)
    if tracer_provider is not None:
        logger.info("tracing: spans are exported as the OTEL_* variables say")
    try:
        await _serve_traced(name, create, config, tracer_provider)
    finally:
        if tracer_provider is not None:
            # Sends the spans still buffered.
            tracer_provider.shutdown()


async def _serve_traced(
    name: str,
    create: Callable[[Config, TracerProvider | None], Awaitable[ServiceApp]],
    config: Config,
    tracer_provider: TracerProvider | None,
) -> None:
    app = await create(config, tracer_provider)
    logger.info("%s serving on port %d", name, app.port)
    try:
        await wait_for_stop_signal()
        logger.info("%s stopping", name)
    finally:
        await app.stop(config.shutdown_grace_seconds)
    logger.info("%s stopped", name)


def run_service(name: str, create: Callable[[Config, TracerProvider | None], Awaitable[ServiceApp]]) -> None:
    """The body of `python -m services.<name>`: exits 2 on bad configuration, 1 on start-up failure."""
    try:
        config = Config.from_env()
        # Settings that only the services need, checked before anything touches the database.
        require_transport_security(config)
        config.key_hasher()
    except ConfigError as error:
        print(f"{name}: {error}", file=sys.stderr)
        sys.exit(2)
    configure_logging(config.log_level, config.log_format)
    try:
        asyncio.run(_serve(name, create, config))
    except ConfigError as error:
        print(f"{name}: {error}", file=sys.stderr)
        sys.exit(2)
    except (AddressInUse, MigrationError) as error:
        logger.error("%s", error)
        sys.exit(1)
    except psycopg.OperationalError as error:
        logger.error("cannot reach PostgreSQL: %s", str(error).strip())
        sys.exit(1)
