"""PostgreSQL's client programs (pg_dump, pg_restore) of the right major version for a server.

pg_dump refuses a server newer than itself, and a dump is best made by the server's own major version. This
machine has the distribution's programs (/usr/lib/postgresql/<major>/bin, on PATH through /usr/bin) and the
embedded pgserver's (pgserver/pginstall/bin, PostgreSQL 16)."""

from __future__ import annotations

import glob
import re
import shutil
import subprocess
from importlib import util
from pathlib import Path

import psycopg


def server_major_version(url: str) -> int:
    with psycopg.connect(url) as connection:
        return connection.info.server_version // 10000


def _candidates(program: str) -> list[Path]:
    found = [Path(path) for path in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"))]
    on_path = shutil.which(program)
    if on_path:
        found.append(Path(on_path))
    pgserver = util.find_spec("pgserver")
    if pgserver is not None and pgserver.origin is not None:
        found.append(Path(pgserver.origin).parent / "pginstall" / "bin" / program)
    return [path for path in found if path.is_file()]


def _major_version(program: Path) -> int:
    output = subprocess.run([program, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"\) (\d+)", output)
    assert match is not None, f"{program} --version said {output!r}"
    return int(match[1])


def client_program(program: str, server_major: int) -> Path:
    """`program` of the server's major version if there is one, else the oldest newer one."""
    by_version = sorted(
        ((_major_version(path), path) for path in _candidates(program) if _major_version(path) >= server_major),
        key=lambda found: (found[0] != server_major, found[0]),
    )
    if not by_version:
        raise AssertionError(f"no {program} of PostgreSQL {server_major} or newer on this machine")
    return by_version[0][1]
