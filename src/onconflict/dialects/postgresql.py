"""PostgreSQL (and PostgreSQL-wire engines): ``INSERT ... ON CONFLICT DO NOTHING``.

The statement skips rows that conflict on the arbiter index and nothing else:
NOT NULL (23502), CHECK (23514), foreign key (23503) and too-long values
(22001) raise as for a plain INSERT.
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.dml import Insert
from sqlalchemy.util import await_only, greenlet_spawn

from onconflict._gc import paused
from onconflict._target import ConflictTarget
from onconflict.dialects.base import (
    INSERTED,
    DialectSupport,
    DriverStatement,
    FetchPlan,
    Outcome,
    Row,
    UpsertPlan,
    checkout,
    connection_lost,
    do_nothing,
    do_update,
    lookup_condition,
    needs_context,
    plain_engine,
    python_defaults,
    upsert_reading_keys_first,
)
from onconflict.errors import error_code
from onconflict.exceptions import SeedLockTimeout

CREATED = "onconflict_created_"
COPY_THRESHOLD = 20_000  # rows in one call's group; measured: benchmarks/bulk.py


def _copyable(cols: list[sa.Column[Any]], rows: list[Row], dialect: Dialect) -> list[Any] | None:
    """The rows as COPY records, if every value is None or of its column's plain
    Python type and no column needs bind processing; else None."""
    kinds = []
    for col in cols:
        if col.type.bind_processor(dialect) is not None:
            return None
        try:
            pytype = col.type.python_type
        except NotImplementedError:
            return None
        if pytype not in (int, str, float, bool, bytes):
            return None
        kinds.append(pytype)
    # every row of a group has the same columns: one C-level getter for all
    get = operator.itemgetter(*(c.key for c in cols))
    records = list(map(get, rows))
    columns = [records] if len(cols) == 1 else list(zip(*records, strict=True))
    for values, pytype in zip(columns, kinds, strict=True):
        if not set(map(type, values)) <= {pytype, type(None)}:
            return None
    return [(r,) for r in records] if len(cols) == 1 else records


class PostgreSQL(DialectSupport):
    name = "postgresql"
    native = True
    fetch_in_one_statement = True

    def atomic(self, conn: Connection) -> AbstractContextManager[Any]:
        return nullcontext()  # any error aborts the whole transaction: nothing to undo

    def insert_ignore(self, table: sa.Table, target: ConflictTarget, returning: bool) -> Insert:
        return do_nothing(pg.insert(table), table, target, returning)

    def prepare_upsert(self, plan: UpsertPlan, dialect: Dialect) -> None:
        # xmax is 0 on a row version this statement inserted, and set (to the
        # locking transaction) on one it updated: the per-row outcome, exactly.
        was_inserted = (sa.literal_column("xmax") == sa.literal_column("0")).label(INSERTED)
        plan.statement = do_update(pg.insert(plan.table), plan).returning(
            *plan.table.c, was_inserted
        )

    def bulk_rows(self, dialect: Dialect) -> int | None:
        return COPY_THRESHOLD if dialect.driver == "asyncpg" else None

    def write_bulk(
        self,
        conn: Connection,
        table: sa.Table,
        target: ConflictTarget,
        columns: tuple[str, ...],
        rows: list[Row],
        in_key_order: bool = False,
    ) -> list[Row] | None:
        """COPY into a temporary table, then one INSERT ... SELECT ... [ORDER BY key]
        ON CONFLICT DO NOTHING RETURNING: for large calls on asyncpg. Rows not
        already in key order (the lock order) are sorted by the server, not Python.

        Used only when every value already has its column's Python type and no
        column needs SQLAlchemy's own value processing, so that COPY cannot fail
        half way on a conversion; otherwise (or below the threshold) None.
        """
        if conn.dialect.driver != "asyncpg" or len(rows) < COPY_THRESHOLD:
            return None
        if python_defaults(table, columns):  # computed per row by SQLAlchemy's path
            return None
        cols = [table.c[c] for c in columns]
        with paused(len(rows)):
            records = _copyable(cols, rows, conn.dialect)
        if records is None:
            return None
        scratch = sa.Table(
            f"oc_copy_{uuid.uuid4().hex[:16]}",
            sa.MetaData(),
            *(sa.Column(c.name, c.type) for c in cols),
            prefixes=["TEMPORARY"],
            postgresql_on_commit="DROP",
        )
        scratch.create(conn)  # through SQLAlchemy: the transaction is begun
        driver: Any = conn.connection.driver_connection
        await_only(
            driver.copy_records_to_table(
                scratch.name, records=records, columns=[c.name for c in cols]
            )
        )
        source = sa.select(*(scratch.c[c.name] for c in cols))
        if not in_key_order and target.columns and set(target.columns) <= set(columns):
            source = source.order_by(*(scratch.c[table.c[k].name] for k in target.columns))
        stmt = do_nothing(
            pg.insert(table).from_select([c.name for c in cols], source), table, target, True
        )
        # the returned rows come straight from asyncpg, with SQLAlchemy's result
        # processing where a type has one: for a million rows that is seconds saved
        fast = DriverStatement(stmt, conn.dialect, table.c)
        fetched = await_only(driver.fetch(fast.sql))
        with paused(len(fetched)):
            returned = fast.rows(fetched)
        scratch.drop(conn)
        return returned

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

    def prepare_fetch(self, plan: FetchPlan) -> None:
        """get_or_create as ONE statement:

        WITH found AS (SELECT * FROM t WHERE lookup),
             made AS (INSERT INTO t (...) SELECT $values WHERE NOT EXISTS (SELECT FROM found)
                      ON CONFLICT (key) DO NOTHING RETURNING *)
        SELECT *, false FROM found UNION ALL SELECT *, true FROM made

        A row that exists is read without an INSERT (no sequence value burnt). When
        another transaction commits the row after this statement's snapshot, the
        INSERT meets the conflict and neither part returns a row: no row means
        "try again" (under READ COMMITTED the next statement sees it).

        A table with a column default that takes SQLAlchemy's execution context
        (and is not given) gets the generic statements instead: SELECT, then a
        plain INSERT ... ON CONFLICT DO NOTHING, whose context the default can use.
        """
        t = plan.table
        if needs_context(t, plan.values):
            super().prepare_fetch(plan)
            return
        found = sa.select(t).where(lookup_condition(plan)).cte("oc_found")
        values = [sa.bindparam(f"oc_{k}", type_=t.c[k].type) for k in plan.values]
        source = sa.select(*values).where(~sa.exists().select_from(found))
        key = plan.target.key
        assert key is not None
        made = (
            pg.insert(t)
            .from_select(list(plan.values), source)
            .on_conflict_do_nothing(index_elements=list(key.elements), index_where=key.where)
            .returning(*t.c)
            .cte("oc_made")
        )
        plan.statements["one"] = sa.union_all(
            sa.select(*found.c, sa.false().label(CREATED)),
            sa.select(*made.c, sa.true().label(CREATED)),
        )

    def get_or_create_once(self, conn: Connection, plan: FetchPlan) -> tuple[Row, bool] | None:
        if "one" not in plan.statements:  # a default needing SQLAlchemy's context
            return super().get_or_create_once(conn, plan)
        got = conn.execute(plan.statements["one"], plan.bound(plan.values)).mappings().first()
        if got is None:
            return None
        row = dict(got)
        return row, bool(row.pop(CREATED))

    async def insert_ignore_fast(self, engine: AsyncEngine, prepared: Any) -> dict[int, Row] | None:
        """A one-row insert_ignore that owns its work, on asyncpg: the statement
        compiled once per shape, run in autocommit on the pooled connection (no
        BEGIN/COMMIT round trips). None whenever it does not apply or anything
        goes wrong: the usual path then runs and reports errors as SQLAlchemy does.
        """
        one = self.one_row_insert(engine, prepared) if plain_engine(engine, "asyncpg") else None
        if one is None:
            return None
        fast, index, args = one
        got = await greenlet_spawn(_fetch_fast, engine.sync_engine, fast, args, 1, False)
        if got is None:
            return None
        row, _ = got
        return {index: row} if row else {}

    async def get_or_create_fast(
        self, engine: AsyncEngine, plan: FetchPlan, attempts: int
    ) -> tuple[Row, bool] | None:
        """The same statement, run on the asyncpg connection itself.

        For a call that owns its work (an engine) on asyncpg: a pooled connection,
        the statement compiled once per shape (asyncpg keeps it prepared), no
        transaction. Returns None whenever it cannot answer (another driver, an
        error, a row that cannot be read): the caller then runs the ordinary path,
        which reports any error exactly as SQLAlchemy does. The statement is a
        single autocommitted one, so a failed attempt has written nothing.
        """
        if not plain_engine(engine, "asyncpg") or "one" not in plan.statements:
            return None
        fast: DriverStatement | None = plan.statements.get("asyncpg")
        if fast is None:
            fast = DriverStatement(plan.statements["one"], engine.dialect)
            plan.statements["asyncpg"] = fast
        if fast.needs_context:
            return None
        args = fast.arguments(plan.params)
        # one trip into SQLAlchemy's greenlet bridge for checkout, query and return
        return await greenlet_spawn(_fetch_fast, engine.sync_engine, fast, args, attempts)


class DistributedPostgreSQL(PostgreSQL):
    """CockroachDB and YugabyteDB: the PostgreSQL wire protocol and ``ON CONFLICT``,
    but no ``xmax`` system column, no dependable advisory locks and no ordinary
    temporary tables. Not run here (no server on this machine): the statements
    are compile-tested on PostgreSQL dialects named ``cockroachdb`` and
    ``yugabytedb``, as sqlalchemy-cockroachdb's and sqlalchemy-yugabytedb's are.

    - upsert reads the existing keys ``FOR UPDATE`` first, then runs
      ``ON CONFLICT DO UPDATE``: exact under SERIALIZABLE (CockroachDB's default)
      and under snapshot isolation, where a concurrent insert of the same key
      aborts one side with 40001 instead of slipping between read and write;
    - seed takes no lock: concurrent seeds conflict, one gets 40001 and is re-run
      (the call owns its transaction), and then finds the rows there;
    - no COPY path and no driver-level fast paths: SQLAlchemy's ordinary path.
    """

    name = "cockroachdb"

    def prepare_upsert(self, plan: UpsertPlan, dialect: Dialect) -> None:
        plan.statement = do_update(pg.insert(plan.table), plan).returning(*plan.table.c)

    def write_upsert(self, conn: Connection, plan: UpsertPlan, rows: list[Row]) -> list[Outcome]:
        return upsert_reading_keys_first(conn, plan, rows, for_update=True)

    # the generic (base) behaviour: no COPY path, no lock, no driver-level paths
    bulk_rows = DialectSupport.bulk_rows
    write_bulk = DialectSupport.write_bulk
    seed_lock = DialectSupport.seed_lock  # type: ignore[assignment]
    insert_ignore_fast = DialectSupport.insert_ignore_fast
    get_or_create_fast = DialectSupport.get_or_create_fast


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
