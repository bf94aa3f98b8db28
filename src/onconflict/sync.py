"""The synchronous front: the same names and signatures as ``onconflict``.

Pass a ``Connection`` or ``Session`` to work inside your transaction (you
commit), or an ``Engine`` to let the call open and commit its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, overload

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from onconflict._excluded import excluded
from onconflict._get_or_create import (
    _as_instances,
    _get_or_create_work,
    _update_or_create_work,
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
from onconflict._handles import SYNC_HANDLES, dialect_of, session_connection, transaction_options
from onconflict._insert_ignore import (
    Strategy,
    execute_insert_ignore,
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
from onconflict.dialects import support_for
from onconflict.result import InsertResult, UpsertResult
from onconflict.retry import DEFAULT_RETRY, NO_RETRY, Attempts, Retry, retry_stats

SyncHandle = Connection | Session | Engine
T = TypeVar("T")
_O = TypeVar("_O")
P = TypeVar("P")

__all__ = [
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


def insert_ignore(
    conn: SyncHandle,
    table: Any,
    rows: Iterable[Mapping[str, Any]],
    *,
    on: OnTarget = None,
    strategy: Strategy = "auto",
    retry: Retry | None = DEFAULT_RETRY,
) -> InsertResult:
    """Insert the rows that are not there yet; skip duplicates and nothing else.

    See :func:`onconflict.insert_ignore`, of which this is the synchronous twin.
    """
    prepared = prepare_insert_ignore(dialect_of(conn), table, rows, on, strategy)
    if prepared.empty:
        return InsertResult()
    return _run(conn, execute_insert_ignore, prepared, retry)


def upsert(
    conn: SyncHandle,
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

    See :func:`onconflict.upsert`, of which this is the synchronous twin.
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
    return _run(conn, execute_upsert, prepared, retry, isolate=True)


@overload
def get_or_create(
    conn: Session,
    table: type[_O],
    lookup: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = ...,
    *,
    on: OnTarget = ...,
    retry: Retry | None = ...,
) -> tuple[_O, bool]: ...
@overload
def get_or_create(
    conn: SyncHandle,
    table: sa.Table,
    lookup: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = ...,
    *,
    on: OnTarget = ...,
    retry: Retry | None = ...,
) -> tuple[dict[str, Any], bool]: ...
@overload
def get_or_create(
    conn: Connection | Engine,
    table: type[Any],
    lookup: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = ...,
    *,
    on: OnTarget = ...,
    retry: Retry | None = ...,
) -> tuple[dict[str, Any], bool]: ...
def get_or_create(
    conn: SyncHandle,
    table: Any,
    lookup: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
    *,
    on: OnTarget = None,
    retry: Retry | None = DEFAULT_RETRY,
) -> tuple[Any, bool]:
    """See :func:`onconflict.get_or_create`, of which this is the synchronous twin."""
    prepared = prepare_get_or_create(dialect_of(conn), table, lookup, defaults, on)
    return _run(
        conn,
        _get_or_create_work,
        prepared,
        retry,
        autocommit=prepared.support.fetch_in_one_statement,
        finish=_as_instances(prepared),
    )


def get_or_create_many(
    conn: SyncHandle,
    table: Any,
    rows: Iterable[Mapping[str, Any]],
    *,
    on: OnTarget = None,
    retry: Retry | None = DEFAULT_RETRY,
) -> GetOrCreateResult:
    """See :func:`onconflict.get_or_create_many`, of which this is the synchronous twin."""
    prepared = prepare_get_or_create_many(dialect_of(conn), table, rows, on)
    if prepared is None:
        return GetOrCreateResult()
    got = _run(
        conn,
        _get_or_create_many_work,
        prepared,
        retry,
        autocommit=prepared.one_statement,
        finish=instances(prepared),
    )
    return as_result(got)


@overload
def update_or_create(
    conn: Session,
    table: type[_O],
    lookup: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = ...,
    *,
    create_defaults: Mapping[str, Any] | None = ...,
    on: OnTarget = ...,
    retry: Retry | None = ...,
) -> tuple[_O, bool]: ...
@overload
def update_or_create(
    conn: SyncHandle,
    table: sa.Table,
    lookup: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = ...,
    *,
    create_defaults: Mapping[str, Any] | None = ...,
    on: OnTarget = ...,
    retry: Retry | None = ...,
) -> tuple[dict[str, Any], bool]: ...
@overload
def update_or_create(
    conn: Connection | Engine,
    table: type[Any],
    lookup: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = ...,
    *,
    create_defaults: Mapping[str, Any] | None = ...,
    on: OnTarget = ...,
    retry: Retry | None = ...,
) -> tuple[dict[str, Any], bool]: ...
def update_or_create(
    conn: SyncHandle,
    table: Any,
    lookup: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
    *,
    create_defaults: Mapping[str, Any] | None = None,
    on: OnTarget = None,
    retry: Retry | None = DEFAULT_RETRY,
) -> tuple[Any, bool]:
    """See :func:`onconflict.update_or_create`, of which this is the synchronous twin."""
    if not defaults:  # nothing to update
        return get_or_create(conn, table, lookup, create_defaults, on=on, retry=retry)
    prepared = prepare_update_or_create(
        dialect_of(conn), table, lookup, defaults, on, create_defaults
    )
    return _run(
        conn,
        _update_or_create_work,
        prepared,
        retry,
        finish=_as_instances(prepared.fetch),
        isolate=True,
    )


def seed(
    conn: SyncHandle,
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
    """See :func:`onconflict.seed`, of which this is the synchronous twin."""
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
    return _run(conn, execute_seed, plan, retry)


def retrying(engine: Engine, fn: Callable[[Connection], T], *, retry: Retry = DEFAULT_RETRY) -> T:
    """Run ``fn(conn)`` in a transaction of its own, committed at the end, and
    run it again in a new transaction after a transient error.

    See :func:`onconflict.retrying`, of which this is the synchronous twin.
    """
    return _with_engine(engine, fn, retry, autocommit=False)


def _with_engine(
    engine: Engine,
    fn: Callable[[Connection], T],
    retry: Retry,
    autocommit: bool,
    isolate: bool = False,
) -> T:
    """See onconflict._async._with_engine, of which this is the synchronous twin."""
    with Attempts(retry, engine) as attempts:
        while True:
            try:
                return _once(engine, fn, autocommit, isolate, attempts.restarts_left)
            except Exception as exc:
                pause = attempts.wait(exc)
                if pause is None:
                    raise
            if pause:
                time.sleep(pause)


def _once(
    engine: Engine,
    fn: Callable[[Connection], T],
    autocommit: bool,
    isolate: bool,
    restartable: bool,
) -> T:
    if autocommit:  # one statement: no BEGIN/COMMIT round trips
        with engine.connect() as conn:
            return fn(conn.execution_options(isolation_level="AUTOCOMMIT"))
    with engine.connect() as conn:
        begin = support_for(conn.dialect).begin_owned if isolate else None
        if options := transaction_options(conn):
            conn = conn.execution_options(**options)
        with conn.begin():
            if begin is not None:
                begin(conn, restartable)
            return fn(conn)


def _run(
    handle: SyncHandle,
    work: Callable[[Connection, P, bool], T],
    prepared: P,
    retry: Retry | None,
    *,
    autocommit: bool = False,
    finish: Callable[[Session | None, T], T] | None = None,
    isolate: bool = False,
) -> T:
    if isinstance(handle, Engine):
        return _with_engine(
            handle, lambda conn: work(conn, prepared, True), retry or NO_RETRY, autocommit, isolate
        )
    if isinstance(handle, Session):
        done = work(session_connection(handle), prepared, False)
        return finish(handle, done) if finish else done
    if isinstance(handle, Connection):
        return work(handle, prepared, False)
    raise TypeError(f"onconflict.sync expects a {SYNC_HANDLES}, got {type(handle).__name__}")
