"""`make run`: PostgreSQL (embedded unless ARBITER_DATABASE_URL is set), migrations, dev keys, and
both services as child processes, until Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from arbiter.settings import dial_address
from shared.api_keys import Role, create_key, find_role, hash_secret
from shared.config import Config, ConfigError
from shared.database import migrate, open_pool
from shared.embedded_postgres import database_url
from shared.server import configure_logging

READY_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 15.0
DEV_KEY_DESCRIPTION = "dev key written by make run"


def key_variable(role: Role) -> str:
    return f"ARBITER_{role.name}_KEY"


def read_keys_file(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    entries = {}
    for line in path.read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        if name.startswith("ARBITER_") and value:
            entries[name.strip()] = value.strip()
    return entries


async def ensure_dev_keys(url: str, existing: dict[str, str]) -> dict[Role, str]:
    """One key per role: the existing ones while every one is valid in this database (so running
    agents keep working across restarts), otherwise all created afresh."""
    pool = await open_pool(url, 1, 1, name="devstack")
    try:
        keys: dict[Role, str] = {}
        for role in Role:
            secret = existing.get(key_variable(role))
            if secret and await find_role(pool, hash_secret(secret)) == role:
                keys[role] = secret
        if len(keys) == len(Role):
            return keys
        keys = {role: (await create_key(pool, role, DEV_KEY_DESCRIPTION)).secret for role in Role}
    finally:
        await pool.close()
    return keys


def write_keys_file(path: Path, keys: dict[Role, str]) -> None:
    """One line per role, plus ARBITER_API_KEY (the admin key) for the `arbiter` command; exported,
    so that `source`-ing the file hands them to the commands the shell runs."""
    path.touch(mode=0o600)
    path.chmod(0o600)
    lines = [f"export {key_variable(role)}={secret}\n" for role, secret in keys.items()]
    lines.append(f"export ARBITER_API_KEY={keys[Role.ADMIN]}\n")
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


def banner(config: Config, keys_path: Path) -> str:
    registry, orchestrator = dial_address(config.registry_addr), dial_address(config.orchestrator_addr)
    return f"""
Arbiter is running.
  registry      {registry}
  orchestrator  {orchestrator}
  API keys      {keys_path}  (one per role)

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

    with database_url(config) as url:
        asyncio.run(migrate(url))
        keys_path = state_dir / "dev-keys.env"
        keys = asyncio.run(ensure_dev_keys(url, read_keys_file(keys_path)))
        write_keys_file(keys_path, keys)
        environment = {**os.environ, "ARBITER_DATABASE_URL": url, "ARBITER_SERVICE_KEY": keys[Role.SERVICE]}
        processes: list[subprocess.Popen[bytes]] = []
        try:
            for module, address in (
                ("services.registry", config.registry_addr),
                ("services.orchestrator", config.orchestrator_addr),
            ):
                # Own process group: Ctrl-C reaches us once, and we stop the children in order.
                process = subprocess.Popen([sys.executable, "-m", module], env=environment, start_new_session=True)
                processes.append(process)
                wait_until_serving(dial_address(address), process)
            print(banner(config, keys_path), flush=True)
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
    configure_logging(config.log_level)
    sys.exit(run(config))


if __name__ == "__main__":
    main()
