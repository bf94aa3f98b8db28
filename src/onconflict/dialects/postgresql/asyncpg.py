"""The asyncpg driver-level paths: a one-row insert_ignore and get_or_create
run on the pooled asyncpg connection in autocommit, the statement compiled
once per shape (asyncpg keeps it prepared), no BEGIN/COMMIT round trips."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.util import await_only, greenlet_spawn

from onconflict._excluded import has_expressions
from onconflict.dialects.driver import DriverPath, DriverStatement, checkout, connection_lost
from onconflict.dialects.plans import FetchPlan, Row
from onconflict.dialects.postgresql.build import CREATED


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
