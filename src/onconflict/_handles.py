"""What the async and sync fronts share about the handle they are given: its
dialect, the execution options a call owning its transaction needs, a
session's connection, and the error for a handle of the wrong kind."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from onconflict.dialects.common import in_autocommit

ASYNC_HANDLES = "AsyncConnection, AsyncSession or AsyncEngine"
SYNC_HANDLES = "Connection, Session or Engine"
ASYNC_EXPECTED = f"onconflict expects an {ASYNC_HANDLES}"  # the fronts' TypeError
SYNC_EXPECTED = f"onconflict.sync expects a {SYNC_HANDLES}"


def dialect_of(handle: Any) -> Dialect:
    """The SQLAlchemy dialect behind any connection, session or engine."""
    if isinstance(handle, Engine | Connection | AsyncEngine | AsyncConnection):
        return handle.dialect
    if isinstance(handle, AsyncSession):
        handle = handle.sync_session
    if isinstance(handle, Session):
        return handle.get_bind().dialect
    raise TypeError(
        f"expected a SQLAlchemy {ASYNC_HANDLES} (or, from onconflict.sync, a {SYNC_HANDLES});"
        f" got {type(handle).__name__}"
    )


def transaction_options(conn: Connection) -> dict[str, Any]:
    """Execution options that give a call owning its work a real transaction on
    an engine set to AUTOCOMMIT (there, each statement would commit on its own:
    a call of several statements could not be all or nothing, and MySQL's guard
    could not undo a row the server coerced). Empty when nothing needs changing;
    the pool puts the connection's level back when it is returned."""
    default = conn.default_isolation_level
    if default is None or default == "AUTOCOMMIT" or not in_autocommit(conn):
        return {}
    return {"isolation_level": default}


def session_connection(session: Session) -> Connection:
    """The session's connection, after flushing what the session holds (as
    ``session.execute`` would), so rows the caller added are visible."""
    if session.autoflush:
        session.flush()
    return session.connection()
