"""No API key secret (nor the pepper its hash is kept under) ever reaches a service's log or the audit
log: not when it is used, refused, created or rotated. The services run as subprocesses at DEBUG
while a whole flow, key administration and a few refused calls go through."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from arbiter import Agent, Client, Task, TaskState
from arbiter.v1 import admin_service_pb2 as apb
from arbiter.v1 import admin_service_pb2_grpc, orchestrator_service_pb2_grpc
from arbiter.v1 import orchestrator_service_pb2 as opb
from shared.api_keys import Role
from shared.database import open_pool
from tests.support.processes import ServiceProcesses
from tests.support.stack import TEST_PEPPER, create_keys

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]


async def run_a_task(services: ServiceProcesses) -> None:
    agent = Agent(
        "secret-keeper",
        registry=services.registry_address,
        orchestrator=services.orchestrator_address,
        api_key=services.keys[Role.AGENT],
    )

    @agent.handler("echo")
    async def echo(task: Task) -> dict[str, object]:
        return {"echo": task.payload}

    serving = asyncio.create_task(agent.serve())
    try:
        async with Client(services.orchestrator_address, services.keys[Role.SUBMITTER]) as client:
            task = await client.submit("echo", {"text": "hello"})
            assert (await client.wait(task.id, timeout=30)).state == TaskState.COMPLETED
            await client.explain_routing(task.id)
    finally:
        agent.drain()
        await asyncio.wait_for(serving, 30)


async def test_no_key_secret_appears_in_any_service_log(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARBITER_LOG_LEVEL", "DEBUG")
    services = ServiceProcesses(database_url, await create_keys(database_url), tmp_path)
    wrong = services.keys[Role.VIEWER][:-4] + "xxxx"
    try:
        services.start()
        await run_a_task(services)
        # Refused: a wrong secret that shares a real key's prefix, a role that may not submit, no "Bearer".
        async with grpc.aio.insecure_channel(services.orchestrator_address) as channel:
            stub = orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel)
            for metadata in (
                (("authorization", f"Bearer {wrong}"),),
                (("authorization", f"Bearer {services.keys[Role.VIEWER]}"),),
                (("authorization", services.keys[Role.AGENT]),),
            ):
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.SubmitTask(opb.SubmitTaskRequest(task_type="echo"), metadata=metadata)
        # Secrets made by AdminService: created, then rotated.
        async with grpc.aio.insecure_channel(services.registry_address) as channel:
            admin = admin_service_pb2_grpc.AdminServiceStub(channel)
            as_admin = (("authorization", f"Bearer {services.keys[Role.ADMIN]}"),)
            created = await admin.CreateApiKey(apb.CreateApiKeyRequest(role=apb.ROLE_VIEWER), metadata=as_admin)
            rotated = await admin.RotateApiKey(apb.RotateApiKeyRequest(key_id=created.key.id), metadata=as_admin)
        made_secrets = [created.secret, rotated.secret]
    finally:
        codes = services.stop()
    assert codes == {"orchestrator": 0, "registry": 0}, services.logs()
    logs = services.logs()
    assert "secret-keeper" in logs and "DEBUG" in logs  # the logs were written, at DEBUG, and read
    for role, secret in services.keys.items():
        assert secret not in logs, f"the {role} key's secret is in a service log"
    assert wrong not in logs
    for secret in made_secrets:
        assert secret not in logs, "a secret made by AdminService is in a service log"
    assert TEST_PEPPER not in logs
    pool = await open_pool(database_url, 1, 1, name="test")
    try:
        async with pool.connection() as connection:
            cursor = await connection.execute("SELECT * FROM audit_events")
            audit = "\n".join(str(row) for row in await cursor.fetchall())
    finally:
        await pool.close()
    assert "CreateApiKey" in audit and "PERMISSION_DENIED" in audit  # the audit log was written, and read
    for secret in [*services.keys.values(), wrong, *made_secrets, TEST_PEPPER]:
        assert secret not in audit
