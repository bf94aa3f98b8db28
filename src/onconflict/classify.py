"""Which database errors are duplicate keys, and which are worth retrying.

Every driver reports an error in its own way: ``sqlstate`` on asyncpg and
psycopg 3, ``pgcode`` on psycopg2, a field dict in ``args[0]`` on pg8000, the
errno in ``args[0]`` on the PyMySQL family but in ``.errno`` on MariaDB
Connector/Python, ``sqlite_errorcode`` on sqlite3, an error object in
``args[0]`` on python-oracledb, and the native error number inside the message
on pyodbc. So the classifier first finds *the driver* of each exception in the
chain (by the module its class comes from), reads the code the way that driver
carries it (``READERS``), and then looks the code up in a table per database
family (``UNIQUE_CODES``, ``TRANSIENT_CODES``). It never decides from an
exception's class alone, nor from ``args[0]`` alone.

Each family's codes, readers and key parser are declared in its dialect
package (``onconflict.dialects.postgresql.errors``, ...; see
``onconflict.dialects.errors``); this module gathers them and answers.
"""

from __future__ import annotations

from onconflict.dialects.errors import (
    KEY_READERS,
    READERS,
    TRANSIENT_CODES,
    UNIQUE_CODES,
    DriverError,
    UniqueViolation,
    driver_error,
    error_code,
    tables,
)

__all__ = [
    "KEY_READERS",
    "READERS",
    "TRANSIENT_CODES",
    "UNIQUE_CODES",
    "DriverError",
    "UniqueViolation",
    "driver_error",
    "error_code",
    "is_transient",
    "is_unique_violation",
    "unique_violation",
]


def _describe(err: DriverError) -> UniqueViolation:
    read = KEY_READERS.get(err.family)
    constraint, table, columns = read(err) if read is not None else (err.constraint, err.table, ())
    assert err.code is not None
    return UniqueViolation(
        err.code, err.driver, err.family, constraint, table, columns, err.message
    )


# -- the public questions ------------------------------------------------------


def unique_violation(exc: BaseException) -> UniqueViolation | None:
    """Describe a duplicate-key error, or return None for any other exception.

    Accepts SQLAlchemy exceptions and raw driver exceptions and walks the chain.
    """
    err = driver_error(exc)
    if err is None or err.code not in UNIQUE_CODES.get(err.family, ()):
        return None
    return _describe(err)


def is_unique_violation(exc: BaseException) -> bool:
    """True for a duplicate-key error from any supported driver."""
    return unique_violation(exc) is not None


def is_transient(exc: BaseException) -> bool:
    """True for errors that a retry of the whole transaction may resolve:
    serialization failures and deadlocks (PostgreSQL 40001 / 40P01, also
    CockroachDB's and YugabyteDB's retry errors; MySQL 1213, also Galera's
    certification failures, and lock-wait timeout 1205; TiDB write conflicts
    8002 / 8005 / 9007; SQLite busy/locked, Oracle ORA-00060 / 08177, SQL Server
    1205). Not CockroachDB's 40003 (result ambiguous): the work may have
    committed, and running it again would report a row it created as existing."""
    err = driver_error(exc)
    return err is not None and err.code in TRANSIENT_CODES.get(err.family, ())


# every registered family's codes, readers and key parser, read at import so that
# the public tables above are full; last, so that a dialect package whose import
# comes back here (through retry) finds every function of this module defined
tables()
