"""The aiomysql driver-level paths of MariaDB: one-row ``insert_ignore`` and
``get_or_create`` of an engine-owned call, run on the pooled driver
connection with statements compiled once per shape, without SQLAlchemy's
per-call execution (``AiomysqlPath``, found by the registry)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.util import await_only, greenlet_spawn

from onconflict._excluded import has_expressions
from onconflict._target import ConflictTarget
from onconflict.dialects.base import DialectSupport
from onconflict.dialects.driver import DriverPath, DriverStatement, checkout, connection_lost
from onconflict.dialects.mysql.guard import DUPLICATE_KEY
from onconflict.dialects.plans import FetchPlan, Row


class _Driver:
    """One pooled aiomysql connection of a driver-level path, in a transaction
    (autocommit is off) that is committed or rolled back here. ``usable`` is
    False when the connection cannot be used (an autocommit engine: the guard
    needs its transaction)."""

    def __init__(self, raw: Any) -> None:
        self.raw, self.driver = raw, raw.driver_connection
        self.usable = not self.driver.get_autocommit()
        self.ended = True  # no transaction left open for the pool to roll back

    def run(
        self, fast: DriverStatement, args: list[Any], show: bool = True
    ) -> tuple[list[Any], int, list[Any]]:
        """The rows, the warning count and (if any, and ``show``) the warnings
        of a statement."""
        self.ended = False
        cursor = await_only(self.driver.cursor(_quiet_cursor()))
        await_only(cursor.execute(fast.sql, args))
        count = cursor._result.warning_count
        shown = list(await_only(self.driver.show_warnings())) if count and show else []
        return list(cursor._rows or ()), count, shown

    def roll_back(self, exc: BaseException | None = None) -> bool:
        """End the transaction, keeping nothing; False when the connection had to
        be dropped instead (the server then rolls back on its own)."""
        if exc is None or _server_refused(exc):
            try:
                await_only(self.driver.rollback())
                self.ended = True
                return True
            except Exception:
                pass
        self.raw.invalidate()
        return False

    def commit(self, fast: DriverStatement, args: list[Any]) -> bool:
        """COMMIT: True when done, False when the server refused it (a Galera
        certification failure: rolled back). A connection lost on the way is
        raised: the COMMIT may have happened, so the call must not run again."""
        try:
            await_only(self.driver.commit())
        except Exception as exc:
            if not _server_refused(exc):
                raise connection_lost(self.raw, fast, args, exc) from exc
            self.ended = True
            return False
        self.ended = True
        return True

    def close(self) -> None:
        if self.ended and hasattr(self.raw, "_close_special"):
            self.raw._close_special(transaction_reset=True)
        else:
            self.raw.close()


@contextmanager
def _driver(engine: Engine) -> Iterator[_Driver | None]:
    """A pooled driver connection for the call, returned to the pool after it;
    None when there is none to be had or it cannot be used."""
    raw = checkout(engine)
    if raw is None:
        yield None
        return
    conn = _Driver(raw)
    try:
        yield conn if conn.usable else None
    finally:
        conn.close()


def insert_ignore_row(
    engine: Engine,
    fast: DriverStatement,
    args: list[Any],
    table: sa.Table,
    target: ConflictTarget,
    support: DialectSupport,
) -> Row | None:
    """AiomysqlPath.insert_ignore's work, inside SQLAlchemy's greenlet bridge: the
    stored row, {} for a duplicate of the target, None to take the ordinary path."""
    with _driver(engine) as conn:
        if conn is None:
            return None
        try:
            records, count, _ = conn.run(fast, args, show=False)
        except Exception as exc:  # not committed: the server drops it with the session
            duplicate = _errno(exc) == DUPLICATE_KEY and support.duplicate_of_target(
                exc, table, target
            )
            conn.roll_back(exc)  # (ends the shared lock a duplicate leaves)
            return {} if duplicate else None
        if count == 0 and len(records) == 1:
            return fast.row(records[0]) if conn.commit(fast, args) else None
        conn.roll_back()  # stored with a warning: the ordinary path raises it
        return None


FetchStatements = tuple[DriverStatement, DriverStatement, DriverStatement]


def get_or_create_row(
    engine: Engine, statements: FetchStatements, params: dict[str, Any], attempts: int
) -> tuple[Row, bool] | None:
    """AiomysqlPath.get_or_create's work: (row, created), or None to take the
    ordinary path (which then reports any error as SQLAlchemy does, and says
    why a duplicate's row could not be read: a lookup mismatch, a duplicate of
    another unique key, or a row deleted meanwhile)."""
    select, insert = statements[0], statements[2]
    with _driver(engine) as conn:
        if conn is None:
            return None
        look, values = select.arguments(params), insert.arguments(params)
        try:  # nothing is committed in here: any error is rolled back
            found, made = _read_or_insert(conn, statements, look, values)
        except Exception as exc:
            conn.roll_back(exc)
            return None
        if not found and made:
            # outside the try: a lost COMMIT is raised, never run again
            return (insert.row(made[0]), True) if conn.commit(insert, values) else None
        if not conn.roll_back() or not found:  # a read, or nothing to keep
            return None
        return select.row(found[0]), False


def _read_or_insert(
    conn: _Driver, statements: FetchStatements, look: list[Any], values: list[Any]
) -> tuple[list[Any], list[Any]]:
    """The row read, else the row inserted (only when it came back with no
    warning), else after a duplicate the row read with a lock; ([], []) when
    none of those."""
    select, locked, insert = statements
    found, _, _ = conn.run(select, look)
    if found:
        return found, []
    made, count, shown = conn.run(insert, values)
    if count == 0 and len(made) == 1:
        return [], made
    if not made and count == 1 and [w[1] for w in shown] == [DUPLICATE_KEY]:
        # made by another caller after this transaction's snapshot: a locking
        # read sees the latest committed row
        found, _, _ = conn.run(locked, look)
        return found, []
    return [], []


def _errno(exc: BaseException) -> Any:
    """The MySQL error number of a driver's own exception."""
    return exc.args[0] if exc.args else None


def _server_refused(exc: BaseException) -> bool:
    """An error the server sent (the session lives on), not one of the client
    library's own connection errors (2000-2999: lost, gone away, ...)."""
    code = exc.args[0] if exc.args else None
    return isinstance(code, int) and code > 0 and not 2000 <= code < 3000


@functools.cache
def _quiet_cursor() -> type:
    """aiomysql's cursor without its own ``SHOW WARNINGS`` after every statement
    that warns (it turns them into Python warnings): the fast path reads them
    itself, once."""
    from aiomysql import Cursor  # type: ignore[import-untyped]

    class QuietCursor(Cursor):  # type: ignore[misc]
        async def _show_warnings(self, conn: Any) -> None:
            return None

    return QuietCursor


class AiomysqlPath(DriverPath):
    """The aiomysql driver-level paths of an engine-owned one-row insert_ignore
    and get_or_create (MariaDB with RETURNING)."""

    driver = "aiomysql"

    async def insert_ignore(self, engine: Any, prepared: Any) -> dict[int, Row] | None:
        """The plain one-row INSERT ... RETURNING of the guard, run on the pooled
        driver connection, compiled once per shape, without SQLAlchemy's per-call
        execution. Kept (COMMIT) only when the row came back with no warning;
        reported existing (ROLLBACK, which also ends the shared lock the duplicate
        left) only for error 1062 naming the conflict target. Anything else is
        rolled back and None returned: the ordinary path then runs the call again
        and raises the server's own error. Nothing is committed before that
        decision; only a connection lost during the COMMIT itself is raised."""
        if not self.applies(engine) or not engine.dialect.insert_returning:
            return None  # (RETURNING is known once the engine has connected)
        one = self.one_row_insert(engine, prepared)
        if one is None:
            return None
        fast, index, args = one
        sync, table, target = engine.sync_engine, prepared.table, prepared.target
        row = await greenlet_spawn(insert_ignore_row, sync, fast, args, table, target, self.support)
        if row is None:
            return None
        return {index: row} if row else {}

    async def get_or_create(
        self, engine: Any, plan: FetchPlan, attempts: int
    ) -> tuple[Row, bool] | None:
        """get_or_create on the aiomysql connection of an engine-owned call, in one
        transaction: SELECT (then ROLLBACK: a read) or, when there is no row, the
        guarded INSERT IGNORE ... RETURNING (COMMIT) or, when another caller made
        it meanwhile, a locking read of it. None whenever it does not apply."""
        if not self.applies(engine) or not engine.dialect.insert_returning:
            return None
        if has_expressions([plan.params]):
            return None  # a SQL expression would be sent as its text: the usual path
        by_dialect: dict[Any, FetchStatements] = plan.statements.setdefault("aiomysql", {})
        statements = by_dialect.get(engine.dialect)
        if statements is None:
            dialect, table = engine.dialect, plan.table
            values = {c: sa.bindparam(f"oc_{c}", type_=table.c[c].type) for c in plan.values}
            statements = by_dialect[dialect] = (
                DriverStatement(plan.statements["select"], dialect),
                DriverStatement(plan.statements["select_locked"], dialect),
                DriverStatement(
                    plan.statements["insert_returning"].values(values), dialect, table.c
                ),
            )
        if statements[2].needs_context:
            return None
        return await greenlet_spawn(
            get_or_create_row, engine.sync_engine, statements, plan.params, attempts
        )
