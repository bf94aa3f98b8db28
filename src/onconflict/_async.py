"""The asynchronous front (the primary API, re-exported by ``onconflict``).

The work runs in SQLAlchemy's greenlet bridge (``run_sync``) on the same core
as the sync front, so both behave identically. The sync front
(``onconflict.sync``) is generated from this file by ``scripts/gen_sync.py``:
each signature, overload and docstring is written here once. What only the
async front does sits in an ``if True:  # ASYNC`` block (its ``else:`` branch,
if any, is what the sync front does instead).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar, overload

import anyio
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from onconflict._excluded import excluded
from onconflict._get_or_create import (
    _as_instances,
    _get_or_create_work,
    _update_or_create_work,
    fast_attempts,
    prepare_get_or_create,
    prepare_update_or_create,
)
from onconflict._get_or_create_many import (
    GetOrCreateResult,
    _get_or_create_many_work,
    as_result,
    instances,
    prepare_get_or_create_many,
)
from onconflict._handles import (
    ASYNC_EXPECTED,
    dialect_of,
    session_connection,
    transaction_options,
)
from onconflict._insert_ignore import (
    Returning,
    Strategy,
    execute_insert_ignore,
    insert_result,
    prepare_insert_ignore,
)
from onconflict._seed import (
    DEFAULT_LOCK,
    Mode,
    Progress,
    SeedReport,
    execute_seed,
    prepare_seed,
)
from onconflict._target import ANY_KEY, OnTarget
from onconflict._upsert import Duplicates, UpdateSpec, execute_upsert, prepare_upsert
from onconflict.classify import is_transient, is_unique_violation, unique_violation
from onconflict.dialects import driver_path, support_for
from onconflict.dialects.driver import Ordinary, driver_handle
from onconflict.result import InsertResult, UpsertResult
from onconflict.retry import DEFAULT_RETRY, NO_RETRY, Attempts, Retry, retry_stats

AsyncHandle = AsyncConnection | AsyncSession | AsyncEngine
T = TypeVar("T")
_O = TypeVar("_O")
P = TypeVar("P")

__all__ = [  # what each front exports (onconflict re-exports the async calls)
    "ANY_KEY",
    "GetOrCreateResult",
    "InsertResult",
    "Retry",
    "UpsertResult",
    "excluded",
    "get_or_create",
    "get_or_create_many",
    "insert_ignore",
    "is_transient",
    "is_unique_violation",
    "retry_stats",
    "retrying",
    "seed",
    "unique_violation",
    "update_or_create",
    "upsert",
]


async def insert_ignore(
    conn: AsyncHandle,
    table: Any,
    rows: Iterable[Mapping[str, Any]],
    *,
    on: OnTarget = None,
    strategy: Strategy = "auto",
    retry: Retry | None = DEFAULT_RETRY,
    returning: Returning = True,
) -> InsertResult:
    """Insert the rows that are not there yet; skip duplicates and nothing else.

    ``conn``: an ``AsyncConnection`` or ``AsyncSession`` (the call works inside
    your transaction; you commit) or an ``AsyncEngine`` (the call opens and
    commits its own transaction). ``table``: a ``Table`` or a mapped class.
    ``rows``: mappings of column keys (or ORM attribute names) to values.

    ``on`` is the conflict target: column names, a constraint or index name, a
    ``UniqueConstraint`` or ``Index`` (a partial index brings its WHERE), or
    ``onconflict.ANY_KEY``. ``None`` picks the primary key when every row
    carries it, else the one unique key whose columns every row carries.

    Only duplicates of the target are skipped. Every other error (NOT NULL,
    CHECK, foreign key, value too long, ...) propagates unchanged.

    ``strategy``: ``"native"`` (the database's duplicate-only statement),
    ``"classify"`` (each row in a SAVEPOINT, duplicates recognised from the
    error) or ``"auto"`` (native where the database has it). ``retry``: how to
    retry transient errors when the call owns the transaction (an engine);
    ``None`` never retries.

    ``returning``: what ``InsertResult.inserted`` holds. ``True``: the stored
    rows, every column. Column names (attribute names for a mapped class):
    only those columns. ``False``: counts only: ``inserted_count`` and
    ``existing_count`` are exact, no row is built (reading ``inserted`` or
    ``existing`` raises ``NotReturnedError``).
    """
    if True:  # ASYNC: a one-row call planned once per shape, on the driver
        one: InsertResult | Ordinary | None = None
        bound = await driver_handle(conn)
        if bound is not None:
            path = driver_path(bound.dialect)
            one = await path.insert_one(bound, table, rows, on, strategy, returning)
            if isinstance(one, InsertResult):
                return one
    prepared = prepare_insert_ignore(dialect_of(conn), table, rows, on, strategy, returning)
    if prepared.empty:
        return insert_result(prepared, {})
    if True:  # ASYNC: the driver-level path (asyncpg, aiomysql, ...), unless it refused the row
        if one is None and prepared.support is not None and bound is not None:
            path = driver_path(bound.dialect)
            if isinstance(bound, AsyncEngine):
                stored = await path.insert_ignore(bound, prepared)
            else:  # inside the caller's transaction
                stored = await path.insert_ignore_in(bound, prepared)
            if stored is not None:
                return insert_result(prepared, stored)
    return await _run(conn, execute_insert_ignore, prepared, retry)


async def upsert(
    conn: AsyncHandle,
    table: Any,
    rows: Iterable[Mapping[str, Any]],
    *,
    on: OnTarget = None,
    update: UpdateSpec = None,
    where: Any = None,
    skip_unchanged: bool = False,
    duplicates: Duplicates = "last",
    retry: Retry | None = DEFAULT_RETRY,
) -> UpsertResult:
    """Insert new rows and update existing ones, with the outcome of each row.

    ``on``: the conflict target, as for :func:`insert_ignore` (not ``ANY_KEY``).
    ``update``: ``None`` updates every non-key column the rows carry; a list of
    column names; or a mapping of column to value or expression, where
    ``onconflict.excluded("col")`` is the incoming value and ``table.c.col`` the
    stored one. ``where``: update only when this holds (else ``unchanged``).
    ``skip_unchanged``: do not write rows whose updated columns already hold the
    incoming values (``unchanged``). ``duplicates``: for a key repeated in the
    call, ``"last"`` or ``"first"`` wins, ``"error"`` raises ``ValueError``.

    Only key conflicts turn into updates: NOT NULL, CHECK, foreign-key and
    too-long errors propagate unchanged and nothing is stored.
    """
    prepared = prepare_upsert(
        dialect_of(conn),
        table,
        rows,
        on=on,
        update=update,
        where=where,
        skip_unchanged=skip_unchanged,
        duplicates=duplicates,
    )
    if prepared.empty:
        return UpsertResult()
    return await _run(conn, execute_upsert, prepared, retry, isolate=True)


@overload
async def get_or_create(
    conn: AsyncSession,
    table: type[_O],
    lookup: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = ...,
    *,
    on: OnTarget = ...,
    retry: Retry | None = ...,
) -> tuple[_O, bool]: ...
@overload
async def get_or_create(
    conn: AsyncHandle,
    table: sa.Table,
    lookup: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = ...,
    *,
    on: OnTarget = ...,
    retry: Retry | None = ...,
) -> tuple[dict[str, Any], bool]: ...
@overload
async def get_or_create(
    conn: AsyncConnection | AsyncEngine,
    table: type[Any],
    lookup: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = ...,
    *,
    on: OnTarget = ...,
    retry: Retry | None = ...,
) -> tuple[dict[str, Any], bool]: ...
async def get_or_create(
    conn: AsyncHandle,
    table: Any,
    lookup: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
    *,
    on: OnTarget = None,
    retry: Retry | None = DEFAULT_RETRY,
) -> tuple[Any, bool]:
    """The row matching ``lookup``, created from ``lookup`` and ``defaults`` if
    there is none: ``(row, created)``. Race-safe: callers asking for the same key
    at once all get the same row, and exactly one of them ``created=True``.

    ``lookup`` must contain exactly one unique key of the table (or name it with
    ``on``), with no ``None`` in that key's columns (refused: NULL never matches
    there). Callables among the ``defaults`` values are called. The row is a
    mapping with server-generated values; with an ORM class and an
    ``AsyncSession``, the mapped instance, attached to the session (an instance
    the session already holds is brought to the stored values).

    On PostgreSQL it is one statement; with an engine it runs in autocommit (no
    BEGIN/COMMIT round trips).
    """
    prepared = prepare_get_or_create(dialect_of(conn), table, lookup, defaults, on)
    if True:  # ASYNC: the driver-level path (asyncpg, aiomysql, ...)
        got = None
        if isinstance(conn, AsyncEngine):
            attempts = fast_attempts(prepared)
            got = await driver_path(conn.dialect).get_or_create(conn, prepared.plan, attempts)
        elif isinstance(conn, AsyncConnection):  # inside the caller's transaction
            got = await driver_path(conn.dialect).get_or_create_in(conn, prepared.plan)
        if got is not None:
            row, created = got
            return prepared.output(row), created
    return await _run(
        conn,
        _get_or_create_work,
        prepared,
        retry,
        autocommit=prepared.support.fetch_in_one_statement,
        finish=_as_instances(prepared),
    )


async def get_or_create_many(
    conn: AsyncHandle,
    table: Any,
    rows: Iterable[Mapping[str, Any]],
    *,
    on: OnTarget = None,
    retry: Retry | None = DEFAULT_RETRY,
) -> GetOrCreateResult:
    """get_or_create for a batch: the stored row for every input row, in input
    order, and whether this call created it (``GetOrCreateResult``).

    Rows are got or created by a unique key (``on``, as for
    :func:`insert_ignore`; not ``ANY_KEY``, an expression or a partial index),
    which every row must give, without ``None``. A row whose key exists is
    returned as stored, whatever its other columns hold (no mismatch, no
    update). Rows repeating a key in the call get the same stored row; only
    the first can be ``created``. Race-safe: callers asking for the same keys
    at once each get every row, and each key is created by one of them.

    On PostgreSQL the usual call is one statement (autocommitted with an
    engine), and keys that exist burn no sequence value. With an ORM class and
    an ``AsyncSession``, the rows are mapped instances attached to the session.
    ``retry``: how to retry transient errors when the call owns the transaction
    (an engine); ``None`` never retries.
    """
    prepared = prepare_get_or_create_many(dialect_of(conn), table, rows, on)
    if prepared is None:
        return GetOrCreateResult()
    got = await _run(
        conn,
        _get_or_create_many_work,
        prepared,
        retry,
        autocommit=prepared.one_statement,
        finish=instances(prepared),
    )
    return as_result(got)


@overload
async def update_or_create(
    conn: AsyncSession,
    table: type[_O],
    lookup: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = ...,
    *,
    create_defaults: Mapping[str, Any] | None = ...,
    on: OnTarget = ...,
    retry: Retry | None = ...,
) -> tuple[_O, bool]: ...
@overload
async def update_or_create(
    conn: AsyncHandle,
    table: sa.Table,
    lookup: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = ...,
    *,
    create_defaults: Mapping[str, Any] | None = ...,
    on: OnTarget = ...,
    retry: Retry | None = ...,
) -> tuple[dict[str, Any], bool]: ...
@overload
async def update_or_create(
    conn: AsyncConnection | AsyncEngine,
    table: type[Any],
    lookup: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = ...,
    *,
    create_defaults: Mapping[str, Any] | None = ...,
    on: OnTarget = ...,
    retry: Retry | None = ...,
) -> tuple[dict[str, Any], bool]: ...
async def update_or_create(
    conn: AsyncHandle,
    table: Any,
    lookup: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
    *,
    create_defaults: Mapping[str, Any] | None = None,
    on: OnTarget = None,
    retry: Retry | None = DEFAULT_RETRY,
) -> tuple[Any, bool]:
    """Create the row from ``lookup`` and ``defaults``, or UPDATE the existing
    one's ``defaults`` columns to these values (its other columns are left
    alone): ``(row, created)``. Race-safe: exactly one concurrent caller creates.

    ``create_defaults`` (as in Django 5.0): when given, a new row is made from
    ``lookup`` and ``create_defaults`` only, and ``defaults`` only update an
    existing row. Callables among the values of ``defaults`` and
    ``create_defaults`` are called. A lookup whose key exists with other values
    in its other columns raises ``LookupMismatchError``."""
    if not defaults:  # nothing to update
        return await get_or_create(conn, table, lookup, create_defaults, on=on, retry=retry)
    prepared = prepare_update_or_create(
        dialect_of(conn), table, lookup, defaults, on, create_defaults
    )
    return await _run(
        conn,
        _update_or_create_work,
        prepared,
        retry,
        finish=_as_instances(prepared.fetch),
        isolate=True,
    )


async def seed(
    conn: AsyncHandle,
    data: Mapping[Any, Iterable[Mapping[str, Any]]],
    *,
    mode: Mode = "insert",
    dry_run: bool = False,
    on: OnTarget | Mapping[str, OnTarget] = None,
    lock: str | None = DEFAULT_LOCK,
    lock_timeout: float = 30.0,
    progress: Progress | None = None,
    retry: Retry | None = DEFAULT_RETRY,
    create: sa.MetaData | None = None,
) -> SeedReport:
    """Write reference data idempotently, all or nothing, one replica at a time.

    ``data`` maps tables (``Table`` objects, mapped classes or names, which are
    reflected) to rows; tables are written parents first. ``mode``: ``"insert"``
    adds missing rows and leaves existing ones alone, ``"upsert"`` also brings
    existing rows to the given values, ``"verify"`` writes nothing and reports
    rows that are missing or differ. ``dry_run`` reports what would change and
    writes nothing. ``on``: the conflict target, for all tables or per table
    name. ``lock``: the name of the database lock that serialises concurrent
    seeds (``None``: no lock); ``lock_timeout`` in seconds, then
    ``SeedLockTimeout``. ``progress(table, done, total)`` is called as rows are
    written. ``create``: a ``MetaData`` whose missing tables are created
    first, under the same lock (replicas deploying a fresh database at once
    take turns instead of racing on CREATE TABLE).
    """
    plan = prepare_seed(
        data,
        mode=mode,
        dry_run=dry_run,
        on=on,
        lock=lock,
        lock_timeout=lock_timeout,
        progress=progress,
        create=create,
    )
    return await _run(conn, execute_seed, plan, retry)


async def retrying(
    engine: AsyncEngine,
    fn: Callable[[AsyncConnection], Awaitable[T]],
    *,
    retry: Retry = DEFAULT_RETRY,
) -> T:
    """Run ``fn(conn)`` in a transaction of its own, committed at the end, and
    run it again in a new transaction after a transient error (deadlock,
    serialization failure; see :func:`onconflict.is_transient`)."""
    return await _with_engine(engine, fn, retry, autocommit=False)


async def _with_engine(
    engine: AsyncEngine,
    fn: Callable[[AsyncConnection], Awaitable[T]],
    retry: Retry,
    autocommit: bool,
    isolate: bool = False,
) -> T:
    """Run ``fn`` in a transaction of its own (or in autocommit), again after a
    transient error or a lost race (see :mod:`onconflict.retry`). ``isolate``:
    ``fn`` is onconflict's own work whose locking reads the dialect may set up
    its transaction for (``begin_owned``: upsert, update_or_create), not the
    caller's function given to ``retrying``."""
    with Attempts(retry, engine.sync_engine) as attempts:
        while True:
            try:
                return await _once(engine, fn, autocommit, isolate, attempts.restarts_left)
            except Exception as exc:
                pause = attempts.wait(exc)
                if pause is None:
                    raise
            if pause:
                await anyio.sleep(pause)


async def _once(
    engine: AsyncEngine,
    fn: Callable[[AsyncConnection], Awaitable[T]],
    autocommit: bool,
    isolate: bool,
    restartable: bool,
) -> T:
    if autocommit:  # one statement: no BEGIN/COMMIT round trips
        async with engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            return await fn(auto)
    async with engine.connect() as conn:
        sync = conn.sync_connection
        assert sync is not None  # connected
        begin = support_for(sync.dialect).begin_owned if isolate else None
        if options := transaction_options(sync):
            conn = await conn.execution_options(**options)
        async with conn.begin():
            if begin is not None:
                await conn.run_sync(begin, restartable)
            return await fn(conn)


async def _run(
    handle: AsyncHandle,
    work: Callable[[Connection, P, bool], T],
    prepared: P,
    retry: Retry | None,
    *,
    autocommit: bool = False,
    finish: Callable[[Session | None, T], T] | None = None,
    isolate: bool = False,
) -> T:
    if isinstance(handle, AsyncEngine):

        async def owned(conn: AsyncConnection) -> T:
            return await conn.run_sync(work, prepared, True)

        return await _with_engine(handle, owned, retry or NO_RETRY, autocommit, isolate)
    if isinstance(handle, AsyncSession):

        def in_session(session: Session) -> T:
            done = work(session_connection(session), prepared, False)
            return finish(session, done) if finish else done

        return await handle.run_sync(in_session)
    if isinstance(handle, AsyncConnection):
        return await handle.run_sync(work, prepared, False)
    raise TypeError(f"{ASYNC_EXPECTED}, got {type(handle).__name__}")
