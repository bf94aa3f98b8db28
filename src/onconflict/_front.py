"""What the async and sync fronts share: telling what kind of handle was passed."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

ASYNC_HANDLES = "AsyncConnection, AsyncSession or AsyncEngine"
SYNC_HANDLES = "Connection, Session or Engine"


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


def session_connection(session: Session) -> Connection:
    """The session's connection, after flushing what the session holds (as
    ``session.execute`` would), so rows the caller added are visible."""
    if session.autoflush:
        session.flush()
    return session.connection()
