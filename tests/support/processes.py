"""Both services as real subprocesses, the way they run in production; optionally more orchestrators
sharing the registry and the database, as several instances behind a load balancer."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from shared.api_keys import Role
from shared.devstack import wait_until_serving
from tests.support.stack import TEST_PEPPER, create_keys

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class ServiceProcesses:
    database_url: str
    keys: dict[Role, str]
    log_dir: Path
    registry_port: int = field(default_factory=free_port)
    orchestrator_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Orchestrators other than "orchestrator", by name, each on its own port (see add_orchestrator).
    extra_orchestrator_ports: dict[str, int] = field(default_factory=dict)
    # With metrics=True each service serves Prometheus metrics (ARBITER_METRICS_ADDR) on a port of its own.
    metrics: bool = False
    metrics_ports: dict[str, int] = field(default_factory=dict)

    @property
    def registry_address(self) -> str:
        return f"127.0.0.1:{self.registry_port}"

    @property
    def orchestrator_address(self) -> str:
        return f"127.0.0.1:{self.orchestrator_port}"

    def address_of(self, name: str) -> str:
        """Where the service `name` listens: "registry", "orchestrator" or an added orchestrator's name."""
        if name == "registry":
            return self.registry_address
        if name == "orchestrator":
            return self.orchestrator_address
        return f"127.0.0.1:{self.extra_orchestrator_ports[name]}"

    def metrics_url(self, name: str) -> str:
        """Where the service `name` serves its metrics (only with metrics=True)."""
        return f"http://127.0.0.1:{self.metrics_ports[name]}/metrics"

    def environment(self, orchestrator_address: str | None = None) -> dict[str, str]:
        return {
            **os.environ,
            "ARBITER_DATABASE_URL": self.database_url,
            "ARBITER_REGISTRY_ADDR": self.registry_address,
            "ARBITER_ORCHESTRATOR_ADDR": orchestrator_address or self.orchestrator_address,
            "ARBITER_SERVICE_KEY": self.keys[Role.SERVICE],
            "ARBITER_ASSIGNMENT_POLL_SECONDS": "0.5",
            "ARBITER_SHUTDOWN_GRACE_SECONDS": "1",
            "ARBITER_ALLOW_INSECURE": "true",
            "ARBITER_API_KEY_PEPPER": TEST_PEPPER,
        }

    def start(self) -> None:
        for name in ("registry", "orchestrator"):
            self.start_service(name)

    def add_orchestrator(self, name: str) -> str:
        """Starts one more orchestrator, `name`, on a free port of its own, sharing the registry and the
        database; returns its address once it is SERVING. stop_service(name) and start_service(name)
        stop and restart it."""
        if name in ("registry", "orchestrator") or name in self.extra_orchestrator_ports:
            raise ValueError(f"there is already a service named {name!r}")
        self.extra_orchestrator_ports[name] = free_port()
        self.start_service(name)
        return self.address_of(name)

    def start_service(self, name: str) -> None:
        """Starts one service ("registry", "orchestrator" or an added orchestrator) on its port; returns
        once it is SERVING."""
        address = self.address_of(name)
        module = "services.registry" if name == "registry" else "services.orchestrator"
        environment = self.environment(None if name == "registry" else address)
        if self.metrics:
            port = self.metrics_ports.setdefault(name, free_port())
            environment["ARBITER_METRICS_ADDR"] = f"127.0.0.1:{port}"
        with (self.log_dir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", module], cwd=REPO_ROOT, env=environment, stdout=log, stderr=log
            )
        self.processes[name] = process
        wait_until_serving(address, process)

    def stop(self, kill: bool = False) -> dict[str, int]:
        """Stops every running service (SIGTERM, or SIGKILL with kill=True), the orchestrators before the
        registry; returns their exit codes by name."""
        names = [name for name in self.processes if name != "registry"]
        if "registry" in self.processes:
            names.append("registry")
        return {name: self.stop_service(name, kill=kill) for name in names}

    def stop_service(self, name: str, kill: bool = False) -> int:
        """Stops one service (SIGTERM, or SIGKILL with kill=True); returns its exit code."""
        process = self.processes.pop(name)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            return process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')}" for path in sorted(self.log_dir.glob("*.log"))
        )


@asynccontextmanager
async def running_services(
    database_url: str, log_dir: Path, *, metrics: bool = False
) -> AsyncIterator[ServiceProcesses]:
    """Both services as real subprocesses on free ports, with a key per role (and metrics when asked). They
    must stop cleanly (exit 0 on SIGTERM); their logs are shown when they do not."""
    log_dir.mkdir(exist_ok=True)
    processes = ServiceProcesses(database_url, await create_keys(database_url), log_dir, metrics=metrics)
    try:
        processes.start()
        yield processes
    finally:
        codes = processes.stop()
        assert codes == {"orchestrator": 0, "registry": 0}, processes.logs()
