"""The synchronous front: the same names and signatures as ``onconflict``.

Pass a ``Connection`` or ``Session`` to work inside your transaction (you
commit), or an ``Engine`` to let the call open and commit its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from onconflict._core import PreparedInsert, execute_insert_ignore, prepare_insert_ignore
from onconflict._front import SYNC_HANDLES, dialect_of, session_connection
from onconflict._target import ANY_KEY, OnTarget
from onconflict.result import InsertResult

SyncHandle = Connection | Session | Engine
T = TypeVar("T")

__all__ = ["ANY_KEY", "InsertResult", "insert_ignore"]


def insert_ignore(
    conn: SyncHandle, table: Any, rows: Iterable[Mapping[str, Any]], *, on: OnTarget = None
) -> InsertResult:
    """Insert the rows that are not there yet; skip duplicates and nothing else.

    See :func:`onconflict.insert_ignore`, of which this is the synchronous twin.
    """
    prepared = prepare_insert_ignore(dialect_of(conn), table, rows, on)
    if prepared.empty:
        return InsertResult()
    return _run(conn, execute_insert_ignore, prepared)


def _run(
    handle: SyncHandle,
    work: Callable[[Connection, PreparedInsert, bool], T],
    prepared: PreparedInsert,
) -> T:
    if isinstance(handle, Engine):
        with handle.begin() as conn:
            return work(conn, prepared, True)
    if isinstance(handle, Session):
        return work(session_connection(handle), prepared, False)
    if isinstance(handle, Connection):
        return work(handle, prepared, False)
    raise TypeError(f"onconflict.sync expects a {SYNC_HANDLES}, got {type(handle).__name__}")
