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
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

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

Code = str | int

UNIQUE_CODES: dict[str, frozenset[Code]] = {
    "postgresql": frozenset({"23505"}),  # unique_violation (also CockroachDB, YugabyteDB)
    # ER_DUP_ENTRY, ER_DUP_ENTRY_WITH_KEY_NAME, ER_DUP_KEY, ER_DUP_UNIQUE
    "mysql": frozenset({1062, 1586, 1022, 1169}),
    "sqlite": frozenset({2067, 1555}),  # SQLITE_CONSTRAINT_UNIQUE, _PRIMARYKEY
    "oracle": frozenset({1}),  # ORA-00001
    "mssql": frozenset({2627, 2601}),  # constraint, unique index
    "duckdb": frozenset({"duplicate key"}),  # no codes: read from the message (_DUCKDB_MESSAGES)
}

TRANSIENT_CODES: dict[str, frozenset[Code]] = {
    "postgresql": frozenset({"40001", "40P01"}),  # serialization failure, deadlock
    # deadlock (and Galera certification failure), lock wait timeout,
    # "record has changed since last read" (MariaDB snapshot isolation);
    # TiDB: SELECT FOR UPDATE commit conflict, write conflict (stale start
    # timestamp), TiKV write conflict - each documented as "retry the transaction"
    "mysql": frozenset({1213, 1205, 1020, 8002, 8005, 9007}),
    # SQLITE_BUSY, _BUSY_RECOVERY, _BUSY_SNAPSHOT, SQLITE_LOCKED, _LOCKED_SHAREDCACHE
    "sqlite": frozenset({5, 261, 517, 6, 262}),
    "oracle": frozenset({60, 8177}),  # deadlock, can't serialize access
    "mssql": frozenset({1205, 3960}),  # deadlock victim, snapshot update conflict
    # optimistic concurrency: a write-write conflict, a COMMIT meeting a key another
    # transaction committed first
    "duckdb": frozenset({"write conflict", "commit conflict"}),
}


@dataclass(frozen=True)
class DriverError:
    """What a driver said, read the way that driver says it."""

    family: str  # postgresql, mysql, sqlite, oracle, mssql
    driver: str  # the driver's top-level module: asyncpg, psycopg, pymysql, ...
    code: Code | None
    message: str
    constraint: str | None = None
    table: str | None = None
    detail: str | None = None
    exception: BaseException | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class UniqueViolation:
    """A duplicate-key error: what the driver or the message tells of it."""

    code: Code
    driver: str
    family: str
    constraint: str | None
    table: str | None
    columns: tuple[str, ...]
    message: str


# -- reading each driver -------------------------------------------------------


def _message(exc: BaseException) -> str:
    args = exc.args
    if args and isinstance(args[-1], str):
        return args[-1]
    if args and isinstance(args[0], bytes):
        return args[0].decode("utf-8", "replace")
    return str(exc)


def _pg_attrs(family: str) -> Callable[[BaseException, str], DriverError | None]:
    def read(exc: BaseException, driver: str) -> DriverError | None:
        code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
        if not isinstance(code, str):
            return None
        diag = getattr(exc, "diag", None)  # psycopg 3, psycopg2
        constraint = getattr(exc, "constraint_name", None) or getattr(diag, "constraint_name", None)
        table = getattr(exc, "table_name", None) or getattr(diag, "table_name", None)
        detail = getattr(exc, "detail", None) or getattr(diag, "message_detail", None)
        return DriverError(family, driver, code, _message(exc), constraint, table, detail, exc)

    return read


def _pg8000(exc: BaseException, driver: str) -> DriverError | None:
    fields = exc.args[0] if exc.args else None
    if not isinstance(fields, dict) or not isinstance(fields.get("C"), str):
        return None
    return DriverError(
        "postgresql",
        driver,
        fields["C"],
        str(fields.get("M", "")),
        fields.get("n"),
        fields.get("t"),
        fields.get("D"),
        exc,
    )


def _mysql_args(exc: BaseException, driver: str) -> DriverError | None:
    # PyMySQL, aiomysql (raises PyMySQL's classes), asyncmy, mysqlclient: (errno, message)
    args = exc.args
    if len(args) >= 2 and isinstance(args[0], int) and not isinstance(args[0], bool):
        return DriverError("mysql", driver, args[0], str(args[1]), exception=exc)
    return None


def _mysql_errno(exc: BaseException, driver: str) -> DriverError | None:
    # MariaDB Connector/Python: args[0] is only the message; the number is .errno
    errno = getattr(exc, "errno", None)
    if isinstance(errno, int) and errno > 0:
        return DriverError("mysql", driver, errno, _message(exc), exception=exc)
    return None


_SQLITE_MESSAGES = (
    (re.compile(r"^UNIQUE constraint failed: "), 2067),
    (re.compile(r"^PRIMARY KEY must be unique"), 1555),
    (re.compile(r"^columns? .* (is|are) not unique"), 2067),  # SQLite < 3.8.2
    (re.compile(r"^database is locked"), 5),
    (re.compile(r"^database table is locked"), 6),
)


def _sqlite(exc: BaseException, driver: str) -> DriverError | None:
    message = _message(exc)
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(code, int) or code in (19, 0):  # no extended code: read the message
        for pattern, by_message in _SQLITE_MESSAGES:
            if pattern.search(message):
                code = by_message
                break
    if not isinstance(code, int):
        return None
    return DriverError("sqlite", driver, code, message, exception=exc)


_DUCKDB_MESSAGES = (
    (re.compile(r'^Constraint Error: Duplicate key "'), "duplicate key"),
    (re.compile(r"^Constraint Error: NOT NULL constraint failed"), "not null"),
    (re.compile(r"^Constraint Error: CHECK constraint failed"), "check"),
    (re.compile(r"^Constraint Error: Violates foreign key constraint"), "foreign key"),
    (
        re.compile(r"^TransactionContext Error: (Catalog write-write conflict|Conflict on)"),
        "write conflict",
    ),
    (
        re.compile(r"^TransactionContext Error: Failed to commit: .*constraint violation"),
        "commit conflict",
    ),
)


def _duckdb(exc: BaseException, driver: str) -> DriverError | None:
    # no error codes: the kind from the message, else the exception's class name
    # (ConstraintException, TransactionException, ...)
    message = _message(exc)
    code = next((c for pattern, c in _DUCKDB_MESSAGES if pattern.search(message)), None)
    return DriverError("duckdb", "duckdb", code or type(exc).__name__, message, exception=exc)


def _oracle(exc: BaseException, driver: str) -> DriverError | None:
    error = exc.args[0] if exc.args else None
    code = getattr(error, "code", None)
    if not isinstance(code, int):
        return None
    return DriverError("oracle", driver, code, str(getattr(error, "message", error)), exception=exc)


_ODBC_NUMBER = re.compile(r"\((\d+)\)(?: \(SQL\w+\))?\s*$")


def _odbc(exc: BaseException, driver: str) -> DriverError | None:
    # pyodbc / aioodbc: ('23000', '[23000] [Microsoft]...[SQL Server]text (2627) (SQLExecDirectW)')
    message = _message(exc)
    found = _ODBC_NUMBER.search(message)
    if found is None:
        return None
    return DriverError("mssql", driver, int(found.group(1)), message, exception=exc)


def _pymssql(exc: BaseException, driver: str) -> DriverError | None:
    args = exc.args
    if args and isinstance(args[0], int):
        text = (
            args[1].decode("utf-8", "replace")
            if len(args) > 1 and isinstance(args[1], bytes)
            else str(args[-1])
        )
        return DriverError("mssql", driver, args[0], text, exception=exc)
    return None


READERS: dict[str, Callable[[BaseException, str], DriverError | None]] = {
    "asyncpg": _pg_attrs("postgresql"),
    "psycopg": _pg_attrs("postgresql"),
    "psycopg2": _pg_attrs("postgresql"),
    "pg8000": _pg8000,
    # SQLAlchemy's asyncpg adapter re-raises asyncpg errors as its own classes,
    # carrying .sqlstate; the asyncpg error is their __cause__.
    "sqlalchemy.dialects.postgresql": _pg_attrs("postgresql"),
    "pymysql": _mysql_args,
    "asyncmy": _mysql_args,
    "MySQLdb": _mysql_args,
    "mariadb": _mysql_errno,
    "sqlite3": _sqlite,
    "aiosqlite": _sqlite,
    "oracledb": _oracle,
    "cx_Oracle": _oracle,
    "pyodbc": _odbc,
    "aioodbc": _odbc,
    "pymssql": _pymssql,
    "_duckdb": _duckdb,  # duckdb's C extension module
    "duckdb": _duckdb,
    # a DuckDB duplicate that is a transaction conflict (see onconflict.dialects.duckdb)
    "onconflict.dialects.duckdb": _duckdb,
}
"""Module of the exception's class (its longest known prefix) -> how to read it."""


def _reader(
    exc: BaseException,
) -> tuple[str, Callable[[BaseException, str], DriverError | None]] | None:
    module = type(exc).__module__ or ""
    while module:
        reader = READERS.get(module)
        if reader is not None:
            return module.split(".")[0], reader
        module = module.rpartition(".")[0]
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, what SQLAlchemy wrapped (``.orig``) and explicit causes
    (``raise ... from``). Never ``__context__``: an exception raised while
    another was being handled (a ``ValueError`` in an ``except IntegrityError``
    block, a ``KeyError`` while handling "database is locked") is not that error."""
    seen: set[int] = set()
    queue: list[BaseException] = [exc]
    while queue:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for nxt in (getattr(current, "orig", None), current.__cause__):
            if isinstance(nxt, BaseException):
                queue.append(nxt)


def driver_error(exc: BaseException) -> DriverError | None:
    """The first exception in the chain that a known driver raised, read.

    Details the first one lacks (asyncpg's constraint name behind SQLAlchemy's
    adapter) are taken from later ones of the same family.
    """
    found: DriverError | None = None
    for candidate in _chain(exc):
        known = _reader(candidate)
        if known is None:
            continue
        read = known[1](candidate, known[0])
        if read is None:
            continue
        if found is None:
            found = read
        elif read.family == found.family and read.code == found.code:
            found = DriverError(
                found.family,
                found.driver if found.driver != "sqlalchemy" else read.driver,
                found.code,
                found.message,
                found.constraint or read.constraint,
                found.table or read.table,
                found.detail or read.detail,
                found.exception,
            )
    return found


# -- what the message says of the key ------------------------------------------

_PG_KEY = re.compile(r"Key \((?P<cols>.+?)\)=\(")
_PG_CONSTRAINT = re.compile(r'unique constraint "(?P<name>[^"]+)"')
_MYSQL_KEY = re.compile(r"for key '(?:(?P<table>[^'.]+)\.)?(?P<name>[^']+)'")
_MYSQL_TABLE = re.compile(r"table '(?P<table>[^']+)'")
_SQLITE_COLS = re.compile(r"^UNIQUE constraint failed: (?P<cols>.+)$")
_SQLITE_INDEX = re.compile(r"^UNIQUE constraint failed: index '(?P<name>[^']+)'")
_ORACLE = re.compile(
    r"unique constraint \((?:[^.)]+\.)?(?P<name>[^)]+)\) violated"
    r"(?: on table (?:[^.\s]+\.)?(?P<table>\S+) columns \((?P<cols>[^)]*)\))?"
)
_MSSQL_CONSTRAINT = re.compile(r"constraint '(?P<name>[^']+)'")
_MSSQL_INDEX = re.compile(r"unique index '(?P<name>[^']+)'")
_MSSQL_OBJECT = re.compile(r"object '(?P<table>[^']+)'")
_DUCKDB_KEY = re.compile(
    r'^Constraint Error: Duplicate key "(?P<key>.*)" violates (?P<kind>.+?) constraint'
)
_DUCKDB_COLUMN = re.compile(r"(?:^|, )(?P<col>[\w$]+): ")
_IDENT = re.compile(r'^"?[\w$]+"?$')


def _columns(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    cols = tuple(c.strip() for c in text.split(","))
    if all(_IDENT.match(c) for c in cols):
        return tuple(c.strip('"') for c in cols)
    return ()  # expressions: no plain column names to give


Described = tuple[str | None, str | None, tuple[str, ...]]  # constraint, table, columns


def _pg_key(err: DriverError) -> Described:
    key = _PG_KEY.search(err.detail or "") or _PG_KEY.search(err.message)
    columns = _columns(key.group("cols")) if key else ()
    constraint = err.constraint
    if constraint is None and (m := _PG_CONSTRAINT.search(err.message)):
        constraint = m.group("name")
    return constraint, err.table, columns


def _mysql_key(err: DriverError) -> Described:
    if m := _MYSQL_KEY.search(err.message):
        return m.group("name"), m.group("table") or err.table, ()
    if m := _MYSQL_TABLE.search(err.message):
        return err.constraint, m.group("table"), ()
    return err.constraint, err.table, ()


def _sqlite_key(err: DriverError) -> Described:
    if m := _SQLITE_INDEX.search(err.message):
        return m.group("name"), err.table, ()
    if m := _SQLITE_COLS.search(err.message):
        qualified = [c.strip() for c in m.group("cols").split(",")]
        table = qualified[0].rpartition(".")[0] or None
        return err.constraint, table, tuple(c.rpartition(".")[2] for c in qualified)
    return err.constraint, err.table, ()


def _oracle_key(err: DriverError) -> Described:
    if m := _ORACLE.search(err.message):
        return m.group("name"), m.group("table"), _columns(m.group("cols"))
    return err.constraint, err.table, ()


def _mssql_key(err: DriverError) -> Described:
    m = _MSSQL_CONSTRAINT.search(err.message) or _MSSQL_INDEX.search(err.message)
    found = _MSSQL_OBJECT.search(err.message)
    return (m.group("name") if m else None), (found.group("table") if found else err.table), ()


def _duckdb_key(err: DriverError) -> Described:
    # 'Duplicate key "a: 1, b: x" violates unique constraint.': no constraint or table name
    if m := _DUCKDB_KEY.search(err.message):
        return err.constraint, err.table, tuple(_DUCKDB_COLUMN.findall(m.group("key")))
    return err.constraint, err.table, ()


KEY_READERS: dict[str, Callable[[DriverError], Described]] = {
    "postgresql": _pg_key,
    "mysql": _mysql_key,
    "sqlite": _sqlite_key,
    "oracle": _oracle_key,
    "mssql": _mssql_key,
    "duckdb": _duckdb_key,
}
"""Database family -> how its duplicate-key message names the key."""


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


def error_code(exc: BaseException) -> Code | None:
    """The driver's error code (SQLSTATE, errno, ...) anywhere in the chain."""
    err = driver_error(exc)
    return None if err is None else err.code
