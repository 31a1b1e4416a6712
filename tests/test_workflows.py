""".github/workflows and the Make targets they call, checked here since GitHub Actions cannot run on this
machine: the workflows parse, pass actionlint (with shellcheck on every run: script), call only real Make
targets, and do what docs/operations.md says; `make breaking` and `make manifests` are run for real."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from tests.test_deploy import KUBERNETES_VERSION, render

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO_ROOT / ".github" / "workflows"
VENV_BIN = REPO_ROOT / ".venv" / "bin"
# A version tag (v4, v1.2.3) or a full commit; never a branch, which changes under you.
PINNED_ACTION = re.compile(r"^[\w.-]+/[\w./-]+@(v\d+(\.\d+){0,2}|[0-9a-f]{40})$")


def load(name: str) -> dict[str, Any]:
    workflow: dict[str, Any] = yaml.safe_load((WORKFLOWS / name).read_text())
    return workflow


def triggers(workflow: dict[str, Any]) -> dict[str, Any]:
    # YAML 1.1 reads the bare key `on` as the boolean True.
    on: dict[str, Any] = workflow[True]
    return on


def steps(workflow: dict[str, Any], job: str) -> list[dict[str, Any]]:
    job_steps: list[dict[str, Any]] = workflow["jobs"][job]["steps"]
    return job_steps


def all_steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"] for step in steps(workflow, job)]


def make_calls(run: str) -> list[list[str]]:
    """Each `make ...` command in a run: script, as its words after `make`."""
    calls = []
    for line in run.splitlines():
        # An expression may hold spaces; it stands for one word here.
        words = shlex.split(re.sub(r"\$\{\{.*?\}\}", "EXPRESSION", line))
        calls += [words[index + 1 :] for index, word in enumerate(words) if word == "make"]
    return calls


def targets_of(call: list[str]) -> list[str]:
    return [word for word in call if "=" not in word and not word.startswith("-")]


def index_of_step_running(job_steps: list[dict[str, Any]], target: str) -> int:
    (index,) = [
        index
        for index, step in enumerate(job_steps)
        if any(target in targets_of(call) for call in make_calls(step.get("run", "")))
    ]
    return index


def make(*arguments: str) -> subprocess.CompletedProcess[str]:
    """make in the repository, untouched by the make (if any) running these tests or by the caller's
    IMAGE/TAG: both would leak their variables into this one."""
    leaking = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "IMAGE", "TAG", "BREAKING_AGAINST", "MANIFESTS"}
    environment = {name: value for name, value in os.environ.items() if name not in leaking}
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO_ROOT), *arguments],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
        timeout=120,
    )


def assert_makefile_can_make(target: str, named_by: str) -> None:
    """A rule for it in the Makefile (being in .PHONY alone would make `make -n` succeed doing nothing),
    and a dry run that succeeds."""
    rules = re.findall(r"^([\w.-]+(?:[ \t]+[\w.-]+)*)[ \t]*:(?!=)", (REPO_ROOT / "Makefile").read_text(), re.MULTILINE)
    defined = {name for rule in rules if rule != ".PHONY" for name in rule.split()}
    assert target in defined, f"{named_by} names `make {target}`, which the Makefile has no rule for"
    dry_run = make("-n", target)
    assert dry_run.returncode == 0, f"{named_by} names `make {target}`: {dry_run.stderr}"


def makefile_variable(name: str) -> str:
    completed = make("-s", "--eval", "print-%: ; @echo '$($*)'", f"print-{name}")
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.strip()


def git(directory: Path, *arguments: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", *arguments],
        cwd=directory,
        capture_output=True,
        check=True,
    )


@pytest.mark.parametrize("name", ["ci.yml", "release.yml"])
def test_every_make_target_a_workflow_runs_is_one_the_makefile_can_make(name: str) -> None:
    calls = [call for step in all_steps(load(name)) for call in make_calls(step.get("run", ""))]
    targets = {target for call in calls for target in targets_of(call)}
    assert targets >= ({"lint", "test", "breaking", "image"} if name == "ci.yml" else {"image", "manifests"})
    for target in targets:
        assert_makefile_can_make(target, named_by=name)


def test_every_make_target_the_docs_name_is_one_the_makefile_can_make() -> None:
    documents = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    targets = {target for each in documents for target in re.findall(r"`make ([a-z][a-z-]*)", each.read_text())}
    assert targets >= {
        "run",
        "test",
        "lint",
        "proto",
        "migrate",
        "env-example",
        "keys",
        "bench",
        "breaking",
        "manifests",
    }
    for target in targets:
        assert_makefile_can_make(target, named_by="the documentation")


def test_every_action_a_workflow_uses_is_pinned_to_a_version() -> None:
    uses = [step["uses"] for name in ("ci.yml", "release.yml") for step in all_steps(load(name)) if "uses" in step]
    assert {each.split("@")[0] for each in uses} == {"actions/checkout", "actions/setup-python", "docker/login-action"}
    assert [each for each in uses if not PINNED_ACTION.match(each)] == []


def test_actionlint_with_shellcheck_finds_nothing_wrong_in_the_workflows() -> None:
    completed = subprocess.run(
        [str(VENV_BIN / "actionlint"), f"-shellcheck={VENV_BIN / 'shellcheck'}", "-no-color"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_actionlint_reports_what_shellcheck_finds_in_a_run_script(tmp_path: Path) -> None:
    """So the test above would fail on a sloppy script, not pass for want of shellcheck."""
    workflow = tmp_path / "sloppy.yml"
    workflow.write_text(
        "on: push\njobs:\n  build:\n    runs-on: ubuntu-latest\n    steps:\n      - run: make test TAG=$REF\n"
    )
    completed = subprocess.run(
        [str(VENV_BIN / "actionlint"), f"-shellcheck={VENV_BIN / 'shellcheck'}", "-no-color", str(workflow)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 1
    assert "SC2086" in completed.stdout


def test_ci_runs_on_pull_requests_and_main_with_read_only_rights_and_cancels_superseded_runs() -> None:
    ci = load("ci.yml")
    assert set(triggers(ci)) == {"pull_request", "push"}
    assert triggers(ci)["push"]["branches"] == ["main"]
    assert ci["permissions"] == {"contents": "read"}
    assert ci["concurrency"]["cancel-in-progress"] is True
    assert "github.ref" in ci["concurrency"]["group"]
    assert set(ci["jobs"]) == {"lint", "test", "breaking", "image"}
    for job in ("lint", "test", "breaking"):
        (setup,) = [step for step in steps(ci, job) if step.get("uses", "").startswith("actions/setup-python@")]
        assert setup["with"] == {"python-version": "3.11", "cache": "pip", "cache-dependency-path": "pyproject.toml"}
    assert [targets_of(call) for step in steps(ci, "lint") for call in make_calls(step.get("run", ""))] == [["lint"]]
    image_calls = [call for step in steps(ci, "image") for call in make_calls(step.get("run", ""))]
    assert [targets_of(call) for call in image_calls] == [["image"]]
    assert not any("push" in step.get("run", "") for step in steps(ci, "image"))


def test_the_test_job_runs_make_test_against_its_postgres_16_service() -> None:
    job = load("ci.yml")["jobs"]["test"]
    postgres = job["services"]["postgres"]
    assert postgres["image"] == "postgres:16"
    assert "--health-cmd" in postgres["options"]
    assert "5432:5432" in postgres["ports"]
    url = urlsplit(job["env"]["ARBITER_TEST_DATABASE_URL"])
    assert (url.hostname, url.port) in {("127.0.0.1", 5432), ("localhost", 5432)}
    assert url.username == postgres["env"]["POSTGRES_USER"]
    assert url.password == postgres["env"]["POSTGRES_PASSWORD"]
    assert url.path == "/" + postgres["env"]["POSTGRES_DB"]
    index_of_step_running(job["steps"], "test")


def test_the_breaking_job_makes_a_local_main_branch_before_comparing_with_it() -> None:
    ci = load("ci.yml")
    for job in ("breaking", "test"):  # the test job runs test_make_breaking_passes_on_the_current_tree
        job_steps = steps(ci, job)
        checkout = next(step for step in job_steps if step.get("uses", "").startswith("actions/checkout@"))
        assert checkout["with"]["fetch-depth"] == 0
        fetch = next(
            index for index, step in enumerate(job_steps) if "refs/heads/main:refs/heads/main" in step.get("run", "")
        )
        assert fetch < index_of_step_running(job_steps, "test" if job == "test" else "breaking")
    assert makefile_variable("BREAKING_AGAINST") == ".git#branch=main"


def test_release_pushes_the_tagged_image_and_attaches_the_manifests_rendered_with_it() -> None:
    release = load("release.yml")
    assert triggers(release) == {"push": {"tags": ["v*"]}}
    assert release["permissions"] == {"contents": "write", "packages": "write"}
    (job,) = release["jobs"].values()
    job_steps = job["steps"]
    assert job["env"]["TAG"] == "${{ github.ref_name }}"
    login = next(step for step in job_steps if step.get("uses", "").startswith("docker/login-action@"))
    assert login["with"]["registry"] == "ghcr.io"
    assert login["with"]["password"] == "${{ secrets.GITHUB_TOKEN }}"
    assert any('"IMAGE=ghcr.io/${GITHUB_REPOSITORY,,}"' in step.get("run", "") for step in job_steps)

    image, manifests = index_of_step_running(job_steps, "image"), index_of_step_running(job_steps, "manifests")
    for index, target in ((image, "image"), (manifests, "manifests")):
        (call,) = [call for call in make_calls(job_steps[index]["run"]) if target in targets_of(call)]
        assert {"IMAGE=$IMAGE", "TAG=$TAG"} <= set(call)
    assert 'docker push "$IMAGE:$TAG"' in job_steps[image]["run"]

    manifests_file = makefile_variable("MANIFESTS")
    assert manifests_file == "dist/arbiter-prod.yaml"
    (create,) = [index for index, step in enumerate(job_steps) if "gh release create" in step.get("run", "")]
    assert create > manifests > image
    assert shlex.split(job_steps[create]["run"])[3:5] == ["$TAG", manifests_file]
    assert job_steps[create]["env"]["GH_TOKEN"] == "${{ github.token }}"


def test_make_manifests_renders_the_prod_overlay_with_the_given_image(tmp_path: Path) -> None:
    output = tmp_path / "release" / "arbiter-prod.yaml"
    completed = make("manifests", "IMAGE=ghcr.io/acme/arbiter", "TAG=v1.2.0-rc.1", f"MANIFESTS={output}")
    assert completed.returncode == 0, completed.stderr
    objects = [each for each in yaml.safe_load_all(output.read_text()) if each]

    for each in objects:
        kubernetes_validate.validate(each, KUBERNETES_VERSION, strict=True)
    pods = [each["spec"]["template"]["spec"] for each in objects if each["kind"] in {"Deployment", "Job"}]
    images = {container["image"] for pod in pods for container in pod["containers"] + pod.get("initContainers", [])}
    assert len(pods) == 3 and images == {"ghcr.io/acme/arbiter:v1.2.0-rc.1"}
    # Nothing but the image differs from the prod overlay as committed.
    committed = yaml.safe_dump_all(render("prod")).replace("ghcr.io/arbiter/arbiter:0.1.0", "IMAGE")
    assert yaml.safe_dump_all(objects).replace("ghcr.io/acme/arbiter:v1.2.0-rc.1", "IMAGE") == committed
    assert not list((REPO_ROOT / "dist").glob("release.*"))


@pytest.mark.parametrize(
    ("variable", "value"),
    [("IMAGE", "ghcr.io/Acme/arbiter"), ("IMAGE", "ghcr.io/acme/arbiter:v1"), ("TAG", "-rc"), ("TAG", "v1 2")],
)
def test_make_manifests_refuses_an_image_docker_would_refuse(tmp_path: Path, variable: str, value: str) -> None:
    output = tmp_path / "arbiter-prod.yaml"
    completed = make("manifests", f"{variable}={value}", f"MANIFESTS={output}")
    assert completed.returncode == 2
    assert f"{variable}='{value}' is not an image" in completed.stderr
    assert not output.exists()


def test_make_breaking_passes_on_the_current_tree() -> None:
    completed = make("breaking")
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_make_breaking_fails_when_a_field_on_main_is_gone(tmp_path: Path) -> None:
    """A repository whose main branch holds this tree's protos, then the same with one more field: to
    buf, this tree has deleted that field."""
    shutil.copytree(REPO_ROOT / "proto", tmp_path / "proto")
    shutil.copy(REPO_ROOT / "buf.yaml", tmp_path)
    git(tmp_path, "init", "--quiet", "--initial-branch=main")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "--quiet", "-m", "the protos as they are")
    against = f"BREAKING_AGAINST={tmp_path / '.git'}#branch=main"
    unchanged = make("breaking", against)
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr

    admin = tmp_path / "proto" / "arbiter" / "v1" / "admin_service.proto"
    admin.write_text(
        admin.read_text().replace("message ApiKey {\n", "message ApiKey {\n  string added_on_main = 900;\n")
    )
    git(tmp_path, "commit", "--quiet", "-am", "a field this tree lacks")
    broken = make("breaking", against)
    assert broken.returncode != 0
    assert 'Previously present field "900" with name "added_on_main" on message "ApiKey" was deleted' in broken.stdout
