"""Real databases, real drivers.

Server URLs come from the environment (defaults in ``DEFAULTS``). In CI
(``CI=true``) a test whose server does not answer fails; elsewhere it is
skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import os
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

DEFAULTS = {
    "postgresql": ("ONCONFLICT_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"),
    "mariadb": ("ONCONFLICT_MYSQL_URL", "mysql+aiomysql://root@127.0.0.1:3306/test"),
}
SYNC_DRIVERS = {
    "asyncpg": "psycopg",
    "psycopg_async": "psycopg",
    "aiomysql": "pymysql",
    "asyncmy": "pymysql",
    "aiosqlite": "pysqlite",
    "oc_blocking": "",  # DuckDB: tests/duckdb_backend.py's adapter; duckdb-engine itself
}
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BACKENDS = ["sqlite", "postgresql", "mariadb", "duckdb"]


@dataclass(frozen=True)
class Facts:
    """What a backend can have; a test marked ``@pytest.mark.needs("fact", ...)``
    is skipped, with the reason, on a backend without one of them."""

    partial_indexes: bool = True
    expression_targets: bool = True
    """ON CONFLICT can name an expression index (MariaDB has none; DuckDB's
    ON CONFLICT names columns only)."""
    savepoints: bool = True
    locking_reads: bool = True  # SELECT ... FOR UPDATE / FOR SHARE
    writer_processes: bool = True
    """Several processes may write to the database at once (DuckDB: one)."""
    server: bool = True  # a server process (connections to kill, logins to refuse)
    aborts_on_error: bool = False
    """Any error aborts the whole transaction (PostgreSQL, DuckDB)."""
    length_limits: bool = True  # VARCHAR(n) refuses longer values (not SQLite, DuckDB)
    lock_waits: bool = True
    """A writer waits for another transaction's uncommitted key (DuckDB instead
    fails one of the two: optimistic concurrency)."""
    isolation_levels: bool = True  # execution_options(isolation_level=...)
    seed_lock: bool = True  # seed takes a database-wide lock (DuckDB: one writer process)
    benchmarks: bool = True  # the benchmark runner and its peers support it
    reflection: bool = True
    """Tables can be reflected (duckdb-engine 0.17 with SQLAlchemy 2.1: its
    PostgreSQL reflection reads pg_catalog.pg_collation, which DuckDB lacks)."""
    case_insensitive_keys: bool = True
    """A unique key can compare case-insensitively (DuckDB's unique indexes
    compare bytes, whatever the column's collation)."""


FACTS = {
    "sqlite": Facts(server=False, length_limits=False),
    "postgresql": Facts(aborts_on_error=True),
    "mariadb": Facts(partial_indexes=False, expression_targets=False),
    "duckdb": Facts(
        partial_indexes=False,
        expression_targets=False,
        savepoints=False,
        locking_reads=False,
        writer_processes=False,
        server=False,
        aborts_on_error=True,
        length_limits=False,
        lock_waits=False,
        isolation_levels=False,
        seed_lock=False,
        benchmarks=False,
        reflection=False,
        case_insensitive_keys=False,
    ),
}


def sync_url(url: str) -> str:
    u = make_url(url)
    backend, _, driver = u.drivername.partition("+")
    sync = SYNC_DRIVERS.get(driver, driver)
    return u.set(drivername=f"{backend}+{sync}" if sync else backend).render_as_string(
        hide_password=False
    )


_availability: dict[str, str | None] = {}


def _unavailable(name: str, url: str) -> str | None:
    """None if the server answers, else why not."""
    if name not in _availability:
        engine = sa.create_engine(sync_url(url), poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            _availability[name] = None
        except Exception as exc:
            shown = make_url(url).render_as_string(hide_password=True)
            _availability[name] = f"{name} server at {shown} unavailable: {exc.__class__.__name__}"
        finally:
            engine.dispose()
    return _availability[name]


def require_server(name: str, url: str) -> None:
    reason = _unavailable(name, url)
    if reason is not None:
        missing(reason)


def missing(reason: str) -> None:
    """A server or tool a test needs is not here: fail in CI, skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: servers are required)", pytrace=False)
    pytest.skip(reason)


@dataclass
class Backend:
    name: str
    url: str  # async driver URL

    @property
    def facts(self) -> Facts:
        return FACTS[self.name]

    @property
    def sync_url(self) -> str:
        return sync_url(self.url)

    def async_engine(self, **kw: Any) -> AsyncEngine:
        engine = create_async_engine(self.url, **self._engine_args(kw))
        _sqlite_pragmas(engine.sync_engine)
        return engine

    def sync_engine(self, **kw: Any) -> Engine:
        engine = sa.create_engine(self.sync_url, **self._engine_args(kw))
        _sqlite_pragmas(engine)
        return engine

    def _engine_args(self, kw: dict[str, Any]) -> dict[str, Any]:
        if self.name == "sqlite":
            kw.pop("pool_size", None)
            kw.pop("max_overflow", None)
            kw.setdefault("connect_args", {"timeout": 60})
        return kw


def _sqlite_pragmas(engine: Engine) -> None:
    if engine.dialect.name != "sqlite":
        return

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.close()


def _backend_params() -> list[Any]:
    return [
        pytest.param(name, marks=[] if name == "sqlite" else [getattr(pytest.mark, name)], id=name)
        for name in BACKENDS
    ]


def skip_without_needs(request: pytest.FixtureRequest, name: str) -> None:
    """Skip a test marked ``needs(...)`` on a backend without one of the facts."""
    facts = FACTS[name]
    for mark in request.node.iter_markers("needs"):
        lacking = [fact for fact in mark.args if not getattr(facts, fact)]
        if lacking:
            pytest.skip(f"{name} has no {', '.join(lacking).replace('_', ' ')}")


@pytest.fixture(params=_backend_params())
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    skip_without_needs(request, request.param)
    return backend_for(request.param, tmp_path)


def backend_for(name: str, directory: Path) -> Backend:
    """The backend ``name``; an embedded database is a file in ``directory``."""
    if name == "sqlite":
        return Backend(name, f"sqlite+aiosqlite:///{directory / 'test.db'}")
    if name == "duckdb":
        if importlib.util.find_spec("duckdb_engine") is None:
            missing("duckdb and duckdb-engine are not installed (pip install onconflict[duckdb])")
        import tests.duckdb_backend  # noqa: F401  (registers duckdb+oc_blocking)

        return Backend(name, f"duckdb+oc_blocking:///{directory / 'test.duckdb'}")
    env, default = DEFAULTS[name]
    url = os.environ.get(env, default)
    require_server(name, url)
    return Backend(name, url)


@pytest.fixture
async def aengine(backend: Backend) -> AsyncIterator[AsyncEngine]:
    engine = backend.async_engine(pool_size=20, max_overflow=50)
    yield engine
    await engine.dispose()


@pytest.fixture
def sengine(backend: Backend) -> Iterator[Engine]:
    engine = backend.sync_engine()
    yield engine
    engine.dispose()


@pytest.fixture
async def tables(aengine: AsyncEngine, backend: Backend) -> AsyncIterator[None]:
    from tests.schema import metadata, parent, partial_metadata

    metas = [metadata] + ([partial_metadata] if backend.facts.partial_indexes else [])
    async with aengine.begin() as conn:
        for md in metas:
            await conn.run_sync(md.drop_all)
            await conn.run_sync(md.create_all)
        await conn.execute(parent.insert(), [{"id": 1}, {"id": 2}])
    yield
    async with aengine.begin() as conn:
        for md in metas:
            await conn.run_sync(md.drop_all)


class SessionStatements:
    """MySQL/MariaDB: the statements an engine's one pooled session sends during
    an awaited call, by the server's own counters (Com_*, such as
    ``{"insert": 1, "commit": 1}``), less those of reading them."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.idle: Counter[str] = Counter()

    @classmethod
    async def of(cls, engine: AsyncEngine) -> SessionStatements:
        counted = cls(engine)
        base = await counted.counters()
        counted.idle = await counted.counters() - base  # SHOW, and ROLLBACK on return
        return counted

    async def counters(self) -> Counter[str]:
        async with self.engine.connect() as conn:
            shown = await conn.execute(sa.text("SHOW SESSION STATUS LIKE 'Com\\_%'"))
            return Counter({name.lower(): int(value) for name, value in shown})

    async def __call__(self, call: Awaitable[Any]) -> dict[str, int]:
        before = await self.counters()
        await call
        done = await self.counters() - before - self.idle
        return {k.removeprefix("com_"): v for k, v in done.items() if v}


@pytest.fixture
async def inheritance_tables(aengine: AsyncEngine) -> AsyncIterator[None]:
    """The single-table and joined-table inheritance tables of tests.schema."""
    from tests.schema import inheritance_metadata

    async with aengine.begin() as conn:
        await conn.run_sync(inheritance_metadata.drop_all)
        await conn.run_sync(inheritance_metadata.create_all)
    yield
    async with aengine.begin() as conn:
        await conn.run_sync(inheritance_metadata.drop_all)
