"""docs/operations.md names only real things: the release checklist's `make` targets, `arbiter` commands and
their options, files and settings exist; every alert has its On call entry; the migration table says which
migrations are reversible as their down scripts do."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from arbiter.cli import build_parser
from shared.config import SETTINGS
from shared.database import load_migrations
from tests.support.processes import REPO_ROOT

DOC = (REPO_ROOT / "docs" / "operations.md").read_text()
RULES = REPO_ROOT / "deploy" / "monitoring" / "prometheus-rules.yaml"

CHECKLIST_ITEMS = [
    "Environment",
    "Database",
    "Read replica",
    "Smoke test",
    "CI/CD",
    "Load test",
    "Backups",
    "Rollback",
]
OPERATIONS_SECTIONS = ["Release checklist", "Backups", "Rolling back", "On call"]


def section(title: str, level: str = "##") -> str:
    """The text under the heading `title` up to the next heading of the same or a higher level."""
    match = re.search(rf"^{level} {re.escape(title)}\n(.*?)(?=^#{{1,{len(level)}}} |\Z)", DOC, re.M | re.S)
    assert match is not None, f"docs/operations.md has no '{level} {title}'"
    return match[1]


def table_rows(text: str) -> list[list[str]]:
    """The cells of each row of the Markdown tables in `text`, header and separator rows left out."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines()]
    rows = [row for row, line in zip(rows, text.splitlines(), strict=True) if line.startswith("|")]
    return [row for row in rows if not set(row[0]) <= set("-:") and row[0] not in ("item", "alert", "migration")]


def code_spans(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


CHECKLIST = section("Release checklist")
CHECKLIST_COMMANDS = code_spans(CHECKLIST)
OUR_SECTIONS = "\n".join(section(title) for title in OPERATIONS_SECTIONS)


def test_the_checklist_has_a_row_for_each_readiness_item_with_a_command_that_checks_it() -> None:
    rows = {row[0]: row for row in table_rows(CHECKLIST)}
    assert list(rows) == CHECKLIST_ITEMS
    for item, row in rows.items():
        assert code_spans(row[-1]), f"the checklist's {item} row names no command"


def make_targets() -> set[str]:
    makefile = (REPO_ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):", makefile, re.M))


@pytest.mark.parametrize("command", [c for c in CHECKLIST_COMMANDS if c.startswith("make ")])
def test_each_make_command_of_the_checklist_is_a_makefile_target(command: str) -> None:
    target = command.split()[1]
    assert target in make_targets(), f"`{command}`: the Makefile has no target {target}"


def shell_lines(text: str) -> list[str]:
    """The commands of the ```sh blocks in `text`: comments and leading VARIABLE=value assignments removed."""
    blocks = re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [re.sub(r"^(?:[A-Z_]+=\S+\s+)+", "", line) for line in lines if line]


def arbiter_commands() -> list[str]:
    written = code_spans(OUR_SECTIONS) + shell_lines(OUR_SECTIONS)
    return sorted({command for command in written if command.startswith("arbiter ")})


@pytest.mark.parametrize("command", arbiter_commands())
def test_each_arbiter_command_in_the_doc_parses_with_the_options_it_shows(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    words = command.split()[1:]
    subcommand = []
    for word in words:
        if not re.fullmatch(r"[a-z][a-z-]*", word):
            break
        subcommand.append(word)
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*subcommand, "--help"])
    assert exited.value.code == 0, f"`arbiter {' '.join(subcommand)} --help` failed"
    usage = capsys.readouterr().out
    for option in (word.split("=")[0] for word in words if word.startswith("--")):
        assert option in usage, f"`{command}`: `arbiter {' '.join(subcommand)}` has no option {option}"


# A repository file named in backticks: a relative path with an extension, no placeholders.
_FILE = re.compile(r"\.?[\w-]+(?:/[\w.-]+)*\.(?:py|ya?ml|json|md|sql|toml|example)")


def test_each_file_the_operations_sections_name_exists() -> None:
    # NNNN_name stands for any migration.
    named = {span for span in code_spans(OUR_SECTIONS) if _FILE.fullmatch(span) and "NNNN" not in span}
    assert named >= {".env.example", "deploy/k8s/base/migrate-job.yaml", "tests/test_backup_restore.py"}
    missing = sorted(path for path in named if not (REPO_ROOT / path).exists())
    assert missing == [], f"docs/operations.md names files that do not exist: {missing}"


def test_each_setting_the_operations_sections_name_is_in_shared_config() -> None:
    named = set(re.findall(r"\bARBITER_[A-Z0-9_]+", OUR_SECTIONS))
    known = {setting.env for setting in SETTINGS}
    assert named - known == set(), "docs/operations.md names settings shared/config.py does not have"


def alerts() -> list[dict[str, object]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["spec"]["groups"] for rule in group["rules"] if "alert" in rule]


ON_CALL = section("On call")


@pytest.mark.parametrize("alert", [rule["alert"] for rule in alerts()])
def test_every_alert_has_an_on_call_row_and_entry_with_meaning_and_first_steps(alert: str) -> None:
    rows = [row for row in table_rows(ON_CALL) if row[0] == f"[{alert}](#{alert.lower()})"]
    assert len(rows) == 1, f"the On call table has no row for {alert}"
    assert all(rows[0]), f"the On call row of {alert} has an empty cell"
    entry = section(alert, "###")
    assert "**Meaning.**" in entry and "**First steps.**" in entry, f"On call entry {alert}"
    rule = next(rule for rule in alerts() if rule["alert"] == alert)
    assert rows[0][1] == rule["labels"]["severity"], f"the On call row of {alert} gives another severity"  # type: ignore[index]
    assert rule["annotations"]["runbook"] == f"docs/operations.md#{alert.lower()}"  # type: ignore[index]


def test_every_on_call_entry_is_an_alert_of_the_rules_file() -> None:
    entries = set(re.findall(r"^### (\S+)$", ON_CALL, re.M))
    rows = {re.sub(r"^\[(\w+)\].*", r"\1", row[0]) for row in table_rows(ON_CALL)}
    names = {str(rule["alert"]) for rule in alerts()}
    assert entries == names
    assert rows == names


def test_the_migration_table_says_which_migrations_are_reversible_as_their_down_scripts_do() -> None:
    documented = {row[0]: row[1] for row in table_rows(section("Rolling back")) if re.fullmatch(r"\d{4}_\w+", row[0])}
    migrations = load_migrations()
    assert list(documented) == [migration.label for migration in migrations]
    for migration in migrations:
        expected = "reversible" if migration.irreversible_reason is None else "irreversible"
        assert documented[migration.label].split(":")[0] == expected, migration.label


def test_the_doc_is_where_the_readme_and_the_rules_point() -> None:
    assert Path(RULES).read_text().count("docs/operations.md") >= len(alerts())
    assert "## Runbook" not in DOC, "the runbook is the On call section now"
