"""PostgreSQL (and PostgreSQL-wire engines): ``INSERT ... ON CONFLICT DO NOTHING``.

The statement skips rows that conflict on the arbiter index and nothing else:
NOT NULL (23502), CHECK (23514), foreign key (23503) and too-long values
(22001) raise as for a plain INSERT.

The package: this module (the support classes and their capabilities),
``build`` (pure statement builders), ``write`` (writers and catalog reads),
``copy`` (the COPY bulk path), ``asyncpg`` (asyncpg's driver-level paths),
``distributed`` (CockroachDB and YugabyteDB), ``errors`` (the classifier's
codes and key parser).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import ColumnElement

from onconflict._excluded import has_expressions
from onconflict._keys import Keys
from onconflict._target import ConflictTarget
from onconflict.dialects.base import Capabilities, DialectSupport
from onconflict.dialects.common import execute_rows, is_string, needs_context, python_defaults
from onconflict.dialects.errors import error_code
from onconflict.dialects.plans import FetchPlan, Outcome, Row, UpsertPlan
from onconflict.dialects.postgresql import build, copy, write
from onconflict.dialects.postgresql.build import CREATED
from onconflict.exceptions import SeedLockTimeout

CAPABILITIES = Capabilities(
    name="postgresql",
    title="PostgreSQL",
    native=True,
    error_aborts_transaction=True,  # any error aborts the whole transaction
    fetch_in_one_statement=True,
)


class PostgresWire(DialectSupport):
    """What every PostgreSQL-wire database shares: ``ON CONFLICT DO NOTHING``,
    get_or_create (one and many) as one statement, keys folded by ``citext``
    and nondeterministic collations."""

    capabilities = CAPABILITIES

    def insert_ignore(self, table: sa.Table, target: ConflictTarget, returning: bool) -> Insert:
        return build.insert_ignore(table, target, returning)

    def count_statement(self, table: sa.Table, target: ConflictTarget) -> Insert | None:
        return build.insert_counted(table, target)

    def write_count(self, conn: Connection, stmt: Insert, rows: list[Row]) -> int:
        """The drivers give no row count for an executemany: the statement
        returns one column of each inserted row, and those are counted."""
        return len(execute_rows(conn, stmt, rows).all())

    def changed(self, column: sa.Column[Any], value: Any) -> ColumnElement[bool]:
        """``json`` has no equality operator (``operator does not exist: json =
        json``): such columns are compared as ``jsonb``, by value (key order and
        white space aside), as PostgreSQL compares ``jsonb``."""
        if build.plain_json(column.type):
            return sa.cast(column, pg.JSONB).is_distinct_from(sa.cast(value, pg.JSONB))
        return column.is_distinct_from(value)

    def key_identity(
        self, conn: Connection, table: sa.Table, keys: Keys, columns: tuple[str, ...]
    ) -> bool:
        """``citext`` key columns compare case-insensitively (known from the
        metadata), and so do columns with a nondeterministic ICU collation
        (``CREATE COLLATION ... (provider = icu, locale = 'und-u-ks-level2',
        deterministic = false)``), read from the catalog once per connection and
        table, and only for keys with a string column."""
        folds: dict[str, Any] = {
            c: str.lower for c in columns if isinstance(table.c[c].type, pg.CITEXT)
        }
        if any(is_string(table.c[c]) for c in columns if c not in folds):
            found = write.nondeterministic_folds(conn, table)
            folds.update({c: found[c] for c in columns if c in found and c not in folds})
        keys.set_folds(folds)
        return bool(folds)

    def prepare_fetch(self, plan: FetchPlan) -> None:
        """get_or_create as ONE statement (``build.get_or_create_statement``).

        A table with a column default that takes SQLAlchemy's execution context
        (and is not given) gets the generic statements only: SELECT, then a
        plain INSERT ... ON CONFLICT DO NOTHING, whose context the default can use.
        """
        super().prepare_fetch(plan)  # the statement-by-statement form, for SQL expressions
        if not needs_context(plan.table, plan.values):
            plan.statements["one"] = build.get_or_create_statement(plan)

    def get_or_create_once(self, conn: Connection, plan: FetchPlan) -> tuple[Row, bool] | None:
        if "one" not in plan.statements or has_expressions([plan.params]):
            # a default needing SQLAlchemy's context, or a SQL expression as a value
            # (it cannot be a bound parameter of the CTE): SELECT, then INSERT ...
            # ON CONFLICT DO NOTHING
            return super().get_or_create_once(conn, plan)
        got = conn.execute(plan.statements["one"], plan.bound(plan.values)).mappings().first()
        if got is None:
            return None
        row = dict(got)
        return row, bool(row.pop(CREATED))

    def get_or_create_many_once(
        self, conn: Connection, table: sa.Table, target: ConflictTarget, rows: list[Row]
    ) -> list[Row] | None:
        """One statement (see ``get_or_create_many_statement``); None for a table
        with Python-side defaults for columns the rows leave out (SQLAlchemy
        computes those per row only for a plain INSERT)."""
        columns = tuple(sorted(rows[0]))
        if python_defaults(table, columns) or needs_context(table, columns):
            return None
        stmt = build.get_or_create_many_statement(table, target, columns, rows)
        return [dict(m) for m in conn.execute(stmt).mappings()]


class PostgreSQL(PostgresWire):
    """PostgreSQL itself: the upsert's outcome from ``xmax`` (a partitioned
    table, which has none, gets the exact locking path), the COPY bulk path on
    asyncpg, and the seed's advisory lock."""

    def __init__(self) -> None:
        super().__init__()
        # per engine: quoted table name -> partitioned (pg_class.relkind = 'p')
        self._partitioned: weakref.WeakKeyDictionary[Engine, dict[str, bool]] = (
            weakref.WeakKeyDictionary()
        )

    def prepare_upsert(self, plan: UpsertPlan, dialect: Dialect) -> None:
        plan.statement = build.upsert_flagged(plan)
        # a partitioned table has no xmax to return: there, the duplicate-only insert
        plan.extra["insert_new"] = build.insert_ignore(plan.table, plan.target, True)

    def write_upsert(self, conn: Connection, plan: UpsertPlan, rows: list[Row]) -> list[Outcome]:
        if self.partitioned(conn, plan.table):
            return write.upsert_partitioned(conn, plan, rows)
        return write.upsert_flagged(conn, plan, rows)

    def partitioned(self, conn: Connection, table: sa.Table) -> bool:
        """Whether ``table`` is a partitioned table: declared so in the metadata
        (``postgresql_partition_by``), or else as the catalog says, read once
        per engine and table (a table reflected or created by migrations)."""
        if table.dialect_options["postgresql"].get("partition_by"):
            return True
        known = self._partitioned.setdefault(conn.engine, {})
        name = conn.dialect.identifier_preparer.format_table(table)
        if name not in known:
            known[name] = conn.execute(build.relkind_statement(name)).scalar() == "p"
        return known[name]

    # the COPY path of a large group on asyncpg
    bulk_rows = staticmethod(copy.bulk_rows)
    write_bulk = staticmethod(copy.write_bulk)
    count_bulk = staticmethod(copy.count_bulk)

    @contextmanager
    def seed_lock(self, conn: Connection, name: str, timeout: float) -> Iterator[None]:
        """A transaction-level advisory lock, waited for at most ``timeout``."""
        setting = sa.func.set_config("lock_timeout", sa.bindparam("t"), True)
        previous = conn.execute(sa.select(sa.func.current_setting("lock_timeout"))).scalar_one()
        conn.execute(sa.select(setting), {"t": f"{max(1, int(timeout * 1000))}ms"})
        try:
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(name))))
        except sa.exc.DBAPIError as exc:
            if error_code(exc) == "55P03":  # lock_not_available
                raise SeedLockTimeout(
                    f"could not take the seed lock {name!r} within {timeout:g}s:"
                    " another seed is still running"
                ) from exc
            raise
        conn.execute(sa.select(setting), {"t": previous})
        yield  # released when the transaction ends


__all__ = ["CAPABILITIES", "CREATED", "PostgreSQL", "PostgresWire"]
