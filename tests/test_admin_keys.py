"""AdminService: keys are created, listed, rotated and revoked by admins; secrets are kept only as an
HMAC under the pepper; expiry, revocation and rotation take effect on every instance within the key
cache's lifetime."""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from arbiter.v1 import admin_service_pb2 as apb
from arbiter.v1 import orchestrator_service_pb2 as opb
from arbiter.v1 import registry_service_pb2 as rpb
from shared.api_keys import Role
from shared.database import open_pool
from tests.support.processes import REPO_ROOT
from tests.support.stack import TEST_PEPPER, Stack, metadata, running_stack
from tests.support.waiting import eventually

CACHE_SECONDS = 0.3


@pytest.fixture
async def quick_stack(database_url: str) -> AsyncIterator[Stack]:
    """A stack whose instances re-check a key every 0.3 s."""
    async with running_stack(database_url, auth_cache_seconds=CACHE_SECONDS) as stack:
        yield stack


async def code_of_calls_with(stack: Stack, secret: str) -> dict[str, grpc.StatusCode]:
    """What a viewer-level read on each service answers for this secret."""
    codes = {}
    for name, call in (
        ("registry", stack.registry().ListAgents(rpb.ListAgentsRequest(), metadata=metadata(secret))),
        ("orchestrator", stack.orchestrator().GetQueueStats(opb.GetQueueStatsRequest(), metadata=metadata(secret))),
    ):
        try:
            await call
            codes[name] = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as error:
            codes[name] = error.code()
    return codes


def everywhere(code: grpc.StatusCode) -> dict[str, grpc.StatusCode]:
    return {"registry": code, "orchestrator": code}


async def create(stack: Stack, **fields: object) -> apb.CreateApiKeyResponse:
    request = apb.CreateApiKeyRequest(**{"role": apb.ROLE_VIEWER, **fields})  # type: ignore[arg-type]
    return await stack.admin().CreateApiKey(request, metadata=stack.as_role(Role.ADMIN))


async def test_a_created_key_works_once_shown_and_lists_with_prefix_and_last_use(quick_stack: Stack) -> None:
    created = await create(quick_stack, description="wallboard")
    assert created.secret.startswith("arb_") and created.key.prefix == created.secret[:12]
    assert created.key.tenant == "default" and created.key.role == apb.ROLE_VIEWER
    assert await code_of_calls_with(quick_stack, created.secret) == everywhere(grpc.StatusCode.OK)
    listed = await quick_stack.admin().ListApiKeys(apb.ListApiKeysRequest(), metadata=quick_stack.as_role(Role.ADMIN))
    shown = next(key for key in listed.keys if key.id == created.key.id)
    assert shown.prefix == created.key.prefix and shown.description == "wallboard"
    assert shown.HasField("created_at") and shown.HasField("last_used_at")
    assert created.secret not in str(listed)


async def test_the_database_keeps_an_hmac_under_the_pepper_never_the_secret(
    quick_stack: Stack, database_url: str
) -> None:
    created = await create(quick_stack)
    pool = await open_pool(database_url, 1, 1, name="test")
    try:
        async with pool.connection() as connection:
            cursor = await connection.execute("SELECT * FROM api_keys WHERE id = %s", (created.key.id,))
            row = await cursor.fetchone()
    finally:
        await pool.close()
    assert row is not None
    assert row["key_hash"] == hmac.new(TEST_PEPPER.encode(), created.secret.encode(), hashlib.sha256).digest()
    assert row["key_hash"] != hashlib.sha256(created.secret.encode()).digest()
    assert row["hash_scheme"] == "hmac-sha256"
    assert created.secret not in {str(value) for value in row.values()}


async def test_a_key_hashed_the_old_way_keeps_working(quick_stack: Stack, database_url: str) -> None:
    """Keys made before migration 0007 (bare SHA-256) are still accepted until rotated."""
    secret = "arb_" + "L" * 43
    pool = await open_pool(database_url, 1, 1, name="test")
    try:
        async with pool.connection() as connection:
            await connection.execute(
                "INSERT INTO api_keys (key_prefix, key_hash, hash_scheme, role, tenant) "
                "VALUES (%s, %s, 'sha256', 'viewer', 'default')",
                (secret[:12], hashlib.sha256(secret.encode()).digest()),
            )
    finally:
        await pool.close()
    assert await code_of_calls_with(quick_stack, secret) == everywhere(grpc.StatusCode.OK)


async def test_revocation_takes_effect_on_both_services_within_the_cache_lifetime(quick_stack: Stack) -> None:
    created = await create(quick_stack)
    assert await code_of_calls_with(quick_stack, created.secret) == everywhere(grpc.StatusCode.OK)
    revoked = await quick_stack.admin().RevokeApiKey(
        apb.RevokeApiKeyRequest(key_id=created.key.prefix), metadata=quick_stack.as_role(Role.ADMIN)
    )
    assert revoked.revoked_now and revoked.key.HasField("revoked_at")
    revoked_at = datetime.now(UTC)

    async def refused() -> bool:
        return await code_of_calls_with(quick_stack, created.secret) == everywhere(grpc.StatusCode.UNAUTHENTICATED)

    await eventually(refused, "the revoked key is refused by both services", timeout=CACHE_SECONDS * 10)
    assert datetime.now(UTC) - revoked_at < timedelta(seconds=2)
    again = await quick_stack.admin().RevokeApiKey(
        apb.RevokeApiKeyRequest(key_id=created.key.id), metadata=quick_stack.as_role(Role.ADMIN)
    )
    assert not again.revoked_now


async def test_an_expired_key_is_refused(quick_stack: Stack) -> None:
    expires = Timestamp()
    expires.FromDatetime(datetime.now(UTC) + timedelta(seconds=1))
    created = await create(quick_stack, expires_at=expires)
    assert await code_of_calls_with(quick_stack, created.secret) == everywhere(grpc.StatusCode.OK)

    async def refused() -> bool:
        return await code_of_calls_with(quick_stack, created.secret) == everywhere(grpc.StatusCode.UNAUTHENTICATED)

    await eventually(refused, "the expired key is refused", timeout=5)


async def test_rotation_with_a_grace_period_keeps_the_old_secret_working_until_it_ends(quick_stack: Stack) -> None:
    created = await create(quick_stack)
    grace = Duration()
    grace.FromSeconds(2)
    rotated = await quick_stack.admin().RotateApiKey(
        apb.RotateApiKeyRequest(key_id=created.key.id, grace_period=grace), metadata=quick_stack.as_role(Role.ADMIN)
    )
    assert rotated.key.id == created.key.id and rotated.secret != created.secret
    assert rotated.key.HasField("rotated_at")
    assert await code_of_calls_with(quick_stack, rotated.secret) == everywhere(grpc.StatusCode.OK)
    assert await code_of_calls_with(quick_stack, created.secret) == everywhere(grpc.StatusCode.OK)

    async def old_refused() -> bool:
        return await code_of_calls_with(quick_stack, created.secret) == everywhere(grpc.StatusCode.UNAUTHENTICATED)

    await eventually(old_refused, "the old secret is refused once the grace ends", timeout=6)
    assert await code_of_calls_with(quick_stack, rotated.secret) == everywhere(grpc.StatusCode.OK)


async def test_rotation_keeps_a_submitters_tasks_visible_to_it(quick_stack: Stack) -> None:
    created = await create(quick_stack, role=apb.ROLE_SUBMITTER)
    submitted = await quick_stack.orchestrator().SubmitTask(
        opb.SubmitTaskRequest(task_type="echo"), metadata=metadata(created.secret)
    )
    rotated = await quick_stack.admin().RotateApiKey(
        apb.RotateApiKeyRequest(key_id=created.key.prefix), metadata=quick_stack.as_role(Role.ADMIN)
    )
    seen = await quick_stack.orchestrator().GetTask(
        opb.GetTaskRequest(task_id=submitted.task.id), metadata=metadata(rotated.secret)
    )
    assert seen.task.id == submitted.task.id


INVALID_CREATIONS: dict[str, tuple[dict[str, object], str]] = {
    "no role": ({"role": apb.ROLE_UNSPECIFIED}, "role"),
    "agent ids on a viewer key": ({"agent_ids": ["worker-1"]}, "agent_ids"),
    "a malformed agent pattern": ({"role": apb.ROLE_AGENT, "agent_ids": ["bad id*"]}, "agent_ids[0]"),
    "sees_tenant_tasks on an agent key": ({"role": apb.ROLE_AGENT, "sees_tenant_tasks": True}, "sees_tenant_tasks"),
    "another tenant": ({"tenant": "globex"}, "tenant"),
    "a long description": ({"description": "d" * 257}, "description"),
}


@pytest.mark.parametrize("fields, field", INVALID_CREATIONS.values(), ids=INVALID_CREATIONS.keys())
async def test_create_refuses_what_it_cannot_honour_naming_the_field(
    stack: Stack, fields: dict[str, object], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await create(stack, **fields)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.value.details() or "").startswith(f"{field}:")


async def test_create_refuses_an_expiry_in_the_past(stack: Stack) -> None:
    past = Timestamp()
    past.FromDatetime(datetime.now(UTC) - timedelta(minutes=1))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await create(stack, expires_at=past)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expires_at: must be in the future" in (refused.value.details() or "")


async def test_rotating_a_revoked_key_is_a_failed_precondition(stack: Stack) -> None:
    created = await create(stack)
    as_admin = stack.as_role(Role.ADMIN)
    await stack.admin().RevokeApiKey(apb.RevokeApiKeyRequest(key_id=created.key.id), metadata=as_admin)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.admin().RotateApiKey(apb.RotateApiKeyRequest(key_id=created.key.id), metadata=as_admin)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("module", ["services.registry", "services.orchestrator"])
@pytest.mark.parametrize("pepper", ["", "too-short"], ids=["missing", "short"])
def test_a_service_without_a_usable_pepper_refuses_to_start(database_url: str, module: str, pepper: str) -> None:
    environment = {
        **{name: value for name, value in os.environ.items() if not name.startswith("ARBITER_")},
        "ARBITER_DATABASE_URL": database_url,
        "ARBITER_ALLOW_INSECURE": "true",
        "ARBITER_SERVICE_KEY": "arb_not-checked-before-the-pepper",
        "ARBITER_API_KEY_PEPPER": pepper,
    }
    result = subprocess.run(
        [sys.executable, "-m", module], env=environment, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT
    )
    assert result.returncode == 2, result.stderr
    assert "ARBITER_API_KEY_PEPPER must be a secret of at least 32 characters" in result.stderr
    assert "Traceback" not in result.stderr
