"""Every ARBITER_* setting, defined once: name, default, parser and meaning.

The README's configuration table is checked against SETTINGS by a test, so the two never drift.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):(\d{1,5})$")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(Exception):
    """A setting is missing or malformed; the message names each one and what is expected."""


def _address(value: str) -> str:
    match = _ADDRESS.match(value)
    if not match or not 0 <= int(match.group(2)) <= 65535:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:50051")
    return value


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError("expected a number above 0")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("expected a whole number of at least 1")
    return number


def _log_level(value: str) -> str:
    if value.upper() not in _LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(_LOG_LEVELS)}")
    return value.upper()


def _text(value: str) -> str:
    return value


def _fraction(value: str) -> float:
    number = float(value)
    if not 0 <= number <= 1:
        raise ValueError("expected a number from 0 to 1")
    return number


def _non_negative_float(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise ValueError("expected a number of 0 or more")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("expected a whole number of 0 or more")
    return number


ROUTING_STRATEGIES = ("capability", "least_loaded", "epsilon_greedy", "ucb")


def _routing_strategy(value: str) -> str:
    if value.lower() not in ROUTING_STRATEGIES:
        raise ValueError(f"expected one of {', '.join(ROUTING_STRATEGIES)}")
    return value.lower()


def _seed(value: str) -> int:
    return int(value)


@dataclass(frozen=True)
class Setting:
    env: str
    field: str
    default: str | None
    parse: Callable[[str], Any]
    meaning: str


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "ARBITER_DATABASE_URL",
        "database_url",
        None,
        _text,
        "PostgreSQL URL, e.g. postgresql://user@host:5432/arbiter. Required by the services; "
        "`make run` starts an embedded PostgreSQL under ARBITER_STATE_DIR when it is unset.",
    ),
    Setting("ARBITER_REGISTRY_ADDR", "registry_addr", "127.0.0.1:50051", _address, "Where the registry listens."),
    Setting(
        "ARBITER_ORCHESTRATOR_ADDR",
        "orchestrator_addr",
        "127.0.0.1:50052",
        _address,
        "Where the orchestrator listens.",
    ),
    Setting(
        "ARBITER_REGISTRY_TARGET",
        "registry_target",
        None,
        _text,
        "Address the orchestrator dials to reach the registry; defaults to ARBITER_REGISTRY_ADDR.",
    ),
    Setting(
        "ARBITER_SERVICE_KEY",
        "service_key",
        None,
        _text,
        "API key (role `service`) the orchestrator sends to the registry. Required by the orchestrator.",
    ),
    Setting(
        "ARBITER_REGISTRY_RETRY_SECONDS",
        "registry_retry_seconds",
        "10",
        _positive_float,
        "How long the orchestrator retries a registry call that answers UNAVAILABLE before giving up.",
    ),
    Setting("ARBITER_DB_POOL_MIN_SIZE", "db_pool_min_size", "1", _positive_int, "Connections kept open."),
    Setting("ARBITER_DB_POOL_MAX_SIZE", "db_pool_max_size", "10", _positive_int, "Most connections per process."),
    Setting(
        "ARBITER_HEARTBEAT_INTERVAL_SECONDS",
        "heartbeat_interval_seconds",
        "5",
        _positive_float,
        "How often agents are told to heartbeat.",
    ),
    Setting(
        "ARBITER_LEASE_SECONDS",
        "lease_seconds",
        "30",
        _positive_float,
        "How long an assignment is held before progress must extend it.",
    ),
    Setting(
        "ARBITER_MAX_PAYLOAD_BYTES",
        "max_payload_bytes",
        "1048576",
        _positive_int,
        "Largest task payload or result, serialized.",
    ),
    Setting(
        "ARBITER_ASSIGNMENT_POLL_SECONDS",
        "assignment_poll_seconds",
        "2",
        _positive_float,
        "Safety poll for work when no wake-up came (wake-ups are immediate within one orchestrator).",
    ),
    Setting(
        "ARBITER_SWEEP_SECONDS",
        "sweep_seconds",
        "1",
        _positive_float,
        "How often each orchestrator takes back expired leases and timed-out attempts, fails tasks not "
        "started in time, releases OFFLINE agents' tasks and wakes agents when backoffs end.",
    ),
    Setting(
        "ARBITER_TASK_RETENTION_DAYS",
        "task_retention_days",
        "7",
        _positive_float,
        "Finished (COMPLETED, FAILED, CANCELLED) tasks and their history are deleted this long after "
        "they finished, in batches.",
    ),
    Setting(
        "ARBITER_AUTH_CACHE_SECONDS",
        "auth_cache_seconds",
        "5",
        _positive_float,
        "How long a checked API key is trusted before the database is asked again (bounds revocation delay).",
    ),
    Setting(
        "ARBITER_SHUTDOWN_GRACE_SECONDS",
        "shutdown_grace_seconds",
        "5",
        _positive_float,
        "How long in-flight calls may finish after SIGTERM.",
    ),
    Setting(
        "ARBITER_API_KEY",
        "api_key",
        None,
        _text,
        "The key the `arbiter` command sends (`--key` overrides it); the services ignore it. "
        "`make run` writes the admin key here in .arbiter/dev-keys.env.",
    ),
    Setting(
        "ARBITER_ROUTING_STRATEGY",
        "routing_strategy",
        "ucb",
        _routing_strategy,
        "How the orchestrator picks among capable agents with a free slot: `capability`, `least_loaded`, "
        "`epsilon_greedy` or `ucb` (README, Routing).",
    ),
    Setting(
        "ARBITER_ROUTING_SEED",
        "routing_seed",
        None,
        _seed,
        "Seed for epsilon_greedy's random choices (tests, reproducing a run); unset means random.",
    ),
    Setting(
        "ARBITER_EPSILON_START",
        "epsilon_start",
        "0.1",
        _fraction,
        "epsilon_greedy: the exploration probability before any outcome of the task type is known.",
    ),
    Setting(
        "ARBITER_EPSILON_DECAY",
        "epsilon_decay",
        "0.995",
        _fraction,
        "epsilon_greedy: epsilon is multiplied by this for every outcome of the task type recorded.",
    ),
    Setting(
        "ARBITER_EPSILON_MIN",
        "epsilon_min",
        "0.01",
        _fraction,
        "epsilon_greedy: the floor epsilon decays to.",
    ),
    Setting(
        "ARBITER_UCB_EXPLORATION",
        "ucb_exploration",
        "1.0",
        _non_negative_float,
        "ucb: c in success rate + c·√(ln(t+1)/(n+1)).",
    ),
    Setting(
        "ARBITER_ROUTING_MIN_SAMPLES",
        "routing_min_samples",
        "5",
        _non_negative_int,
        "ucb: an agent with fewer outcomes than this on the task type gets the new-agent bonus.",
    ),
    Setting(
        "ARBITER_UCB_NEW_AGENT_BONUS",
        "ucb_new_agent_bonus",
        "1.0",
        _non_negative_float,
        "ucb: added to the score of an agent below ARBITER_ROUTING_MIN_SAMPLES, so new agents are tried.",
    ),
    Setting(
        "ARBITER_ROUTING_LOAD_WEIGHT",
        "routing_load_weight",
        "0.1",
        _non_negative_float,
        "ucb, epsilon_greedy and capability: subtracted from a score per unit of utilization, so of two "
        "equal agents the less loaded one wins.",
    ),
    Setting(
        "ARBITER_DEGRADATION_MIN_OUTCOMES",
        "degradation_min_outcomes",
        "5",
        _positive_int,
        "The registry flags an agent as degraded only with at least this many outcomes in the last 5 "
        "minutes and in its 24 h baseline.",
    ),
    Setting("ARBITER_LOG_LEVEL", "log_level", "INFO", _log_level, "DEBUG, INFO, WARNING or ERROR."),
    Setting(
        "ARBITER_STATE_DIR",
        "state_dir",
        ".arbiter",
        _text,
        "`make run` only: where the embedded PostgreSQL data and dev-keys.env live.",
    ),
)


@dataclass(frozen=True)
class Config:
    database_url: str | None
    registry_addr: str
    orchestrator_addr: str
    registry_target: str | None
    service_key: str | None
    registry_retry_seconds: float
    db_pool_min_size: int
    db_pool_max_size: int
    heartbeat_interval_seconds: float
    lease_seconds: float
    max_payload_bytes: int
    assignment_poll_seconds: float
    sweep_seconds: float
    task_retention_days: float
    auth_cache_seconds: float
    shutdown_grace_seconds: float
    api_key: str | None
    routing_strategy: str
    routing_seed: int | None
    epsilon_start: float
    epsilon_decay: float
    epsilon_min: float
    ucb_exploration: float
    routing_min_samples: int
    ucb_new_agent_bonus: float
    routing_load_weight: float
    degradation_min_outcomes: int
    log_level: str
    state_dir: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Reads every setting, reporting all malformed ones at once."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[str] = []
        for setting in SETTINGS:
            raw = environ.get(setting.env, "")
            if raw == "":
                values[setting.field] = None if setting.default is None else setting.parse(setting.default)
                continue
            try:
                values[setting.field] = setting.parse(raw.strip())
            except ValueError as error:
                problems.append(f"{setting.env}={raw!r}: {error}")
        if not problems and values["db_pool_min_size"] > values["db_pool_max_size"]:
            problems.append("ARBITER_DB_POOL_MIN_SIZE is above ARBITER_DB_POOL_MAX_SIZE")
        if problems:
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
        return cls(**values)

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ConfigError(
                "ARBITER_DATABASE_URL is not set: give a PostgreSQL URL, "
                "or use `make run`, which starts an embedded PostgreSQL"
            )
        return self.database_url

    def require_service_key(self) -> str:
        if not self.service_key:
            raise ConfigError(
                "ARBITER_SERVICE_KEY is not set: the orchestrator needs a `service` API key for its calls "
                "to the registry (create one with `arbiter keys create --role service`)"
            )
        return self.service_key

    @property
    def registry_dial_target(self) -> str:
        return self.registry_target or self.registry_addr
