"""The classifier against real errors from every driver that can run here.

Each driver produces, against the real server, the error for a duplicate, a
primary-key duplicate, NOT NULL, CHECK, foreign key and a too-long value. Only
the first two may classify as unique, with the right constraint. Oracle and
SQL Server (no server here) get exceptions built from the drivers' real classes
with their real message formats.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

import onconflict
import onconflict.sync
from tests.conftest import DEFAULTS, IN_CI, Backend, require_server, sync_url

KINDS = ["duplicate", "pk_duplicate", "not_null", "check", "foreign_key", "too_long"]

PG_DDL = [
    "DROP TABLE IF EXISTS oc_cls",
    "DROP TABLE IF EXISTS oc_cls_parent",
    "CREATE TABLE oc_cls_parent (id INTEGER PRIMARY KEY)",
    "CREATE TABLE oc_cls (id INTEGER CONSTRAINT oc_cls_pkey PRIMARY KEY,"
    " email VARCHAR(5) NOT NULL CONSTRAINT uq_cls_email UNIQUE,"
    " pid INTEGER CONSTRAINT fk_cls_pid REFERENCES oc_cls_parent (id),"
    " n INTEGER CONSTRAINT ck_cls_n CHECK (n > 0))",
    "INSERT INTO oc_cls VALUES (1, 'a', NULL, 1)",
]
MYSQL_DDL = [
    "DROP TABLE IF EXISTS oc_cls",
    "DROP TABLE IF EXISTS oc_cls_parent",
    "CREATE TABLE oc_cls_parent (id INTEGER PRIMARY KEY)",
    "CREATE TABLE oc_cls (id INTEGER PRIMARY KEY, email VARCHAR(5) NOT NULL,"
    " pid INTEGER, n INTEGER,"
    " CONSTRAINT uq_cls_email UNIQUE (email),"
    " CONSTRAINT fk_cls_pid FOREIGN KEY (pid) REFERENCES oc_cls_parent (id),"
    " CONSTRAINT ck_cls_n CHECK (n > 0))",
    "INSERT INTO oc_cls VALUES (1, 'a', NULL, 1)",
]
SQLITE_DDL = [
    "PRAGMA foreign_keys = ON",
    "CREATE TABLE oc_cls_parent (id INTEGER PRIMARY KEY)",
    # SQLite has no length limit: a CHECK stands in for "too long"
    "CREATE TABLE oc_cls (id INTEGER PRIMARY KEY, email VARCHAR(5) NOT NULL UNIQUE"
    " CHECK (length(email) <= 5), pid INTEGER REFERENCES oc_cls_parent (id),"
    " n INTEGER CONSTRAINT ck_cls_n CHECK (n > 0))",
    "INSERT INTO oc_cls VALUES (1, 'a', NULL, 1)",
]
ROWS = {
    "duplicate": "(2, 'a', NULL, 1)",
    "pk_duplicate": "(1, 'b', NULL, 1)",
    "not_null": "(3, NULL, NULL, 1)",
    "check": "(3, 'c', NULL, 0)",
    "foreign_key": "(3, 'c', 99, 1)",
    "too_long": "(3, 'toolong', NULL, 1)",
}
EXPECTED = {  # family: (duplicate constraint, pk constraint, duplicate columns, pk columns,
    #                   the table named, when the error names it)
    "postgresql": ("uq_cls_email", "oc_cls_pkey", ("email",), ("id",), "oc_cls"),
    "mysql": ("uq_cls_email", "PRIMARY", (), (), None),
    "sqlite": (None, None, ("email",), ("id",), "oc_cls"),
}


def insert(kind: str) -> str:
    return f"INSERT INTO oc_cls VALUES {ROWS[kind]}"  # constant test SQL, no input


def url(name: str) -> str:
    env, default = DEFAULTS[name]
    value = os.environ.get(env, default)
    require_server(name, value)
    return value


def need(module: str) -> Any:
    """Import a driver; in CI a missing driver fails, elsewhere it skips."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if IN_CI:
            pytest.fail(f"driver {module} is not installed: {exc}", pytrace=False)
        pytest.skip(f"driver {module} is not installed")


def dsn(name: str) -> dict[str, Any]:
    u = make_url(url(name))
    return {
        "host": u.host or "127.0.0.1",
        "port": u.port,
        "user": u.username,
        "password": u.password or "",
        "database": u.database,
    }


# -- producing the errors: one function per driver -------------------------------

SyncProducer = Callable[[list[str]], list[BaseException | None]]
AsyncProducer = Callable[[list[str]], Awaitable[list[BaseException | None]]]


def _run_dbapi(conn: Any, ddl: list[str], statements: list[str]) -> list[BaseException | None]:
    cur = conn.cursor()
    for stmt in ddl:
        cur.execute(stmt)
    conn.commit()
    out: list[BaseException | None] = []
    for stmt in statements:
        try:
            cur.execute(stmt)
            out.append(None)
        except Exception as exc:
            out.append(exc)
        conn.rollback()
    conn.close()
    return out


# Sync DB-API drivers: (module, server, classifier family, DDL, default port,
# connect keyword for the database name)
DBAPI_DRIVERS = {
    "psycopg2": ("psycopg2", "postgresql", "postgresql", PG_DDL, 5432, "dbname"),
    "psycopg": ("psycopg", "postgresql", "postgresql", PG_DDL, 5432, "dbname"),
    "pg8000": ("pg8000.dbapi", "postgresql", "postgresql", PG_DDL, 5432, "database"),
    "pymysql": ("pymysql", "mariadb", "mysql", MYSQL_DDL, 3306, "database"),
    "mysqlclient": ("MySQLdb", "mariadb", "mysql", MYSQL_DDL, 3306, "database"),
    "mariadb-connector": ("mariadb", "mariadb", "mysql", MYSQL_DDL, 3306, "database"),
}


def dbapi_errors(driver: str, statements: list[str]) -> list[BaseException | None]:
    module, server, _family, ddl, default_port, db_keyword = DBAPI_DRIVERS[driver]
    mod = need(module)
    d = dsn(server)
    password = d["password"] or (None if driver == "pg8000" else "")
    conn = mod.connect(
        host=d["host"],
        port=d["port"] or default_port,
        user=d["user"],
        password=password,
        **{db_keyword: d["database"]},
    )
    return _run_dbapi(conn, ddl, statements)


def sqlite3_errors(statements: list[str], path: Path) -> list[BaseException | None]:
    return _run_dbapi(sqlite3.connect(path), SQLITE_DDL, statements)


async def asyncpg_errors(statements: list[str]) -> list[BaseException | None]:
    mod = need("asyncpg")
    d = dsn("postgresql")
    conn = await mod.connect(
        host=d["host"],
        port=d["port"],
        user=d["user"],
        password=d["password"] or None,
        database=d["database"],
    )
    for stmt in PG_DDL:
        await conn.execute(stmt)
    out: list[BaseException | None] = []
    for stmt in statements:
        try:
            await conn.execute(stmt)
            out.append(None)
        except Exception as exc:
            out.append(exc)
    await conn.close()
    return out


async def async_mysql_errors(driver: str, statements: list[str]) -> list[BaseException | None]:
    """aiomysql and asyncmy differ only in the name of the database keyword and
    in whether cursor() is a coroutine."""
    mod = need(driver)
    d = dsn("mariadb")
    conn = await mod.connect(
        host=d["host"],
        port=d["port"] or 3306,
        user=d["user"],
        password=d["password"],
        **{"db" if driver == "aiomysql" else "database": d["database"]},
    )
    cursor = conn.cursor()
    if driver == "aiomysql":
        cursor = await cursor
    return await _run_async_cursor(conn, cursor, statements)


async def _run_async_cursor(
    conn: Any, cur: Any, statements: list[str]
) -> list[BaseException | None]:
    for stmt in MYSQL_DDL:
        await cur.execute(stmt)
    await conn.commit()
    out: list[BaseException | None] = []
    for stmt in statements:
        try:
            await cur.execute(stmt)
            out.append(None)
        except Exception as exc:
            out.append(exc)
        await conn.rollback()
    conn.close()
    return out


async def sqlalchemy_errors(
    engine_url: str, ddl: list[str], statements: list[str]
) -> list[BaseException | None]:
    engine = create_async_engine(engine_url)
    out: list[BaseException | None] = []
    try:
        async with engine.begin() as conn:
            for stmt in ddl:
                await conn.exec_driver_sql(stmt)
        for stmt in statements:
            try:
                async with engine.begin() as conn:
                    await conn.exec_driver_sql(stmt)
                out.append(None)
            except Exception as exc:
                out.append(exc)
    finally:
        await engine.dispose()
    return out


def sync_sqlalchemy_errors(
    engine_url: str, ddl: list[str], statements: list[str]
) -> list[BaseException | None]:
    engine = sa.create_engine(engine_url)
    out: list[BaseException | None] = []
    try:
        with engine.begin() as conn:
            for stmt in ddl:
                conn.exec_driver_sql(stmt)
        for stmt in statements:
            try:
                with engine.begin() as conn:
                    conn.exec_driver_sql(stmt)
                out.append(None)
            except Exception as exc:
                out.append(exc)
    finally:
        engine.dispose()
    return out


async def produce(driver: str, tmp_path: Path) -> tuple[str, list[BaseException | None]]:
    statements = [insert(kind) for kind in KINDS]
    sqlite_file = tmp_path / "cls.db"
    if driver == "asyncpg":
        return "postgresql", await asyncpg_errors(statements)
    if driver == "sqlalchemy+asyncpg":
        return "postgresql", await sqlalchemy_errors(url("postgresql"), PG_DDL, statements)
    if driver == "sqlalchemy+psycopg":
        return "postgresql", sync_sqlalchemy_errors(sync_url(url("postgresql")), PG_DDL, statements)
    if driver in ("aiomysql", "asyncmy"):
        return "mysql", await async_mysql_errors(driver, statements)
    if driver == "sqlalchemy+aiomysql":
        return "mysql", await sqlalchemy_errors(url("mariadb"), MYSQL_DDL, statements)
    if driver == "aiosqlite":
        return "sqlite", await sqlalchemy_errors(
            f"sqlite+aiosqlite:///{sqlite_file}", SQLITE_DDL, statements
        )
    if driver == "sqlite3":
        return "sqlite", await asyncio.to_thread(sqlite3_errors, statements, sqlite_file)
    family = DBAPI_DRIVERS[driver][2]
    return family, await asyncio.to_thread(dbapi_errors, driver, statements)


DRIVERS = [
    pytest.param("asyncpg", marks=pytest.mark.postgresql),
    pytest.param("sqlalchemy+asyncpg", marks=pytest.mark.postgresql),
    pytest.param("sqlalchemy+psycopg", marks=pytest.mark.postgresql),
    pytest.param("psycopg2", marks=pytest.mark.postgresql),
    pytest.param("psycopg", marks=pytest.mark.postgresql),
    pytest.param("pg8000", marks=pytest.mark.postgresql),
    pytest.param("pymysql", marks=pytest.mark.mariadb),
    pytest.param("aiomysql", marks=pytest.mark.mariadb),
    pytest.param("asyncmy", marks=pytest.mark.mariadb),
    pytest.param("sqlalchemy+aiomysql", marks=pytest.mark.mariadb),
    pytest.param("mysqlclient", marks=[pytest.mark.mariadb, pytest.mark.compiled_driver]),
    pytest.param("mariadb-connector", marks=[pytest.mark.mariadb, pytest.mark.compiled_driver]),
    pytest.param("sqlite3"),
    pytest.param("aiosqlite"),
]


@pytest.mark.parametrize("driver", DRIVERS)
async def test_real_errors_classify(driver: str, tmp_path: Path) -> None:
    family, errors = await produce(driver, tmp_path)
    got = dict(zip(KINDS, errors, strict=True))
    assert all(isinstance(e, BaseException) for e in got.values()), got
    dup_name, pk_name, dup_cols, pk_cols, table = EXPECTED[family]

    dup = onconflict.unique_violation(got["duplicate"])  # type: ignore[arg-type]
    assert dup is not None
    assert (dup.family, dup.constraint, dup.columns) == (family, dup_name, dup_cols)
    assert dup.code in onconflict.classify.UNIQUE_CODES[family]
    assert dup.driver != "sqlalchemy"  # the real driver's name, even behind an adapter
    pk = onconflict.unique_violation(got["pk_duplicate"])  # type: ignore[arg-type]
    assert pk is not None
    assert (pk.constraint, pk.columns) == (pk_name, pk_cols)
    if table is not None:
        assert dup.table == table

    for kind in ("not_null", "check", "foreign_key", "too_long"):
        exc = got[kind]
        assert exc is not None
        assert onconflict.unique_violation(exc) is None, (kind, exc)
        assert not onconflict.is_unique_violation(exc)
        assert not onconflict.is_transient(exc)


def test_non_database_errors_are_not_classified() -> None:
    for exc in (ValueError("Duplicate entry 'a' for key 'x'"), KeyError(1062), RuntimeError()):
        assert onconflict.unique_violation(exc) is None
        assert not onconflict.is_transient(exc)
    # the class alone never decides: an IntegrityError with a NOT NULL errno
    pymysql = need("pymysql")
    assert not onconflict.is_unique_violation(
        pymysql.err.IntegrityError(1048, "Column 'a' cannot be null")
    )
    # nor args[0] alone: MariaDB Connector/Python puts the message there
    assert not onconflict.is_unique_violation(pymysql.err.OperationalError("1062"))


# -- drivers whose servers cannot run here: real classes, real message formats ----


def oracle_error(cls_name: str, code: int, message: str) -> BaseException:
    oracledb = need("oracledb")
    errors = importlib.import_module("oracledb.errors")
    # python-oracledb raises its exception classes with an _Error in args[0]
    return getattr(oracledb, cls_name)(errors._Error(message=message, code=code))


@pytest.mark.parametrize(
    ("exc_args", "unique", "transient", "constraint", "columns"),
    [
        pytest.param(
            ("IntegrityError", 1, "ORA-00001: unique constraint (APP.UQ_USERS_EMAIL) violated"),
            True,
            False,
            "UQ_USERS_EMAIL",
            (),
            id="unique-constraint",
        ),
        pytest.param(
            (
                "IntegrityError",
                1,
                "ORA-00001: unique constraint (APP.UQ_USERS_EMAIL) violated"
                " on table APP.USERS columns (EMAIL)",
            ),
            True,
            False,
            "UQ_USERS_EMAIL",
            ("EMAIL",),
            id="unique-constraint-with-columns",
        ),
        pytest.param(
            ("IntegrityError", 1400, 'ORA-01400: cannot insert NULL into ("APP"."USERS"."NAME")'),
            False,
            False,
            None,
            (),
            id="not-null",
        ),
        pytest.param(
            ("IntegrityError", 2290, "ORA-02290: check constraint (APP.CK_NAME) violated"),
            False,
            False,
            None,
            (),
            id="check",
        ),
        pytest.param(
            (
                "IntegrityError",
                2291,
                "ORA-02291: integrity constraint (APP.FK_PID) violated - parent key not found",
            ),
            False,
            False,
            None,
            (),
            id="foreign-key",
        ),
        pytest.param(
            (
                "DatabaseError",
                12899,
                'ORA-12899: value too large for column "APP"."USERS"."NAME"'
                " (actual: 11, maximum: 5)",
            ),
            False,
            False,
            None,
            (),
            id="too-long",
        ),
        pytest.param(
            ("DatabaseError", 60, "ORA-00060: deadlock detected while waiting for resource"),
            False,
            True,
            None,
            (),
            id="deadlock",
        ),
        pytest.param(
            ("DatabaseError", 8177, "ORA-08177: can't serialize access for this transaction"),
            False,
            True,
            None,
            (),
            id="serialization-failure",
        ),
    ],
)
def test_oracle(
    exc_args: tuple[str, int, str],
    unique: bool,
    transient: bool,
    constraint: str | None,
    columns: tuple[str, ...],
) -> None:
    exc = oracle_error(*exc_args)
    wrapped = sa.exc.DBAPIError.instance("INSERT INTO users ...", {}, exc, Exception)
    for candidate in (exc, wrapped):
        violation = onconflict.unique_violation(candidate)
        assert (violation is not None) is unique
        assert onconflict.is_transient(candidate) is transient
        if violation is not None:
            assert (violation.family, violation.code, violation.driver) == ("oracle", 1, "oracledb")
            assert (violation.constraint, violation.columns) == (constraint, columns)


ODBC = (
    "[{state}] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]{text}"
    " ({number}) (SQLExecDirectW)"
)


@pytest.mark.compiled_driver
@pytest.mark.parametrize(
    ("cls_name", "state", "number", "text", "unique", "transient", "constraint"),
    [
        pytest.param(
            "IntegrityError",
            "23000",
            2627,
            "Violation of UNIQUE KEY constraint 'uq_users_email'."
            " Cannot insert duplicate key in object 'dbo.users'. The duplicate key value is (a@x).",
            True,
            False,
            "uq_users_email",
            id="unique-key-constraint",
        ),
        pytest.param(
            "IntegrityError",
            "23000",
            2627,
            "Violation of PRIMARY KEY constraint 'PK_users'."
            " Cannot insert duplicate key in object 'dbo.users'. The duplicate key value is (1).",
            True,
            False,
            "PK_users",
            id="primary-key",
        ),
        pytest.param(
            "IntegrityError",
            "23000",
            2601,
            "Cannot insert duplicate key row in object 'dbo.users'"
            " with unique index 'ix_users_email'. The duplicate key value is (a@x).",
            True,
            False,
            "ix_users_email",
            id="unique-index",
        ),
        pytest.param(
            "IntegrityError",
            "23000",
            515,
            "Cannot insert the value NULL into column 'name', table"
            " 'app.dbo.users'; column does not allow nulls. INSERT fails.",
            False,
            False,
            None,
            id="not-null",
        ),
        pytest.param(
            "IntegrityError",
            "23000",
            547,
            "The INSERT statement conflicted with the FOREIGN KEY"
            ' constraint "fk_pid". The conflict occurred in database "app", table "dbo.parent",'
            " column 'id'.",
            False,
            False,
            None,
            id="foreign-key",
        ),
        pytest.param(
            "IntegrityError",
            "23000",
            547,
            "The INSERT statement conflicted with the CHECK"
            ' constraint "ck_name". The conflict occurred in database "app", table "dbo.users",'
            " column 'name'.",
            False,
            False,
            None,
            id="check",
        ),
        pytest.param(
            "DataError",
            "22001",
            2628,
            "String or binary data would be truncated in table"
            " 'app.dbo.users', column 'name'. Truncated value: 'toolo'.",
            False,
            False,
            None,
            id="truncated",
        ),
        pytest.param(
            "OperationalError",
            "40001",
            1205,
            "Transaction (Process ID 57) was deadlocked on lock"
            " resources with another process and has been chosen as the deadlock victim."
            " Rerun the transaction.",
            False,
            True,
            None,
            id="deadlock",
        ),
    ],
)
def test_sql_server_pyodbc(
    cls_name: str,
    state: str,
    number: int,
    text: str,
    unique: bool,
    transient: bool,
    constraint: str | None,
) -> None:
    pyodbc = need("pyodbc")
    exc = getattr(pyodbc, cls_name)(state, ODBC.format(state=state, text=text, number=number))
    wrapped = sa.exc.DBAPIError.instance("INSERT INTO users ...", {}, exc, pyodbc.Error)
    for candidate in (exc, wrapped):
        violation = onconflict.unique_violation(candidate)
        assert (violation is not None) is unique
        assert onconflict.is_transient(candidate) is transient
        if violation is not None:
            assert (violation.family, violation.code) == ("mssql", number)
            assert (violation.constraint, violation.table) == (constraint, "dbo.users")


# -- transient errors, provoked for real ------------------------------------------


@pytest.mark.postgresql
async def test_postgresql_deadlock_and_serialization_failure_are_transient() -> None:
    asyncpg = need("asyncpg")
    d = dsn("postgresql")
    kw = {"host": d["host"], "port": d["port"], "user": d["user"], "database": d["database"]}
    a, b = await asyncpg.connect(**kw), await asyncpg.connect(**kw)
    try:
        await a.execute(
            "DROP TABLE IF EXISTS oc_lock; CREATE TABLE oc_lock (id int primary key, v int)"
        )
        await a.execute("INSERT INTO oc_lock VALUES (1, 0), (2, 0)")
        # deadlock: a locks 1 then 2, b locks 2 then 1
        ta, tb = a.transaction(), b.transaction()
        await ta.start()
        await tb.start()
        await a.execute("UPDATE oc_lock SET v = 1 WHERE id = 1")
        await b.execute("UPDATE oc_lock SET v = 1 WHERE id = 2")
        results = await asyncio.gather(
            a.execute("UPDATE oc_lock SET v = 2 WHERE id = 2"),
            b.execute("UPDATE oc_lock SET v = 2 WHERE id = 1"),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1
        assert errors[0].sqlstate == "40P01"
        assert onconflict.is_transient(errors[0])
        assert not onconflict.is_unique_violation(errors[0])
        await ta.rollback()
        await tb.rollback()
        # serialization failure: a's snapshot predates b's committed row
        ta = a.transaction(isolation="repeatable_read")
        await ta.start()
        await a.fetchval("SELECT 1")
        await b.execute("INSERT INTO oc_lock VALUES (3, 0)")
        with pytest.raises(asyncpg.SerializationError) as info:
            await a.execute("INSERT INTO oc_lock VALUES (3, 0) ON CONFLICT DO NOTHING")
        assert onconflict.is_transient(info.value)
        await ta.rollback()
    finally:
        await a.execute("DROP TABLE IF EXISTS oc_lock")
        await a.close()
        await b.close()


@pytest.mark.mariadb
async def test_mariadb_deadlock_and_lock_wait_timeout_are_transient() -> None:
    aiomysql = need("aiomysql")
    d = dsn("mariadb")
    kw = {
        "host": d["host"],
        "port": d["port"] or 3306,
        "user": d["user"],
        "password": d["password"],
        "db": d["database"],
    }
    a, b = await aiomysql.connect(**kw), await aiomysql.connect(**kw)
    ca, cb = await a.cursor(), await b.cursor()
    try:
        await ca.execute("DROP TABLE IF EXISTS oc_lock")
        await ca.execute("CREATE TABLE oc_lock (id int primary key, v int)")
        await ca.execute("INSERT INTO oc_lock VALUES (1, 0), (2, 0)")
        await a.commit()
        await ca.execute("UPDATE oc_lock SET v = 1 WHERE id = 1")
        await cb.execute("UPDATE oc_lock SET v = 1 WHERE id = 2")
        results = await asyncio.gather(
            ca.execute("UPDATE oc_lock SET v = 2 WHERE id = 2"),
            cb.execute("UPDATE oc_lock SET v = 2 WHERE id = 1"),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert [e.args[0] for e in errors] == [1213]
        assert onconflict.is_transient(errors[0])
        await a.rollback()
        await b.rollback()
        await cb.execute("SET SESSION innodb_lock_wait_timeout = 1")
        await ca.execute("UPDATE oc_lock SET v = 3 WHERE id = 1")
        with pytest.raises(aiomysql.OperationalError) as info:
            await cb.execute("UPDATE oc_lock SET v = 4 WHERE id = 1")
        assert info.value.args[0] == 1205
        assert onconflict.is_transient(info.value)
        await a.rollback()
        await b.rollback()
    finally:
        await ca.execute("DROP TABLE IF EXISTS oc_lock")
        a.close()
        b.close()


def test_sqlite_busy_is_transient(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError) as info:
        other.execute("BEGIN IMMEDIATE")
    assert onconflict.is_transient(info.value)
    assert not onconflict.is_unique_violation(info.value)
    holder.rollback()
    holder.close()
    other.close()


# -- distributed engines we cannot run here: their errors, from the real driver classes --


@pytest.mark.parametrize(
    ("code", "message", "transient"),
    [
        pytest.param(
            9007,
            "Write conflict, txnStartTS=1, conflictStartTS=2 [try again later]",
            True,
            id="write-conflict",
        ),
        pytest.param(8005, "Write Conflict, txnStartTS is stale", True, id="stale-write-conflict"),
        pytest.param(
            8002,
            "[tikv:8002] can not retry select for update statement",
            True,
            id="cannot-retry-select-for-update",
        ),
        pytest.param(
            1062, "Duplicate entry 'a' for key 'users.email'", False, id="duplicate-entry"
        ),
    ],
)
def test_tidb_write_conflicts_are_transient(code: int, message: str, transient: bool) -> None:
    """TiDB speaks the MySQL protocol; its own conflict codes mean "retry the
    transaction" (docs.pingcap.com, Error Codes and Troubleshooting)."""
    import pymysql

    cls = pymysql.err.IntegrityError if code == 1062 else pymysql.err.OperationalError
    exc = cls(code, message)
    wrapped = sa.exc.DBAPIError.instance("INSERT INTO users ...", {}, exc, pymysql.err.Error)
    for candidate in (exc, wrapped):
        assert onconflict.is_transient(candidate) is transient
        assert onconflict.is_unique_violation(candidate) is (code == 1062)


def test_cockroachdb_retry_error_is_transient_but_ambiguous_result_is_not() -> None:
    """CockroachDB: 40001 ("restart transaction") is re-run; 40003 (statement
    completion unknown) is not, since the work may have committed."""
    import asyncpg

    retry = asyncpg.exceptions.SerializationError(
        "restart transaction: TransactionRetryWithProtoRefreshError: WriteTooOldError"
    )
    unknown = asyncpg.exceptions.StatementCompletionUnknownError("result is ambiguous")
    assert onconflict.is_transient(retry)
    assert not onconflict.is_transient(unknown)
    assert not onconflict.is_unique_violation(unknown)


# -- errors raised while handling a database error are not that error ------------


def _table(engine: sa.Engine) -> sa.Table:
    md = sa.MetaData()
    t = sa.Table(
        "oc_ctx",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("email", sa.String(20), unique=True),
    )
    md.drop_all(engine)
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(t.insert(), [{"id": 1, "email": "a"}, {"id": 2, "email": "b"}])
    return t


async def test_error_raised_while_handling_a_duplicate_is_not_one(backend: Backend) -> None:
    """A ValueError raised inside ``except IntegrityError:`` is a bug of the
    handler, not a duplicate; ``raise ... from`` still says it is."""
    engine = backend.sync_engine()
    try:
        t = _table(engine)
        with engine.connect() as conn:
            try:
                conn.execute(t.insert().values(id=3, email="a"))
            except sa.exc.IntegrityError as dup:
                real = dup
                try:
                    raise ValueError("bug in the handler")
                except ValueError as bug:
                    handler_bug = bug
                try:
                    raise onconflict.OnConflictError("wrapped") from dup
                except onconflict.OnConflictError as wrapped:
                    caused = wrapped
        assert onconflict.is_unique_violation(real)
        assert handler_bug.__context__ is real
        assert not onconflict.is_unique_violation(handler_bug)
        assert onconflict.unique_violation(handler_bug) is None
        assert onconflict.classify.error_code(handler_bug) is None
        assert onconflict.is_unique_violation(caused)  # an explicit cause is followed
    finally:
        engine.dispose()


@pytest.mark.needs("transient")
async def test_retrying_does_not_rerun_a_bug_raised_while_handling_a_transient_error(
    backend: Backend,
) -> None:
    transient = backend.transient
    assert transient is not None
    engine = backend.sync_engine(connect_args=dict(transient.connect_args))
    try:
        t = _table(engine)
        calls: list[BaseException] = []

        def handler(conn: sa.Connection) -> None:
            with transient.hold(engine, t):
                try:
                    transient.provoke(conn, t)
                except sa.exc.DBAPIError as exc:
                    calls.append(exc)
                    raise KeyError("bug in the handler")  # noqa: B904
            raise AssertionError("the write was expected to fail")

        with pytest.raises(KeyError) as info:
            onconflict.sync.retrying(engine, handler, retry=onconflict.Retry(attempts=3))
        assert len(calls) == 1  # run once: the KeyError is not transient
        assert onconflict.is_transient(calls[0])  # the error it was handling is
        assert info.value.__context__ is calls[0]
        assert not onconflict.is_transient(info.value)

        def plain(conn: sa.Connection) -> None:  # the same error, re-raised as it is
            with transient.hold(engine, t):
                try:
                    transient.provoke(conn, t)
                except sa.exc.DBAPIError as exc:
                    calls.append(exc)
                    raise

        calls.clear()
        with pytest.raises(sa.exc.DBAPIError):
            onconflict.sync.retrying(engine, plain, retry=onconflict.Retry(attempts=2, delay=0))
        assert len(calls) == 2  # a transient error is retried
        assert all(map(onconflict.is_transient, calls))
    finally:
        engine.dispose()
