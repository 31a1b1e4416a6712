"""A database's schema as plain data, to compare two databases (or one before and after) for equality."""

from __future__ import annotations

import psycopg

# Each query lists one kind of object in the public schema, as PostgreSQL itself prints its definition, in a
# stable order and without anything that changes between equal schemas (OIDs, attribute numbers).
_SCHEMA_QUERIES = {
    "relations": """
        SELECT c.relname, c.relkind::text
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
        ORDER BY 1
    """,
    # Position among the table's live columns: a column dropped and added back at the end keeps its place.
    "columns": """
        SELECT c.relname, a.attname,
               row_number() OVER (PARTITION BY c.relname ORDER BY a.attnum) AS position,
               format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity::text, a.attgenerated::text,
               pg_get_expr(d.adbin, d.adrelid)
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm') AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY 1, 3
    """,
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1, 2",
    "constraints": """
        SELECT c.relname, k.conname, k.contype::text, pg_get_constraintdef(k.oid)
        FROM pg_constraint k
        JOIN pg_class c ON c.oid = k.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public'
        ORDER BY 1, 2
    """,
    "triggers": """
        SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid)
        FROM pg_trigger t
        JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND NOT t.tgisinternal
        ORDER BY 1, 2
    """,
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid), pg_get_functiondef(p.oid)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public'
        ORDER BY 1, 2
    """,
}

Schema = dict[str, list[tuple[object, ...]]]


def read_schema(url: str) -> Schema:
    """Tables, views and sequences; columns with type, nullability, identity, generation and default;
    indexes; constraints; triggers; functions with their bodies."""
    with psycopg.connect(url) as connection:
        return {kind: connection.execute(query).fetchall() for kind, query in _SCHEMA_QUERIES.items()}


def schema_differences(expected: Schema, actual: Schema) -> list[str]:
    """One line per object present in one schema and not (or differently) in the other; empty when equal."""
    lines = []
    for kind in _SCHEMA_QUERIES:
        lines += [f"{kind}: only before: {row}" for row in expected[kind] if row not in actual[kind]]
        lines += [f"{kind}: only after: {row}" for row in actual[kind] if row not in expected[kind]]
        if not lines and expected[kind] != actual[kind]:
            lines.append(f"{kind}: the same objects in another order")
    return lines


def applied_versions(url: str) -> list[int]:
    with psycopg.connect(url) as connection:
        return [row[0] for row in connection.execute("SELECT version FROM schema_migrations ORDER BY version")]
