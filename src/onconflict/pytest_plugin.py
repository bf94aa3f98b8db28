"""pytest plugin: a real, empty database per test, for race tests of your code.

Loaded automatically when onconflict is installed (entry point ``pytest11``).
A test that asks for ``onconflict_url`` runs once per database of
``--onconflict-databases`` (default: ``sqlite``), each time on a database
created for it and dropped after it:

- ``sqlite``: a file in the test's temporary directory (``sqlite+aiosqlite``);
- ``postgresql``: a new database on the server of ``ONCONFLICT_PG_URL``
  (default ``postgresql+asyncpg://postgres@127.0.0.1:5432/postgres``);
- ``mariadb``: a new database on the server of ``ONCONFLICT_MYSQL_URL``
  (default ``mysql+aiomysql://root@127.0.0.1:3306/mysql``).

The server's user must be allowed to create databases. When a server does not
answer, its tests are skipped with the reason, except under ``CI=true``, where
they fail: a CI run must not pass by testing nothing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine

SERVERS = {
    "postgresql": ("ONCONFLICT_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"),
    "mariadb": ("ONCONFLICT_MYSQL_URL", "mysql+aiomysql://root@127.0.0.1:3306/mysql"),
}
DATABASES = ("sqlite", *SERVERS)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("onconflict")
    group.addoption(
        "--onconflict-databases",
        default=os.environ.get("ONCONFLICT_DATABASES", "sqlite"),
        help="comma-separated databases the onconflict_url fixture runs each test on:"
        " sqlite, postgresql, mariadb (environment: ONCONFLICT_DATABASES)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "onconflict_url" not in metafunc.fixturenames:
        return
    chosen = [d.strip() for d in metafunc.config.getoption("onconflict_databases").split(",")]
    unknown = [d for d in chosen if d not in DATABASES]
    if unknown:
        raise pytest.UsageError(
            f"--onconflict-databases: unknown {', '.join(unknown)} (known: {', '.join(DATABASES)})"
        )
    metafunc.parametrize("onconflict_database", [d for d in chosen if d], indirect=True)


@pytest.fixture
def onconflict_database(request: pytest.FixtureRequest) -> str:
    """The name of the database kind this run of the test uses."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def onconflict_url(onconflict_database: str, tmp_path: Path) -> Iterator[str]:
    """An async SQLAlchemy URL of an empty database made for this test."""
    if onconflict_database == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'onconflict-test.db'}"
        return
    env, default = SERVERS[onconflict_database]
    server = make_url(os.environ.get(env, default))
    name = f"onconflict_test_{uuid.uuid4().hex[:12]}"
    try:
        anyio.run(_run_ddl, server, "CREATE DATABASE {}", name)
    except Exception as exc:  # the server does not answer, or refuses
        shown = server.render_as_string(hide_password=True)
        _missing(f"{onconflict_database} at {shown}: cannot create a test database ({exc!r})")
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        drop = "DROP DATABASE IF EXISTS {}"
        if onconflict_database == "postgresql":
            drop += " WITH (FORCE)"  # connections a failed test left open
        anyio.run(_run_ddl, server, drop, name)


async def _run_ddl(server: URL, statement: str, name: str) -> None:
    """CREATE / DROP DATABASE, which take no bound parameters: the name (made
    here) is quoted by the dialect's identifier preparer."""
    engine = create_async_engine(server, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    quoted = engine.dialect.identifier_preparer.quote_identifier(name)
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text(statement.format(quoted)))
    finally:
        await engine.dispose()


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: servers are required)", pytrace=False)
    pytest.skip(reason)
