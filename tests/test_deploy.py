"""deploy/k8s and the Dockerfile, checked statically (there is no cluster and no Docker engine here):
every overlay renders with `kubectl kustomize`, every rendered object is valid against the Kubernetes
schemas (kubernetes-validate, offline), and what an operator relies on is in place."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
KUBECTL = REPO_ROOT / ".venv" / "bin" / "kubectl"
OVERLAYS = ["dev", "prod"]
KUBERNETES_VERSION = "1.33.0"
SERVICES = {
    "arbiter-registry": ("arbiter.v1.RegistryService", 50051),
    "arbiter-orchestrator": (
        "arbiter.v1.OrchestratorService",
        50052,
    ),
}


def render(overlay: str) -> list[dict[str, Any]]:
    completed = subprocess.run(
        [str(KUBECTL), "kustomize", str(REPO_ROOT / "deploy" / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return [document for document in yaml.safe_load_all(completed.stdout) if document]


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {each["metadata"]["name"]: each for each in objects if each["kind"] == kind}


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def test_every_rendered_object_is_valid_against_the_kubernetes_schemas(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    problems = []
    for each in objects:
        try:
            kubernetes_validate.validate(each, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{each['kind']}/{each['metadata']['name']}: {error.message}")
    assert problems == []


def test_each_overlay_has_every_kind_an_operator_expects(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    kinds = {each["kind"] for each in objects}
    assert kinds >= {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "Job",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
    }
    assert set(by_kind(objects, "Deployment")) == set(SERVICES)
    assert all(each["metadata"].get("namespace") for each in objects if each["kind"] != "Namespace")


def test_deployments_probe_with_native_grpc_and_run_unprivileged_within_their_limits(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    overlay, objects = rendered
    for name, deployment in by_kind(objects, "Deployment").items():
        service_name, port = SERVICES[name]
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["readinessProbe"]["grpc"] == {"port": 8081, "service": service_name}
        assert container["livenessProbe"]["grpc"] == {"port": 8081, "service": ""}
        assert {each["containerPort"] for each in container["ports"]} == {port, 8081, 9464}
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert set(container["resources"]) == {"requests", "limits"}
        if overlay == "prod":
            assert deployment["spec"]["replicas"] >= 2
        secrets = {
            each["valueFrom"]["secretKeyRef"]["name"] for each in container.get("env", []) if "valueFrom" in each
        }
        assert secrets == {"arbiter-secrets"}


def test_each_overlay_runs_the_image_tag_it_pins(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, objects = rendered
    (pinned,) = yaml.safe_load(
        (REPO_ROOT / "deploy" / "k8s" / "overlays" / overlay / "kustomization.yaml").read_text()
    )["images"]
    pods = [each["spec"]["template"]["spec"] for each in objects if each["kind"] in {"Deployment", "Job"}]
    images = {container["image"] for pod in pods for container in pod["containers"]}
    assert images == {f"{pinned['newName']}:{pinned['newTag']}"}


def test_services_are_headless_so_long_lived_http2_connections_spread_over_the_pods(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    services = by_kind(objects, "Service")
    assert set(services) == set(SERVICES)
    assert all(service["spec"]["clusterIP"] == "None" for service in services.values())


def test_prod_serves_tls_from_a_mounted_secret_and_dev_allows_plaintext() -> None:
    prod_config = next(iter(by_kind(render("prod"), "ConfigMap").values()))["data"]
    dev_config = next(iter(by_kind(render("dev"), "ConfigMap").values()))["data"]
    assert prod_config["ARBITER_TLS_CERT"].startswith("/etc/arbiter/tls/")
    assert "ARBITER_ALLOW_INSECURE" not in prod_config
    assert dev_config["ARBITER_ALLOW_INSECURE"] == "true"


def test_every_setting_the_manifests_give_is_documented_in_the_readme_table() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `(ARBITER_[A-Z0-9_]+)` \|", readme, flags=re.MULTILINE))
    given = set()
    for overlay in OVERLAYS:
        for config_map in by_kind(render(overlay), "ConfigMap").values():
            given |= set(config_map["data"])
    given |= set(re.findall(r"\b(ARBITER_[A-Z0-9_]+)=", (REPO_ROOT / "Dockerfile").read_text()))
    assert given - documented == set()


def test_the_dockerfile_builds_in_two_stages_and_runs_slim_unprivileged_with_a_health_check() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", dockerfile, flags=re.MULTILINE)
    assert len(stages) == 2 and all(stage.endswith("-slim") for stage in stages)
    assert "COPY --from=build" in dockerfile
    (user,) = re.findall(r"^USER (\S+)", dockerfile, flags=re.MULTILINE)
    assert not user.startswith(("0", "root"))
    assert re.search(r"^HEALTHCHECK .*\n.*shared\.healthcheck", dockerfile, flags=re.MULTILINE)
