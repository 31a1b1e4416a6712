"""TLS on both services (issue 6, point 5), with a CA and certificates each test generates
(tests/support/certificates.py): end to end through the SDK, the orchestrator dialing the registry over
TLS, mutual TLS, plaintext refused, the start-up check, grpcurl and the `arbiter` command.

Every service here runs in the test's event loop, so subprocess clients (grpcurl, the command) go
through asyncio.create_subprocess_exec and never block it."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from arbiter import ArbiterError, Client, Task, TaskState
from shared.api_keys import Role
from shared.config import ConfigError
from shared.tls import require_transport_security, server_credentials
from tests.support.certificates import CertificateFiles, Certificates, create_pki
from tests.support.grpcurl import GRPCURL
from tests.support.processes import REPO_ROOT, free_port
from tests.support.stack import Stack, config_for_tests, running_stack, serving_agent

CALL_TIMEOUT_SECONDS = 5.0
SUBPROCESS_TIMEOUT_SECONDS = 60.0


@pytest.fixture
def pki(tmp_path: Path) -> Certificates:
    return create_pki(tmp_path / "pki")


def server_tls(pki: Certificates, *, mutual: bool = False) -> dict[str, Any]:
    """Settings for both services: serve TLS with the server certificate, trust the test CA when the
    orchestrator dials the registry, and with `mutual` require client certificates from that CA."""
    settings: dict[str, Any] = {
        "allow_insecure": False,
        "tls_cert": str(pki.server.cert),
        "tls_key": str(pki.server.key),
        "tls_ca": str(pki.ca),
    }
    if mutual:
        settings["tls_client_ca"] = str(pki.ca)
    return settings


def tls_client(stack: Stack, pki: Certificates, certificate: CertificateFiles | None = None) -> Client:
    """A submitter's SDK client trusting the test CA, presenting `certificate` if given."""
    return Client(
        stack.orchestrator_address,
        stack.keys[Role.SUBMITTER],
        registry_address=stack.registry_address,
        timeout=CALL_TIMEOUT_SECONDS,
        tls_ca=pki.ca,
        tls_client_cert=certificate.cert if certificate else None,
        tls_client_key=certificate.key if certificate else None,
    )


async def echo(task: Task) -> dict[str, Any]:
    return {"echo": task.payload}


async def run_command(environment: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    process = await asyncio.create_subprocess_exec(
        *command, cwd=REPO_ROOT, env=environment, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), SUBPROCESS_TIMEOUT_SECONDS)
    assert process.returncode is not None
    return subprocess.CompletedProcess(list(command), process.returncode, stdout.decode(), stderr.decode())


def without_arbiter_settings(**variables: str) -> dict[str, str]:
    inherited = {name: value for name, value in os.environ.items() if not name.startswith("ARBITER_")}
    return {**inherited, **variables}


# End to end.


async def test_an_sdk_agent_completes_a_task_with_both_services_and_the_registry_link_on_tls(
    database_url: str, pki: Certificates
) -> None:
    # The orchestrator looks the agent up in the registry, over TLS, before it can route the task to it.
    async with (
        running_stack(database_url, **server_tls(pki)) as stack,
        serving_agent(stack, "tls-agent-1", {"echo": echo}, tls_ca=pki.ca),
        tls_client(stack, pki) as client,
    ):
        submitted = await client.submit("echo", {"text": "over tls"})
        finished = await client.wait(submitted.id, timeout=30)
    assert finished.state is TaskState.COMPLETED
    assert finished.result == {"echo": {"text": "over tls"}}
    assert finished.assigned_agent_id == "tls-agent-1"


async def test_with_mutual_tls_everything_presents_a_certificate_and_a_task_still_completes(
    database_url: str, pki: Certificates
) -> None:
    # The registry requires client certificates too, so the orchestrator's calls to it only work
    # because it presents its own certificate.
    async with (
        running_stack(database_url, **server_tls(pki, mutual=True)) as stack,
        serving_agent(
            stack,
            "mtls-agent-1",
            {"echo": echo},
            tls_ca=pki.ca,
            tls_client_cert=pki.client.cert,
            tls_client_key=pki.client.key,
        ),
        tls_client(stack, pki, pki.client) as client,
    ):
        submitted = await client.submit("echo", {"text": "mutual"})
        finished = await client.wait(submitted.id, timeout=30)
    assert finished.state is TaskState.COMPLETED
    assert finished.assigned_agent_id == "mtls-agent-1"


async def test_the_sdk_reads_the_tls_files_from_the_environment(
    database_url: str, pki: Certificates, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARBITER_TLS_CA", str(pki.ca))
    monkeypatch.setenv("ARBITER_TLS_CLIENT_CERT", str(pki.client.cert))
    monkeypatch.setenv("ARBITER_TLS_CLIENT_KEY", str(pki.client.key))
    async with (
        running_stack(database_url, **server_tls(pki, mutual=True)) as stack,
        Client(stack.orchestrator_address, stack.keys[Role.VIEWER], registry_address=stack.registry_address) as client,
    ):
        assert await client.list_agents() == []


# Refused connections.


@pytest.mark.parametrize("service", ["registry", "orchestrator"])
async def test_a_plaintext_client_is_refused_by_a_tls_server(
    database_url: str, pki: Certificates, service: str
) -> None:
    async with running_stack(database_url, **server_tls(pki)) as stack:
        address = stack.registry_address if service == "registry" else stack.orchestrator_address
        async with grpc.aio.insecure_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_SECONDS
                )
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_client_that_does_not_trust_the_servers_ca_is_refused(
    database_url: str, pki: Certificates, tmp_path: Path
) -> None:
    stranger = create_pki(tmp_path / "stranger")
    async with running_stack(database_url, **server_tls(pki)) as stack, tls_client(stack, stranger) as client:
        with pytest.raises(ArbiterError) as raised:
            await client.list_agents()
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("service", ["registry", "orchestrator"])
@pytest.mark.parametrize("presented", ["no certificate", "a certificate from another CA"])
async def test_with_a_client_ca_a_client_without_a_certificate_from_it_is_refused(
    database_url: str, pki: Certificates, service: str, presented: str
) -> None:
    certificate = pki.foreign_client if presented == "a certificate from another CA" else None
    async with (
        running_stack(database_url, **server_tls(pki, mutual=True)) as stack,
        tls_client(stack, pki, certificate) as client,
    ):
        with pytest.raises(ArbiterError) as raised:
            if service == "registry":
                await client.list_agents()
            else:
                await client.list_tasks()
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("service", ["registry", "orchestrator"])
async def test_with_a_client_ca_a_client_with_a_certificate_from_it_is_served(
    database_url: str, pki: Certificates, service: str
) -> None:
    async with (
        running_stack(database_url, **server_tls(pki, mutual=True)) as stack,
        tls_client(stack, pki, pki.client) as client,
    ):
        if service == "registry":
            assert await client.list_agents() == []
        else:
            assert await client.list_tasks() == []


# Starting up.


@pytest.mark.parametrize("module", ["services.registry", "services.orchestrator"])
async def test_a_service_without_tls_settings_or_allow_insecure_refuses_to_start(
    database_url: str, module: str
) -> None:
    environment = without_arbiter_settings(
        ARBITER_DATABASE_URL=database_url,
        ARBITER_REGISTRY_ADDR=f"127.0.0.1:{free_port()}",
        ARBITER_ORCHESTRATOR_ADDR=f"127.0.0.1:{free_port()}",
        ARBITER_SERVICE_KEY="arb_not-checked-before-tls",
    )
    result = await run_command(environment, sys.executable, "-m", module)
    assert result.returncode == 2, result.stderr
    assert "ARBITER_TLS_CERT" in result.stderr
    assert "ARBITER_TLS_KEY" in result.stderr
    assert "ARBITER_ALLOW_INSECURE=true" in result.stderr
    assert "Traceback" not in result.stderr


def tls_settings(pki: Certificates, tmp_path: Path, case: str) -> dict[str, Any]:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    server = {"tls_cert": str(pki.server.cert), "tls_key": str(pki.server.key)}
    return {
        "cert without key": {"tls_cert": str(pki.server.cert)},
        "key without cert": {"tls_key": str(pki.server.key)},
        "client CA without cert": {"tls_client_ca": str(pki.ca), "allow_insecure": True},
        "missing cert file": {**server, "tls_cert": str(tmp_path / "missing.crt")},
        "key file not PEM": {**server, "tls_key": str(not_pem)},
        "missing client CA file": {**server, "tls_client_ca": str(tmp_path / "missing-ca.crt")},
        "client cert without client key": {**server, "tls_client_cert": str(pki.client.cert)},
    }[case]


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("cert without key", ["ARBITER_TLS_CERT", "ARBITER_TLS_KEY"]),
        ("key without cert", ["ARBITER_TLS_KEY", "ARBITER_TLS_CERT"]),
        ("client CA without cert", ["ARBITER_TLS_CLIENT_CA", "ARBITER_TLS_CERT"]),
        ("missing cert file", ["ARBITER_TLS_CERT", "missing.crt", "No such file"]),
        ("key file not PEM", ["ARBITER_TLS_KEY", "not.pem", "not PEM"]),
        ("missing client CA file", ["ARBITER_TLS_CLIENT_CA", "missing-ca.crt"]),
        ("client cert without client key", ["ARBITER_TLS_CLIENT_CERT", "ARBITER_TLS_CLIENT_KEY"]),
    ],
)
def test_unusable_tls_settings_stop_the_start_with_a_message_naming_them(
    database_url: str, pki: Certificates, tmp_path: Path, case: str, named: list[str]
) -> None:
    config = config_for_tests(database_url, **{"allow_insecure": False, **tls_settings(pki, tmp_path, case)})
    with pytest.raises(ConfigError) as raised:
        require_transport_security(config)
    for text in named:
        assert text in str(raised.value)


def test_plaintext_is_allowed_only_with_allow_insecure(database_url: str) -> None:
    insecure = config_for_tests(database_url, allow_insecure=True)
    assert server_credentials(insecure) is None
    with pytest.raises(ConfigError, match="ARBITER_ALLOW_INSECURE"):
        server_credentials(dataclasses.replace(insecure, allow_insecure=False))


async def test_a_plaintext_service_warns_once_at_start_and_a_tls_one_does_not(
    database_url: str, pki: Certificates, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="shared.server")
    async with running_stack(database_url):
        pass
    plaintext_warnings = [record for record in caplog.records if "TLS is off" in record.getMessage()]
    assert len(plaintext_warnings) == 2  # one per service
    caplog.clear()
    async with running_stack(database_url, **server_tls(pki)):
        pass
    assert not [record for record in caplog.records if "TLS is off" in record.getMessage()]


# Tools.


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual tls"])
async def test_grpcurl_lists_the_services_over_tls_with_the_ca_file(
    database_url: str, pki: Certificates, mutual: bool
) -> None:
    client_certificate = ["-cert", str(pki.client.cert), "-key", str(pki.client.key)] if mutual else []
    async with running_stack(database_url, **server_tls(pki, mutual=mutual)) as stack:
        listed = await run_command(
            without_arbiter_settings(),
            GRPCURL,
            "-cacert",
            str(pki.ca),
            *client_certificate,
            stack.registry_address,
            "list",
        )
    assert listed.returncode == 0, listed.stderr
    assert "arbiter.v1.RegistryService" in listed.stdout.split()


async def test_the_arbiter_command_calls_over_mutual_tls_with_its_tls_flags(
    database_url: str, pki: Certificates
) -> None:
    async with running_stack(database_url, **server_tls(pki, mutual=True)) as stack:
        environment = without_arbiter_settings(
            ARBITER_ORCHESTRATOR_ADDR=stack.orchestrator_address,
            ARBITER_REGISTRY_ADDR=stack.registry_address,
            ARBITER_API_KEY=stack.keys[Role.VIEWER],
        )
        tls_flags = ["--tls-ca", str(pki.ca), "--tls-client-cert", str(pki.client.cert)]
        tls_flags += ["--tls-client-key", str(pki.client.key)]
        listed = await run_command(environment, sys.executable, "-m", "arbiter.cli", "agents", "list", *tls_flags)
        plaintext = await run_command(environment, sys.executable, "-m", "arbiter.cli", "agents", "list")
    assert listed.returncode == 0, listed.stderr
    assert plaintext.returncode == 1
    assert "UNAVAILABLE" in plaintext.stderr
