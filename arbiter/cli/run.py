"""`arbiter run`: what `make run` starts (shared.devstack): PostgreSQL, migrations, dev keys and both
services, until Ctrl-C."""

from __future__ import annotations

import argparse

from arbiter.cli.options import Subcommands
from shared import devstack
from shared.config import Config
from shared.logs import configure_logging


def add_commands(commands: Subcommands) -> None:
    running = commands.add_parser(
        "run",
        help="run PostgreSQL and both services until Ctrl-C (as make run)",
        description="Start PostgreSQL (embedded under ARBITER_STATE_DIR unless ARBITER_DATABASE_URL is set), "
        "apply migrations, write one API key per role to ARBITER_STATE_DIR/dev-keys.env, and run the registry "
        "and the orchestrator until Ctrl-C. The same as `make run`, without the install step.",
    )
    running.set_defaults(run=run_stack)


def run_stack(arguments: argparse.Namespace) -> int:
    config = Config.from_env()
    configure_logging(config.log_level, config.log_format)
    return devstack.run(config)
