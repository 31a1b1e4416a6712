"""The README's "Limits" table states every limit constant of shared/validation.py with its value, and
covers every field of every request of every RPC, so none of the three can change without the others."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from shared import validation
from tests.support.rpcs import ALL_RPCS

README = Path(__file__).resolve().parents[1] / "README.md"
# Module constants that are documented limits (or the defaults that stand in for 0).
LIMIT_NAME = re.compile(r"^(MAX|MIN|DEFAULT)_[A-Z0-9_]+$")
# Deeper than any request nests, and a guard against a message that contains itself.
MAX_FIELD_DEPTH = 8


@dataclass(frozen=True)
class Row:
    fields: tuple[str, ...]
    limit: str
    constants: tuple[str, ...]

    def covers(self, path: str) -> bool:
        return any(path == field or (field.endswith(".*") and path.startswith(field[:-1])) for field in self.fields)


def limits_table() -> list[Row]:
    """The rows of the table under "### Limits"."""
    text = README.read_text(encoding="utf-8")
    assert "\n### Limits\n" in text, "README.md has no '### Limits' section"
    lines = text.split("\n### Limits\n", 1)[1].splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("|"))
    rows = []
    # Skip the header and the |---| line; the table ends at the first line that is not a row.
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        fields, limit, constants = (cell.strip() for cell in line.strip().strip("|").split(" | "))
        rows.append(
            Row(
                fields=tuple(re.findall(r"`([A-Za-z]+(?:\.[a-z_]+)+(?:\.\*)?)`", fields)),
                limit=limit,
                constants=tuple(re.findall(r"`([A-Z][A-Z0-9_]+)`", constants)),
            )
        )
    return rows


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def _is_nested_message(field: FieldDescriptor) -> bool:
    """A message of ours (not a map, not a well-known type like Struct or Duration): its fields count."""
    return (
        field.type == FieldDescriptor.TYPE_MESSAGE
        and not _is_map(field)
        and not field.message_type.full_name.startswith("google.protobuf.")
    )


def _walk(prefix: str, message: Descriptor, depth: int, every: set[str], limited: set[str]) -> None:
    assert depth <= MAX_FIELD_DEPTH, f"{prefix} nests too deep to document"
    for field in message.fields:
        path = f"{prefix}.{field.name}"
        every.add(path)
        if _is_nested_message(field):
            if field.is_repeated:
                limited.add(path)
            _walk(path, field.message_type, depth + 1, every, limited)
        elif field.type != FieldDescriptor.TYPE_BOOL:
            limited.add(path)


def request_fields() -> tuple[set[str], set[str]]:
    """(every field path of every request, the ones that need a limit): strings, numbers, enums, lists,
    maps and well-known types need one; a bool cannot be out of range, and a nested message is
    limited by its own fields."""
    every: set[str] = set()
    limited: set[str] = set()
    for rpc in ALL_RPCS:
        _walk(rpc.name, rpc.method.input_type, 0, every, limited)
    return every, limited


def limit_constants() -> dict[str, int]:
    return {
        name: value
        for name, value in vars(validation).items()
        if LIMIT_NAME.match(name) and isinstance(value, int) and not isinstance(value, bool)
    }


def states(limit: str, value: int) -> bool:
    """Whether the limit's text states `value` as a whole number (−1000 written with a minus sign is -1000)."""
    text = limit.replace("−", "-")
    return re.search(rf"(?<![\d.]){re.escape(str(value))}(?![\d])", text) is not None


def test_the_table_has_rows() -> None:
    assert len(limits_table()) > 20


def test_every_limit_constant_is_in_the_table() -> None:
    named = {constant for row in limits_table() for constant in row.constants}
    assert sorted(limit_constants().keys() - named) == []


def test_every_constant_the_table_names_exists_and_its_value_is_stated() -> None:
    constants = limit_constants()
    wrong = [
        (row.fields[0] if row.fields else row.limit, constant, constants.get(constant))
        for row in limits_table()
        for constant in row.constants
        if constant not in constants or not states(row.limit, constants[constant])
    ]
    assert wrong == []


def test_every_request_field_of_every_rpc_has_a_documented_limit() -> None:
    _, limited = request_fields()
    rows = limits_table()
    assert sorted(path for path in limited if not any(row.covers(path) for row in rows)) == []


def test_every_field_the_table_names_exists() -> None:
    every, _ = request_fields()
    named = {field for row in limits_table() for field in row.fields}
    stale = [field for field in named if (field[:-2] not in every if field.endswith(".*") else field not in every)]
    assert sorted(stale) == []


def test_each_field_is_in_one_row_only() -> None:
    counted: dict[str, int] = {}
    for row in limits_table():
        for field in row.fields:
            counted[field] = counted.get(field, 0) + 1
    assert sorted(field for field, count in counted.items() if count > 1) == []
