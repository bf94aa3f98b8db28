"""SQLite: the upsert clause ``INSERT ... ON CONFLICT (target) DO NOTHING``.

Needs SQLite 3.24 (RETURNING from 3.35; older versions write one row per
statement). Never ``INSERT OR IGNORE``: it silently drops rows that fail
NOT NULL or CHECK constraints, where the upsert clause raises.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection, Dialect, NestedTransaction
from sqlalchemy.sql.dml import Insert

from onconflict._target import ConflictTarget
from onconflict.dialects.base import DialectSupport, do_nothing
from onconflict.exceptions import NotSupportedError

UPSERT_CLAUSE = (3, 24, 0)


def sqlite_version(dialect: Dialect) -> tuple[int, ...]:
    dbapi: Any = dialect.dbapi or sqlite3  # sqlite3, the aiosqlite adapter, or none yet
    return tuple(dbapi.sqlite_version_info)


class SQLite(DialectSupport):
    name = "sqlite"
    native = True

    def check(self, dialect: Dialect) -> None:
        version = sqlite_version(dialect)
        if version < UPSERT_CLAUSE:
            raise NotSupportedError(
                f"SQLite {'.'.join(map(str, version))} has no ON CONFLICT clause"
                " (3.24 or newer is needed)"
            )

    def insert_ignore(self, table: sa.Table, target: ConflictTarget, returning: bool) -> Insert:
        return do_nothing(sqlite.insert(table), table, target, returning)

    def savepoint(self, conn: Connection) -> AbstractContextManager[NestedTransaction]:
        begun(conn)
        return super().savepoint(conn)


def begun(conn: Connection) -> None:
    """Make sure SQLite itself is inside a transaction before a SAVEPOINT.

    Python's sqlite3 module (legacy transaction control) opens transactions
    lazily, before the first INSERT/UPDATE/DELETE. A SAVEPOINT sent before that
    starts a transaction of its own, and releasing it COMMITs: the caller could
    then no longer roll the work back. An explicit BEGIN first avoids that.
    """
    driver: Any = conn.connection.driver_connection  # sqlite3 or aiosqlite connection
    if not driver.in_transaction:
        conn.exec_driver_sql("BEGIN")
