"""What onconflict knows of a database.

A dialect module builds its statements (pure, no I/O) and says what the
database supports; the shared core in ``onconflict._core`` does the rest.
Adding a database is one module with a subclass of :class:`DialectSupport` and
one line in ``onconflict.dialects.REGISTRY``. A database without a module gets
this base class: no native form, so ``strategy="auto"`` uses ``classify``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect, NestedTransaction
from sqlalchemy.sql.dml import Insert

from onconflict._target import ConflictTarget, UniqueKey
from onconflict.exceptions import NotSupportedError

Row = dict[str, Any]


class DialectSupport:
    """Duplicate-only insert for one database family."""

    name: ClassVar[str] = "generic"
    native: ClassVar[bool] = False
    """True where the database has a duplicate-only INSERT form."""
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
        raise NotSupportedError(f"no native duplicate-only insert for {self.name}")

    def atomic(self, conn: Connection) -> AbstractContextManager[Any]:
        """Make a multi-statement call all-or-nothing inside the caller's transaction.

        PostgreSQL overrides this with nothing: an error aborts its whole
        transaction anyway.
        """
        return self.savepoint(conn)

    def savepoint(self, conn: Connection) -> AbstractContextManager[NestedTransaction]:
        """A SAVEPOINT, released on success and rolled back on error."""
        return _savepoint(conn, self.transaction_lost)

    def transaction_lost(self, exc: BaseException) -> bool:
        """True when the server has already rolled the whole transaction back
        (rolling back to a savepoint would then fail and hide ``exc``)."""
        return False

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
        return with_primary_key(stmt.table, row, result)  # type: ignore[arg-type]


def with_primary_key(table: sa.Table, row: Row, result: sa.CursorResult[Any]) -> Row:
    """The row as inserted, with the primary key the database generated for it."""
    stored = dict(row)
    pk = result.inserted_primary_key
    if pk is not None:
        for col, value in zip(table.primary_key.columns, pk, strict=True):
            if value is not None:
                stored[col.key] = value
    return stored


@contextmanager
def _savepoint(
    conn: Connection, lost: Callable[[BaseException], bool]
) -> Iterator[NestedTransaction]:
    sp = conn.begin_nested()
    try:
        yield sp
    except BaseException as exc:
        if sp.is_active and not lost(exc):
            sp.rollback()
        raise
    if sp.is_active:
        sp.commit()


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
