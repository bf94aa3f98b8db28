"""The aiomysql driver-level paths of MariaDB: one-row ``insert_ignore`` and
``get_or_create`` of an engine-owned call, run on the pooled driver
connection with statements compiled once per shape, without SQLAlchemy's
per-call execution (``AiomysqlPath``, found by the registry)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only, greenlet_spawn

from onconflict._excluded import has_expressions
from onconflict._target import ConflictTarget
from onconflict.dialects.base import DialectSupport
from onconflict.dialects.driver import (
    ORDINARY,
    DriverPath,
    DriverStatement,
    Ordinary,
    checkout,
    checkout_async,
    connection_lost,
    in_caller_transaction,
    quiet_return,
    statement_error,
)
from onconflict.dialects.mysql.errors import (
    _MYSQL_KEY as MYSQL_KEY,  # (read as the classifier reads it)
)
from onconflict.dialects.mysql.guard import (
    DUPLICATE_KEY,
    TRANSACTION_LOST,
    refuse,
)
from onconflict.dialects.plans import FetchPlan, Row
from onconflict.exceptions import OutcomeMismatchError
from onconflict.result import InsertResult


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


async def insert_ignore_row(
    raw: Any,
    fast: DriverStatement,
    args: list[Any],
    table: sa.Table,
    target: ConflictTarget,
    support: DialectSupport,
) -> Row | None:
    """AiomysqlPath.insert_ignore's work on a checked-out pool connection, as
    plain awaits on the aiomysql connection (no greenlet hop per statement):
    the stored row, {} for a duplicate of the target, None to take the
    ordinary path. The connection is given back to the pool here; a call
    cancelled on the way drops it (its session is in an unknown state: the
    server rolls back whatever it had)."""
    try:
        return await _insert_ignore_row(raw, fast, args, table, target, support)
    except Exception:
        raise
    except BaseException:
        if raw.dbapi_connection is not None:  # (not given back yet)
            with contextlib.suppress(Exception):
                raw.invalidate()
        raise


async def _insert_ignore_row(
    raw: Any,
    fast: DriverStatement,
    args: list[Any],
    table: sa.Table,
    target: ConflictTarget,
    support: DialectSupport,
) -> Row | None:
    driver = raw.driver_connection
    if driver.get_autocommit():  # the guard needs a transaction: the ordinary path
        await _give_back(raw)
        return None
    try:
        cursor = await driver.cursor(_quiet_cursor())
        await cursor.execute(fast.sql, args)
    except Exception as exc:  # not committed: the server drops it with the session
        duplicate = _errno(exc) == DUPLICATE_KEY and _of_target(exc, table, target, support)
        await _roll_back(raw, exc)  # (ends the shared lock a duplicate leaves)
        return {} if duplicate else None
    records: Any = cursor._rows or ()
    if cursor._result.warning_count == 0 and len(records) == 1:
        # outside the try: a lost COMMIT is raised, never run again
        return fast.row(records[0]) if await _commit(raw, fast, args) else None
    await _roll_back(raw)  # stored with a warning: the ordinary path raises it
    return None


async def _roll_back(raw: Any, exc: BaseException | None = None) -> None:
    """End the transaction, keeping nothing, and give the connection back; it
    is dropped instead when that fails or the error was the client library's
    own (the server then rolls back on its own)."""
    if exc is None or _server_refused(exc):
        try:
            await raw.driver_connection.rollback()
        except Exception:
            pass
        else:
            await _give_back(raw)
            return
    await greenlet_spawn(raw.invalidate)


async def _commit(raw: Any, fast: DriverStatement, args: list[Any]) -> bool:
    """COMMIT and give the connection back: True when done, False when the
    server refused it (a Galera certification failure: rolled back). A
    connection lost on the way is raised: the COMMIT may have happened, so the
    call must not run again."""
    try:
        await raw.driver_connection.commit()
    except Exception as exc:
        if not _server_refused(exc):
            raise await greenlet_spawn(connection_lost, raw, fast, args, exc) from exc
        await _give_back(raw)
        return False
    await _give_back(raw)
    return True


async def _give_back(raw: Any) -> None:
    """Return a connection whose transaction has ended to the pool, without
    the pool's reset ROLLBACK. Done here when the pool can take it back
    without any I/O (a queue pool with room, no reset or checkin listeners,
    rollback or nothing on return), else in SQLAlchemy's greenlet bridge."""
    if quiet_return(raw._pool):
        raw._close_special(transaction_reset=True)
    else:
        await greenlet_spawn(raw._close_special, transaction_reset=True)


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


def _lost(
    sync: Connection, fast: DriverStatement, args: list[Any], exc: Exception
) -> BaseException:
    """The error of a statement whose transaction or connection was lost, as
    SQLAlchemy wraps it; the connection invalidated unless the server sent the
    error (the session lives on)."""
    return statement_error(sync, fast.sql, args, exc, lost=not _server_refused(exc))


def _of_target(
    exc: BaseException, table: sa.Table, target: ConflictTarget, support: DialectSupport
) -> bool:
    """A 1062 of the driver's that is a duplicate of the target: decided here
    when its message names one of the target key's names (what the general
    classifier concludes then too, read the same way), else by the general
    classifier (``duplicate_of_target``)."""
    key = target.key
    message = exc.args[1] if len(exc.args) > 1 else None
    if key is not None and isinstance(message, str):
        named = MYSQL_KEY.search(message)
        if named is not None and named.group("name").lower() in support.key_names(table, key):
            return True
    return support.duplicate_of_target(exc, table, target)


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

    async def insert_one(
        self, conn: Any, table: Any, rows: Any, on: Any, strategy: str, returning: Any
    ) -> InsertResult | Ordinary | None:
        """A one-row call, planned once per shape (``one_row_plan``), run on
        the engine's pool (``on_engine``) or in the caller's transaction
        (``row_in_transaction``); None where either declines."""
        engine = isinstance(conn, AsyncEngine)
        if engine and not self.applies(conn):
            return None
        dialect = conn.dialect
        if not dialect.insert_returning:  # (known once the engine has connected)
            return None
        planned = self.one_row_plan(dialect, table, rows, on, strategy, returning)
        if planned is None:
            return None
        plan, row = planned
        fast = plan.statement
        args = fast.arguments(row)
        if engine:
            stored = await self.on_engine(conn, fast, args, plan.table, plan.target)
        else:
            stored = await self.row_in_transaction(conn, fast, args, plan.table, plan.target)
        if stored is None:  # refused, or no connection: the ordinary path alone runs it
            return ORDINARY
        return plan.result(row, stored or None)

    async def insert_ignore(self, engine: Any, prepared: Any) -> dict[int, Row] | None:
        """An engine-owned one-row call already planned: see ``on_engine``."""
        if not self.applies(engine) or not engine.dialect.insert_returning:
            return None  # (RETURNING is known once the engine has connected)
        return await self._planned_row(engine, prepared, self.on_engine, engine)

    async def on_engine(
        self,
        engine: Any,
        fast: DriverStatement,
        args: list[Any],
        table: sa.Table,
        target: ConflictTarget,
    ) -> Row | None:
        """The plain one-row INSERT ... RETURNING of the guard, run on the pooled
        driver connection, compiled once per shape, without SQLAlchemy's per-call
        execution: the stored row, {} for a duplicate, None for the ordinary path.
        Kept (COMMIT) only when the row came back with no warning; reported
        existing (ROLLBACK, which also ends the shared lock the duplicate left)
        only for error 1062 naming the conflict target. Anything else is rolled
        back and None returned: the ordinary path then runs the call again and
        raises the server's own error. Nothing is committed before that
        decision; only a connection lost during the COMMIT itself is raised."""
        raw = await checkout_async(engine)
        if raw is None:
            return None
        return await insert_ignore_row(raw, fast, args, table, target, self.support)

    async def insert_ignore_in(self, conn: Any, prepared: Any) -> dict[int, Row] | None:
        """A one-row call in the caller's transaction already planned: see
        ``row_in_transaction``."""
        sync = conn.sync_connection
        if sync is None or not sync.dialect.insert_returning:
            return None
        return await self._planned_row(sync, prepared, self.row_in_transaction, conn)

    async def _planned_row(
        self, bind: Any, prepared: Any, run: Callable[..., Awaitable[Row | None]], handle: Any
    ) -> dict[int, Row] | None:
        """A planned one-row call by ``run`` (``on_engine`` or ``row_in_transaction``)
        on ``handle``: the stored row by input position, {} for a duplicate, None
        for the ordinary path."""
        one = self.one_row_insert(bind, prepared)
        if one is None:
            return None
        fast, index, args = one
        row = await run(handle, fast, args, prepared.table, prepared.target)
        if row is None:
            return None
        return {index: row} if row else {}

    async def row_in_transaction(
        self,
        conn: Any,
        fast: DriverStatement,
        args: list[Any],
        table: sa.Table,
        target: ConflictTarget,
    ) -> Row | None:
        """The one-row plain INSERT ... RETURNING inside the caller's transaction
        (an AsyncConnection), sent on its aiomysql connection as plain awaits:
        the same statement and decisions as ``Guard.write_row``'s driver cursor
        path, without SQLAlchemy's run_sync and per-call setup. A duplicate of
        the target is ``{}``; a row stored with a warning is deleted and raised
        (``UnsafeInsertError``); any other refusal by the server (a duplicate of
        another key, NOT NULL, ...) left nothing and the transaction as it was,
        so None is returned and the ordinary path runs the row again and raises
        the server's error as SQLAlchemy does. Lost transactions and
        connections are raised here as SQLAlchemy raises them."""
        sync = conn.sync_connection
        if sync is None or not in_caller_transaction(sync, self.driver):
            return None
        if not table.primary_key:  # (a warned row is undone by its primary key)
            return None
        driver = sync.connection.driver_connection
        if driver.get_autocommit():
            return None  # (the ordinary path refuses it: nothing to undo a warned row)
        try:
            cursor = await driver.cursor(_quiet_cursor())
            await cursor.execute(fast.sql, args)
        except Exception as exc:
            code = _errno(exc)
            if code == DUPLICATE_KEY and _of_target(exc, table, target, self.support):
                return {}
            if _server_refused(exc) and code not in TRANSACTION_LOST:
                return None  # nothing stored, the transaction goes on: the ordinary path
            raise await conn.run_sync(_lost, fast, args, exc) from exc
        records: Any = cursor._rows or ()
        if len(records) != 1:  # (never: a plain INSERT of one row inserts it or raises)
            raise OutcomeMismatchError(f"INSERT into {table.name!r} returned {len(records)} rows")
        stored = fast.row(records[0])
        count = cursor._result.warning_count
        if count:
            await conn.run_sync(refuse, table, stored, count)
        return stored

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
