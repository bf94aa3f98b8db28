"""The databases the suite runs on, each declared once with the facts generic
tests ask of it.

A generic test never branches on a database's name: it reads a fact
(``backend.partial_indexes``, ``backend.error_codes["check"]``, ...) or asks
for one with ``@pytest.mark.needs("concurrent_writers")``, and runs on every
entry of ``BACKENDS`` that has it. A test about one database's own mechanism
(MariaDB's warning guard, PostgreSQL's COPY path, SQLite's driver path) says so
with ``@pytest.mark.databases("mariadb")``. Adding a database is one entry
here (and its URL in ``SERVERS`` if it has a server).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import CITEXT
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from onconflict.classify import error_code
from onconflict.dialects.mysql import seed_lock_name

SYNC_DRIVERS = {
    "asyncpg": "psycopg",
    "psycopg_async": "psycopg",
    "aiomysql": "pymysql",
    "asyncmy": "pymysql",
    "aiosqlite": "pysqlite",
    "oc_blocking": "",  # DuckDB: tests/duckdb_backend.py's adapter; duckdb-engine itself
}

SEED_LOCK = "onconflict.seed"  # the name seed() locks by default


def sync_url(url: str) -> str:
    u = make_url(url)
    backend, _, driver = u.drivername.partition("+")
    sync = SYNC_DRIVERS.get(driver, driver)
    return u.set(drivername=f"{backend}+{sync}" if sync else backend).render_as_string(
        hide_password=False
    )


def driver_code(exc: BaseException) -> Any:
    """The driver's code of a database error: MySQL's errno (its sqlstate is a
    generic 23000), PostgreSQL's SQLSTATE, SQLite's extended result code; else
    the classifier's reading of it (DuckDB has no codes: the kind its message
    names, such as ``"not null"``)."""
    orig = getattr(exc, "orig", None)
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0]
    for attr in ("sqlstate", "sqlite_errorcode"):
        code = getattr(orig, attr, None)
        if code is not None:
            return code
    return error_code(exc)


# -- what differs between databases, as hooks -------------------------------------------


@dataclass(frozen=True)
class Transient:
    """How to provoke a real transient error: ``hold`` (a context manager) takes,
    on another connection, what the next write on the engine needs;
    ``provoke`` then runs that write on the given connection, inside its
    transaction. ``connect_args`` make the engine give up at once."""

    hold: Callable[[Engine, sa.Table], contextlib.AbstractContextManager[None]]
    provoke: Callable[[sa.Connection, sa.Table], None]
    connect_args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SeedLock:
    """Take and let go of seed()'s database lock as another replica would."""

    take: Callable[[sa.Connection], object]
    release: Callable[[sa.Connection], object] = lambda conn: None


@dataclass(frozen=True)
class Killer:
    """Find another session of this database whose transaction has written,
    and end its connection (raw SQL: server administration statements)."""

    find: str
    kill: str


@dataclass(frozen=True)
class Backend:
    """One database the suite runs on: its name (the test id and the pytest
    marker of server databases), its async URL, and its facts."""

    name: str
    dialect: str  # SQLAlchemy's name of its dialect
    url: str = ""  # async driver URL; set per test by the backend fixture
    server: bool = True  # a server (URL, connections, passwords); False: embedded
    concurrent_writers: bool = True  # False: writers are serialised (no interleaving)
    writer_processes: bool = True  # several processes may write at once (DuckDB: one)
    lock_waits: bool = True
    """A writer waits for another transaction's uncommitted key or row (DuckDB
    instead fails one of the two at once: optimistic concurrency)."""
    savepoints: bool = True  # SAVEPOINT (strategy="classify", a session's nested work)
    identity_columns: bool = True  # sa.Identity() (GENERATED ... AS IDENTITY, or its stand-in)
    schemas: bool = True  # tables in another schema, no set-up per connection
    case_insensitive_keys: bool = True
    """A unique key can compare case-insensitively (``ci_string``,
    ``ci_collation``; DuckDB's unique indexes compare bytes, whatever the
    collation)."""
    benchmarks: bool = True  # benchmarks/ runs on it (its peers, its URL)
    partial_indexes: bool = True
    expression_indexes: bool = True
    partitioned_tables: bool = False  # PARTITION BY / PARTITION OF
    folds_case: bool = False  # the default collation ignores case ('ABC' is 'abc')
    enforces_length: bool = True  # False: VARCHAR(n) stores longer text as given
    error_aborts_transaction: bool = False  # any error dooms the whole transaction
    returning_optional: bool = True  # onconflict has a path without RETURNING for it
    text_holds_nul: bool = True  # text values may contain NUL
    guarded_ignore: bool = False  # INSERT IGNORE coerces bad rows (onconflict guards it)
    # driver codes of a NOT NULL / CHECK / FOREIGN KEY / too-long violation (None: none)
    error_codes: Mapping[str, str | int | None] = field(default_factory=dict)
    isolation_levels: tuple[str, ...] = ()  # levels of its own (not mapped to another)
    greatest: Callable[..., Any] = sa.func.greatest  # two-argument maximum
    ci_string: Callable[[], Any] = lambda: sa.String(20)  # a case-insensitive key type
    ci_setup: tuple[str, ...] = ()  # statements ci_string needs first
    ci_collation: Callable[[], Any] = lambda: sa.String(20)  # a string, case-insensitive collation
    ci_collation_setup: tuple[str, ...] = ()  # statements ci_collation needs first
    property_examples: int = 15  # Hypothesis examples of the property tests
    transient: Transient | None = None
    seed_lock: SeedLock | None = None
    killer: Killer | None = None  # None: no server connection to kill
    env: str = ""  # the URL's environment variable (servers)
    default_url: str = ""
    embedded_url: str = ""  # embedded databases: the URL of a file in the folder {dir}
    on_connect: tuple[str, ...] = ()  # statements run on every new DBAPI connection
    engine_args: Mapping[str, Any] = field(default_factory=dict)  # defaults for engines
    pool_args: bool = True  # False: pool_size / max_overflow do not apply
    imports: tuple[str, ...] = ()
    """Modules the URL needs (a test-side dialect); missing: as a server that
    does not answer."""

    def at(self, url: str) -> Backend:
        return dataclasses.replace(self, url=url)

    @property
    def sync_url(self) -> str:
        return sync_url(self.url)

    def async_engine(self, **kw: Any) -> AsyncEngine:
        engine = create_async_engine(self.url, **self._engine_args(kw))
        self._listen(engine.sync_engine)
        return engine

    def sync_engine(self, **kw: Any) -> Engine:
        engine = sa.create_engine(self.sync_url, **self._engine_args(kw))
        self._listen(engine)
        return engine

    def _engine_args(self, kw: dict[str, Any]) -> dict[str, Any]:
        if not self.pool_args:
            kw.pop("pool_size", None)
            kw.pop("max_overflow", None)
        for key, value in self.engine_args.items():
            kw.setdefault(key, value)
        return kw

    def _listen(self, engine: Engine) -> None:
        if not self.on_connect:
            return
        statements = self.on_connect

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            for statement in statements:
                cur.execute(statement)
            cur.close()


# -- SQLite ---------------------------------------------------------------------------


@contextlib.contextmanager
def _sqlite_hold(engine: Engine, _t: sa.Table) -> Iterator[None]:
    holder = sqlite3.connect(engine.url.database or "", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        holder.rollback()
        holder.close()


def _update_first(conn: sa.Connection, t: sa.Table) -> None:
    conn.execute(t.update().where(t.c.id == 1).values(email="d"))


def _begin_immediate(conn: sa.Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


SQLITE = Backend(
    "sqlite",
    "sqlite",
    server=False,
    schemas=False,  # another schema is an ATTACHed file, per connection
    concurrent_writers=False,
    enforces_length=False,
    error_codes={"not_null": 1299, "check": 275, "foreign_key": 787, "too_long": None},
    isolation_levels=("SERIALIZABLE",),
    greatest=sa.func.max,  # SQLite's two-argument max() is its greatest()
    ci_string=lambda: sa.String(20, collation="NOCASE"),
    ci_collation=lambda: sa.String(20, collation="NOCASE"),
    property_examples=40,
    transient=Transient(_sqlite_hold, _update_first, {"timeout": 0}),
    seed_lock=SeedLock(_begin_immediate),
    on_connect=("PRAGMA foreign_keys=ON", "PRAGMA journal_mode=WAL"),
    engine_args={"connect_args": {"timeout": 60}},
    pool_args=False,
    embedded_url="sqlite+aiosqlite:///{dir}/test.db",
)

# -- PostgreSQL -----------------------------------------------------------------------


@contextlib.contextmanager
def _pg_hold(engine: Engine, _t: sa.Table) -> Iterator[None]:
    with engine.connect() as holder:
        yield  # a row committed after the other side's snapshot (see _pg_provoke)
        holder.rollback()


def _pg_provoke(conn: sa.Connection, t: sa.Table) -> None:
    """A serialization failure: a row committed after this snapshot, then written."""
    conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
    conn.execute(sa.select(1))
    with conn.engine.begin() as other:  # (again on a later attempt)
        other.execute(t.delete().where(t.c.id == 3))
        other.execute(t.insert().values(id=3, email="z"))
    stmt: Any = sa.dialects.postgresql.insert(t).values(id=3, email="z")
    conn.execute(stmt.on_conflict_do_nothing())


def _pg_seed_lock(conn: sa.Connection) -> None:
    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(SEED_LOCK))))


POSTGRESQL = Backend(
    "postgresql",
    "postgresql",
    partitioned_tables=True,
    error_aborts_transaction=True,
    returning_optional=False,  # PostgreSQL always has RETURNING
    text_holds_nul=False,
    error_codes={
        "not_null": "23502",
        "check": "23514",
        "foreign_key": "23503",
        "too_long": "22001",
    },
    isolation_levels=("READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"),
    ci_string=CITEXT,
    ci_setup=("CREATE EXTENSION IF NOT EXISTS citext",),
    ci_collation=lambda: sa.String(20, collation="oc_ci"),  # nondeterministic ICU
    ci_collation_setup=(
        "CREATE COLLATION IF NOT EXISTS oc_ci"
        " (provider = icu, locale = 'und-u-ks-level2', deterministic = false)",
    ),
    transient=Transient(_pg_hold, _pg_provoke),
    seed_lock=SeedLock(_pg_seed_lock),
    killer=Killer(
        "SELECT pid FROM pg_stat_activity WHERE backend_xid IS NOT NULL"
        " AND pid <> pg_backend_pid() AND datname = current_database()",
        "SELECT pg_terminate_backend(:victim)",
    ),
    env="ONCONFLICT_PG_URL",
    default_url="postgresql+asyncpg://postgres@127.0.0.1:5432/test",
)

# -- MariaDB --------------------------------------------------------------------------


@contextlib.contextmanager
def _hold_row(engine: Engine, t: sa.Table) -> Iterator[None]:
    with engine.connect() as holder:
        holder.execute(t.update().where(t.c.id == 1).values(email="c"))  # row lock held
        yield
        holder.rollback()


def _mariadb_provoke(conn: sa.Connection, t: sa.Table) -> None:
    """A lock wait timeout, after one second."""
    conn.execute(sa.text("SET SESSION innodb_lock_wait_timeout = 1"))
    _update_first(conn, t)


MARIADB = Backend(
    "mariadb",
    "mysql",
    partial_indexes=False,
    expression_indexes=False,  # MariaDB 10.11 has no functional indexes
    folds_case=True,  # utf8mb4_general_ci
    guarded_ignore=True,
    error_codes={"not_null": 1048, "check": 4025, "foreign_key": 1452, "too_long": 1406},
    isolation_levels=("READ COMMITTED", "REPEATABLE READ"),
    transient=Transient(_hold_row, _mariadb_provoke),
    seed_lock=SeedLock(
        lambda conn: conn.execute(sa.select(sa.func.get_lock(seed_lock_name(conn, SEED_LOCK), 1))),
        lambda conn: conn.execute(sa.select(sa.func.release_lock(seed_lock_name(conn, SEED_LOCK)))),
    ),
    killer=Killer(
        # thread id 0 is a transaction no session owns any more, being rolled
        # back; sessions of other databases (other test runs) are left alone
        "SELECT t.trx_mysql_thread_id FROM information_schema.INNODB_TRX t"
        " JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id"
        " WHERE t.trx_rows_modified > 0 AND t.trx_mysql_thread_id NOT IN (0, CONNECTION_ID())"
        " AND p.DB = DATABASE()",
        "KILL CONNECTION :victim",
    ),
    env="ONCONFLICT_MYSQL_URL",
    default_url="mysql+aiomysql://root@127.0.0.1:3306/test",
)

# -- DuckDB ---------------------------------------------------------------------------
# No async driver: the async front runs through tests/duckdb_backend.py's blocking
# adapter (duckdb+oc_blocking), the sync front through duckdb-engine itself.

DUCKDB = Backend(
    "duckdb",
    "duckdb",
    server=False,
    writer_processes=False,  # one process holds the file
    identity_columns=False,  # GENERATED ... AS IDENTITY: a sequence default instead
    lock_waits=False,  # a second writer of a row or key fails at once (or at COMMIT)
    savepoints=False,
    case_insensitive_keys=False,
    benchmarks=False,
    partial_indexes=False,  # an index's WHERE is refused
    expression_indexes=False,  # ON CONFLICT names columns only
    enforces_length=False,
    error_aborts_transaction=True,
    # no codes: the kind the classifier reads from the message
    error_codes={
        "not_null": "not null",
        "check": "check",
        "foreign_key": "foreign key",
        "too_long": None,
    },
    transient=Transient(_hold_row, _update_first),  # a write-write conflict, at once
    embedded_url="duckdb+oc_blocking:///{dir}/test.duckdb",
    imports=("tests.duckdb_backend",),
)

BACKENDS: list[Backend] = [SQLITE, POSTGRESQL, MARIADB, DUCKDB]
BY_NAME = {b.name: b for b in BACKENDS}
BY_DIALECT = {b.dialect: b for b in BACKENDS}


def has(fact: str) -> Callable[..., bool]:
    """For ``DDLElement.execute_if`` / ``ddl_if``: whether the database of the
    bind has this fact."""

    def check(_ddl: Any, _target: Any, bind: Any, **_kw: Any) -> bool:
        return bool(getattr(BY_DIALECT[bind.dialect.name], fact))

    return check


def run_setup(fact: str) -> Callable[..., None]:
    """A ``before_create`` listener running the statements of this fact of the
    database of the bind (``ci_collation_setup``, ...)."""

    def setup(_target: Any, connection: sa.Connection, **_kw: Any) -> None:
        for statement in getattr(BY_DIALECT[connection.dialect.name], fact):
            connection.execute(sa.text(statement))

    return setup


def ci_collated() -> sa.types.TypeEngine[Any]:
    """A string type in each database's case-insensitive collation
    (``Backend.ci_collation``; created by ``run_setup("ci_collation_setup")``):
    a plain String with a variant per dialect, as an application would write it."""
    kind: sa.types.TypeEngine[Any] = sa.String(20)
    for b in BACKENDS:
        kind = kind.with_variant(b.ci_collation(), b.dialect)
    return kind


SERVERS = {b.name: b for b in BACKENDS if b.server}
