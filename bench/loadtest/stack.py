"""The system a load test runs against: its own (a fresh database on the configured or embedded
PostgreSQL, migrated, keys made, both services as subprocesses with /metrics on), or one already running."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from bench.arbiter_bench import create_keys, start_services
from shared.api_keys import KeySpec, Role
from shared.config import Config
from shared.devstack import services_environment, stop_all
from shared.embedded_postgres import database_url as configured_database_url

UNLIMITED_RATE_LIMITS = ",".join(f"{role.value}=unlimited" for role in Role)


@dataclass
class Target:
    """Where the load goes, with what keys, where /metrics are, and the database to count tasks in."""

    registry: str
    orchestrator: str
    client_key: str
    agent_key: str
    database_url: str
    metrics: list[str] = field(default_factory=list)
    rate_limits: str = "as deployed"
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)


def free_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def recreate_database(server_url: str, name: str) -> str:
    """A fresh, empty database `name` on the server of `server_url`; its URL."""
    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')
    return make_conninfo(server_url, dbname=name)


@contextlib.contextmanager
def own_stack(log_dir: Path, database_name: str, rate_limits: str | None) -> Iterator[Target]:
    """Both services on free ports over a fresh database, until the block ends. `rate_limits` is an
    ARBITER_RATE_LIMITS value, or None for the services' defaults."""
    config = Config.from_env()
    with configured_database_url(config) as server_url:
        url = recreate_database(server_url, database_name)
        pepper = secrets.token_urlsafe(48)
        specs = {
            "service": KeySpec(Role.SERVICE, "*", "load test orchestrator"),
            "client": KeySpec(Role.SUBMITTER, "default", "load test clients"),
            "agent": KeySpec(Role.AGENT, "default", "load test agents"),
        }
        keys = asyncio.run(create_keys(url, pepper, specs))
        environment = {
            **services_environment(url, keys["service"]),
            "ARBITER_API_KEY_PEPPER": pepper,
            "ARBITER_LOG_LEVEL": os.environ.get("ARBITER_LOG_LEVEL", "WARNING"),
        }
        if rate_limits is not None:
            environment["ARBITER_RATE_LIMITS"] = rate_limits
        else:
            environment.pop("ARBITER_RATE_LIMITS", None)
        registry, orchestrator = free_address(), free_address()
        metrics = {"services.registry": free_address(), "services.orchestrator": free_address()}
        per_service = {
            "services.registry": {
                "ARBITER_REGISTRY_ADDR": registry,
                "ARBITER_METRICS_ADDR": metrics["services.registry"],
            },
            "services.orchestrator": {
                "ARBITER_ORCHESTRATOR_ADDR": orchestrator,
                "ARBITER_REGISTRY_ADDR": registry,
                "ARBITER_METRICS_ADDR": metrics["services.orchestrator"],
            },
        }
        processes = start_services(log_dir, environment, per_service)
        try:
            yield Target(
                registry=registry,
                orchestrator=orchestrator,
                client_key=keys["client"],
                agent_key=keys["agent"],
                database_url=url,
                metrics=list(metrics.values()),
                rate_limits=rate_limits or "the services' defaults",
                processes=processes,
            )
        finally:
            stop_all(processes)


def service_logs(log_dir: Path, characters: int = 4000) -> str:
    return "".join(
        f"--- {log.name}\n{log.read_text(errors='replace')[-characters:]}\n" for log in sorted(log_dir.glob("*.log"))
    )
