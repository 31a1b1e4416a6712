"""AdminService over gRPC: API keys and the audit log, within the caller's tenant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial

import grpc

from arbiter.v1 import admin_service_pb2 as pb
from arbiter.v1 import admin_service_pb2_grpc as pb_grpc
from shared import validation
from shared.api_keys import (
    KeyHasher,
    KeyLookupError,
    KeyNotRotatable,
    KeySpec,
    Role,
    StoredKey,
    create_key,
    list_keys,
    revoke_key,
    rotate_key,
)
from shared.audit import StoredAuditEvent, list_audit_events
from shared.callers import Caller, current_caller
from shared.database import Pool
from shared.errors import FailedPrecondition, InvalidArgument, NotFound, unary_errors
from shared.permissions import (
    ADMIN_ROLES,
    ADMIN_SERVICE,
    ORCHESTRATOR_ROLES,
    ORCHESTRATOR_SERVICE,
    REGISTRY_ROLES,
    REGISTRY_SERVICE,
)
from shared.replica import Reads
from shared.timestamps import to_timestamp

# The documented limits live in shared/validation.py (README, "Limits").
MAX_DESCRIPTION_LENGTH = validation.MAX_KEY_DESCRIPTION_LENGTH
MAX_AGENT_PATTERNS = validation.MAX_KEY_AGENT_IDS
MAX_KEY_REFERENCE_LENGTH = validation.MAX_KEY_REFERENCE_LENGTH

ROLE_TO_PB = {
    Role.ADMIN: pb.ROLE_ADMIN,
    Role.OPERATOR: pb.ROLE_OPERATOR,
    Role.SERVICE: pb.ROLE_SERVICE,
    Role.SUBMITTER: pb.ROLE_SUBMITTER,
    Role.AGENT: pb.ROLE_AGENT,
    Role.VIEWER: pb.ROLE_VIEWER,
}
ROLE_FROM_PB = {value: key for key, value in ROLE_TO_PB.items()}


def key_to_pb(key: StoredKey) -> pb.ApiKey:
    return pb.ApiKey(
        id=key.id,
        prefix=key.key_prefix,
        role=ROLE_TO_PB[key.role],
        tenant=key.tenant,
        description=key.description,
        created_at=to_timestamp(key.created_at),
        expires_at=to_timestamp(key.expires_at),
        last_used_at=to_timestamp(key.last_used_at),
        revoked_at=to_timestamp(key.revoked_at),
        rotated_at=to_timestamp(key.rotated_at),
        agent_ids=list(key.agent_ids),
        sees_tenant_tasks=key.sees_tenant_tasks,
    )


def audit_event_to_pb(event: StoredAuditEvent) -> pb.AuditEvent:
    return pb.AuditEvent(
        at=to_timestamp(event.at),
        tenant=event.tenant,
        key_id=event.key_id or "",
        role=event.role or "",
        rpc=event.rpc,
        resource_id=event.resource_id,
        status=event.status,
        message=event.message,
        peer=event.peer,
        trace_id=event.trace_id,
    )


def key_spec_from_pb(caller: Caller, request: pb.CreateApiKeyRequest) -> KeySpec:
    if request.role not in ROLE_FROM_PB:
        raise InvalidArgument("role", "choose one of ADMIN, OPERATOR, SERVICE, SUBMITTER, AGENT, VIEWER")
    role = ROLE_FROM_PB[request.role]
    tenant = caller.tenant_for("tenant", request.tenant)
    if len(request.description) > MAX_DESCRIPTION_LENGTH or "\x00" in request.description:
        raise InvalidArgument("description", f"must be at most {MAX_DESCRIPTION_LENGTH} characters, without NUL")
    expires_at = None
    if request.HasField("expires_at"):
        expires_at = validation.timestamp("expires_at", request.expires_at)
        if expires_at <= datetime.now(UTC):
            raise InvalidArgument("expires_at", "must be in the future")
    if request.agent_ids and role != Role.AGENT:
        raise InvalidArgument("agent_ids", "only agent keys are bound to agents")
    if len(request.agent_ids) > MAX_AGENT_PATTERNS:
        raise InvalidArgument("agent_ids", f"has {len(request.agent_ids)} entries; at most {MAX_AGENT_PATTERNS}")
    if request.sees_tenant_tasks and role != Role.SUBMITTER:
        raise InvalidArgument("sees_tenant_tasks", "only submitter keys are limited to their own tasks")
    return KeySpec(
        role=role,
        tenant=tenant,
        description=request.description,
        expires_at=expires_at,
        agent_ids=tuple(
            validation.agent_pattern(f"agent_ids[{index}]", pattern) for index, pattern in enumerate(request.agent_ids)
        ),
        sees_tenant_tasks=request.sees_tenant_tasks,
    )


def _key_reference(value: str) -> str:
    reference = value.strip()
    if not reference:
        raise InvalidArgument("key_id", "is required: the key's id or prefix (ListApiKeys shows them)")
    if len(reference) > MAX_KEY_REFERENCE_LENGTH:
        raise InvalidArgument("key_id", f"is {len(reference)} characters; an id or prefix is at most 36")
    return reference


# "SubmitTask" stands for "/arbiter.v1.OrchestratorService/SubmitTask" in audit filters (names are unique).
FULL_METHOD_NAMES = {
    rpc: f"/{service}/{rpc}"
    for service, roles in (
        (REGISTRY_SERVICE, REGISTRY_ROLES),
        (ORCHESTRATOR_SERVICE, ORCHESTRATOR_ROLES),
        (ADMIN_SERVICE, ADMIN_ROLES),
    )
    for rpc in roles
}


class AdminServicer(pb_grpc.AdminServiceServicer):
    def __init__(self, pool: Pool, hasher: KeyHasher, audit_reads: Reads[Pool] | None = None) -> None:
        self._pool = pool
        self._hasher = hasher
        # Where ListAuditEvents reads: the read replica when there is one (shared/replica.py).
        self._audit_reads = audit_reads or Reads(pool)

    @unary_errors
    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateApiKeyResponse:
        spec = key_spec_from_pb(current_caller(), request)
        created = await create_key(self._pool, self._hasher, spec)
        return pb.CreateApiKeyResponse(key=key_to_pb(created.key), secret=created.secret)

    @unary_errors
    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListApiKeysResponse:
        keys = await list_keys(self._pool, current_caller().tenant)
        shown = [key for key in keys if request.include_revoked or key.revoked_at is None]
        return pb.ListApiKeysResponse(keys=[key_to_pb(key) for key in shown])

    @unary_errors
    async def RotateApiKey(
        self, request: pb.RotateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.RotateApiKeyResponse:
        grace = timedelta(0)
        if request.HasField("grace_period"):
            grace = validation.duration(
                "grace_period", request.grace_period, maximum_ms=validation.MAX_ROTATION_GRACE_MS
            )
        try:
            rotated = await rotate_key(
                self._pool, self._hasher, _key_reference(request.key_id), grace, current_caller().tenant
            )
        except KeyLookupError as error:
            raise NotFound(str(error)) from None
        except KeyNotRotatable as error:
            raise FailedPrecondition(str(error)) from None
        return pb.RotateApiKeyResponse(key=key_to_pb(rotated.key), secret=rotated.secret)

    @unary_errors
    async def RevokeApiKey(
        self, request: pb.RevokeApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.RevokeApiKeyResponse:
        caller = current_caller()
        try:
            revocation = await revoke_key(self._pool, _key_reference(request.key_id), caller.tenant)
        except KeyLookupError as error:
            raise NotFound(str(error)) from None
        return pb.RevokeApiKeyResponse(key=key_to_pb(revocation.key), revoked_now=revocation.revoked_now)

    @unary_errors
    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAuditEventsResponse:
        read_page = partial(
            list_audit_events,
            tenant=current_caller().tenant,
            since=validation.timestamp("since", request.since) if request.HasField("since") else None,
            until=validation.timestamp("until", request.until) if request.HasField("until") else None,
            rpc=FULL_METHOD_NAMES.get(request.rpc, request.rpc),
            key_id=request.key_id,
            status=request.status,
            resource_id=request.resource_id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        page = await self._audit_reads.run(read_page)
        return pb.ListAuditEventsResponse(
            events=[audit_event_to_pb(event) for event in page.events], next_page_token=page.next_page_token
        )
