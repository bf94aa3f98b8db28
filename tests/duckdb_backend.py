"""A blocking asyncio adapter for DuckDB, for the tests only.

DuckDB has no asyncio driver, so ``create_async_engine`` refuses ``duckdb://``
URLs. The generic tests drive onconflict's async front, which does its work
through SQLAlchemy's greenlet bridge (``run_sync``) on the same core as the sync
front; this dialect lets them do so on DuckDB. It is duckdb-engine's dialect
marked async, whose statements, BEGIN, COMMIT and ROLLBACK each pass through
``await_only`` once (as an async driver's would) but run inline: the event loop
is blocked while DuckDB works. Not for applications: there, use
``onconflict.sync`` (in a worker thread from async code), see docs/dialects.md.

``duckdb+oc_blocking:///path.db`` selects it once this module is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from duckdb_engine import ConnectionWrapper, CursorWrapper, Dialect
from sqlalchemy import pool
from sqlalchemy.dialects import registry
from sqlalchemy.engine import URL
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import CreateColumn
from sqlalchemy.util import await_only


async def _inline(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


class _Cursor(CursorWrapper):
    async def _async_soft_close(self) -> None:
        """What SQLAlchemy's async results call on an async driver's cursor: the
        rows stay where they are (duckdb-engine's cursor is the connection)."""


class _Connection(ConnectionWrapper):
    def cursor(self) -> _Cursor:
        cursor = super().cursor()
        cursor.__class__ = _Cursor
        return cursor  # type: ignore[return-value]


class BlockingAsyncDuckDB(Dialect):
    is_async = True
    driver = "oc_blocking"
    supports_statement_cache = False  # as duckdb-engine's own dialect (silences SAWarning)

    def connect(self, *cargs: Any, **cparams: Any) -> Any:
        conn = super().connect(*cargs, **cparams)
        conn.__class__ = _Connection
        return conn

    @classmethod
    def get_pool_class(cls, url: URL) -> Any:
        return pool.StaticPool if url.database == ":memory:" else pool.AsyncAdaptedQueuePool

    def do_execute(self, cursor: Any, statement: Any, parameters: Any, context: Any = None) -> None:
        await_only(_inline(super().do_execute, cursor, statement, parameters, context))

    def do_execute_no_params(self, cursor: Any, statement: Any, context: Any = None) -> None:
        await_only(_inline(super().do_execute_no_params, cursor, statement, context))

    def do_executemany(
        self, cursor: Any, statement: Any, parameters: Any, context: Any = None
    ) -> None:
        await_only(_inline(super().do_executemany, cursor, statement, parameters, context))

    def do_begin(self, dbapi_connection: Any) -> None:
        await_only(_inline(super().do_begin, dbapi_connection))

    def do_commit(self, dbapi_connection: Any) -> None:
        await_only(_inline(super().do_commit, dbapi_connection))

    def do_rollback(self, dbapi_connection: Any) -> None:
        await_only(_inline(super().do_rollback, dbapi_connection))


registry.register("duckdb.oc_blocking", __name__, "BlockingAsyncDuckDB")


# -- the tests' tables on DuckDB -------------------------------------------------
# DuckDB has no SERIAL, which SQLAlchemy's PostgreSQL DDL (duckdb-engine's) gives
# an autoincrement integer primary key. The tests' tables declare such keys for
# PostgreSQL, SQLite and MariaDB; on DuckDB they get what SERIAL is on
# PostgreSQL: a sequence of their own and a server default taking its next value.
_SERIALS = {"SMALLSERIAL": "SMALLINT", "SERIAL": "INTEGER", "BIGSERIAL": "BIGINT"}


def _sequence(column: sa.Column[Any]) -> sa.Sequence:
    # named as SERIAL's: SQLAlchemy's PostgreSQL dialect calls nextval() on that
    # name itself where it cannot use RETURNING
    return sa.Sequence(f"{column.table.name}_{column.name}_seq", metadata=None)


def _serial(column: sa.Column[Any], dialect: Any) -> bool:
    spec = dialect.ddl_compiler(dialect, None).get_column_specification(column)
    return any(f" {word}" in spec for word in _SERIALS)


@compiles(CreateColumn, "duckdb")
def _serial_as_sequence(element: CreateColumn[Any], compiler: Any, **kw: Any) -> str:
    column = element.element
    spec: str = compiler.visit_create_column(element, **kw)
    if column is None or not _serial(column, compiler.dialect):
        return spec
    name = compiler.preparer.format_sequence(_sequence(column))  # quoted where needed
    default = compiler.sql_compiler.process(
        sa.func.nextval(sa.literal(name, sa.String)), literal_binds=True
    )
    for serial, integer in _SERIALS.items():
        if f" {serial}" in spec:
            return spec.replace(f" {serial}", f" {integer} DEFAULT {default}", 1)
    return spec


def _sequences(table: sa.Table, bind: Any) -> list[sa.Sequence]:
    if bind.dialect.name != "duckdb":
        return []
    return [_sequence(c) for c in table.c if _serial(c, bind.dialect)]


@sa.event.listens_for(sa.Table, "before_create")
def _create_sequences(table: sa.Table, bind: Any, **kw: Any) -> None:
    for sequence in _sequences(table, bind):
        bind.execute(sa.schema.CreateSequence(sequence, if_not_exists=True))


@sa.event.listens_for(sa.Table, "after_drop")
def _drop_sequences(table: sa.Table, bind: Any, **kw: Any) -> None:
    for sequence in _sequences(table, bind):
        bind.execute(sa.schema.DropSequence(sequence, if_exists=True))


# Alembic knows dialects by name; DuckDB's DDL is PostgreSQL's (as duckdb-engine documents)
try:
    from alembic.ddl.postgresql import PostgresqlImpl
except ImportError:  # pragma: no cover - alembic is in the test extra
    pass
else:

    class AlembicDuckDBImpl(PostgresqlImpl):
        __dialect__ = "duckdb"
