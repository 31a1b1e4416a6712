"""Every ARBITER_* setting, defined once: name, default, parser and meaning.

The README's configuration table is checked against SETTINGS by a test, so the two never drift.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.api_keys import KeyHasher, MissingPepper
from shared.libpq_environment import LIBPQ_VARIABLES, conninfo_from_libpq_variables, conninfo_parameters
from shared.logs import LOG_FORMATS
from shared.rate_limits import DEFAULT_RATE_LIMITS, BucketLimit, parse_rate_limits

_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):(\d{1,5})$")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(Exception):
    """A setting is missing or malformed; the message names each one and what is expected."""


def _address(value: str) -> str:
    match = _ADDRESS.match(value)
    if not match or not 0 <= int(match.group(2)) <= 65535:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:50051")
    return value


def _connection_string(value: str) -> str:
    # The messages never quote the value: it may hold a password.
    parameters = conninfo_parameters(value)
    if parameters is None:
        raise ValueError(
            "is not a PostgreSQL URL (postgresql://user@host:5432/arbiter) or key=value connection string "
            "that libpq can parse; check its spelling, and percent-encode special characters in the password"
        )
    # libpq takes one port per host, comma-separated, and would only find a bad one when connecting.
    for port in parameters.get("port", "").split(","):
        if port and not (port.isdigit() and 1 <= int(port) <= 65535):
            raise ValueError(f"names port {port[:10]!r}; a port is a number from 1 to 65535")
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


def _log_format(value: str) -> str:
    if value.lower() not in LOG_FORMATS:
        raise ValueError(f"expected one of {', '.join(LOG_FORMATS)}")
    return value.lower()


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


# Room for the ids, labels and other fields around a payload in one message.
MESSAGE_HEADROOM_BYTES = 64 * 1024
# gRPC takes its limits as 32-bit ints.
_LARGEST_GRPC_LIMIT = 2**31 - 1


def _grpc_limit(value: str) -> int:
    number = int(value)
    if not 1 <= number <= _LARGEST_GRPC_LIMIT:
        raise ValueError(f"expected a whole number from 1 to {_LARGEST_GRPC_LIMIT}")
    return number


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _boolean(value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValueError("expected true or false")


@dataclass(frozen=True)
class Setting:
    env: str
    field: str
    default: str | None
    parse: Callable[[str], Any]
    meaning: str
    # A value that may hold a password: an error about it never repeats it.
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "ARBITER_DATABASE_URL",
        "database_url",
        None,
        _connection_string,
        "PostgreSQL URL, e.g. postgresql://user@host:5432/arbiter. Unset, libpq's PGHOST, PGPORT, PGDATABASE, "
        "PGUSER and PGPASSWORD are used if any is set. The services need one or the other; `make run` and the "
        "`arbiter` database commands start an embedded PostgreSQL under ARBITER_STATE_DIR when neither is.",
        secret=True,
    ),
    Setting(
        "ARBITER_DATABASE_READ_URL",
        "database_read_url",
        None,
        _connection_string,
        "PostgreSQL URL of a read replica of that database. When set, GetTask, ListTasks, GetTaskHistory, "
        "ListAgents and ListAuditEvents read from it, falling back to the primary while it does not answer "
        "and for a task it does not have yet; unset, every read goes to the primary (docs/operations.md, "
        "Read replicas).",
        secret=True,
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
        "ARBITER_API_KEY_PEPPER",
        "api_key_pepper",
        None,
        _text,
        "Secret (32+ characters, the same on every instance) under which API key hashes are kept "
        "(HMAC-SHA-256). Required by the services and by `arbiter keys`.",
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
    Setting(
        "ARBITER_TLS_CERT",
        "tls_cert",
        None,
        _text,
        "Services: PEM file of the server's certificate chain; with ARBITER_TLS_KEY, the service serves TLS only. "
        "The orchestrator also presents it to the registry unless ARBITER_TLS_CLIENT_CERT is set.",
    ),
    Setting("ARBITER_TLS_KEY", "tls_key", None, _text, "Services: PEM file of the private key of ARBITER_TLS_CERT."),
    Setting(
        "ARBITER_TLS_CLIENT_CA",
        "tls_client_ca",
        None,
        _text,
        "Services: PEM file of the CA(s) that sign client certificates; when set, every client must present "
        "one (mutual TLS). Needs ARBITER_TLS_CERT.",
    ),
    Setting(
        "ARBITER_TLS_CA",
        "tls_ca",
        None,
        _text,
        "PEM file of the roots outgoing connections trust (the orchestrator dialing the registry, the SDK, the "
        "`arbiter` command); unset means the system's roots. Setting it makes the SDK and the command dial TLS.",
    ),
    Setting(
        "ARBITER_TLS_CLIENT_CERT",
        "tls_client_cert",
        None,
        _text,
        "PEM file of the client certificate outgoing connections present when the server asks for one "
        "(mutual TLS); with ARBITER_TLS_CLIENT_KEY.",
    ),
    Setting(
        "ARBITER_TLS_CLIENT_KEY",
        "tls_client_key",
        None,
        _text,
        "PEM file of the private key of ARBITER_TLS_CLIENT_CERT.",
    ),
    Setting(
        "ARBITER_ALLOW_INSECURE",
        "allow_insecure",
        "false",
        _boolean,
        "Services: `true` lets a service without ARBITER_TLS_CERT/KEY serve plaintext (development; `make run` "
        "sets it). Otherwise such a service refuses to start.",
    ),
    Setting(
        "ARBITER_RATE_LIMITS",
        "rate_limits",
        DEFAULT_RATE_LIMITS,
        parse_rate_limits,
        "Per API key and per process: calls per second/burst for each role, e.g. `agent=1000/2000,viewer=20/50`; "
        "roles not named keep their default, `role=unlimited` turns a role's limit off (README, Rate limits).",
    ),
    Setting(
        "ARBITER_MAX_CONCURRENT_RPCS",
        "max_concurrent_rpcs",
        "10000",
        _grpc_limit,
        "Calls (open streams included) each service runs at once; beyond it a call answers RESOURCE_EXHAUSTED.",
    ),
    Setting(
        "ARBITER_MAX_MESSAGE_BYTES",
        "max_message_bytes",
        str(8 * 1024 * 1024),
        _grpc_limit,
        "Largest gRPC message a service receives or sends; larger answers RESOURCE_EXHAUSTED. Must exceed "
        "ARBITER_MAX_PAYLOAD_BYTES by at least 64 KiB.",
    ),
    Setting(
        "ARBITER_AUDIT_RETENTION_DAYS",
        "audit_retention_days",
        "90",
        _positive_int,
        "Audit events (every mutating and every denied call) are deleted this many days after the call, in "
        "batches (README, Audit log).",
    ),
    Setting("ARBITER_LOG_LEVEL", "log_level", "INFO", _log_level, "DEBUG, INFO, WARNING or ERROR."),
    Setting(
        "ARBITER_LOG_FORMAT",
        "log_format",
        "text",
        _log_format,
        "`text` (one readable line per event) or `json` (one JSON object per line, with task_id, agent_id "
        "and trace_id where the event has them).",
    ),
    Setting(
        "ARBITER_METRICS_ADDR",
        "metrics_addr",
        None,
        _address,
        "Where the service serves Prometheus metrics over HTTP at /metrics, e.g. 0.0.0.0:9464; unset, none "
        "are served. Each service needs its own port on one host.",
    ),
    Setting(
        "ARBITER_HEALTH_ADDR",
        "health_addr",
        None,
        _address,
        "A second, plaintext gRPC port that serves only grpc.health.v1, for Kubernetes' native gRPC probes "
        "(which cannot speak TLS), e.g. 0.0.0.0:8081; health is on the main port either way.",
    ),
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
    # ARBITER_DATABASE_URL, else a connection string made of the PG* variables (shared/libpq_environment.py).
    database_url: str | None
    # ARBITER_DATABASE_READ_URL: where the read-only RPCs read (shared/replica.py); None: the primary.
    database_read_url: str | None
    registry_addr: str
    orchestrator_addr: str
    registry_target: str | None
    service_key: str | None
    api_key_pepper: str | None
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
    tls_cert: str | None
    tls_key: str | None
    tls_client_ca: str | None
    tls_ca: str | None
    tls_client_cert: str | None
    tls_client_key: str | None
    allow_insecure: bool
    rate_limits: dict[str, BucketLimit]
    max_concurrent_rpcs: int
    max_message_bytes: int
    audit_retention_days: int
    log_level: str
    log_format: str
    metrics_addr: str | None
    health_addr: str | None
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
                problems.append(f"{setting.env} {error}" if setting.secret else f"{setting.env}={raw!r}: {error}")
        if values.get("database_url") is None:
            values["database_url"] = conninfo_from_libpq_variables(environ)
        if not problems and values["db_pool_min_size"] > values["db_pool_max_size"]:
            problems.append("ARBITER_DB_POOL_MIN_SIZE is above ARBITER_DB_POOL_MAX_SIZE")
        if not problems and values["max_message_bytes"] < values["max_payload_bytes"] + MESSAGE_HEADROOM_BYTES:
            problems.append(
                f"ARBITER_MAX_MESSAGE_BYTES ({values['max_message_bytes']}) must exceed ARBITER_MAX_PAYLOAD_BYTES "
                f"({values['max_payload_bytes']}) by at least {MESSAGE_HEADROOM_BYTES}, room for the rest of a message "
                "that carries a payload: raise the first or lower the second"
            )
        if problems:
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
        return cls(**values)

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ConfigError(
                "no database: set ARBITER_DATABASE_URL to a PostgreSQL URL, or libpq's variables "
                f"({', '.join(LIBPQ_VARIABLES)}); or use `make run`, which starts an embedded PostgreSQL"
            )
        return self.database_url

    def require_service_key(self) -> str:
        if not self.service_key:
            raise ConfigError(
                "ARBITER_SERVICE_KEY is not set: the orchestrator needs a `service` API key for its calls "
                "to the registry (create one with `arbiter keys create --role service`)"
            )
        return self.service_key

    def key_hasher(self) -> KeyHasher:
        """The hasher of API key secrets; ConfigError when the pepper is missing or too short."""
        try:
            return KeyHasher(self.api_key_pepper or "")
        except MissingPepper as error:
            raise ConfigError(str(error)) from None

    @property
    def registry_dial_target(self) -> str:
        return self.registry_target or self.registry_addr
