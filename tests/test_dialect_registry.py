"""The dialect registry: every entry names what exists, capabilities are data
the generic behaviour reads, and driver paths are found by driver name. No I/O."""

from __future__ import annotations

from dataclasses import replace

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from onconflict._target import resolve_target, unique_keys
from onconflict.dialects import REGISTRY, DialectSupport, DriverPath, driver_path, load
from onconflict.dialects.base import GENERIC, Capabilities
from onconflict.dialects.errors import ErrorTable
from onconflict.exceptions import NotSupportedError


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_entry_names_what_exists(name: str) -> None:
    entry = REGISTRY[name]
    if entry.support is not None:
        support = load(entry.support)
        assert issubclass(support, DialectSupport)
        assert isinstance(support.capabilities, Capabilities)
        assert support.capabilities.native
    if entry.errors is not None:
        assert isinstance(load(entry.errors), ErrorTable)
    for driver, path in entry.drivers.items():
        cls = load(path)
        assert issubclass(cls, DriverPath)
        assert cls.driver == driver


@pytest.mark.parametrize(
    ("dialect", "found"),
    [
        pytest.param(postgresql.asyncpg.dialect(), "AsyncpgPath", id="asyncpg"),
        pytest.param(postgresql.psycopg.dialect(), "DriverPath", id="psycopg"),
        pytest.param(sqlite.aiosqlite.dialect(), "AiosqlitePath", id="aiosqlite"),
        pytest.param(sqlite.pysqlite.dialect(), "DriverPath", id="sqlite3"),
        pytest.param(mysql.aiomysql.dialect(), "AiomysqlPath", id="aiomysql"),
        pytest.param(mysql.pymysql.dialect(), "DriverPath", id="pymysql"),
    ],
)
def test_driver_paths_are_found_by_driver_name(dialect: sa.engine.Dialect, found: str) -> None:
    assert type(driver_path(dialect)).__name__ == found


async def test_the_base_driver_path_never_answers() -> None:
    path = DriverPath(DialectSupport())
    assert await path.insert_ignore(None, None) is None
    assert await path.get_or_create(None, None, 1) is None  # type: ignore[arg-type]


def test_generic_check_target_reads_the_capabilities() -> None:
    """A database that declares it cannot target an expression or a partial
    index gets the refusal before any SQL, from the generic method."""
    meta = sa.MetaData()
    t = sa.Table(
        "oc_caps",
        meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("k", sa.String(20)),
        sa.Column("live", sa.Boolean),
    )
    expression = sa.Index("ix_lower_k", sa.func.lower(t.c.k), unique=True)
    partial = sa.Index("ix_live_k", t.c.k, unique=True, sqlite_where=t.c.live)

    class Narrow(DialectSupport):
        capabilities = replace(
            GENERIC, native=True, partial_index_targets=False, expression_index_targets=False
        )

    for index, what in ((expression, "an expression index"), (partial, "a partial index")):
        target = resolve_target(t, index, {"k"})
        DialectSupport().check_target(t, target)  # the generic database: anything goes
        with pytest.raises(NotSupportedError, match=what):
            Narrow().check_target(t, target)


def test_a_partial_index_where_is_read_from_any_dialect_option() -> None:
    """The WHERE of a partial unique index is found whichever dialect's option
    declares it (no list of dialect names in the core)."""
    meta = sa.MetaData()
    t = sa.Table("oc_where", meta, sa.Column("k", sa.String(20)), sa.Column("live", sa.Boolean))
    sa.Index("ix_pg", t.c.k, unique=True, postgresql_where=t.c.live)
    sa.Index("ix_mssql", t.c.live, t.c.k, unique=True, mssql_where=t.c.live)
    wheres = {key.name: key.where for key in unique_keys(t)}
    assert wheres["ix_pg"] is not None
    assert wheres["ix_mssql"] is not None


def test_engine_options_come_from_the_dialect() -> None:
    from onconflict.dialects import support_named

    assert support_named("sqlite").engine_options(32) == {"connect_args": {"timeout": 30}}
    assert support_named("postgresql").engine_options(32) == {"pool_size": 20, "max_overflow": 32}
