"""Real databases, real drivers.

Server URLs come from the environment (defaults in ``DEFAULTS``). In CI
(``CI=true``) a test whose server does not answer fails; elsewhere it is
skipped with the reason.
"""

from __future__ import annotations

import importlib
import os
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.backends import BACKENDS, BY_NAME, SERVERS, Backend, sync_url
from tests.handles import KINDS, Handle

__all__ = [
    "BACKENDS",
    "DEFAULTS",
    "IN_CI",
    "Backend",
    "SessionStatements",
    "missing",
    "require_server",
    "sync_url",
]

DEFAULTS = {b.name: (b.env, b.default_url) for b in SERVERS.values()}
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs(*facts): runs on the backends having these facts (tests/backends.py)"
    )
    config.addinivalue_line(
        "markers", "databases(*names): a database's own mechanism, run on these backends only"
    )
    config.addinivalue_line(
        "markers", "handles(*kinds): the handle fixture's kinds for this test (tests/handles.py)"
    )
    for b in BACKENDS:  # each backend's tests carry its name as a marker
        where = f"the {b.name} server ({b.env})" if b.server else f"{b.name} (embedded)"
        config.addinivalue_line("markers", f"{b.name}: needs {where}")
    _database_per_worker()


def _database_per_worker() -> None:
    """Under pytest-xdist, each worker works in a database of its own on each
    server (``<database>_gw0``, made if missing): tests create and drop tables
    of fixed names. Subprocesses the tests start inherit the URL."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return
    for b in SERVERS.values():
        url = make_url(os.environ.get(b.env, b.default_url))
        mine = url.set(database=f"{url.database}_{worker}")
        try:
            _ensure_database(url, mine)
        except Exception:  # the server does not answer: its tests say so
            continue
        os.environ[b.env] = mine.render_as_string(hide_password=False)


def _ensure_database(configured: sa.URL, mine: sa.URL) -> None:
    """Create ``mine`` unless it answers, through the configured database."""
    if _answers(sync_url(mine.render_as_string(hide_password=False))):
        return
    server = sa.create_engine(
        sync_url(configured.render_as_string(hide_password=False)),
        isolation_level="AUTOCOMMIT",
        poolclass=sa.pool.NullPool,
    )
    try:
        quoted = server.dialect.identifier_preparer.quote_identifier(mine.database or "")
        with server.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {quoted}"))  # a name, quoted: no DDL binds
    finally:
        server.dispose()


def _answers(url: str) -> bool:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return True
    except Exception:
        return False
    finally:
        engine.dispose()


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


def backend_params(metafunc_or_node: Any = None) -> list[Any]:
    """The backends as pytest params (id and marker: the name), those a test
    asks for with ``needs`` / ``databases`` markers when given its node."""
    chosen = BACKENDS
    if metafunc_or_node is not None:
        chosen = [b for b in BACKENDS if _wanted(b, metafunc_or_node)]
    return [pytest.param(b.name, marks=[getattr(pytest.mark, b.name)], id=b.name) for b in chosen]


def _wanted(backend: Backend, node: Any) -> bool:
    for mark in node.iter_markers("needs"):
        unknown = [f for f in mark.args if not hasattr(backend, f)]
        if unknown:
            raise pytest.UsageError(f"{node.nodeid}: needs{mark.args}: no fact {unknown}")
        if not all(getattr(backend, fact) for fact in mark.args):
            return False
    for mark in node.iter_markers("databases"):
        unknown = [name for name in mark.args if name not in BY_NAME]
        if unknown:
            raise pytest.UsageError(f"{node.nodeid}: databases{mark.args}: unknown {unknown}")
        if backend.name not in mark.args:
            return False
    return True


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", backend_params(metafunc.definition), indirect=True)
    if "handle" in metafunc.fixturenames:
        mark = metafunc.definition.get_closest_marker("handles")
        kinds = mark.args if mark is not None else KINDS
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            raise pytest.UsageError(f"{metafunc.definition.nodeid}: handles: unknown {unknown}")
        metafunc.parametrize("handle", kinds, indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``pytest -n N --dist loadgroup``, tests that must not overlap run on
    one worker, in turn: those of the one Galera cluster, and those opening
    dozens of connections at once (two of them at a time would pass
    PostgreSQL's default max_connections of 100)."""
    _deselect_unwanted(config, items)
    for item in items:
        for group in ("galera", "crowd"):
            if item.get_closest_marker(group) is not None:
                item.add_marker(pytest.mark.xdist_group(group))
                break


def _deselect_unwanted(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A ``needs`` mark on one ``pytest.param`` (such as ``strategy="classify"``,
    which needs savepoints) is known only once the test is collected: drop the
    combinations with a backend lacking the fact, as ``pytest_generate_tests``
    drops those of a mark on the test."""
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        backend = _backend_of(item)
        (kept if backend is None or _wanted(backend, item) else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def _backend_of(item: pytest.Item) -> Backend | None:
    callspec = getattr(item, "callspec", None)
    name = callspec.params.get("backend") if callspec is not None else None
    return BY_NAME.get(name) if isinstance(name, str) else None


def backend_at(name: str, tmp_path: Path) -> Backend:
    """The backend of this name, at its URL (SQLite: a file in ``tmp_path``)."""
    declared = BY_NAME[name]
    _import(declared)
    if not declared.server:
        return declared.at(declared.embedded_url.format(dir=tmp_path))
    url = os.environ.get(declared.env, declared.default_url)
    require_server(name, url)
    return declared.at(url)


def _import(backend: Backend) -> None:
    """The modules the backend's URL needs (``Backend.imports``), or say why not."""
    for module in backend.imports:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            missing(
                f"{backend.name}: {module} cannot be imported ({exc}); pip install -e '.[test]'"
            )


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return backend_at(request.param, tmp_path)


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


async def asyncpg_queries(engine: AsyncEngine) -> list[str]:
    """The statements asyncpg itself runs on the engine's connections (its query
    logger, on connections made from now: the pool is emptied): what the
    driver-level and COPY paths send too, which a SQLAlchemy statement listener
    would turn off."""
    queries: list[str] = []

    def on_connect(dbapi_conn: Any, _: Any) -> None:
        dbapi_conn.driver_connection.add_query_logger(lambda r: queries.append(r.query))

    sa.event.listen(engine.sync_engine, "connect", on_connect)
    await engine.dispose()
    return queries


@pytest.fixture
def handle(request: pytest.FixtureRequest, aengine: AsyncEngine, sengine: Engine) -> Handle:
    """The public API through one kind of handle (tests/handles.py)."""
    return Handle(request.param, aengine, sengine)


@pytest.fixture
async def tables(aengine: AsyncEngine, backend: Backend) -> AsyncIterator[None]:
    from tests.schema import metadata, parent, partial_metadata

    metas = [metadata] + ([partial_metadata] if backend.partial_indexes else [])
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
