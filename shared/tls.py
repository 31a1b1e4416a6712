"""Transport security for the services: the server's TLS credentials, the credentials the orchestrator
dials the registry with, and the start-up check that a service never serves plaintext by accident.

Plaintext only with ARBITER_ALLOW_INSECURE=true (what `make run` and the tests set).
"""

from __future__ import annotations

import grpc

from arbiter._grpc import PemPath, read_pem
from arbiter._grpc import channel_credentials as _sdk_channel_credentials
from shared.config import Config, ConfigError

NO_TLS_MESSAGE = (
    "ARBITER_TLS_CERT and ARBITER_TLS_KEY are not set, so the service would serve plaintext, where anyone on "
    "the network reads API keys and payloads: set both to PEM files (README, TLS), or set "
    "ARBITER_ALLOW_INSECURE=true to serve plaintext on purpose (development)"
)


def _unreadable(variable: str, path: str) -> str | None:
    """Why the PEM file a variable names cannot be used, or None when it can."""
    try:
        read_pem(path, variable)
    except ValueError as error:
        return str(error)
    return None


def transport_security_problems(config: Config) -> list[str]:
    """Every reason the TLS settings are unusable for a service, in one list (empty when they are fine)."""
    problems: list[str] = []
    if config.tls_cert and not config.tls_key:
        problems.append("ARBITER_TLS_CERT is set without ARBITER_TLS_KEY: set both (the certificate and its key)")
    if config.tls_key and not config.tls_cert:
        problems.append("ARBITER_TLS_KEY is set without ARBITER_TLS_CERT: set both (the certificate and its key)")
    if config.tls_client_ca and not config.tls_cert:
        problems.append(
            "ARBITER_TLS_CLIENT_CA (mutual TLS) needs server TLS: set ARBITER_TLS_CERT and ARBITER_TLS_KEY too"
        )
    if bool(config.tls_client_cert) != bool(config.tls_client_key):
        problems.append("ARBITER_TLS_CLIENT_CERT and ARBITER_TLS_CLIENT_KEY go together: set both or neither")
    if not config.tls_cert and not config.tls_key and not config.allow_insecure:
        problems.append(NO_TLS_MESSAGE)
    for variable, path in (
        ("ARBITER_TLS_CERT", config.tls_cert),
        ("ARBITER_TLS_KEY", config.tls_key),
        ("ARBITER_TLS_CLIENT_CA", config.tls_client_ca),
        ("ARBITER_TLS_CA", config.tls_ca),
        ("ARBITER_TLS_CLIENT_CERT", config.tls_client_cert),
        ("ARBITER_TLS_CLIENT_KEY", config.tls_client_key),
    ):
        if path:
            problem = _unreadable(variable, path)
            if problem:
                problems.append(problem)
    return problems


def require_transport_security(config: Config) -> None:
    """Raises ConfigError naming every problem unless the service can serve TLS, or plaintext is
    explicitly allowed; called before a service opens anything."""
    problems = transport_security_problems(config)
    if problems:
        raise ConfigError("TLS is not configured properly:\n  " + "\n  ".join(problems))


def server_credentials(config: Config) -> grpc.ServerCredentials | None:
    """The server's TLS credentials (requiring a client certificate signed by ARBITER_TLS_CLIENT_CA when
    that is set), or None for plaintext, which require_transport_security allows only on purpose."""
    require_transport_security(config)
    if not config.tls_cert or not config.tls_key:
        return None
    client_ca = read_pem(config.tls_client_ca, "ARBITER_TLS_CLIENT_CA") if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(read_pem(config.tls_key, "ARBITER_TLS_KEY"), read_pem(config.tls_cert, "ARBITER_TLS_CERT"))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def channel_credentials(
    ca_path: PemPath | None, cert_path: PemPath | None = None, key_path: PemPath | None = None
) -> grpc.ChannelCredentials:
    """TLS for an outgoing channel: trusts `ca_path` (the system's roots when None) and presents
    `cert_path`/`key_path` as the client certificate when given."""
    try:
        return _sdk_channel_credentials(ca_path, cert_path, key_path)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def registry_channel_credentials(config: Config) -> grpc.ChannelCredentials | None:
    """How the orchestrator dials the registry: TLS whenever TLS is configured here (a server certificate
    or ARBITER_TLS_CA), else plaintext. It presents ARBITER_TLS_CLIENT_CERT/KEY, else its own server
    certificate, so a registry that requires mutual TLS accepts it; the certificate then needs the
    clientAuth usage (or no extended key usage at all)."""
    if not config.tls_cert and not config.tls_ca:
        return None
    if config.tls_client_cert and config.tls_client_key:
        return channel_credentials(config.tls_ca, config.tls_client_cert, config.tls_client_key)
    return channel_credentials(config.tls_ca, config.tls_cert, config.tls_key)
