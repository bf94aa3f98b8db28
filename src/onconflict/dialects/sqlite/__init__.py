"""SQLite: the upsert clause ``INSERT ... ON CONFLICT (target) DO NOTHING``.

Needs SQLite 3.24 (RETURNING from 3.35; older versions write one row per
statement). Never ``INSERT OR IGNORE``: it silently drops rows that fail
NOT NULL or CHECK constraints, where the upsert clause raises.

The package: this module (the support class and its capabilities), ``build``
(pure statement builders), ``aiosqlite`` (the driver-level writer that
batches calls in one hop to aiosqlite's thread), ``errors`` (the classifier's
codes and key parser).
"""

from __future__ import annotations

import sqlite3
import string
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect, NestedTransaction
from sqlalchemy.sql.dml import Insert

from onconflict._keys import Keys
from onconflict._target import ConflictTarget
from onconflict.dialects.base import Capabilities, DialectSupport
from onconflict.dialects.common import upsert_reading_keys_first
from onconflict.dialects.errors import error_code
from onconflict.dialects.plans import Outcome, Row, UpsertPlan
from onconflict.dialects.sqlite import build
from onconflict.exceptions import NotSupportedError, SeedLockTimeout

CAPABILITIES = Capabilities(name="sqlite", title="SQLite", native=True)

UPSERT_CLAUSE = (3, 24, 0)
RETURNING = (3, 35, 0)


def sqlite_version(dialect: Dialect) -> tuple[int, ...]:
    dbapi: Any = dialect.dbapi or sqlite3  # sqlite3, the aiosqlite adapter, or none yet
    return tuple(dbapi.sqlite_version_info)


class SQLite(DialectSupport):
    capabilities = CAPABILITIES

    def check(self, dialect: Dialect) -> None:
        version = sqlite_version(dialect)
        if version < UPSERT_CLAUSE:
            raise NotSupportedError(
                f"SQLite {'.'.join(map(str, version))} has no ON CONFLICT clause"
                " (3.24 or newer is needed)"
            )

    def insert_ignore(self, table: sa.Table, target: ConflictTarget, returning: bool) -> Insert:
        return build.insert_ignore(table, target, returning)

    def count_statement(self, table: sa.Table, target: ConflictTarget) -> Insert | None:
        """Counts only: the statement without RETURNING; sqlite3 sums the rows
        an executemany inserted (``write_count``)."""
        return build.insert_ignore(table, target, False)

    def savepoint(self, conn: Connection) -> AbstractContextManager[NestedTransaction]:
        begun(conn)
        return super().savepoint(conn)

    @contextmanager
    def seed_lock(self, conn: Connection, name: str, timeout: float) -> Iterator[None]:
        """SQLite's lock is the database's write lock: BEGIN IMMEDIATE, waiting at
        most ``timeout`` for another writer (a transaction already open takes
        the lock at its first write instead)."""
        driver: Any = conn.connection.driver_connection
        if driver.in_transaction:
            yield
            return
        previous = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
        # PRAGMA takes no bound parameters; the value is an int computed here
        conn.exec_driver_sql(f"PRAGMA busy_timeout = {max(1, int(timeout * 1000))}")
        try:
            begun(conn, immediate=True)
        except sa.exc.OperationalError as exc:
            if error_code(exc) in (5, 6):  # SQLITE_BUSY, SQLITE_LOCKED
                raise SeedLockTimeout(
                    f"could not take the database write lock within {timeout:g}s:"
                    " another seed (or writer) is still running"
                ) from exc
            raise
        finally:
            conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(previous or 0)}")
        yield

    def key_identity(
        self, conn: Connection, table: sa.Table, keys: Keys, columns: tuple[str, ...]
    ) -> bool:
        """Key columns declared ``COLLATE NOCASE`` or ``RTRIM`` compare folded
        (known from the metadata: no SQL)."""
        folds = {}
        for name in columns:
            # the type as this dialect uses it (a with_variant() type says its collation there)
            collation = getattr(table.c[name].type.dialect_impl(conn.dialect), "collation", None)
            fold = COLLATION_FOLDS.get(str(collation).upper()) if collation else None
            if fold is not None:
                folds[name] = fold
        keys.set_folds(folds)
        return bool(folds)

    def prepare_upsert(self, plan: UpsertPlan, dialect: Dialect) -> None:
        if sqlite_version(dialect) < RETURNING:
            raise NotSupportedError("upsert needs SQLite 3.35 or newer (INSERT ... RETURNING)")
        plan.statement = build.upsert(plan)

    def write_upsert(self, conn: Connection, plan: UpsertPlan, rows: list[Row]) -> list[Outcome]:
        """SQLite cannot say whether RETURNING's row was inserted or updated, so
        the keys that exist are read first, under the write lock: no other
        writer can come between the read and the upsert."""
        begun(conn, immediate=True)
        return upsert_reading_keys_first(conn, plan, rows)

    def engine_options(self, pool_size: int) -> dict[str, Any]:
        """One file, one writer at a time: callers wait for the lock (30 s)
        rather than a pool size (the pool is SQLAlchemy's default)."""
        return {"connect_args": {"timeout": 30}}

    def lock_for_update_or_create(self, conn: Connection) -> None:
        """The write lock first (BEGIN IMMEDIATE): a read transaction that later
        writes can fail with SQLITE_BUSY where waiting does not help."""
        begun(conn, immediate=True)


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _nocase(value: str) -> str:
    return value.translate(_ASCII_LOWER)  # NOCASE folds ASCII letters only


def _rtrim(value: str) -> str:
    return value.rstrip(" ")


# a column's declared collation -> how SQLite compares with it (BINARY: as is)
COLLATION_FOLDS = {"NOCASE": _nocase, "RTRIM": _rtrim}


def begun(conn: Connection, immediate: bool = False) -> None:
    """Make sure SQLite itself is inside a transaction before a SAVEPOINT.

    Python's sqlite3 module (legacy transaction control) opens transactions
    lazily, before the first INSERT/UPDATE/DELETE. A SAVEPOINT sent before that
    starts a transaction of its own, and releasing it COMMITs: the caller could
    then no longer roll the work back. An explicit BEGIN first avoids that.
    ``immediate`` takes the write lock at once (BEGIN IMMEDIATE).
    """
    driver: Any = conn.connection.driver_connection  # sqlite3 or aiosqlite connection
    if not driver.in_transaction:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
