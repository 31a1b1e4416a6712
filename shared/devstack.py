"""`make run`: PostgreSQL (embedded unless ARBITER_DATABASE_URL or libpq's PG* variables are set),
migrations, dev keys, and both services as child processes, until Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from arbiter.settings import dial_address
from shared import tenancy
from shared.api_keys import KeyHasher, KeySpec, Role, create_key, find_key
from shared.config import Config, ConfigError
from shared.database import migrate, open_pool
from shared.embedded_postgres import database_url
from shared.libpq_environment import libpq_variables_set, without_password
from shared.logs import configure_logging

READY_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 15.0
DEV_KEY_DESCRIPTION = "dev key written by make run"
# The registry's metrics port when ARBITER_METRICS_ADDR is unset; the orchestrator takes the next one.
DEFAULT_METRICS_ADDR = "127.0.0.1:9464"


def key_variable(role: Role) -> str:
    return f"ARBITER_{role.name}_KEY"


def dev_key_spec(role: Role) -> KeySpec:
    """One key per role in the default tenant; the `service` one acts in every tenant, since it is the
    orchestrator's own key (ARBITER_SERVICE_KEY)."""
    tenant = tenancy.ALL_TENANTS if role == Role.SERVICE else tenancy.DEFAULT_TENANT
    return KeySpec(role=role, tenant=tenant, description=DEV_KEY_DESCRIPTION)


def ensure_pepper(state_dir: Path) -> str:
    """ARBITER_API_KEY_PEPPER if set, else the one kept in the state directory (made on the first run),
    so dev keys keep working across restarts."""
    if os.environ.get("ARBITER_API_KEY_PEPPER"):
        return os.environ["ARBITER_API_KEY_PEPPER"]
    path = state_dir / "api-key-pepper"
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip()


def read_keys_file(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    entries = {}
    for line in path.read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        if name.startswith("ARBITER_") and value:
            entries[name.strip()] = value.strip()
    return entries


async def ensure_dev_keys(url: str, hasher: KeyHasher, existing: dict[str, str]) -> dict[Role, str]:
    """One key per role: the existing ones while every one is valid in this database (so running
    agents keep working across restarts), otherwise all created afresh."""
    pool = await open_pool(url, 1, 1, name="devstack")
    try:
        keys: dict[Role, str] = {}
        for role in Role:
            secret = existing.get(key_variable(role))
            key = await find_key(pool, hasher, secret) if secret else None
            if secret and key is not None and (key.role, key.tenant) == (role, dev_key_spec(role).tenant):
                keys[role] = secret
        if len(keys) == len(Role):
            return keys
        keys = {role: (await create_key(pool, hasher, dev_key_spec(role))).secret for role in Role}
    finally:
        await pool.close()
    return keys


def write_keys_file(path: Path, keys: dict[Role, str], pepper: str) -> None:
    """One line per role, plus ARBITER_API_KEY (the admin key) for the `arbiter` command and the pepper
    for `arbiter keys`; exported, so that `source`-ing the file hands them to the commands the shell runs."""
    path.touch(mode=0o600)
    path.chmod(0o600)
    lines = [f"export {key_variable(role)}={secret}\n" for role, secret in keys.items()]
    lines.append(f"export ARBITER_API_KEY={keys[Role.ADMIN]}\n")
    lines.append(f"export ARBITER_API_KEY_PEPPER={pepper}\n")
    path.write_text("".join(lines))


def wait_until_serving(
    address: str, process: subprocess.Popen[bytes] | None = None, timeout: float = READY_TIMEOUT_SECONDS
) -> None:
    """Returns once the gRPC health service at `address` says SERVING; fails early if `process` exits."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the process for {address} exited with code {process.returncode}; see its log")
            try:
                response = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    raise RuntimeError(f"nothing became healthy on {address} within {timeout:.0f} s")


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    """Stops in reverse start order, so the orchestrator never outlives the registry it calls."""
    for process in reversed(processes):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def services_environment(url: str, service_key: str) -> dict[str, str]:
    """This environment for the services, plaintext on purpose: ARBITER_TLS_* variables are left out,
    since the health checks here and the banner's commands dial plaintext."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("ARBITER_TLS_")}
    environment.update(
        {"ARBITER_DATABASE_URL": url, "ARBITER_SERVICE_KEY": service_key, "ARBITER_ALLOW_INSECURE": "true"}
    )
    return environment


def metrics_addresses(config: Config) -> dict[str, str]:
    """Where each service serves /metrics: ARBITER_METRICS_ADDR (or 127.0.0.1:9464) for the registry, the
    next port for the orchestrator, since both run on this machine."""
    host, _, port = (config.metrics_addr or DEFAULT_METRICS_ADDR).rpartition(":")
    return {"services.registry": f"{host}:{port}", "services.orchestrator": f"{host}:{int(port) + 1}"}


def database_note(environ: Mapping[str, str]) -> str | None:
    """What to tell the user when libpq's variables, not ARBITER_DATABASE_URL, choose the database: with
    them set they would expect that server, not the embedded one."""
    named = libpq_variables_set(environ)
    if environ.get("ARBITER_DATABASE_URL", "").strip() or not named:
        return None
    return f"make run: ARBITER_DATABASE_URL is unset; using the PostgreSQL {', '.join(named)} name"


def banner(config: Config, keys_path: Path, url: str) -> str:
    registry, orchestrator = dial_address(config.registry_addr), dial_address(config.orchestrator_addr)
    metrics = {module: dial_address(address) for module, address in metrics_addresses(config).items()}
    return f"""
Arbiter is running.
  registry      {registry}
  orchestrator  {orchestrator}
  metrics       http://{metrics["services.registry"]}/metrics, http://{metrics["services.orchestrator"]}/metrics
  database      {without_password(url)}
  API keys      {keys_path}  (one per role)
  TLS           OFF: plaintext (ARBITER_ALLOW_INSECURE=true), fine on this machine only. To serve TLS, run
                the services yourself with ARBITER_TLS_CERT and ARBITER_TLS_KEY (README, TLS).

Try it, in another terminal:
  source {keys_path}   (sets ARBITER_API_KEY and one key per role)
  .venv/bin/arbiter demo                        a batch of tasks through a few agents, with a summary
  .venv/bin/python examples/review_agent.py     a 20-line agent; then examples/submit_reviews.py
  .venv/bin/arbiter tasks list
  .venv/bin/grpcurl -plaintext {orchestrator} list
  .venv/bin/grpcurl -plaintext -H "authorization: Bearer $ARBITER_SUBMITTER_KEY" \\
      -d '{{"taskType": "echo", "payload": {{"text": "hello"}}}}' \\
      {orchestrator} arbiter.v1.OrchestratorService/SubmitTask

Ctrl-C stops everything.
"""


def run(config: Config) -> int:
    state_dir = Path(config.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    stop_requested = False

    def request_stop(signal_number: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    note = database_note(os.environ)
    if note:
        print(note, file=sys.stderr, flush=True)
    with database_url(config) as url:
        asyncio.run(migrate(url))
        keys_path = state_dir / "dev-keys.env"
        pepper = ensure_pepper(state_dir)
        keys = asyncio.run(ensure_dev_keys(url, KeyHasher(pepper), read_keys_file(keys_path)))
        write_keys_file(keys_path, keys, pepper)
        environment = {**services_environment(url, keys[Role.SERVICE]), "ARBITER_API_KEY_PEPPER": pepper}
        processes: list[subprocess.Popen[bytes]] = []
        try:
            for module, address in (
                ("services.registry", config.registry_addr),
                ("services.orchestrator", config.orchestrator_addr),
            ):
                # Own process group: Ctrl-C reaches us once, and we stop the children in order.
                process = subprocess.Popen(
                    [sys.executable, "-m", module],
                    env={**environment, "ARBITER_METRICS_ADDR": metrics_addresses(config)[module]},
                    start_new_session=True,
                )
                processes.append(process)
                wait_until_serving(dial_address(address), process)
            print(banner(config, keys_path, url), flush=True)
            while not stop_requested:
                for process in processes:
                    if process.poll() is not None:
                        print(f"a service exited with code {process.returncode}; stopping", file=sys.stderr)
                        return 1
                time.sleep(0.2)
            print("stopping…", file=sys.stderr, flush=True)
            return 0
        except RuntimeError as error:
            print(f"make run: {error}", file=sys.stderr)
            return 1
        finally:
            stop_all(processes)


def main() -> None:
    try:
        config = Config.from_env()
    except ConfigError as error:
        print(f"make run: {error}", file=sys.stderr)
        sys.exit(2)
    configure_logging(config.log_level, config.log_format)
    sys.exit(run(config))


if __name__ == "__main__":
    main()
