"""The guard of MySQL's and MariaDB's ``INSERT IGNORE`` (see the package docstring).

``Guard`` is the part of the dialect support that writes rows: the guarded
multi-row ``INSERT IGNORE`` (warnings read, anything but a duplicate undone and
raised) and the plain INSERT of one row, whose error 1062 is read exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, NoReturn, cast

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection
from sqlalchemy.sql.dml import Insert

from onconflict._excluded import has_expressions
from onconflict._keys import by_key
from onconflict._target import ConflictTarget
from onconflict.dialects import support_for
from onconflict.dialects.base import DialectSupport
from onconflict.dialects.common import execute_row, execute_rows, with_primary_key
from onconflict.dialects.driver import DriverStatement, in_caller_transaction, statement_error
from onconflict.dialects.mysql.readers import WARNING_COUNT_READERS, packet_warning_count
from onconflict.dialects.plans import Row
from onconflict.exceptions import OutcomeMismatchError, UnsafeInsertError

DUPLICATE_KEY = 1062


SHOW_WARNINGS = sa.text("SHOW WARNINGS")


WARNING_COUNTS = sa.text("SELECT @@warning_count, @@max_error_count")


ERROR_LIMIT = sa.text("SELECT @@max_error_count")


SET_LIMIT = sa.text("SET SESSION max_error_count = :n")


WARNINGS_WANTED = 65535  # the largest max_error_count; a statement has at most 1000 rows


SAVED_LIMIT = "onconflict.saved_max_error_count"


OWNED = "onconflict.owned"  # conn.info: the running call owns its transaction


# Errors after which InnoDB has rolled back the whole transaction, savepoints
# included: deadlock, and lock wait timeout (with innodb_rollback_on_timeout).
TRANSACTION_LOST = frozenset({1213, 1205})


class GuardedInsert(mysql.Insert):
    """``INSERT IGNORE`` as onconflict guards it. A statement of ONE row runs as
    a plain INSERT instead (``Guard.write_row``); ``target`` is the conflict
    target its duplicate error is checked against (None: any duplicate is
    skipped, as IGNORE skips it)."""

    inherit_cache = True
    target: ConflictTarget | None = None
    returns = False


class _Overflow(Exception):
    def __init__(self, kept: int) -> None:
        self.kept = kept


class Guard(DialectSupport):
    """Writing rows with the guarded ``INSERT IGNORE`` (MySQL, MariaDB)."""

    def insert_ignore(self, table: sa.Table, target: ConflictTarget, returning: bool) -> Insert:
        return self._ignore(table, target, returning)

    def _ignore(
        self, table: sa.Table, target: ConflictTarget | None, returning: bool
    ) -> GuardedInsert:
        return _guarded_insert(table, target, returning)

    def one_row_statement(self, table: sa.Table, target: ConflictTarget) -> Insert:
        """A plain INSERT ... RETURNING: its error says exactly what one row met."""
        return _plain_insert(table, True)

    def duplicate_noop(self, table: sa.Table) -> Insert:
        """``INSERT ... ON DUPLICATE KEY UPDATE c = c``: raises every non-duplicate error."""
        col = next(iter(table.primary_key.columns), None)
        if col is None:
            col = next(iter(table.c))
        return mysql.insert(table).on_duplicate_key_update({col: col})  # by Column: key != name

    def transaction_lost(self, exc: BaseException) -> bool:
        args: tuple[Any, ...] = getattr(getattr(exc, "orig", None), "args", ())
        return bool(args) and args[0] in TRANSACTION_LOST

    def write_many(self, conn: Connection, stmt: Insert, rows: list[Row]) -> list[Row]:
        if len(rows) == 1 and _plain_row(conn, stmt):
            one = self.write_row(conn, stmt, rows[0])  # type: ignore[arg-type]
            return [] if one is None else [one]

        def run() -> tuple[list[Row], sa.CursorResult[Any]]:
            result = execute_rows(conn, stmt, rows)
            return [dict(m) for m in result.mappings()], result

        try:
            returned: list[Row] = self._guarded(conn, stmt, rows, run)
            return returned
        except _Overflow as over:
            if over.kept < WARNINGS_WANTED and SAVED_LIMIT not in conn.info:
                # keep enough warnings to check a whole statement; put back by scope()
                conn.info[SAVED_LIMIT] = over.kept
                conn.execute(SET_LIMIT, {"n": WARNINGS_WANTED})
                return self.write_many(conn, stmt, rows)
            out: list[Row] = []
            for i in range(0, len(rows), over.kept):
                out.extend(self.write_many(conn, stmt, rows[i : i + over.kept]))
            return out

    def write_one(self, conn: Connection, stmt: Insert, row: Row) -> Row | None:
        if _plain_row(conn, stmt):
            return self.write_row(conn, stmt, row)  # type: ignore[arg-type]

        def run() -> tuple[Row | None, sa.CursorResult[Any]]:
            result = execute_row(conn, stmt, row)
            if result.rowcount != 1:
                return None, result
            return with_primary_key(stmt.table, row, result), result  # type: ignore[arg-type]

        stored: Row | None = self._guarded(conn, stmt, [row], run)
        return stored

    # -- one row: a plain INSERT ---------------------------------------------------
    # For ONE row, a plain INSERT (no IGNORE, no SAVEPOINT) says exactly what
    # happened: error 1062 is a duplicate (one row, one error), every other
    # problem is the server's own error, and InnoDB rolls back only the failed
    # statement, so the caller's transaction goes on. (Deadlocks and lock wait
    # timeouts roll back more, as they did before: they are raised.) What a
    # plain INSERT can still store with a warning (a note for a rounded decimal
    # or trimmed trailing spaces, a value cut short under a non-strict
    # sql_mode) is undone and raised as UnsafeInsertError, as the guard does.

    def write_row(self, conn: Connection, stmt: GuardedInsert, row: Row) -> Row | None:
        """One row as a plain INSERT: the stored row, or None for a duplicate."""
        done = _on_driver(conn, stmt, row)
        if done is not SQLALCHEMY:
            return done  # type: ignore[no-any-return]
        table: sa.Table = stmt.table  # type: ignore[assignment]
        plain = _plain_insert(table, stmt.returns)
        try:
            result = execute_row(conn, plain, row)
        except sa.exc.IntegrityError as exc:
            if error_number(exc) != DUPLICATE_KEY or _elsewhere(conn, stmt, row, exc):
                raise
            return None
        if stmt.returns:
            stored = dict(result.mappings().one())
        else:
            stored = with_primary_key(table, row, result)
        count = packet_warning_count(conn, result)
        if count is None:  # a driver we cannot read it from: ask the server
            count = int(conn.execute(WARNING_COUNTS).first()[0])  # type: ignore[index]
        if count:
            refuse(conn, table, stored, count)
        return stored

    def _guarded(self, conn: Connection, stmt: Insert, rows: list[Row], run: Any) -> Any:
        table: sa.Table = stmt.table  # type: ignore[assignment]
        # A one-row statement of a call that owns its transaction needs no
        # SAVEPOINT: every problem it can find raises, and the raise rolls the
        # whole transaction back (only a multi-row statement may be redone, after
        # a warnings overflow, and must be undone first).
        bare = len(rows) == 1 and conn.info.get(OWNED, False)
        with nullcontext() if bare else self.savepoint(conn) as sp:
            try:
                out, result = run()
                inserted = len(out) if isinstance(out, list) else int(out is not None)
                problems = self._problems(conn, result, len(rows) - inserted)
            except sa.exc.DBAPIError as exc:
                if not (self.transaction_lost(exc) or exc.connection_invalidated):
                    # IGNORE may fail on a value it coerced itself (NULL -> '' failing
                    # a CHECK): the same rows without IGNORE show the real cause.
                    if sp is not None:
                        sp.rollback()
                    self._probe(conn, table, rows)
                raise
            if not problems:
                return out
            if isinstance(problems, _Overflow):
                assert sp is not None  # one row cannot overflow max_error_count >= 1
                sp.rollback()
                raise problems
            if sp is not None:
                sp.rollback()
            self._raise_database_error(conn, table, rows, problems)

    def _problems(
        self, conn: Connection, result: sa.CursorResult[Any], skipped: int
    ) -> list[tuple[str, int, str]] | _Overflow:
        count = packet_warning_count(conn, result)
        kept: int | None = None
        if count is None:  # a driver we cannot read it from: ask the server
            count, kept = conn.execute(WARNING_COUNTS).one()
        if count == 0:
            return []
        shown = [(str(w[0]), int(w[1]), str(w[2])) for w in conn.execute(SHOW_WARNINGS)]
        bad = [w for w in shown if w[1] != DUPLICATE_KEY]
        if bad:
            return bad
        if count != skipped:
            # more warnings than skipped rows: something besides a duplicate
            return shown or [("Warning", 0, f"{count} warnings, none visible (max_error_count=0)")]
        if count > len(shown):
            if kept is None:
                kept = int(conn.execute(ERROR_LIMIT).scalar_one())
            if kept < 1:
                raise UnsafeInsertError(
                    "cannot check INSERT IGNORE warnings with max_error_count=0;"
                    " set it to 1 or more"
                )
            return _Overflow(kept)
        return []

    def _raise_database_error(
        self,
        conn: Connection,
        table: sa.Table,
        rows: list[Row],
        problems: list[tuple[str, int, str]],
    ) -> None:
        self._probe(conn, table, rows)
        listing = "; ".join(f"{code}: {msg}" for _, code, msg in problems[:5])
        raise UnsafeInsertError(
            f"INSERT IGNORE into {table.name!r} reported more than duplicate keys ({listing});"
            " nothing was stored",
            problems,
        )

    def _probe(self, conn: Connection, table: sa.Table, rows: list[Row]) -> None:
        """Run the rows without IGNORE, always rolled back: raises the server's own
        error for them (in strict mode), or returns."""
        probe = conn.begin_nested()
        try:
            execute_rows(conn, self.duplicate_noop(table), rows)
        finally:
            probe.rollback()


# Statements are built once per shape (SQLAlchemy then finds them in its
# compiled cache by their cache key): building one costs as much as running it.
@functools.lru_cache(maxsize=512)
def _guarded_insert(
    table: sa.Table, target: ConflictTarget | None, returning: bool
) -> GuardedInsert:
    stmt = GuardedInsert(table).prefix_with("IGNORE")
    stmt.target, stmt.returns = target, returning
    if returning:  # (a GuardedInsert still: generative methods keep the class)
        return cast(GuardedInsert, stmt.returning(*by_key(table)))
    return stmt


@functools.lru_cache(maxsize=512)
def _plain_insert(table: sa.Table, returning: bool) -> Insert:
    stmt = mysql.insert(table)
    return stmt.returning(*by_key(table)) if returning else stmt


def _plain_row(conn: Connection, stmt: Insert) -> bool:
    """Whether a one-row statement runs as a plain INSERT (Guard.write_row): an
    insert_ignore, upsert or get_or_create statement; not where the engine has
    handle_error listeners (they would see the duplicate's error, which the
    guarded INSERT IGNORE never raises); in the caller's transaction only for a
    table with a primary key (a row stored with a warning is deleted by it)."""
    if not isinstance(stmt, GuardedInsert) or conn.dialect.dispatch.handle_error:
        return False
    return bool(conn.info.get(OWNED, False) or stmt.table.primary_key)


def _elsewhere(conn: Connection, stmt: GuardedInsert, row: Row, exc: BaseException) -> bool:
    """A duplicate that is of another unique key than the statement's target
    (the key the error names), while no row has the target key: an error to
    raise, not a row that exists. (A duplicate of both keys names one of them.)"""
    target = stmt.target
    table: sa.Table = stmt.table  # type: ignore[assignment]
    if target is None or support_for(conn.dialect).duplicate_of_target(exc, table, target):
        return False
    cols = [table.c[c] for c in target.columns]
    if not cols or any(row.get(c.key) is None for c in cols):
        return True  # (NULL never collides: it cannot be a duplicate of the target)
    # a locking read: sees the latest committed row, whatever the snapshot
    look = sa.select(*cols).where(*(c == row[c.key] for c in cols)).with_for_update(read=True)
    return conn.execute(look).first() is None


def refuse(conn: Connection, table: sa.Table, stored: Row, count: int) -> NoReturn:
    """A row the plain INSERT stored with ``count`` warnings: undo it (a call
    that owns its transaction rolls it back as this raises; in the caller's
    transaction it is deleted by its primary key) and raise UnsafeInsertError."""
    shown = [(str(w[0]), int(w[1]), str(w[2])) for w in conn.execute(SHOW_WARNINGS)]
    warned = shown or [("Warning", 0, f"{count} warnings, none visible (max_error_count=0)")]
    if not conn.info.get(OWNED, False):
        conn.execute(sa.delete(table).where(*_primary_key_of(table, stored)))
    listing = "; ".join(f"{code}: {msg}" for _, code, msg in warned[:5])
    raise UnsafeInsertError(
        f"INSERT into {table.name!r} stored its row with warnings ({listing});"
        " the row was undone: nothing was stored",
        warned,
    )


# -- one row on the driver's cursor ------------------------------------------------
# The same plain INSERT, sent on the connection's DBAPI cursor with the
# statement compiled once per shape: no SQLAlchemy execution per call (context,
# result, the wrapping of the duplicate's error), which costs more than the
# round trip. Only where nothing can tell the difference: aiomysql,
# a transaction SQLAlchemy already began, no execution options, no statement
# events or echo (handle_error listeners keep the guarded form: _plain_row).
SQLALCHEMY = object()  # _on_driver: run SQLAlchemy's path instead
DRIVER_ROW = ("aiomysql",)  # (its paramstyle is positional, as DriverStatement sends)


def _on_driver(conn: Connection, stmt: GuardedInsert, row: Row) -> Any:
    """The one-row plain INSERT ... RETURNING on the DBAPI cursor: the stored
    row, None for a duplicate, or SQLALCHEMY where this does not apply or the
    server refused the row (SQLAlchemy's path then runs it again and raises
    the server's error as it raises it, events included: the refused statement
    left nothing). An error that lost the transaction or the connection is
    raised here, wrapped as SQLAlchemy wraps it: running again would run in
    another transaction."""
    fast = _driver_statement(conn, stmt, row)
    if fast is None:
        return SQLALCHEMY
    args = fast.arguments(row)
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(fast.sql, args)
        records = cursor.fetchall()
        count = WARNING_COUNT_READERS[conn.dialect.driver](
            cursor, conn.connection.driver_connection
        )
    except Exception as exc:
        return _driver_error(conn, stmt, row, fast, args, exc)
    finally:
        cursor.close()
    table: sa.Table = stmt.table  # type: ignore[assignment]
    if len(records) != 1:  # (never: a plain INSERT of one row inserts it or raises)
        raise OutcomeMismatchError(f"INSERT into {table.name!r} returned {len(records)} rows")
    stored = fast.row(records[0])
    if count:
        refuse(conn, table, stored, count)
    return stored


def _driver_error(
    conn: Connection,
    stmt: GuardedInsert,
    row: Row,
    fast: DriverStatement,
    args: list[Any],
    exc: Exception,
) -> Any:
    dbapi = conn.dialect.loaded_dbapi
    if not isinstance(exc, dbapi.Error):
        raise exc  # (not the driver's: nothing known of the connection)
    code = exc.args[0] if exc.args else None
    if code == DUPLICATE_KEY and not _elsewhere(conn, stmt, row, exc):
        return None
    # an error the server sent (the session lives on), not one of the client
    # library's own (2000-2999: connection lost, gone away, ...)
    refused = isinstance(code, int) and code > 0 and not 2000 <= code < 3000
    if refused and code not in TRANSACTION_LOST:
        return SQLALCHEMY
    raise statement_error(conn, fast.sql, args, exc, lost=not refused) from exc


def _driver_statement(conn: Connection, stmt: GuardedInsert, row: Row) -> DriverStatement | None:
    if not (stmt.returns and conn.dialect.driver in DRIVER_ROW):
        return None
    if not in_caller_transaction(conn, conn.dialect.driver) or has_expressions([row]):
        return None
    fast = _row_statement(conn.dialect, stmt.table, tuple(sorted(row)))
    return None if fast.needs_context else fast


@functools.lru_cache(maxsize=512)
def _row_statement(dialect: Any, table: sa.Table, columns: tuple[str, ...]) -> DriverStatement:
    values = {c: sa.bindparam(f"oc_{c}", type_=table.c[c].type) for c in columns}
    return DriverStatement(_plain_insert(table, True).values(values), dialect, table.c)


def _primary_key_of(table: sa.Table, row: Row) -> list[sa.ColumnElement[bool]]:
    return [col == row[col.key] for col in table.primary_key.columns]


def error_number(exc: BaseException) -> Any:
    """The MySQL error number of a SQLAlchemy-wrapped driver error."""
    args: tuple[Any, ...] = getattr(getattr(exc, "orig", None), "args", ())
    return args[0] if args else None


@contextmanager
def quiet_driver_warnings(conn: Connection) -> Iterator[None]:
    """For the duration of a call on an aiomysql connection: no Python warning
    (and no SHOW WARNINGS round trip of the driver's own) for each statement
    that warns. The guard reads the warnings itself; a skipped duplicate is the
    expected outcome, not something to warn about. Only this connection, only
    this call: other code keeps aiomysql's warnings (and its warning filters)."""
    driver = conn.connection.driver_connection if conn.dialect.driver == "aiomysql" else None
    if driver is None:
        yield
        return
    driver.show_warnings = _no_warnings  # an instance attribute: this connection only
    try:
        yield
    finally:
        del driver.show_warnings


async def _no_warnings() -> None:
    """aiomysql's cursor skips its warnings when show_warnings() gives None."""
    return None
