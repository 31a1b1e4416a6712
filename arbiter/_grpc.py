"""Channels and call metadata shared by the client and the agent."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TypeAlias

import grpc
from opentelemetry.propagate import inject

# Match the servers' limits (8 MiB) and keep long-lived streams alive through idle proxies; the
# servers permit a ping every 10 s, so 30 s stays well inside what they accept.
CHANNEL_OPTIONS: Sequence[tuple[str, int]] = (
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # gRPC's own reconnect backoff grows to 120 s by default; an agent should be back within seconds
    # of its orchestrator returning, so cap it (the SDK adds its own jittered backoff on top).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 3_000),
)


PemPath: TypeAlias = str | os.PathLike[str]
Metadata: TypeAlias = tuple[tuple[str, str], ...]


def traced(metadata: Metadata) -> Metadata:
    """`metadata` and the current OpenTelemetry trace context (W3C traceparent), when a span is active,
    so the services' spans for the call join the caller's trace."""
    carrier: dict[str, str] = {}
    inject(carrier)
    return (*metadata, *carrier.items()) if carrier else metadata


def read_pem(path: PemPath, what: str) -> bytes:
    """The file's bytes; a ValueError naming `what` and the path when it cannot be read or holds no PEM
    (gRPC itself would only fail later, at the first connection, with a vaguer message)."""
    try:
        content = Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read {what} {os.fspath(path)!r}: {error.strerror or error}") from None
    if b"-----BEGIN " not in content:
        raise ValueError(f"{what} {os.fspath(path)!r} is not PEM (no -----BEGIN line)")
    return content


def channel_credentials(
    ca_path: PemPath | None, cert_path: PemPath | None = None, key_path: PemPath | None = None
) -> grpc.ChannelCredentials:
    """TLS trusting the roots in `ca_path` (the system's when None) and, when given, presenting
    `cert_path`/`key_path` as the client certificate for servers that require one (mutual TLS)."""
    if (cert_path is None) != (key_path is None):
        raise ValueError("a client certificate needs both files: the certificate and its private key")
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca_path, "TLS CA file") if ca_path is not None else None,
        private_key=read_pem(key_path, "TLS client key file") if key_path is not None else None,
        certificate_chain=read_pem(cert_path, "TLS client certificate file") if cert_path is not None else None,
    )


def open_channel(address: str, credentials: grpc.ChannelCredentials | None = None) -> grpc.aio.Channel:
    """Plaintext without credentials (local development), TLS with them."""
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(address, credentials, options=CHANNEL_OPTIONS)


def key_metadata(api_key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),)


# Worth trying again: the service or the network is away for now, or the call ran out of time.
TRANSIENT_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)


def is_transient(error: BaseException) -> bool:
    return isinstance(error, grpc.aio.AioRpcError) and error.code() in TRANSIENT_CODES
