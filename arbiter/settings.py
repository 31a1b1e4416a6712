"""Where the SDK connects, whether over TLS, and with which key when the caller does not say: the same
ARBITER_* variables the services and the `arbiter` command read, so one `source .arbiter/dev-keys.env`
serves all."""

from __future__ import annotations

import os

import grpc

from arbiter._grpc import PemPath, channel_credentials

DEFAULT_REGISTRY = "127.0.0.1:50051"
DEFAULT_ORCHESTRATOR = "127.0.0.1:50052"


def dial_address(listen_address: str) -> str:
    """Where to connect to a server listening on `listen_address` (wildcards mean this machine)."""
    host, _, port = listen_address.rpartition(":")
    if host in ("0.0.0.0", "[::]", ""):
        host = "127.0.0.1"
    return f"{host}:{port}"


def orchestrator_address() -> str:
    """ARBITER_ORCHESTRATOR_ADDR, else the default."""
    return dial_address(os.environ.get("ARBITER_ORCHESTRATOR_ADDR") or DEFAULT_ORCHESTRATOR)


def registry_address() -> str:
    """ARBITER_REGISTRY_TARGET, else ARBITER_REGISTRY_ADDR, else the default."""
    configured = os.environ.get("ARBITER_REGISTRY_TARGET") or os.environ.get("ARBITER_REGISTRY_ADDR")
    return dial_address(configured or DEFAULT_REGISTRY)


def api_key(given: str | None) -> str:
    """The key passed in, else ARBITER_API_KEY; a clear error when neither is there."""
    key = given or os.environ.get("ARBITER_API_KEY", "")
    if not key:
        raise ValueError(
            "no API key: pass api_key=… or set ARBITER_API_KEY (make run writes one to .arbiter/dev-keys.env)"
        )
    return key


def transport_credentials(
    tls: bool | None = None,
    tls_ca: PemPath | None = None,
    tls_client_cert: PemPath | None = None,
    tls_client_key: PemPath | None = None,
) -> grpc.ChannelCredentials | None:
    """How to dial: None (plaintext) unless TLS is asked for. Files not given come from ARBITER_TLS_CA,
    ARBITER_TLS_CLIENT_CERT and ARBITER_TLS_CLIENT_KEY; any of them set means TLS, as does tls=True
    (with the system's roots when no CA is given). tls=False means plaintext whatever is set."""
    if tls is False:
        return None
    ca = tls_ca or os.environ.get("ARBITER_TLS_CA") or None
    client_cert = tls_client_cert or os.environ.get("ARBITER_TLS_CLIENT_CERT") or None
    client_key = tls_client_key or os.environ.get("ARBITER_TLS_CLIENT_KEY") or None
    if not tls and ca is None and client_cert is None and client_key is None:
        return None
    return channel_credentials(ca, client_cert, client_key)
