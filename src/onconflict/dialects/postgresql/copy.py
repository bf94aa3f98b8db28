"""The COPY bulk path of a large insert_ignore on asyncpg: COPY into a
temporary table, then one INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING
(without RETURNING for a counts-only call: the server's command tag counts)."""

from __future__ import annotations

import operator
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.dml import Insert
from sqlalchemy.util import await_only

from onconflict._gc import paused
from onconflict._keys import RecordRows, expression_key
from onconflict._target import ConflictTarget
from onconflict.dialects.common import do_nothing, python_defaults
from onconflict.dialects.driver import DriverStatement, plain_connection
from onconflict.dialects.plans import Row

COPY_THRESHOLD = 20_000  # rows in one call's group; measured: benchmarks/bulk.py


def _copyable(
    cols: list[sa.Column[Any]],
    rows: list[Row],
    dialect: Dialect,
    known: Mapping[str, set[type]] | None = None,
) -> Iterable[tuple[Any, ...]] | None:
    """The rows as COPY records, if every value is None or of its column's plain
    Python type and no column needs bind processing; else None.

    The records are made as COPY reads them (an iterator, C-level): no list of
    a million tuples, which costs a cyclic collection over every live object
    once the collector runs again (0.2 s at 10^6 rows, measured)."""
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
    # the value types of every column, where the call learnt them (every
    # row of one shape, see _target.Types); else learnt here
    keys = [c.key for c in cols]
    if known is not None and set(keys) == known.keys():
        types = [known[k] for k in keys]
    else:
        types = [set(map(type, map(operator.itemgetter(k), rows))) for k in keys]
    if not all(t <= {pytype, type(None)} for t, pytype in zip(types, kinds, strict=True)):
        return None
    # every row of a group has the same columns: one getter for all
    if len(keys) == 1:
        return zip(map(operator.itemgetter(keys[0]), rows))
    return map(operator.itemgetter(*keys), rows)


def bulk_rows(dialect: Dialect) -> int | None:
    """The group size from which the COPY path takes a group: asyncpg only."""
    return COPY_THRESHOLD if dialect.driver == "asyncpg" else None


def _records(
    conn: Connection,
    table: sa.Table,
    target: ConflictTarget,
    columns: tuple[str, ...],
    rows: list[Row],
    types: Mapping[str, set[type]] | None,
) -> Iterable[tuple[Any, ...]] | None:
    """The rows as COPY records, or None where the path does not apply."""
    if conn.dialect.driver != "asyncpg" or len(rows) < COPY_THRESHOLD:
        return None
    if not plain_connection(conn):  # (its statements would bypass them)
        return None
    if expression_key(target) is not None:  # rows are paired by evaluated keys
        return None
    if python_defaults(table, columns):  # computed per row by SQLAlchemy's path
        return None
    return _copyable([table.c[c] for c in columns], rows, conn.dialect, types)


def write_bulk(
    conn: Connection,
    table: sa.Table,
    target: ConflictTarget,
    columns: tuple[str, ...],
    rows: list[Row],
    in_key_order: bool = False,
    types: Mapping[str, set[type]] | None = None,
) -> Sequence[Row] | None:
    """COPY into a temporary table, then one INSERT ... SELECT ... [ORDER BY key]
    ON CONFLICT DO NOTHING RETURNING: for large calls on asyncpg. Rows not
    already in key order (the lock order) are sorted by the server, not Python.

    Used only when every value already has its column's Python type and no
    column needs SQLAlchemy's own value processing, so that COPY cannot fail
    half way on a conversion; otherwise (or below the threshold) None.
    """
    copied = _copy_in(conn, table, target, columns, rows, in_key_order, types, returning=True)
    if copied is None:
        return None
    driver, stmt, scratch = copied
    # the returned rows come straight from asyncpg, with SQLAlchemy's result
    # processing where a type has one: for a million rows that is seconds saved
    fast = DriverStatement(stmt, conn.dialect, table.c)
    with as_sqlalchemy_errors(conn, fast.sql):
        fetched = await_only(driver.fetch(fast.sql))
    scratch.drop(conn)
    if fast.plain:  # no result processing: the records are the rows, made dicts when read
        return RecordRows(fetched, fast.names)
    with paused(len(fetched)):
        return fast.rows(fetched)


def count_bulk(
    conn: Connection,
    table: sa.Table,
    target: ConflictTarget,
    columns: tuple[str, ...],
    rows: list[Row],
    in_key_order: bool = False,
    types: Mapping[str, set[type]] | None = None,
) -> int | None:
    """``write_bulk`` for a counts-only call: the INSERT ... SELECT has no
    RETURNING, and the count is the server's command tag (``INSERT 0 n``)."""
    copied = _copy_in(conn, table, target, columns, rows, in_key_order, types, returning=False)
    if copied is None:
        return None
    driver, stmt, scratch = copied
    sql = DriverStatement(stmt, conn.dialect, ()).sql
    with as_sqlalchemy_errors(conn, sql):
        tag = await_only(driver.execute(sql))
    scratch.drop(conn)
    return int(tag.rsplit(" ", 1)[-1])


def _copy_in(
    conn: Connection,
    table: sa.Table,
    target: ConflictTarget,
    columns: tuple[str, ...],
    rows: list[Row],
    in_key_order: bool,
    types: Mapping[str, set[type]] | None,
    returning: bool,
) -> tuple[Any, Insert, sa.Table] | None:
    """COPY the rows into a temporary table: the asyncpg connection, the
    INSERT ... SELECT ... ON CONFLICT DO NOTHING from it, and the temporary
    table (dropped by the caller); None where the path does not apply."""
    records = _records(conn, table, target, columns, rows, types)
    if records is None:
        return None
    cols = [table.c[c] for c in columns]
    scratch = sa.Table(
        f"oc_copy_{uuid.uuid4().hex[:16]}",
        sa.MetaData(),
        *(sa.Column(c.name, c.type) for c in cols),
        prefixes=["TEMPORARY"],
        postgresql_on_commit="DROP",
    )
    scratch.create(conn)  # through SQLAlchemy: the transaction is begun
    driver: Any = conn.connection.driver_connection
    names = [c.name for c in cols]
    with as_sqlalchemy_errors(conn, f"COPY {scratch.name}"):
        await_only(driver.copy_records_to_table(scratch.name, records=records, columns=names))
    source = sa.select(*(scratch.c[c.name] for c in cols))
    if not in_key_order and target.columns and set(target.columns) <= set(columns):
        # in key order (the lock order); among equal keys in COPY order (the
        # temporary table's physical order): the first row of a repeated key
        # is the one a counts-only call stores, as when repeats are resolved first
        keys = [scratch.c[table.c[k].name] for k in target.columns]
        source = source.order_by(*keys, sa.column("ctid"))
    stmt = do_nothing(
        pg.insert(table).from_select([c.name for c in cols], source), table, target, returning
    )
    return driver, stmt, scratch


@contextmanager
def as_sqlalchemy_errors(conn: Connection, statement: str) -> Iterator[None]:
    """Errors of work done on the asyncpg connection itself, raised as
    SQLAlchemy raises a statement's: a ``DBAPIError`` subclass (``DataError``,
    ``IntegrityError``, ...) whose ``orig`` is the driver adapter's error, with
    asyncpg's exception chained to it (its ``__cause__``); a lost connection
    is invalidated (the pool does not hand it out again), as SQLAlchemy does."""
    try:
        yield
    except Exception as exc:
        dbapi: Any = conn.dialect.loaded_dbapi
        adapter: Any = conn.connection.dbapi_connection
        try:
            adapter._handle_exception(exc)  # raises it as the adapter's DBAPI error
        except dbapi.Error as adapted:
            lost = bool(conn.dialect.is_disconnect(adapted, adapter, None))
            wrapped = sa.exc.DBAPIError.instance(
                statement, None, adapted, dbapi.Error, connection_invalidated=lost
            )
            if lost:
                conn.invalidate(adapted)
            raise wrapped from adapted
        raise
