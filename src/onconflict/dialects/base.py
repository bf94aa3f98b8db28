"""What every native dialect provides.

A dialect module builds its statements (pure, no I/O) and says what the
database supports; the shared core in ``onconflict._core`` does the rest.
Adding a database is one module with a subclass of :class:`NativeDialect` and
one line in ``onconflict.dialects.REGISTRY``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.dml import Insert

from onconflict._target import ConflictTarget, UniqueKey

Row = dict[str, Any]


class NativeDialect:
    """Duplicate-only insert for one database family."""

    name: ClassVar[str]
    targets_conflicts: ClassVar[bool] = True
    """False where the statement cannot name its conflict target (MySQL)."""

    page_size: ClassVar[int] = 1000
    """Most rows sent in one statement."""

    def check(self, dialect: Dialect) -> None:
        """Raise NotSupportedError when this server/driver lacks the native form."""

    def returning(self, dialect: Dialect) -> bool:
        return bool(dialect.insert_returning)

    def max_params(self, dialect: Dialect) -> int:
        return int(dialect.insertmanyvalues_max_parameters)

    def max_statement_bytes(self, dialect: Dialect) -> int | None:
        """A size budget for one statement's values, where the protocol has one."""
        return None

    def insert_ignore(self, table: sa.Table, target: ConflictTarget, returning: bool) -> Insert:
        """The statement that inserts rows and skips duplicates of ``target``."""
        raise NotImplementedError

    def atomic(self, conn: Connection) -> AbstractContextManager[Any]:
        """Make a multi-statement call all-or-nothing inside the caller's transaction.

        Nothing to do where an error aborts the whole transaction (PostgreSQL).
        """
        return nullcontext()

    def scope(self, conn: Connection) -> AbstractContextManager[Any]:
        """Wraps a whole call: puts back any session setting the call changed."""
        return nullcontext()

    # -- I/O: the only places that talk to the database -----------------------

    def write_many(self, conn: Connection, stmt: Insert, rows: list[Row]) -> list[Row]:
        """Execute ``stmt`` (with RETURNING) for rows sharing one key set, as ONE
        statement; return the rows the database reports as inserted."""
        return [dict(m) for m in conn.execute(stmt, rows).mappings()]

    def write_one(self, conn: Connection, stmt: Insert, row: Row) -> Row | None:
        """Without RETURNING: insert one row, the stored row or None if it was a duplicate."""
        result = conn.execute(stmt, row)
        if result.rowcount != 1:
            return None
        stored = dict(row)
        pk = result.inserted_primary_key
        if pk is not None:
            for col, value in zip(stmt.table.primary_key.columns, pk, strict=True):  # type: ignore[attr-defined]
                if value is not None:
                    stored[col.key] = value
        return stored


def do_nothing(stmt: Any, table: sa.Table, target: ConflictTarget, returning: bool) -> Insert:
    """``ON CONFLICT (target) DO NOTHING [RETURNING *]`` on a PostgreSQL or SQLite insert.

    The target is given as columns (and the partial index's WHERE) rather than a
    constraint name: the database infers the arbiter index from them, whatever
    the constraint is called on the server. No target means any unique key.
    """
    key: UniqueKey | None = target.key
    if key is None:
        stmt = stmt.on_conflict_do_nothing()
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(key.elements), index_where=key.where)
    return stmt.returning(*table.c) if returning else stmt  # type: ignore[no-any-return]
