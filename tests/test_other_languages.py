"""docs/agents-in-other-languages.md, executed: its protoc command for Python, and its grpcurl agent session
run block by block in bash, as a person would paste it, against the services as real processes.

The document's runnable blocks are fenced as ```sh session=NAME (the agent session) or ```sh generate=NAME
(stub generation); this file runs them as written, with only the services' addresses swapped for the
free ports the test uses, so the document cannot drift from what the services do.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from arbiter.v1 import orchestrator_service_pb2, registry_service_pb2
from shared.api_keys import Role
from shared.devstack import write_keys_file
from tests.support.grpcurl import json_messages, wait_for
from tests.support.processes import REPO_ROOT, ServiceProcesses
from tests.support.stack import TEST_PEPPER

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]

DOCUMENT = REPO_ROOT / "docs" / "agents-in-other-languages.md"
# The addresses `make run` uses, as the document writes them.
DOCUMENTED_REGISTRY, DOCUMENTED_ORCHESTRATOR = "127.0.0.1:50051", "127.0.0.1:50052"
VENV_BIN = Path(sys.executable).parent
STREAM_TIMEOUT_SECONDS = 15.0
# grpcurl exits with 64 + the status code when a call fails.
GRPCURL_FAILED_PRECONDITION = 64 + 9


def documented_blocks(kind: str) -> dict[str, str]:
    """The document's ```sh KIND=NAME blocks, by name."""
    pattern = re.compile(rf"^```sh {kind}=([\w-]+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
    blocks: dict[str, str] = {}
    for name, body in pattern.findall(DOCUMENT.read_text()):
        assert name not in blocks, f"two ```sh {kind}={name} blocks in {DOCUMENT.name}"
        blocks[name] = body
    return blocks


def command_environment(extra_bin: Path | None = None) -> dict[str, str]:
    """This environment with the dev install's bin first (where `make run` users find grpcurl), and no
    ARBITER_* variables but those the document's `source .arbiter/dev-keys.env` sets."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("ARBITER_")}
    path = [str(VENV_BIN), environment.get("PATH", "")]
    if extra_bin is not None:
        path.insert(0, str(extra_bin))
    environment["PATH"] = os.pathsep.join(path)
    return environment


# Test machines may lack jq; the document uses it only as `jq -r .a.b`, which this stands in for.
JQ_STAND_IN = f"""#!{sys.executable}
import json, sys
value = json.load(sys.stdin)
for key in sys.argv[-1].strip(".").split("."):
    value = value[key]
print(value)
"""


def jq_stand_in_dir(tmp_path: Path) -> Path | None:
    if shutil.which("jq"):
        return None
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "jq").write_text(JQ_STAND_IN)
    (bin_dir / "jq").chmod(0o755)
    return bin_dir


@dataclass(frozen=True)
class BlockResult:
    exit_code: int
    output: str

    def json(self) -> dict[str, Any]:
        messages = json_messages(self.output)
        assert len(messages) == 1, f"expected one JSON answer, got:\n{self.output}"
        return messages[0]


class Terminal:
    """One bash for the whole session, as in a terminal: a variable set by one block is there for the next."""

    def __init__(self, cwd: Path, environment: dict[str, str]) -> None:
        self._bash = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=environment,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read_output, daemon=True).start()
        # Like `set -o pipefail` in a careful shell: `grpcurl … | jq` fails when grpcurl does.
        assert self.run("set -o pipefail").exit_code == 0

    def _read_output(self) -> None:
        assert self._bash.stdout is not None
        for line in self._bash.stdout:
            self._lines.put(line)

    def run(self, block: str, timeout: float = 30.0) -> BlockResult:
        """Pastes the block, returns its output and the exit code of its last command."""
        marker = f"block-finished-{uuid.uuid4().hex}"
        assert self._bash.stdin is not None
        self._bash.stdin.write(f"{block}\nprintf '\\n%s %d\\n' {marker} \"$?\"\n")
        self._bash.stdin.flush()
        output: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"the block did not finish in {timeout} s:\n{block}\n{''.join(output)}") from None
            if line.startswith(marker):
                return BlockResult(int(line.split()[1]), "".join(output))
            output.append(line)

    def variable(self, name: str) -> str:
        return self.run(f'printf "%s\\n" "${name}"').output.strip()

    def close(self) -> None:
        assert self._bash.stdin is not None
        self._bash.stdin.close()
        try:
            self._bash.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self._bash.pid, signal.SIGKILL)
            self._bash.wait()


class StreamTerminal:
    """The terminal left running the assignment stream; what it printed is read back as JSON messages."""

    def __init__(self, cwd: Path, environment: dict[str, str], script: str) -> None:
        self.output = cwd / "stream.out"
        self.errors = cwd / "stream.err"
        with self.output.open("w") as stdout, self.errors.open("w") as stderr:
            self._bash = subprocess.Popen(
                ["bash", "--noprofile", "--norc", "-c", script],
                cwd=cwd,
                env=environment,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )

    def messages(self) -> list[dict[str, Any]]:
        return json_messages(self.output.read_text())

    def wait_for_message(self, count: int) -> dict[str, Any]:
        """The count-th message (1-based), once the stream has printed it."""
        wait_for(
            lambda: len(self.messages()) >= count or self._bash.poll() is not None,
            STREAM_TIMEOUT_SECONDS,
            f"message {count} on the grpcurl stream",
        )
        messages = self.messages()
        assert len(messages) >= count, f"the stream ended early: {self.errors.read_text()}"
        return messages[count - 1]

    def interrupt(self) -> int:
        """Ctrl-C, as the terminal sends it: to the whole foreground process group."""
        if self._bash.poll() is None:
            os.killpg(self._bash.pid, signal.SIGINT)
        try:
            return self._bash.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self._bash.pid, signal.SIGKILL)
            return self._bash.wait()


@pytest.fixture
def checkout(tmp_path: Path, services: ServiceProcesses) -> Path:
    """A folder laid out like the arbiter checkout after `make run`: `.arbiter/dev-keys.env` with a key per role."""
    folder = tmp_path / "checkout"
    (folder / ".arbiter").mkdir(parents=True)
    write_keys_file(folder / ".arbiter" / "dev-keys.env", services.keys, TEST_PEPPER)
    return folder


@pytest.fixture
def shell_environment(tmp_path: Path) -> dict[str, str]:
    return command_environment(jq_stand_in_dir(tmp_path))


@pytest.fixture
def terminal(checkout: Path, shell_environment: dict[str, str]) -> Iterator[Terminal]:
    opened = Terminal(checkout, shell_environment)
    yield opened
    opened.close()


def test_documented_agent_session_runs_as_written_with_grpcurl(
    services: ServiceProcesses, checkout: Path, terminal: Terminal, shell_environment: dict[str, str]
) -> None:
    blocks = documented_blocks("session")

    def step(name: str) -> BlockResult:
        assert name in blocks, f"{DOCUMENT.name} has no ```sh session={name} block"
        block = blocks[name]
        block = block.replace(DOCUMENTED_REGISTRY, services.registry_address)
        block = block.replace(DOCUMENTED_ORCHESTRATOR, services.orchestrator_address)
        return terminal.run(block)

    def succeeded(name: str) -> BlockResult:
        result = step(name)
        assert result.exit_code == 0, f"session={name} failed:\n{result.output}"
        return result

    def answer(name: str) -> dict[str, Any]:
        return succeeded(name).json()

    assert step("setup").exit_code == 0
    assert terminal.variable("ARBITER_AGENT_KEY") == services.keys[Role.AGENT]

    registered = answer("register")["agent"]
    assert registered["status"] == "AGENT_STATUS_ONLINE"
    agent_id = registered["id"]
    heartbeat = answer("heartbeat")
    assert heartbeat["heartbeat_interval"] == "5s"
    assert heartbeat["agent"]["status"] == "AGENT_STATUS_ONLINE"

    stream_script = "\n".join(
        block.replace(DOCUMENTED_ORCHESTRATOR, services.orchestrator_address)
        for block in (blocks["setup"], blocks["stream"])
    )
    stream = StreamTerminal(checkout, shell_environment, stream_script)
    try:
        # Submitted, streamed, progress, completed.
        printed = succeeded("submit").output.split()
        first_task = terminal.variable("TASK")
        assert printed == [first_task] != [""]
        assignment = stream.wait_for_message(1)["assignment"]
        assert (assignment["task"]["id"], assignment["attempt"]) == (first_task, 1)
        assert assignment["task"]["state"] == "TASK_STATE_ASSIGNED"
        assert assignment["task"]["assigned_agent_id"] == agent_id
        extended = datetime.fromisoformat(answer("progress")["lease_expires_at"])
        assert extended >= datetime.fromisoformat(assignment["lease_expires_at"])
        completed = answer("complete")["task"]
        assert (completed["id"], completed["state"], completed["progress"]) == (first_task, "TASK_STATE_COMPLETED", 1)
        assert completed["result"]

        # A retryable failure: the task comes back on the stream as attempt 2; attempt 1 is stale.
        succeeded("submit-flaky")
        flaky_task = terminal.variable("TASK")
        assert flaky_task != first_task
        assignment = stream.wait_for_message(2)["assignment"]
        assert (assignment["task"]["id"], assignment["attempt"]) == (flaky_task, 1)
        failed = answer("fail-retryable")["task"]
        assert (failed["state"], failed["attempt"]) == ("TASK_STATE_PENDING", 2)
        retried = stream.wait_for_message(3)["assignment"]
        assert (retried["task"]["id"], retried["attempt"]) == (flaky_task, 2)
        stale = step("stale-report")
        assert stale.exit_code == GRPCURL_FAILED_PRECONDITION, stale.output
        assert "FailedPrecondition" in stale.output
        completed = answer("complete-retry")["task"]
        assert (completed["id"], completed["state"], completed["attempt"]) == (flaky_task, "TASK_STATE_COMPLETED", 2)

        # A cancellation of the assigned task reaches the agent on its stream; its reports are refused.
        succeeded("submit-to-cancel")
        doomed_task = terminal.variable("TASK")
        assignment = stream.wait_for_message(4)["assignment"]
        assert (assignment["task"]["id"], assignment["attempt"]) == (doomed_task, 1)
        cancelled = answer("cancel")["task"]
        assert cancelled["state"] == "TASK_STATE_CANCELLED"
        cancellation = stream.wait_for_message(5)["cancellation"]
        assert (cancellation["task_id"], cancellation["attempt"]) == (doomed_task, 1)
        assert cancellation["reason"] == cancelled["error"] != ""
        refused = step("report-after-cancel")
        assert refused.exit_code == GRPCURL_FAILED_PRECONDITION, refused.output
        assert "FailedPrecondition" in refused.output

        # Draining: the registry records it; then the stream is closed with Ctrl-C.
        assert answer("drain")["agent"]["status"] == "AGENT_STATUS_DRAINING"
    finally:
        stream.interrupt()
    kinds = [next(iter(message)) for message in stream.messages()]
    assert kinds == ["assignment"] * 4 + ["cancellation"], stream.messages()


def test_documented_protoc_command_generates_importable_python_stubs(tmp_path: Path) -> None:
    # Run where the document runs it: a folder with the contract in proto/.
    (tmp_path / "proto").symlink_to(REPO_ROOT / "proto", target_is_directory=True)
    block = documented_blocks("generate")["python"]
    generated = subprocess.run(
        ["bash", "--noprofile", "--norc", "-e", "-c", block],
        cwd=tmp_path,
        env=command_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert generated.returncode == 0, generated.stderr

    # Imported from the generated folder alone (not this repository's own arbiter/v1), then used.
    check = """
import sys
sys.path.insert(0, "gen/python")
import grpc
from arbiter.v1 import orchestrator_service_pb2 as pb, orchestrator_service_pb2_grpc as pb_grpc
from arbiter.v1 import registry_service_pb2_grpc
assert pb.__file__.startswith(sys.argv[1]), pb.__file__
pb_grpc.OrchestratorServiceStub(grpc.insecure_channel("127.0.0.1:1"))
registry_service_pb2_grpc.RegistryServiceStub(grpc.insecure_channel("127.0.0.1:1"))
message = pb.StreamAssignmentsResponse(cancellation=pb.Cancellation(task_id="t", attempt=2, reason="r"))
parsed = pb.StreamAssignmentsResponse.FromString(message.SerializeToString())
print(parsed.WhichOneof("kind"), parsed.cancellation.attempt)
"""
    imported = subprocess.run(
        [sys.executable, "-c", check, str(tmp_path / "gen" / "python")],
        cwd=tmp_path,
        env=command_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.split() == ["cancellation", "2"]
    assert (tmp_path / "gen" / "python" / "arbiter" / "v1" / "orchestrator_service_pb2.pyi").exists()


def test_every_rpc_the_document_names_is_in_the_contract() -> None:
    services = {
        **orchestrator_service_pb2.DESCRIPTOR.services_by_name,
        **registry_service_pb2.DESCRIPTOR.services_by_name,
    }
    named = set(re.findall(r"arbiter\.v1\.(\w+)/(\w+)", DOCUMENT.read_text()))
    assert named, "the document names no RPC as arbiter.v1.Service/Method"
    for service, method in named:
        assert service in services and method in services[service].methods_by_name, f"{service}/{method}"
    agent_rpcs = ("RegisterAgent", "Heartbeat", "StreamAssignments", "ReportProgress", "CompleteTask", "FailTask")
    assert {method for _, method in named} >= set(agent_rpcs)


def test_document_tells_agents_what_every_status_code_they_can_get_means() -> None:
    text = DOCUMENT.read_text()
    for code in (
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "FAILED_PRECONDITION",
        "ABORTED",
        "UNAVAILABLE",
    ):
        assert re.search(rf"^\| `{code}` \|", text, re.MULTILINE), f"no row for {code} in the error table"
