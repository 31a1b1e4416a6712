"""The `arbiter` command: run the dev stack, manage API keys, and submit, follow and inspect tasks and
agents from a shell.

    arbiter tasks submit code-review --payload '{"pullRequest": 7}' --wait
    arbiter tasks list --state running --json

Each command lives in a module here with `add_commands(subcommands)`, which sets `run`: a function
from the parsed arguments to an exit code. What can go wrong becomes one line on stderr and an exit
code in `describe_failure`, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from importlib.metadata import version

import psycopg

from arbiter.cli import admin, agents, database, demo, keys, run, smoke, stats, tasks
from arbiter.cli.db_seed import SeedRefused
from arbiter.cli.options import UsageError
from arbiter.cli.output import one_line
from arbiter.errors import ArbiterError, WaitTimeout
from shared.api_keys import KeyLookupError, KeyNotRotatable
from shared.config import ConfigError
from shared.database import MigrationError

EXIT_FAILED = 1
EXIT_USAGE = 2
# As timeout(1): waiting for a task gave up; the task goes on.
EXIT_TIMED_OUT = 124
EXIT_INTERRUPTED = 130

EPILOG = """\
commands that call the services take these options after the command name:
  --orchestrator HOST:PORT  default: ARBITER_ORCHESTRATOR_ADDR, else 127.0.0.1:50052
  --registry HOST:PORT      default: ARBITER_REGISTRY_TARGET or ARBITER_REGISTRY_ADDR, else 127.0.0.1:50051
  --key KEY                 default: ARBITER_API_KEY (after make run: source .arbiter/dev-keys.env)
  --tls-ca PEM              dial TLS trusting these roots; default: ARBITER_TLS_CA, else plaintext
                            (--tls: TLS with the system's roots; --tls-client-cert/--tls-client-key PEM:
                            mutual TLS, default ARBITER_TLS_CLIENT_CERT/ARBITER_TLS_CLIENT_KEY)
  --timeout SECONDS         deadline of each call, default 10 (--call-timeout in tasks submit and watch)
  --json                    machine-readable JSON on stdout
keys, migrate and db work on the database directly: ARBITER_DATABASE_URL, else libpq's PG* variables,
else the embedded PostgreSQL; admin does the same key work (and reads the audit log) through the
services, with an admin key.

exit codes: 0 done; 1 refused, failed or unreachable (one line on stderr: "arbiter: CODE: message");
2 bad usage or configuration; 124 waiting for a task timed out; 130 interrupted (Ctrl-C)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arbiter",
        description="Arbiter from a shell: run the services, manage API keys, submit and follow tasks, "
        "look at agents and the queue.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('arbiter')}")
    commands = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    for module in (run, database, keys, admin, agents, tasks, stats, demo, smoke):
        module.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    try:
        return int(arguments.run(arguments))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader left (e.g. `| head`). Point stdout at /dev/null so the flush at exit cannot fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as error:
        message, exit_code = describe_failure(error)
        print(f"arbiter: {message}", file=sys.stderr)
        if os.environ.get("ARBITER_LOG_LEVEL", "").upper() == "DEBUG":
            traceback.print_exc()
        return exit_code


def describe_failure(error: Exception) -> tuple[str, int]:
    """The line to print, and the exit code."""
    if isinstance(error, ArbiterError):
        return f"{error.code.name}: {one_line(error.message)}", EXIT_FAILED
    if isinstance(error, WaitTimeout):
        return str(error), EXIT_TIMED_OUT
    if isinstance(error, UsageError | ConfigError):
        return str(error), EXIT_USAGE
    if isinstance(error, KeyLookupError | KeyNotRotatable | MigrationError | SeedRefused):
        return str(error), EXIT_FAILED
    if isinstance(error, psycopg.errors.UndefinedTable):
        return "the database has no Arbiter tables yet: run `arbiter migrate`", EXIT_FAILED
    if isinstance(error, psycopg.OperationalError):
        return f"cannot reach PostgreSQL: {one_line(str(error))}", EXIT_FAILED
    if isinstance(error, psycopg.Error):
        return f"PostgreSQL: {one_line(str(error))}", EXIT_FAILED
    return (
        f"unexpected {type(error).__name__}: {one_line(str(error))} (ARBITER_LOG_LEVEL=DEBUG shows where)",
        EXIT_FAILED,
    )
