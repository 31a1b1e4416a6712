"""The options every command that calls the services shares, and where their defaults come from."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeAlias

from arbiter.client import Client
from arbiter.settings import dial_address, transport_credentials
from shared.config import Config

# A string: argparse does not subscript at run time.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
ServiceCommand = Callable[[argparse.Namespace, "Connection"], Coroutine[Any, Any, int]]

DEFAULT_CALL_TIMEOUT_SECONDS = 10.0
NO_KEY_MESSAGE = "no API key: pass --key or set ARBITER_API_KEY (make run writes one to .arbiter/dev-keys.env)"


class UsageError(Exception):
    """The command line or the environment asks for something impossible: one line, exit 2."""


@dataclass(frozen=True)
class Connection:
    """Where the services are, the key to show them, how long one call may take, and TLS (plaintext
    unless `tls` or one of the PEM files is set)."""

    orchestrator: str
    registry: str
    key: str
    call_timeout: float
    tls: bool | None = None
    tls_ca: str | None = None
    tls_client_cert: str | None = None
    tls_client_key: str | None = None

    def tls_options(self) -> dict[str, Any]:
        """The TLS arguments `Client` and `Agent` take."""
        return {
            "tls": self.tls,
            "tls_ca": self.tls_ca,
            "tls_client_cert": self.tls_client_cert,
            "tls_client_key": self.tls_client_key,
        }

    def client(self) -> Client:
        return Client(
            self.orchestrator, self.key, registry_address=self.registry, timeout=self.call_timeout, **self.tls_options()
        )


def positive_int(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1; got {text}")
    return number


def positive_seconds(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds; got {text!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0; got {text}")
    return number


def positive_number(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0; got {text}")
    return number


def fraction(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1; got {text!r}") from None
    if not 0 <= number <= 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1; got {text}")
    return number


def label(text: str) -> tuple[str, str]:
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, e.g. region=eu; got {text!r}")
    return key, value


def add_requirement_options(parser: argparse.ArgumentParser) -> None:
    """--language, --specialization and --label (each repeatable): what a task asks of its agent."""
    parser.add_argument(
        "--language", dest="languages", action="append", default=[], metavar="L", help="required; repeatable"
    )
    parser.add_argument(
        "--specialization",
        dest="specializations",
        action="append",
        default=[],
        metavar="S",
        help="required; repeatable",
    )
    parser.add_argument(
        "--label", dest="labels", action="append", type=label, default=[], metavar="KEY=VALUE", help="repeatable"
    )


def output_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    return options


def service_options(
    *, timeout_flags: tuple[str, ...] = ("--timeout", "--call-timeout"), timeout_help: str = "deadline of each call"
) -> argparse.ArgumentParser:
    """--orchestrator, --registry, --key, --json and the call deadline. Commands whose own --timeout
    means something else (tasks submit, tasks watch) take the deadline as --call-timeout only; `arbiter
    smoke` bounds each step by it (`timeout_help`)."""
    options = argparse.ArgumentParser(add_help=False, parents=[output_options()])
    group = options.add_argument_group("connection")
    group.add_argument(
        "--orchestrator",
        metavar="HOST:PORT",
        help="the orchestrator (default: ARBITER_ORCHESTRATOR_ADDR, else 127.0.0.1:50052)",
    )
    group.add_argument(
        "--registry",
        metavar="HOST:PORT",
        help="the registry (default: ARBITER_REGISTRY_TARGET or ARBITER_REGISTRY_ADDR, else 127.0.0.1:50051)",
    )
    group.add_argument("--key", metavar="KEY", help="the API key to send (default: ARBITER_API_KEY)")
    group.add_argument(
        "--tls",
        action="store_const",
        const=True,
        help="dial TLS, trusting the system's roots unless --tls-ca (implied by any --tls-* option or variable)",
    )
    group.add_argument(
        "--tls-ca", metavar="PEM", help="roots to trust; dials TLS (default: ARBITER_TLS_CA, else plaintext)"
    )
    group.add_argument(
        "--tls-client-cert",
        metavar="PEM",
        help="client certificate for mutual TLS, with --tls-client-key (default: ARBITER_TLS_CLIENT_CERT)",
    )
    group.add_argument("--tls-client-key", metavar="PEM", help="its private key (default: ARBITER_TLS_CLIENT_KEY)")
    group.add_argument(
        *timeout_flags,
        dest="call_timeout",
        metavar="SECONDS",
        type=positive_seconds,
        default=DEFAULT_CALL_TIMEOUT_SECONDS,
        help=f"{timeout_help} (default: {DEFAULT_CALL_TIMEOUT_SECONDS:g})",
    )
    return options


def connection_for(arguments: argparse.Namespace) -> Connection:
    """The command line's choices, else the ARBITER_* variables, else the defaults."""
    config = Config.from_env()
    key = arguments.key or config.api_key
    if not key:
        raise UsageError(NO_KEY_MESSAGE)
    connection = Connection(
        orchestrator=arguments.orchestrator or dial_address(config.orchestrator_addr),
        registry=arguments.registry or dial_address(config.registry_dial_target),
        key=key,
        call_timeout=arguments.call_timeout,
        tls=arguments.tls,
        tls_ca=arguments.tls_ca or config.tls_ca,
        tls_client_cert=arguments.tls_client_cert or config.tls_client_cert,
        tls_client_key=arguments.tls_client_key or config.tls_client_key,
    )
    try:
        # Unreadable files are a usage error here, before any call.
        transport_credentials(**connection.tls_options())
    except ValueError as error:
        raise UsageError(str(error)) from None
    return connection


def calls_services(command: ServiceCommand) -> Callable[[argparse.Namespace], int]:
    """Runs an async command with the connection its options describe."""

    def run(arguments: argparse.Namespace) -> int:
        connection = connection_for(arguments)
        return asyncio.run(command(arguments, connection))

    return run
