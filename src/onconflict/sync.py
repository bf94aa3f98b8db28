"""The synchronous front: the same names and signatures as ``onconflict``.

Pass a ``Connection`` or ``Session`` to work inside your transaction (you
commit), or an ``Engine`` to let the call open and commit its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import tenacity
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from onconflict._core import (
    PreparedInsert,
    Strategy,
    execute_insert_ignore,
    prepare_insert_ignore,
)
from onconflict._front import SYNC_HANDLES, dialect_of, session_connection
from onconflict._target import ANY_KEY, OnTarget
from onconflict.errors import is_transient, is_unique_violation, unique_violation
from onconflict.result import InsertResult
from onconflict.retry import DEFAULT_RETRY, NO_RETRY, Retry

SyncHandle = Connection | Session | Engine
T = TypeVar("T")

__all__ = [
    "ANY_KEY",
    "InsertResult",
    "Retry",
    "insert_ignore",
    "is_transient",
    "is_unique_violation",
    "retrying",
    "unique_violation",
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


def retrying(engine: Engine, fn: Callable[[Connection], T], *, retry: Retry = DEFAULT_RETRY) -> T:
    """Run ``fn(conn)`` in a transaction of its own, committed at the end, and
    run it again in a new transaction after a transient error.

    See :func:`onconflict.retrying`, of which this is the synchronous twin.
    """
    for attempt in tenacity.Retrying(sleep=time.sleep, **retry.tenacity_args()):
        with attempt, engine.begin() as conn:
            return fn(conn)
    raise AssertionError("unreachable")  # pragma: no cover


def _run(
    handle: SyncHandle,
    work: Callable[[Connection, PreparedInsert, bool], T],
    prepared: PreparedInsert,
    retry: Retry | None,
) -> T:
    if isinstance(handle, Engine):
        return retrying(handle, lambda conn: work(conn, prepared, True), retry=retry or NO_RETRY)
    if isinstance(handle, Session):
        return work(session_connection(handle), prepared, False)
    if isinstance(handle, Connection):
        return work(handle, prepared, False)
    raise TypeError(f"onconflict.sync expects a {SYNC_HANDLES}, got {type(handle).__name__}")
