"""libpq's own variables as the database to use when ARBITER_DATABASE_URL is unset, and connection
strings as a person may see them (without the password)."""

from __future__ import annotations

from collections.abc import Mapping

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

# Each variable and the connection parameter it stands for, as libpq reads them (PGHOST may be a
# unix-socket directory, or several hosts separated by commas).
LIBPQ_VARIABLES = {
    "PGHOST": "host",
    "PGPORT": "port",
    "PGDATABASE": "dbname",
    "PGUSER": "user",
    "PGPASSWORD": "password",
}


def libpq_variables_set(environ: Mapping[str, str]) -> list[str]:
    """The LIBPQ_VARIABLES set to something (an empty one counts as unset, like ARBITER_* settings)."""
    return [name for name in LIBPQ_VARIABLES if environ.get(name, "").strip()]


def conninfo_from_libpq_variables(environ: Mapping[str, str]) -> str | None:
    """A connection string made of the PG* variables that are set; None when none is. libpq fills what
    they leave out with its defaults (the local unix socket, the OS user's name)."""
    parameters = {LIBPQ_VARIABLES[name]: environ[name].strip() for name in libpq_variables_set(environ)}
    return make_conninfo(**parameters) if parameters else None


def conninfo_parameters(conninfo: str) -> dict[str, str] | None:
    """The parameters of `conninfo` (a URL or key=value pairs) as libpq reads them; None when it cannot."""
    try:
        return {name: str(value) for name, value in conninfo_to_dict(conninfo).items()}
    except psycopg.ProgrammingError:
        return None


def without_password(conninfo: str) -> str:
    """`conninfo` (a URL or key=value pairs) as key=value pairs without the password, fit for a log
    line or an error message."""
    try:
        parameters = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        # Never echo a string we could not parse: it may hold a password anywhere.
        return "(a connection string libpq cannot parse)"
    parameters.pop("password", None)
    return make_conninfo(**{name: str(value) for name, value in parameters.items()})
