"""The examples in examples/ work as the README shows them: an agent in its own process, a submitter in
another, against both services running as processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from arbiter import Client, TaskState
from shared.api_keys import Role
from tests.support.processes import REPO_ROOT, ServiceProcesses

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]

EXAMPLES = REPO_ROOT / "examples"


def example_environment(services: ServiceProcesses, role: Role) -> dict[str, str]:
    return {
        **os.environ,
        "ARBITER_REGISTRY_ADDR": services.registry_address,
        "ARBITER_ORCHESTRATOR_ADDR": services.orchestrator_address,
        "ARBITER_API_KEY": services.keys[role],
    }


async def test_the_review_agent_example_reviews_what_the_submit_example_sends_and_drains_on_sigterm(
    services: ServiceProcesses, tmp_path: Path
) -> None:
    agent_log = (tmp_path / "review_agent.log").open("w")
    agent = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "review_agent.py")],
        env=example_environment(services, Role.AGENT),
        stdout=agent_log,
        stderr=subprocess.STDOUT,
    )
    try:
        submitted = subprocess.run(
            [sys.executable, str(EXAMPLES / "submit_reviews.py")],
            env=example_environment(services, Role.SUBMITTER),
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert submitted.returncode == 0, submitted.stderr
        lines = submitted.stdout.splitlines()
        assert len(lines) == 3, submitted.stdout
        assert all("COMPLETED" in line for line in lines), submitted.stdout
        assert "'verdict': 'approve'" in lines[0] and "'verdict': 'request-changes'" in lines[1]

        async with Client(services.orchestrator_address, services.keys[Role.SUBMITTER]) as client:
            refused = await client.submit("code-review", {"no-diff": True}, languages=["python"])
            failed = await client.wait(refused.id, timeout=30)
        assert failed.state == TaskState.FAILED
        assert failed.attempt == 1
        assert "needs a 'diff'" in failed.error
    finally:
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(timeout=30)
        agent_log.close()
    assert code == 0, (tmp_path / "review_agent.log").read_text()


def test_the_readme_shows_the_example_agent_as_it_is() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## An agent in Python", 1)[1]
    shown = section.split("```python\n", 1)[1].split("```", 1)[0]
    example = (EXAMPLES / "review_agent.py").read_text()
    without_docstring = example.split('"""', 2)[2].lstrip("\n")
    assert shown == without_docstring
    assert len(example.splitlines()) <= 22
