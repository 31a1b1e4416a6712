"""`.env.example`, written from SETTINGS: `python -m shared.env_example > .env.example` (`make env-example`).

A test compares the committed file with what this writes, so the two never drift.
"""

from __future__ import annotations

import re
import sys
import textwrap

from shared.config import SETTINGS, Setting
from shared.libpq_environment import LIBPQ_VARIABLES

WIDTH = 100
# What a value may hold to mean the same to a shell's `.`, to `docker run --env-file` (which takes the
# rest of the line as it is, quotes included) and to systemd's EnvironmentFile=.
_PLAIN_VALUE = re.compile(r"^[A-Za-z0-9_.,:/=@+-]*$")

HEADER = """\
# Arbiter's configuration: every ARBITER_* variable, its default and what it means.
# Generated from SETTINGS in shared/config.py by `make env-example`: change those, not this file.
#
# To use it: `cp .env.example .env`, edit .env, then load it into the shell that runs `make run`, the
# `arbiter` command or a service:   set -a && . ./.env && set +a
# `docker run --env-file .env` and systemd's `EnvironmentFile=` read it as it is.
# A commented-out line is a variable that is unset by default: remove the `# ` to set it.
# A line NAME=value holds the default; leaving it as it is changes nothing.
"""

LIBPQ_SECTION = """\
# libpq's own variables: when ARBITER_DATABASE_URL is unset and any of these is set, the services,
# `make run` and the `arbiter` database commands connect with them (instead of the embedded PostgreSQL
# `make run` would start). PGHOST may be a unix-socket directory, e.g. /var/run/postgresql. The password
# is never logged. Other libpq variables (PGSSLMODE, PGPASSFILE, PGCONNECT_TIMEOUT...) apply either way.
"""


def _comment(text: str) -> str:
    return "".join(f"# {line}\n" for line in textwrap.wrap(text, WIDTH - 2, break_on_hyphens=False))


def _assignment(setting: Setting) -> str:
    if setting.default is None:
        return f"# {setting.env}=\n"
    if not _PLAIN_VALUE.match(setting.default):
        raise ValueError(
            f"the default of {setting.env} ({setting.default!r}) needs quoting, which env files do not agree on"
        )
    return f"{setting.env}={setting.default}\n"


def render() -> str:
    """The whole file: the header, each setting as its meaning then its line, and libpq's variables."""
    sections = [HEADER]
    sections.extend(_comment(setting.meaning) + _assignment(setting) for setting in SETTINGS)
    sections.append(LIBPQ_SECTION + "".join(f"# {name}=\n" for name in LIBPQ_VARIABLES))
    return "\n".join(sections)


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
