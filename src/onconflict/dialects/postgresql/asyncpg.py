"""The asyncpg driver-level paths: a one-row insert_ignore and get_or_create
run on the pooled asyncpg connection in autocommit, the statement compiled
once per shape (asyncpg keeps it prepared), no BEGIN/COMMIT round trips; and a
one-row insert_ignore inside the caller's transaction, sent on its asyncpg
connection as SQLAlchemy's own execution sends it (``in_transaction``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only, greenlet_spawn
from sqlalchemy.util.concurrency import is_exit_exception

from onconflict._excluded import has_expressions
from onconflict.dialects.driver import (
    DriverPath,
    DriverStatement,
    Ordinary,
    checkout,
    connection_lost,
    in_caller_transaction,
)
from onconflict.dialects.plans import FetchPlan, Row
from onconflict.dialects.postgresql.build import CREATED
from onconflict.dialects.postgresql.copy import as_sqlalchemy_errors
from onconflict.result import InsertResult


class AsyncpgPath(DriverPath):
    driver = "asyncpg"

    async def insert_ignore(self, engine: Any, prepared: Any) -> dict[int, Row] | None:
        """A one-row insert_ignore that owns its work, on asyncpg: the statement
        compiled once per shape, run in autocommit on the pooled connection (no
        BEGIN/COMMIT round trips). None whenever it does not apply or anything
        goes wrong: the usual path then runs and reports errors as SQLAlchemy does.
        """
        one = self.one_row_insert(engine, prepared) if self.applies(engine) else None
        if one is None:
            return None
        fast, index, args = one
        got = await greenlet_spawn(_fetch_fast, engine.sync_engine, fast, args, 1, False)
        if got is None:
            return None
        row, _ = got
        return {index: row} if row else {}

    async def insert_one(
        self, conn: Any, table: Any, rows: Any, on: Any, strategy: str, returning: Any
    ) -> InsertResult | Ordinary | None:
        """A one-row call inside the caller's transaction (an AsyncConnection,
        an AsyncSession's), planned once per shape (``one_row_plan``), run by
        :meth:`in_transaction`. None where that declines (nothing was sent)
        and for an engine (its path is :meth:`insert_ignore`)."""
        if isinstance(conn, AsyncEngine):
            return None
        sync = _in_transaction(conn)
        if sync is None:
            return None
        return await self.one_row_in(sync, table, rows, on, strategy, returning)

    async def insert_ignore_in(self, conn: Any, prepared: Any) -> dict[int, Row] | None:
        """A one-row call in the caller's transaction already planned (one that
        :meth:`insert_one` did not plan: ``on`` given as a constraint, say):
        see :meth:`in_transaction`."""
        sync = _in_transaction(conn)
        return None if sync is None else await self.planned_in(sync, prepared)

    async def in_transaction(
        self, sync: Connection, fast: DriverStatement, args: list[Any]
    ) -> Row | None:
        """The one-row INSERT ... ON CONFLICT DO NOTHING RETURNING inside the
        caller's transaction, sent on its asyncpg connection as SQLAlchemy's
        asyncpg adapter sends a statement (``_prepare_and_execute``): under the
        adapter's mutex, its transaction begun first when it has not been yet
        (the adapter begins lazily, with the connection's isolation level,
        read-only and deferrable settings), its type cache reloaded when the
        dialect says so; without SQLAlchemy's greenlet bridge and per-call
        execution. The stored row, {} for a duplicate.

        None (the ordinary path runs) only before anything is sent: the
        adapter is not the one read here, the connection is in autocommit or
        closed. Once sent, an error aborted the caller's transaction on
        PostgreSQL: it is raised, never run again, as SQLAlchemy raises it (a
        ``DBAPIError`` of the adapter's error, the connection invalidated on a
        disconnect; a cancellation or timeout invalidates the connection and
        is raised as it is)."""
        adapter: Any = sync.connection.dbapi_connection
        try:
            mutex = adapter._execute_mutex
            driver: Any = adapter._connection
            level = adapter.isolation_level
            adapter._transaction  # noqa: B018  (read under the mutex below)
            start, recheck = adapter._start_transaction, adapter._check_type_cache_invalidation
            stamp = sync.dialect._invalidate_schema_cache_asof  # type: ignore[attr-defined]
        except AttributeError:
            return None
        if level == "autocommit" or driver.is_closed():
            return None
        try:
            async with mutex:
                if adapter._transaction is None:
                    await start()
                await recheck(stamp)
                record = await driver.fetchrow(fast.sql, *args)
        except BaseException as exc:
            if is_exit_exception(exc):  # as SQLAlchemy's execution: the connection is dropped
                if not sync.invalidated:
                    sync.invalidate(exc)
                raise
            await greenlet_spawn(_raise_as_sqlalchemy, sync, fast.sql, exc)
            raise
        return {} if record is None else fast.row(record)

    async def get_or_create(
        self, engine: Any, plan: FetchPlan, attempts: int
    ) -> tuple[Row, bool] | None:
        """The same statement, run on the asyncpg connection itself.

        For a call that owns its work (an engine) on asyncpg: a pooled connection,
        the statement compiled once per shape (asyncpg keeps it prepared), no
        transaction. Returns None whenever it cannot answer (another driver, an
        error, a row that cannot be read): the caller then runs the ordinary path,
        which reports any error exactly as SQLAlchemy does. The statement is a
        single autocommitted one, so a failed attempt has written nothing.
        """
        if (
            not self.applies(engine)
            or "one" not in plan.statements
            or has_expressions([plan.params])
        ):
            return None
        # compiled per dialect: two engines may process the same types differently
        # (json_serializer, say), and the plan's statements are shared by both
        by_dialect: dict[Any, DriverStatement] = plan.statements.setdefault("asyncpg", {})
        fast = by_dialect.get(engine.dialect)
        if fast is None:
            fast = by_dialect[engine.dialect] = DriverStatement(
                plan.statements["one"], engine.dialect
            )
        if fast.needs_context:
            return None
        args = fast.arguments(plan.params)
        # one trip into SQLAlchemy's greenlet bridge for checkout, query and return
        return await greenlet_spawn(_fetch_fast, engine.sync_engine, fast, args, attempts)


def _in_transaction(conn: Any) -> Connection | None:
    """The sync Connection of an AsyncConnection whose transaction a statement
    may join on the asyncpg connection itself (``in_caller_transaction``)."""
    sync: Connection | None = getattr(conn, "sync_connection", None)
    if sync is None or not in_caller_transaction(sync, AsyncpgPath.driver):
        return None
    return sync


def _raise_as_sqlalchemy(sync: Connection, statement: str, exc: BaseException) -> None:
    """Raise a statement's error as SQLAlchemy's execution raises it (inside its
    greenlet bridge, so that a lost connection is closed as SQLAlchemy closes it)."""
    with as_sqlalchemy_errors(sync, statement):
        raise exc


def _fetch_fast(
    engine: Engine, fast: DriverStatement, args: list[Any], attempts: int, flagged: bool = True
) -> tuple[Row, bool] | None:
    """Run a compiled statement on the pooled driver connection (inside SQLAlchemy's
    greenlet bridge). flagged: the last column is get_or_create's "created" flag
    and no row means "try again"; otherwise no row is an answer: ({}, False).

    None (the ordinary path then runs) only when nothing can have been stored:
    the server refused the statement, or the connection was closed before it
    was sent. A connection lost after sending is raised: the autocommitted
    statement may have committed, and running it again would report the row as
    existing instead of inserted.
    """
    from asyncpg import exceptions as pg_errors  # type: ignore[import-untyped]

    raw = checkout(engine)
    if raw is None:
        return None
    try:
        driver: Any = raw.driver_connection
        if driver.is_closed():  # dropped while idle in the pool: nothing sent
            raw.invalidate()
            return None
        for _ in range(attempts):
            try:
                record = await_only(driver.fetchrow(fast.sql, *args))
            except pg_errors.PostgresConnectionError as exc:
                raise connection_lost(raw, fast, args, exc) from exc
            except (pg_errors.PostgresError, pg_errors.InterfaceError):
                # refused by the server, or by the driver before sending (an
                # argument it cannot encode): nothing stored
                return None
            except Exception as exc:  # the connection failed mid-statement
                raise connection_lost(raw, fast, args, exc) from exc
            if record is None and not flagged:
                return {}, False
            if record is not None:
                row = fast.row(record)
                return (row, bool(row.pop(CREATED))) if flagged else (row, True)
    finally:
        raw.close()
    return None
