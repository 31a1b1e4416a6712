"""Hostile input against the real servers: random but well-typed requests for every RPC of every service,
and raw garbage sent to each port. Whatever arrives, no call is answered INTERNAL, UNKNOWN or DATA_LOSS,
both servers keep serving, and the database's invariants hold afterwards (tests/support/invariants.py).

Requests are generated from each request's protobuf descriptor, so a new RPC, field or service is fuzzed
without touching this file. Hypothesis is derandomized: every run (and CI) tries the same cases.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import math
import random
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError, Message
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from arbiter.v1 import agent_pb2
from arbiter.v1 import orchestrator_service_pb2 as opb
from arbiter.v1 import registry_service_pb2 as rpb
from shared.api_keys import Role
from tests.support.database import PostgresForTests
from tests.support.invariants import broken_invariants, unsettled_references
from tests.support.rpcs import ALL_RPCS, RPCS_BY_NAME, Rpc, Servers, call_once, serving_every_rpc
from tests.support.stack import Stack
from tests.support.waiting import eventually

# Cases per RPC. Streams cost up to STREAM_SECONDS each, so they get fewer.
UNARY_EXAMPLES = 100
STREAM_EXAMPLES = 30
UNARY_SECONDS = 5.0
STREAM_SECONDS = 0.2
# Raw garbage: connections per port, and bodies per RPC.
GARBAGE_CONNECTIONS = 30
RANDOM_BODIES_PER_RPC = 20

# One pair of servers for the whole file: starting them for each test would cost more than the fuzzing.
pytestmark = pytest.mark.asyncio(loop_scope="module")

# What no request, however odd, may ever be answered with.
FORBIDDEN_CODES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS})

TASK_TYPE = "echo"
UNKNOWN_TASK_ID = "9b2f3c1e-4d5a-4e6f-8a7b-0c1d2e3f4a5b"

# Strings worth trying in any string field, beside random text: ids that almost parse, NUL, white space,
# a wildcard; and, as (character, count), lengths just inside and past the documented limits.
EDGE_STRINGS = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "bad id!",
    " echo ",
    "default",
    "*",
    "build-pool-*",
    "../../etc/passwd",
    "'; DROP TABLE tasks; --",
    "%s%s%s",
    "00000000-0000-0000-0000-000000000000",
    "9b2f3c1e-4d5a-4e6f-8a7b-0c1d2e3f4a5",
)
LONG_STRINGS = (("a", 63), ("a", 64), ("a", 65), ("a", 128), ("a", 129), ("k", 257), ("m", 1025), ("é", 8193))
# Rarely: strings far past every limit (still well inside the 8 MiB message limit).
HUGE_STRINGS = (("x", 200_000), ("\U0001f600", 50_000), ("\x00", 10_000))
BOUNDARY_INTS = (0, 1, -1, 2, 3, 50, 63, 64, 65, 100, 101, 500, 501, 1000, 1001, -1000, -1001, 1024, 1025, 8193)
SPECIAL_FLOATS = (0.0, -0.0, 0.5, 1.0, 1.0000001, -1e-9, 1e308, -1e308, 5e-324, math.nan, math.inf, -math.inf)
INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
# Lists and maps just past the documented entry limits (64, 1000), of small entries.
BIG_COLLECTION_SIZES = (65, 1001)
# Nested messages deeper than this are left unset.
MAX_MESSAGE_DEPTH = 4
# Seconds just inside and past what Timestamp and Duration allow, and what datetime can hold.
EDGE_SECONDS = (0, 1, -1, 253402300799, 253402300800, -62135596800, -62135596801, 315576000000, 2**62, -(2**63))
EDGE_NANOS = (0, 1, -1, 999_999_999, 1_000_000_000, -1_000_000_000, 2**31 - 1, -(2**31))


# ---- Strategies built from descriptors ----


def _is_map(descriptor: FieldDescriptor) -> bool:
    return descriptor.type == FieldDescriptor.TYPE_MESSAGE and descriptor.message_type.GetOptions().map_entry


def _json_values() -> st.SearchStrategy[Any]:
    """What a google.protobuf.Struct may hold: NaN, infinities and NUL included."""
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.floats(),
        st.sampled_from(SPECIAL_FLOATS),
        st.text(max_size=12),
        st.sampled_from(EDGE_STRINGS),
        st.sampled_from(LONG_STRINGS).map(_repeated),
    )
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)
        ),
        max_leaves=12,
    )


def _repeated(character_and_count: tuple[str, int]) -> str:
    character, count = character_and_count
    return character * count


def _nested(depth: int) -> dict[str, Any]:
    """{"a": {"a": ...}} `depth` levels deep: past protobuf's decoding depth limit when deep enough."""
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def _struct(values: dict[str, Any]) -> Struct:
    message = Struct()
    message.update(values)
    return message


@dataclass
class Strategies:
    """Random, well-typed values for any field, with `known_strings` (real ids, tokens) mixed in so that
    requests also reach past the lookups into the code behind them."""

    known_strings: list[str]
    # Page tokens shaped like real ones, with odd values inside.
    odd_tokens: list[str]
    _messages: dict[tuple[str, int, bool], st.SearchStrategy[Message]] = field(default_factory=dict)

    def strings(self, small: bool) -> st.SearchStrategy[str]:
        options = [
            st.sampled_from(self.known_strings),
            st.sampled_from(self.odd_tokens),
            st.sampled_from(EDGE_STRINGS),
            st.text(max_size=16),
            st.text(st.characters(codec="utf-8"), max_size=40),
        ]
        if not small:
            options += [st.sampled_from(LONG_STRINGS).map(_repeated), st.sampled_from(HUGE_STRINGS).map(_repeated)]
        return st.one_of(options)

    def scalar(self, descriptor: FieldDescriptor, small: bool) -> st.SearchStrategy[Any]:
        kind = descriptor.type
        if kind == FieldDescriptor.TYPE_STRING:
            return self.strings(small)
        if kind == FieldDescriptor.TYPE_BYTES:
            return st.binary(max_size=32)
        if kind == FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        if kind == FieldDescriptor.TYPE_DOUBLE:
            return st.one_of(st.floats(), st.sampled_from(SPECIAL_FLOATS))
        if kind == FieldDescriptor.TYPE_FLOAT:
            return st.one_of(st.floats(width=32), st.sampled_from((0.0, 1.0, math.nan, math.inf)))
        if kind == FieldDescriptor.TYPE_ENUM:
            known = [value.number for value in descriptor.enum_type.values]
            return st.one_of(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1))
        low, high = INT_RANGES[kind]
        return st.one_of(
            st.integers(low, high), st.sampled_from([value for value in BOUNDARY_INTS if low <= value <= high])
        )

    def well_known(self, descriptor: Descriptor, small: bool) -> st.SearchStrategy[Message] | None:
        name = descriptor.full_name
        if name == "google.protobuf.Struct":
            fields = st.dictionaries(st.text(max_size=8), _json_values(), max_size=4).map(_struct)
            if small:
                return fields
            # Now and then: nested past protobuf's depth limit, or nearly so.
            return st.one_of(fields, st.sampled_from((30, 40, 120)).map(lambda depth: _struct(_nested(depth))))
        if name == "google.protobuf.Value":
            return _json_values().map(lambda value: _struct({"v": value}).fields["v"])
        if name == "google.protobuf.ListValue":
            return st.lists(_json_values(), max_size=3).map(
                lambda values: _struct({"v": values}).fields["v"].list_value
            )
        if name in ("google.protobuf.Duration", "google.protobuf.Timestamp"):
            cls = Duration if name.endswith("Duration") else Timestamp
            seconds = st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from(EDGE_SECONDS))
            nanos = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from(EDGE_NANOS))
            return st.builds(cls, seconds=seconds, nanos=nanos)
        return None

    def single(self, descriptor: FieldDescriptor, depth: int, small: bool) -> st.SearchStrategy[Any] | None:
        """One value of the field (one entry, for a repeated field); None: leave it unset."""
        if descriptor.type != FieldDescriptor.TYPE_MESSAGE:
            return self.scalar(descriptor, small)
        well_known = self.well_known(descriptor.message_type, small)
        if well_known is not None:
            return well_known
        if depth >= MAX_MESSAGE_DEPTH:
            return None
        return self.message(descriptor.message_type, depth + 1, small)

    def collection(self, descriptor: FieldDescriptor, depth: int, small: bool) -> st.SearchStrategy[Any] | None:
        """A repeated field's list or a map's dict: a few entries or, unless `small`, as many small
        entries as just pass the entry limits."""
        if _is_map(descriptor):
            key_field = descriptor.message_type.fields_by_name["key"]
            value_field = descriptor.message_type.fields_by_name["value"]
            keys, values = self.scalar(key_field, small), self.single(value_field, depth, small)
            small_values = self.single(value_field, depth, True)
            if values is None or small_values is None:
                return None
            few_entries = st.dictionaries(keys, values, max_size=2 if small else 4)
            if small:
                return few_entries
            many = st.tuples(st.sampled_from(BIG_COLLECTION_SIZES), small_values).map(
                lambda size_and_value: _big_map(key_field, *size_and_value)
            )
            return st.one_of(few_entries, many)
        entries, small_entries = self.single(descriptor, depth, small), self.single(descriptor, depth, True)
        if entries is None or small_entries is None:
            return None
        few = st.lists(entries, max_size=2 if small else 4)
        if small:
            return few
        many = st.tuples(st.sampled_from(BIG_COLLECTION_SIZES), small_entries).map(lambda pair: [pair[1]] * pair[0])
        return st.one_of(few, many)

    def message(self, descriptor: Descriptor, depth: int = 0, small: bool = False) -> st.SearchStrategy[Message]:
        key = (descriptor.full_name, depth, small)
        if key not in self._messages:
            optional: dict[str, st.SearchStrategy[Any]] = {}
            for each in descriptor.fields:
                values = self.collection(each, depth, small) if each.is_repeated else self.single(each, depth, small)
                if values is not None:
                    optional[each.name] = values
            message_class = message_factory.GetMessageClass(descriptor)
            self._messages[key] = st.fixed_dictionaries({}, optional=optional).map(
                lambda values, cls=message_class: _build(cls, values)
            )
        return self._messages[key]


def _big_map(key_field: FieldDescriptor, size: int, value: Any) -> dict[Any, Any]:
    if key_field.type == FieldDescriptor.TYPE_STRING:
        return {f"key-{index}": value for index in range(size)}
    if key_field.type == FieldDescriptor.TYPE_BOOL:
        return {False: value, True: value}
    return {index: value for index in range(size)}


def _build(message_class: type[Message], values: dict[str, Any]) -> Message:
    message = message_class()
    for name, value in values.items():
        descriptor = message.DESCRIPTOR.fields_by_name[name]
        if _is_map(descriptor):
            entries = getattr(message, name)
            message_values = descriptor.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE
            for key, item in value.items():
                if message_values:
                    entries[key].CopyFrom(item)
                else:
                    entries[key] = item
        elif descriptor.is_repeated and descriptor.type == FieldDescriptor.TYPE_MESSAGE:
            # Not extend(): it copies through a parse, which refuses messages nested past its depth limit.
            entries = getattr(message, name)
            for item in value:
                entries.add().CopyFrom(item)
        elif descriptor.is_repeated:
            getattr(message, name).extend(value)
        elif descriptor.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(message, name).CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def _shown(request: Message | bytes) -> str:
    text = repr(request) if isinstance(request, bytes) else f"{type(request).__name__}({request})"
    return text if len(text) <= 600 else f"{text[:600]}… ({len(text)} characters)"


# ---- A world worth fuzzing: agents, tasks in every state, real tokens and keys ----


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def servers(test_postgres: PostgresForTests) -> AsyncIterator[Servers]:
    async with serving_every_rpc(test_postgres) as running:
        yield running


@dataclass
class World:
    servers: Servers
    known_strings: list[str]

    @cached_property
    def strategies(self) -> Strategies:
        tokens = [text for text in self.known_strings if _page_position(text) is not None]
        return Strategies(self.known_strings, [odd for token in tokens for odd in odd_page_tokens(token)])


async def _drain(call: grpc.aio.UnaryStreamCall) -> None:
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
        while await call.read() != grpc.aio.EOF:
            pass


# What a caller who decoded a real page token (base64 JSON) might put back in it.
ODD_JSON_VALUES = (5, -1, 2**70, 1.5, None, True, [], {}, {"a": 1}, "", "x\x00", "not a date", "9999-12-31T23:59:59")


def _page_position(token: str) -> dict[str, Any] | None:
    try:
        position = json.loads(base64.urlsafe_b64decode(token.encode()))
    except ValueError:
        return None
    return position if isinstance(position, dict) and position else None


def odd_page_tokens(token: str) -> list[str]:
    """Tokens shaped like `token`, each with one value swapped for an odd one."""
    position = _page_position(token) or {}
    return [
        base64.urlsafe_b64encode(json.dumps({**position, key: odd}).encode()).decode()
        for key in position
        for odd in ODD_JSON_VALUES
    ]


_worlds = itertools.count()


@pytest_asyncio.fixture(loop_scope="module")
async def world(servers: Servers) -> AsyncIterator[World]:
    """Fresh for each test: two agents (one with its stream open and two tasks, one running), a pending
    and a cancelled task, page tokens and, when the AdminService is served, a spare API key; their ids
    join the strings the fuzzer tries. Afterwards, whatever the test sent: both servers still serve,
    and the database's invariants hold."""
    stack, number = servers.stack, next(_worlds)
    admin = stack.as_role(Role.ADMIN)
    registry, orchestrator = stack.registry(), stack.orchestrator()
    agent_ids = [f"fuzz-{number}-{letter}" for letter in "ab"]
    for agent_id in agent_ids:
        capabilities = agent_pb2.AgentCapabilities(task_types=[TASK_TYPE], languages=["python"], labels={"zone": "a"})
        await registry.RegisterAgent(
            rpb.RegisterAgentRequest(
                agent=agent_pb2.Agent(id=agent_id, capabilities=capabilities, max_concurrent_tasks=2)
            ),
            metadata=admin,
        )
    stream = orchestrator.StreamAssignments(opb.StreamAssignmentsRequest(agent_id=agent_ids[0]), metadata=admin)
    submitted = await orchestrator.SubmitTasks(
        opb.SubmitTasksRequest(
            tasks=[
                opb.SubmitTaskRequest(task_type=TASK_TYPE, idempotency_key=f"fuzz-{number}-{index}")
                for index in range(4)
            ]
        ),
        metadata=admin,
    )
    held = [(await stream.read()).assignment for _ in range(2)]
    await orchestrator.ReportProgress(
        opb.ReportProgressRequest(task_id=held[0].task.id, agent_id=agent_ids[0], attempt=held[0].attempt),
        metadata=admin,
    )
    await orchestrator.CancelTask(opb.CancelTaskRequest(task_id=submitted.tasks[-1].id), metadata=admin)
    draining = asyncio.create_task(_drain(stream))
    tokens = [
        (await orchestrator.ListTasks(opb.ListTasksRequest(page_size=1), metadata=admin)).next_page_token,
        (await registry.ListAgents(rpb.ListAgentsRequest(page_size=1), metadata=admin)).next_page_token,
    ]
    known = [TASK_TYPE, "python", "zone", *agent_ids, UNKNOWN_TASK_ID, *tokens, f"fuzz-{number}-0"]
    known += [task.id for task in submitted.tasks]
    known.extend(await _admin_strings(servers))
    try:
        yield World(servers, known)
    finally:
        stream.cancel()
        await draining
    await assert_still_serving(stack)
    await assert_invariants_hold(servers.database_url)


async def _admin_strings(servers: Servers) -> list[str]:
    """A spare agent key's id and prefix, and an audit page token, when an AdminService is served (the
    fuzzer must not revoke the admin key it calls with, so that one is never offered)."""
    if "CreateApiKey" not in RPCS_BY_NAME:
        return []
    create, audit = RPCS_BY_NAME["CreateApiKey"], RPCS_BY_NAME["ListAuditEvents"]
    agent_role = create.request_class.DESCRIPTOR.fields_by_name["role"].enum_type.values_by_name["ROLE_AGENT"].number
    created = await create.callable(servers.channel_for(create))(
        create.request_class(role=agent_role, description="fuzz spare"), metadata=servers.admin
    )
    page = await audit.callable(servers.channel_for(audit))(audit.request_class(page_size=1), metadata=servers.admin)
    return [created.key.id, created.key.prefix, page.next_page_token, "SubmitTask", "OK", "PERMISSION_DENIED"]


# ---- After every fuzz run ----


async def assert_still_serving(stack: Stack) -> None:
    for address in (stack.registry_address, stack.orchestrator_address):
        async with grpc.aio.insecure_channel(address) as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, address
    # And a real call still works end to end.
    listed = await stack.orchestrator().ListTasks(opb.ListTasksRequest(), metadata=stack.as_role(Role.ADMIN))
    assert listed is not None


async def assert_invariants_hold(database_url: str) -> None:
    assert await broken_invariants(database_url) == []

    async def settled() -> bool:
        return not await unsettled_references(database_url)

    # The services clean up references to departed agents a moment after they leave.
    try:
        await eventually(settled, "references to departed agents to be cleaned up")
    except AssertionError:
        raise AssertionError(await unsettled_references(database_url)) from None


def assert_no_internal_error(rpc: Rpc, request: Message | bytes, error: grpc.aio.AioRpcError | None) -> None:
    if error is not None and error.code() in FORBIDDEN_CODES:
        raise AssertionError(f"{rpc.name} answered {error.code().name}: {error.details()!r} to {_shown(request)}")


FUZZ_SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    # A problem is reported with the request that showed it; shrinking a huge request takes minutes.
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=list(HealthCheck),
)
UNARY_RPCS = [rpc for rpc in ALL_RPCS if not rpc.server_streaming]
STREAMING_RPCS = [rpc for rpc in ALL_RPCS if rpc.server_streaming]


@pytest.mark.parametrize("rpc", UNARY_RPCS, ids=lambda rpc: rpc.name)
@settings(FUZZ_SETTINGS, max_examples=UNARY_EXAMPLES)
@given(data=st.data())
async def test_random_requests_to_a_unary_rpc_never_get_internal_errors(
    world: World, rpc: Rpc, data: st.DataObject
) -> None:
    request = data.draw(world.strategies.message(rpc.method.input_type), label="request")
    error = await call_once(world.servers.channel_for(rpc), rpc, request, world.servers.admin, timeout=UNARY_SECONDS)
    assert_no_internal_error(rpc, request, error)


@pytest.mark.parametrize("rpc", STREAMING_RPCS, ids=lambda rpc: rpc.name)
@settings(FUZZ_SETTINGS, max_examples=STREAM_EXAMPLES)
@given(data=st.data())
async def test_random_requests_to_a_streaming_rpc_never_get_internal_errors(
    world: World, rpc: Rpc, data: st.DataObject
) -> None:
    request = data.draw(world.strategies.message(rpc.method.input_type), label="request")
    error = await call_once(world.servers.channel_for(rpc), rpc, request, world.servers.admin, timeout=STREAM_SECONDS)
    assert_no_internal_error(rpc, request, error)


# ---- Raw garbage on the wire ----

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS_FRAME = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _frame(rng: random.Random) -> bytes:
    """One HTTP/2 frame of a random (mostly known) type, flags and stream, with a random payload whose
    declared length is sometimes a lie."""
    payload = rng.randbytes(rng.choice((0, 1, 4, 8, 13, 64, 300)))
    declared = len(payload) if rng.random() < 0.8 else rng.choice((0, 1, 2**14 + 1, 2**24 - 1))
    frame_type = rng.choice((*range(10), rng.randrange(256)))
    stream_id = rng.choice((0, 1, 3, 2, 2**31 - 1, rng.randrange(2**32)))
    header = struct.pack(">I", declared)[1:] + bytes((frame_type, rng.randrange(256))) + struct.pack(">I", stream_id)
    return header + payload


async def _send_and_close(address: str, data: bytes) -> None:
    """Sends `data` on a fresh connection, reads whatever comes back for a moment, and hangs up."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(0.05):
                await reader.read(65536)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def _addresses(stack: Stack) -> list[str]:
    return [stack.registry_address, stack.orchestrator_address]


async def test_random_bytes_over_tcp_leave_both_servers_serving(servers: Servers) -> None:
    rng = random.Random(6)
    for address in _addresses(servers.stack):
        for _ in range(GARBAGE_CONNECTIONS):
            await _send_and_close(address, rng.randbytes(rng.choice((1, 9, 24, 100, 4096, 70_000))))
    await assert_still_serving(servers.stack)
    await assert_invariants_hold(servers.database_url)


async def test_http2_preface_then_garbage_frames_leave_both_servers_serving(servers: Servers) -> None:
    rng = random.Random(7)
    for address in _addresses(servers.stack):
        for _ in range(GARBAGE_CONNECTIONS):
            frames = b"".join(_frame(rng) for _ in range(rng.randrange(1, 12)))
            await _send_and_close(address, HTTP2_PREFACE + EMPTY_SETTINGS_FRAME + frames)
    await assert_still_serving(servers.stack)
    await assert_invariants_hold(servers.database_url)


# Bodies no request message decodes from: a field number 0, a varint that never ends, a length past the
# end, an unknown wire type, invalid UTF-8 in a string, a group that never closes.
UNDECODABLE_BODIES = (
    b"\x00",
    b"\x08" + b"\xff" * 10,
    b"\x0a\x05ab",
    b"\x0f",
    b"\x12\x02\xc3\x28",
    b"\x0a\x02\xc3\x28",
    b"\x1a\x02\xc3\x28",
    b"\x0b",
)


def undecodable_bodies(rpc: Rpc) -> list[bytes]:
    bodies = []
    for body in UNDECODABLE_BODIES:
        try:
            rpc.request_class.FromString(body)
        except DecodeError:
            bodies.append(body)
    return bodies


@pytest.mark.parametrize("rpc", ALL_RPCS, ids=lambda rpc: rpc.name)
async def test_a_body_that_is_not_the_request_message_is_invalid_argument(servers: Servers, rpc: Rpc) -> None:
    bodies = undecodable_bodies(rpc)
    assert bodies, f"no undecodable body for {rpc.name}"
    answers = {}
    for body in bodies:
        error = await call_once(servers.channel_for(rpc), rpc, body, servers.admin, timeout=UNARY_SECONDS)
        answers[body] = error.code() if error else grpc.StatusCode.OK
    assert answers == dict.fromkeys(bodies, grpc.StatusCode.INVALID_ARGUMENT)
    await assert_still_serving(servers.stack)


@pytest.mark.parametrize("rpc", ALL_RPCS, ids=lambda rpc: rpc.name)
async def test_random_bytes_as_the_request_body_never_get_internal_errors(servers: Servers, rpc: Rpc) -> None:
    rng = random.Random(rpc.name)
    timeout = STREAM_SECONDS if rpc.server_streaming else UNARY_SECONDS
    for _ in range(RANDOM_BODIES_PER_RPC):
        body = rng.randbytes(rng.choice((1, 2, 5, 17, 200)))
        assert_no_internal_error(
            rpc, body, await call_once(servers.channel_for(rpc), rpc, body, servers.admin, timeout=timeout)
        )
    await assert_still_serving(servers.stack)
