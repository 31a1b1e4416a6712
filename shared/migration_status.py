"""What the migrations this code ships say a database should hold (which versions, with which checksums,
and which indexes), compared with what a database reports. Pure: the SQL that reads a database is the
caller's (`arbiter db check`)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from shared.database import Migration

# CREATE [UNIQUE] INDEX name, DROP INDEX name[, name...], ALTER INDEX name RENAME TO name: the statements
# that decide which indexes a migrated database has. A test checks the result against a migrated database,
# so a statement this misses (say, a DROP TABLE taking its indexes along) fails the suite, not production.
_NAME = r'(?:"[^"]+"|[\w$]+)(?:\s*\.\s*(?:"[^"]+"|[\w$]+))?'
_INDEX_STATEMENT = re.compile(
    rf"\bCREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?(?P<created>{_NAME})"
    rf"|\bDROP\s+INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+EXISTS\s+)?(?P<dropped>{_NAME}(?:\s*,\s*{_NAME})*)"
    rf"|\bALTER\s+INDEX\s+(?:IF\s+EXISTS\s+)?(?P<renamed>{_NAME})\s+RENAME\s+TO\s+(?P<new_name>{_NAME})",
    re.IGNORECASE,
)
_LINE_COMMENT = re.compile(r"--[^\n]*")
_BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)


class UnnamedIndex(Exception):
    """A migration creates an index without naming it, so nothing can check that it exists."""


_LAST_IDENTIFIER = re.compile(r'(?:"(?P<quoted>[^"]+)"|(?P<plain>[\w$]+))\s*$')


def _index_name(text: str) -> str:
    """As PostgreSQL stores it: without a schema, quoted names as written, unquoted ones in lower case."""
    match = _LAST_IDENTIFIER.search(text)
    assert match is not None, f"not an identifier: {text!r}"
    return match["quoted"] or match["plain"].lower()


def expected_indexes(migrations: Iterable[Migration]) -> dict[str, Migration]:
    """Each index the migrations leave behind, by name, with the migration that last created it."""
    indexes: dict[str, Migration] = {}
    for migration in migrations:
        sql = _LINE_COMMENT.sub("", _BLOCK_COMMENT.sub("", migration.sql))
        for statement in _INDEX_STATEMENT.finditer(sql):
            if statement["created"]:
                name = _index_name(statement["created"])
                if name == "on":
                    raise UnnamedIndex(
                        f"migration {migration_label(migration.version, migration.name)} creates an index without "
                        "a name: name it, so that `arbiter db check` can tell whether it exists"
                    )
                indexes[name] = migration
            elif statement["dropped"]:
                for dropped in statement["dropped"].split(","):
                    indexes.pop(_index_name(dropped), None)
            else:
                moved = indexes.pop(_index_name(statement["renamed"]), None)
                if moved is not None:
                    indexes[_index_name(statement["new_name"])] = moved
    return indexes


@dataclass(frozen=True)
class AppliedMigration:
    """A row of schema_migrations."""

    version: int
    name: str
    checksum: str


@dataclass(frozen=True)
class MigrationLevel:
    """A database's migrations against the ones this code ships."""

    applied: list[int]
    shipped: list[int]
    # Shipped, not applied yet: `arbiter migrate` applies them.
    pending: list[Migration]
    # Applied, but unknown to this code: the database was migrated by a newer release.
    unknown: list[AppliedMigration]
    # Applied from a file that has changed since.
    changed: list[Migration]

    @property
    def up_to_date(self) -> bool:
        return not (self.pending or self.unknown or self.changed)


def migration_level(applied: Iterable[AppliedMigration], shipped: list[Migration]) -> MigrationLevel:
    by_version = {migration.version: migration for migration in applied}
    shipped_versions = {migration.version for migration in shipped}
    return MigrationLevel(
        applied=sorted(by_version),
        shipped=[migration.version for migration in shipped],
        pending=[migration for migration in shipped if migration.version not in by_version],
        unknown=[by_version[version] for version in sorted(by_version) if version not in shipped_versions],
        changed=[
            migration
            for migration in shipped
            if migration.version in by_version and by_version[migration.version].checksum != migration.checksum
        ],
    )


def migration_label(version: int, name: str) -> str:
    """As the file is named, e.g. 0007_tenants_and_keys."""
    return f"{version:04d}_{name}"
