"""Every RPC of every Arbiter service, found in the generated descriptors (so a new RPC is picked up
without a list to update), and a way to call any of them by name on the servers that serve it."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cached_property
from types import ModuleType
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

import arbiter.v1
from shared.api_keys import Role
from tests.support.database import PostgresForTests
from tests.support.stack import Stack, running_stack

Metadata = tuple[tuple[str, str], ...]


def generated_modules() -> list[ModuleType]:
    """Every `*_pb2` module of arbiter.v1."""
    return [
        importlib.import_module(f"arbiter.v1.{module.name}")
        for module in pkgutil.iter_modules(arbiter.v1.__path__)
        if module.name.endswith("_pb2")
    ]


@dataclass(frozen=True)
class Rpc:
    service: str
    method: MethodDescriptor

    @property
    def name(self) -> str:
        return str(self.method.name)

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method.name}"

    @property
    def server_streaming(self) -> bool:
        return bool(self.method.server_streaming)

    @cached_property
    def request_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.input_type)

    @cached_property
    def response_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.output_type)

    def callable(self, channel: grpc.aio.Channel, *, raw: bool = False) -> Callable[..., Any]:
        """The multi-callable for this RPC; `raw` sends request bytes as they are (no serializer)."""
        serializer = None if raw else self.request_class.SerializeToString
        factory = channel.unary_stream if self.server_streaming else channel.unary_unary
        return factory(self.path, request_serializer=serializer, response_deserializer=self.response_class.FromString)


def _discover() -> tuple[Rpc, ...]:
    rpcs = []
    for module in generated_modules():
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                assert not method.client_streaming, f"{method.full_name}: client streaming is not fuzzed yet"
                rpcs.append(Rpc(service.full_name, method))
    return tuple(rpcs)


ALL_RPCS = _discover()
RPCS_BY_NAME = {rpc.name: rpc for rpc in ALL_RPCS}
assert len(RPCS_BY_NAME) == len(ALL_RPCS), "RPC names are expected to be unique across services"


async def services_at(address: str) -> set[str]:
    """The services a server offers, as its reflection lists them."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        async for response in call:
            return {service.name for service in response.list_services_response.service}
    return set()


async def addresses_by_service(stack: Stack) -> dict[str, str]:
    """Which of the stack's servers serves each Arbiter service; every service must be served by one."""
    served: dict[str, str] = {}
    for address in (stack.registry_address, stack.orchestrator_address):
        for service in await services_at(address):
            served.setdefault(service, address)
    missing = {rpc.service for rpc in ALL_RPCS} - served.keys()
    assert not missing, f"no server of the stack serves {sorted(missing)}"
    return served


async def call_once(
    channel: grpc.aio.Channel,
    rpc: Rpc,
    request: Message | bytes,
    metadata: Metadata,
    *,
    timeout: float,
    stream_messages: int = 2,
) -> grpc.aio.AioRpcError | None:
    """Calls `rpc` and returns its error, or None when it answered (a stream: sent `stream_messages`
    messages, or ended, within `timeout`)."""
    multicallable = rpc.callable(channel, raw=isinstance(request, bytes))
    try:
        if not rpc.server_streaming:
            await multicallable(request, metadata=metadata, timeout=timeout)
            return None
        call = multicallable(request, metadata=metadata, timeout=timeout)
        try:
            for _ in range(stream_messages):
                if await call.read() == grpc.aio.EOF:
                    break
        finally:
            call.cancel()
        return None
    except grpc.aio.AioRpcError as error:
        return error


@dataclass
class Servers:
    """Both services, which of them serves each RPC, and one channel to each."""

    stack: Stack
    database_url: str
    addresses: dict[str, str]
    channels: dict[str, grpc.aio.Channel]

    @property
    def admin(self) -> Metadata:
        return self.stack.as_role(Role.ADMIN)

    def channel_for(self, rpc: Rpc) -> grpc.aio.Channel:
        return self.channels[self.addresses[rpc.service]]


@asynccontextmanager
async def serving_every_rpc(test_postgres: PostgresForTests) -> AsyncIterator[Servers]:
    """Both services on a database of their own, without rate limits (these tests call far faster than
    any role's budget allows), for a whole test module."""
    database_url = test_postgres.create_database()
    try:
        async with running_stack(database_url, rate_limits={}) as stack:
            addresses = await addresses_by_service(stack)
            channels = {address: grpc.aio.insecure_channel(address) for address in set(addresses.values())}
            try:
                yield Servers(stack, database_url, addresses, channels)
            finally:
                for channel in channels.values():
                    await channel.close()
    finally:
        test_postgres.drop_database(database_url)


def bad_request_fields(error: grpc.aio.AioRpcError) -> list[str]:
    """The fields the google.rpc.BadRequest detail of an error names (none without one)."""
    status = rpc_status.from_call(error)
    fields = []
    for detail in status.details if status else ():
        violations = error_details_pb2.BadRequest()
        if detail.Unpack(violations):
            fields += [violation.field for violation in violations.field_violations]
    return fields
