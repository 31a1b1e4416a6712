"""Both services as real subprocesses, the way they run in production."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from shared.api_keys import Role
from shared.devstack import wait_until_serving

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

    @property
    def registry_address(self) -> str:
        return f"127.0.0.1:{self.registry_port}"

    @property
    def orchestrator_address(self) -> str:
        return f"127.0.0.1:{self.orchestrator_port}"

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "ARBITER_DATABASE_URL": self.database_url,
            "ARBITER_REGISTRY_ADDR": self.registry_address,
            "ARBITER_ORCHESTRATOR_ADDR": self.orchestrator_address,
            "ARBITER_SERVICE_KEY": self.keys[Role.SERVICE],
            "ARBITER_ASSIGNMENT_POLL_SECONDS": "0.5",
            "ARBITER_SHUTDOWN_GRACE_SECONDS": "1",
        }

    def start(self) -> None:
        for name in ("registry", "orchestrator"):
            self.start_service(name)

    def start_service(self, name: str) -> None:
        """Starts one service ("registry" or "orchestrator") on its port; returns once it is SERVING."""
        module, address = {
            "registry": ("services.registry", self.registry_address),
            "orchestrator": ("services.orchestrator", self.orchestrator_address),
        }[name]
        with (self.log_dir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", module], cwd=REPO_ROOT, env=self.environment(), stdout=log, stderr=log
            )
        self.processes[name] = process
        wait_until_serving(address, process)

    def stop(self, kill: bool = False) -> dict[str, int]:
        """Stops both (SIGTERM, or SIGKILL with kill=True), the orchestrator first; returns their exit codes."""
        return {
            name: self.stop_service(name, kill=kill) for name in ("orchestrator", "registry") if name in self.processes
        }

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
