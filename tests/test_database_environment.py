"""Which database a process uses (ARBITER_DATABASE_URL, else libpq's PG* variables), and .env.example,
the list of every setting written from SETTINGS."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from shared.config import SETTINGS, Config, ConfigError
from shared.database import load_migrations
from shared.devstack import wait_until_serving
from shared.env_example import render
from shared.libpq_environment import LIBPQ_VARIABLES, without_password
from tests.support.processes import REPO_ROOT, free_port
from tests.support.stack import TEST_PEPPER
from tests.test_cli import arbiter, succeeded

ENV_EXAMPLE = REPO_ROOT / ".env.example"
# Trust authentication ignores it; it must show up in no output either way.
PASSWORD_NOT_TO_LOG = "pg-password-never-logged"


def without_database_settings() -> dict[str, str]:
    """This process's environment without any ARBITER_* or PG* variable."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("ARBITER_") and name not in LIBPQ_VARIABLES
    }


def libpq_variables_for(url: str) -> dict[str, str]:
    """The PG* variables that name the database `url` names, plus a password trust auth ignores."""
    parts = conninfo_to_dict(url)
    return {
        "PGHOST": str(parts["host"]),
        "PGPORT": str(parts["port"]),
        "PGDATABASE": str(parts["dbname"]),
        "PGUSER": str(parts["user"]),
        "PGPASSWORD": str(parts.get("password", PASSWORD_NOT_TO_LOG)),
    }


def applied_versions(url: str) -> list[int]:
    with psycopg.connect(url) as connection:
        return [row[0] for row in connection.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()]


# Config.


def test_pg_variables_name_the_database_when_arbiter_database_url_is_unset() -> None:
    config = Config.from_env(
        {"PGHOST": "db.example", "PGPORT": "6432", "PGDATABASE": "arbiter", "PGUSER": "arb", "PGPASSWORD": "pw"}
    )
    assert config.database_url is not None
    assert conninfo_to_dict(config.database_url) == {
        "host": "db.example",
        "port": "6432",
        "dbname": "arbiter",
        "user": "arb",
        "password": "pw",
    }


def test_arbiter_database_url_wins_over_pg_variables() -> None:
    url = "postgresql://arbiter@db:5432/arbiter"
    assert Config.from_env({"ARBITER_DATABASE_URL": url, "PGHOST": "elsewhere"}).require_database_url() == url


def test_a_socket_directory_in_pghost_is_kept_as_the_host() -> None:
    config = Config.from_env({"PGHOST": "/var/run/postgresql", "PGDATABASE": "arbiter"})
    assert conninfo_to_dict(config.require_database_url()) == {"host": "/var/run/postgresql", "dbname": "arbiter"}


def test_a_password_alone_is_enough_to_choose_libpq_defaults_for_the_rest() -> None:
    assert conninfo_to_dict(Config.from_env({"PGPASSWORD": "pw"}).require_database_url()) == {"password": "pw"}


def test_empty_pg_variables_count_as_unset() -> None:
    assert Config.from_env({"PGHOST": "", "PGDATABASE": " "}).database_url is None


def test_no_database_at_all_names_both_ways_to_give_one() -> None:
    with pytest.raises(ConfigError) as raised:
        Config.from_env({}).require_database_url()
    message = str(raised.value)
    assert "ARBITER_DATABASE_URL" in message
    assert all(name in message for name in LIBPQ_VARIABLES)


@pytest.mark.parametrize(
    "conninfo",
    ["postgresql://arbiter:s3cret@db:5432/arbiter", "host=db user=arbiter password=s3cret dbname=arbiter"],
)
def test_a_connection_string_is_shown_without_its_password(conninfo: str) -> None:
    shown = without_password(conninfo)
    assert "s3cret" not in shown
    given = conninfo_to_dict(conninfo)
    assert conninfo_to_dict(shown) == {name: value for name, value in given.items() if name != "password"}


def test_a_connection_string_libpq_cannot_parse_is_not_echoed() -> None:
    shown = without_password("postgresql://arbiter:s3cret@db/arbiter?no_such_parameter=1")
    assert shown == "(a connection string libpq cannot parse)"


# Real processes with only PG* variables.


def test_a_service_started_with_only_pg_variables_migrates_and_serves_that_database(
    empty_database_url: str, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"
    environment = {
        **without_database_settings(),
        **libpq_variables_for(empty_database_url),
        "ARBITER_REGISTRY_ADDR": address,
        "ARBITER_API_KEY_PEPPER": TEST_PEPPER,
        "ARBITER_ALLOW_INSECURE": "true",
        "ARBITER_LOG_LEVEL": "DEBUG",
    }
    log_path = tmp_path / "registry.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.registry"], cwd=REPO_ROOT, env=environment, stdout=log, stderr=log
        )
    try:
        wait_until_serving(address, process)
        assert applied_versions(empty_database_url) == [migration.version for migration in load_migrations()]
    finally:
        process.terminate()
        assert process.wait(timeout=20) == 0, log_path.read_text()
    assert PASSWORD_NOT_TO_LOG not in log_path.read_text()


def test_a_service_with_no_database_exits_2_naming_both_ways_to_give_one() -> None:
    environment = {
        **without_database_settings(),
        "ARBITER_REGISTRY_ADDR": f"127.0.0.1:{free_port()}",
        "ARBITER_API_KEY_PEPPER": TEST_PEPPER,
        "ARBITER_ALLOW_INSECURE": "true",
    }
    finished = subprocess.run(
        [sys.executable, "-m", "services.registry"], cwd=REPO_ROOT, env=environment, capture_output=True, text=True
    )
    assert finished.returncode == 2, finished.stderr
    assert "registry: no database: set ARBITER_DATABASE_URL" in finished.stderr
    assert "PGHOST" in finished.stderr


async def test_arbiter_migrate_and_db_check_use_the_pg_variables(empty_database_url: str) -> None:
    variables = {
        **without_database_settings(),
        **libpq_variables_for(empty_database_url),
        "ARBITER_API_KEY_PEPPER": TEST_PEPPER,
    }
    migrated = json.loads(succeeded(await arbiter(variables, "migrate", "--json")))
    assert migrated["applied"] == applied_versions(empty_database_url) != []
    checked = await arbiter(variables, "db", "check", "--json")
    report = json.loads(succeeded(checked))
    assert conninfo_to_dict(report["database"])["dbname"] == conninfo_to_dict(empty_database_url)["dbname"]
    assert PASSWORD_NOT_TO_LOG not in checked.stdout + checked.stderr


# .env.example.


def test_the_committed_env_example_is_what_settings_generate() -> None:
    assert ENV_EXAMPLE.read_text() == render(), "run `make env-example` and commit .env.example"


def test_env_example_has_one_line_per_setting_with_its_default_or_commented_out() -> None:
    lines = ENV_EXAMPLE.read_text().splitlines()
    for setting in SETTINGS:
        expected = f"# {setting.env}=" if setting.default is None else f"{setting.env}={setting.default}"
        assert [line for line in lines if setting.env + "=" in line] == [expected]
    assert {line.split("=")[0] for line in lines if line and not line.startswith("#")} == {
        setting.env for setting in SETTINGS if setting.default is not None
    }


def test_env_example_documents_the_pg_fallback() -> None:
    text = ENV_EXAMPLE.read_text()
    assert all(f"# {name}=\n" in text for name in LIBPQ_VARIABLES)


def test_sourcing_env_example_gives_the_default_configuration() -> None:
    shell = subprocess.run(
        ["bash", "-c", f"set -a && . {shlex.quote(str(ENV_EXAMPLE))} && set +a && env -0"],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=True,
    )
    sourced = dict(entry.split("=", 1) for entry in shell.stdout.split("\0") if entry)
    assert Config.from_env(sourced) == Config.from_env({})
    assert {name for name in sourced if name.startswith("ARBITER_")} == {
        setting.env for setting in SETTINGS if setting.default is not None
    }


def test_readme_documents_the_pg_fallback_in_its_configuration_section() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    configuration = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    assert all(name in configuration for name in LIBPQ_VARIABLES)
    assert ".env.example" in configuration
