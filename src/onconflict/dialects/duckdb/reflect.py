"""Tables as DuckDB has them, read from its own catalog functions.

duckdb-engine reflects through PostgreSQL's catalog queries, which DuckDB
cannot run on SQLAlchemy 2.1 (``pg_catalog.pg_collation``, ``regclass``). What
seeding a table by name needs (its columns, their types and nullability,
whether the server fills them, its primary and unique keys) is read from
``information_schema.columns``, ``duckdb_constraints()`` and
``duckdb_indexes()`` instead.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql.expression import Executable

__all__ = ["reflect", "type_of"]

TYPES: dict[str, Any] = {
    "TINYINT": sa.SmallInteger,
    "SMALLINT": sa.SmallInteger,
    "INTEGER": sa.Integer,
    "BIGINT": sa.BigInteger,
    "UTINYINT": sa.SmallInteger,
    "USMALLINT": sa.Integer,
    "UINTEGER": sa.BigInteger,
    "VARCHAR": sa.String,
    "BOOLEAN": sa.Boolean,
    "DATE": sa.Date,
    "TIME": sa.Time,
    "TIMESTAMP": sa.DateTime,
    "TIMESTAMP WITH TIME ZONE": lambda: sa.DateTime(timezone=True),
    "INTERVAL": sa.Interval,
    "DOUBLE": sa.Double,
    "FLOAT": sa.Float,
    "BLOB": sa.LargeBinary,
    "UUID": sa.Uuid,
    "JSON": sa.JSON,
}
DECIMAL = re.compile(r"DECIMAL\((\d+),\s*(\d+)\)")

_here = sa.and_(
    sa.column("table_schema") == sa.func.current_schema(),
    sa.column("table_catalog") == sa.func.current_database(),
)
COLUMNS: Executable = (
    sa.select(
        sa.column("column_name"),
        sa.column("data_type"),
        sa.column("is_nullable"),
        sa.column("column_default"),
    )
    .select_from(sa.table("columns", schema="information_schema"))
    .where(sa.column("table_name") == sa.bindparam("name"), _here)
    .order_by(sa.column("ordinal_position"))
)
CONSTRAINTS: Executable = (
    sa.select(
        sa.column("constraint_type"),
        sa.column("constraint_column_names"),
        sa.column("referenced_table"),
        sa.column("referenced_column_names"),
    )
    .select_from(sa.func.duckdb_constraints())
    .where(
        sa.column("table_name") == sa.bindparam("name"),
        sa.column("schema_name") == sa.func.current_schema(),
        sa.column("database_name") == sa.func.current_database(),
        sa.column("constraint_type").in_(["PRIMARY KEY", "UNIQUE", "FOREIGN KEY"]),
    )
)
UNIQUE_INDEXES: Executable = (
    sa.select(sa.column("index_name"), sa.column("expressions"))
    .select_from(sa.func.duckdb_indexes())
    .where(
        sa.column("table_name") == sa.bindparam("name"),
        sa.column("schema_name") == sa.func.current_schema(),
        sa.column("database_name") == sa.func.current_database(),
        sa.column("is_unique"),
    )
)


def type_of(data_type: str) -> Any:
    """The SQLAlchemy type of a DuckDB ``data_type``; NullType when unknown."""
    if found := DECIMAL.fullmatch(data_type):
        return sa.Numeric(int(found[1]), int(found[2]))
    made = TYPES.get(data_type)
    return made() if made is not None else sa.types.NullType()


def reflect(conn: Connection, metadata: sa.MetaData, names: list[str]) -> None:
    """Add each named table to ``metadata``, and the tables their foreign keys
    refer to (as SQLAlchemy's own reflection does)."""
    todo = list(names)
    while todo:
        name = todo.pop()
        if name not in metadata.tables:
            todo += _table(conn, metadata, name)


def _table(conn: Connection, metadata: sa.MetaData, name: str) -> list[str]:
    """Add one table; the names of the tables it refers to."""
    args: dict[str, Any] = {"name": name}
    columns = [
        sa.Column(
            column,
            type_of(data_type),
            nullable=nullable == "YES",
            server_default=sa.FetchedValue() if default is not None else None,
        )
        for column, data_type, nullable, default in conn.execute(COLUMNS, args)
    ]
    table = sa.Table(name, metadata, *columns)
    referred = []
    for kind, keys, other, their_keys in conn.execute(CONSTRAINTS, args):
        if kind == "FOREIGN KEY":
            table.append_constraint(
                sa.ForeignKeyConstraint(keys, [f"{other}.{k}" for k in their_keys])
            )
            referred.append(other)
        else:
            made = sa.PrimaryKeyConstraint if kind == "PRIMARY KEY" else sa.UniqueConstraint
            table.append_constraint(made(*keys))
    for index, expressions in conn.execute(UNIQUE_INDEXES, args):
        keys = _plain_columns(expressions, table)
        if keys:  # (an expression index is no target DuckDB's ON CONFLICT can name)
            sa.Index(index, *(table.c[k] for k in keys), unique=True)
    return referred


def _plain_columns(expressions: Any, table: sa.Table) -> list[str]:
    """The index's columns when every expression is one column; [] otherwise."""
    if isinstance(expressions, str):  # "[a, b]" (a VARCHAR in DuckDB 1.x-2.x)
        expressions = [e.strip() for e in expressions.strip("[]").split(",")]
    keys = [e.strip('"') for e in expressions]
    return keys if all(k in table.c for k in keys) else []
