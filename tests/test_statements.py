"""Compile-level checks of the statements, for servers we cannot run here (MySQL 8)
and to pin the exact SQL each dialect sends. No I/O."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mssql, mysql, postgresql, sqlite
from sqlalchemy.engine import Dialect

import onconflict
from onconflict._get_or_create import prepare_get_or_create
from onconflict._insert_ignore import _bind, prepare_insert_ignore
from onconflict.dialects.mysql import MySQL
from tests.schema import accounts, active_email, pairs, subscriptions, tags, users


def sql(
    dialect: Dialect, table: Any, rows: list[dict[str, Any]], on: Any = None, strategy: str = "auto"
) -> str:
    prepared = prepare_insert_ignore(dialect, table, rows, on, strategy)
    _bind(prepared, dialect)
    assert prepared.statement is not None
    group = prepared.groups[0]
    params = prepared.rows[group.indexes[0]]
    compiled = prepared.statement.values(params).compile(dialect=dialect)
    return " ".join(str(compiled).split())


def mysql8() -> Dialect:
    dialect = mysql.pymysql.dialect()
    dialect.server_version_info = (8, 0, 36)
    return dialect


def mariadb() -> Dialect:
    return mysql.pymysql.dialect(is_mariadb=True)


def test_postgresql() -> None:
    d = postgresql.asyncpg.dialect()
    assert sql(d, users, [{"email": "a", "name": "b"}]) == (
        "INSERT INTO oc_users (email, name) VALUES ($1::VARCHAR, $2::VARCHAR)"
        " ON CONFLICT (email) DO NOTHING"
        " RETURNING oc_users.id, oc_users.email, oc_users.name, oc_users.pid, oc_users.note"
    )
    assert "ON CONFLICT (a, b) DO NOTHING" in sql(d, pairs, [{"a": 1, "b": 2}])
    partial = sql(d, subscriptions, [{"email": "a", "active": True}], on=active_email)
    assert "ON CONFLICT (email) WHERE active DO NOTHING" in partial
    assert "ON CONFLICT DO NOTHING" in sql(d, tags, [{"slug": "a"}], on=onconflict.ANY_KEY)


def test_sqlite() -> None:
    d = sqlite.pysqlite.dialect()
    out = sql(d, tags, [{"slug": "a"}])
    assert out == (
        "INSERT INTO oc_tags (slug) VALUES (?) ON CONFLICT (slug) DO NOTHING RETURNING slug, label"
    )
    assert "INSERT OR IGNORE" not in out


def test_sqlite_too_old_for_the_upsert_clause() -> None:
    d = sqlite.pysqlite.dialect()
    # only the library version differs; no database behaviour is imitated
    d.dbapi = type("OldSQLite", (), {"sqlite_version_info": (3, 22, 0)})
    with pytest.raises(onconflict.NotSupportedError, match=r"SQLite 3\.22\.0 .*3\.24"):
        sql(d, tags, [{"slug": "a"}], strategy="native")
    # "auto" falls back to classify: a plain INSERT per row in a SAVEPOINT
    assert "ON CONFLICT" not in sql(d, tags, [{"slug": "a"}])


def test_mariadb_uses_guarded_insert_ignore_with_returning() -> None:
    assert sql(mariadb(), tags, [{"slug": "a"}]) == (
        "INSERT IGNORE INTO oc_tags (slug) VALUES (%s) RETURNING oc_tags.slug, oc_tags.label"
    )


def test_mysql8_has_no_returning_and_writes_one_row_per_statement() -> None:
    d = mysql8()
    assert sql(d, tags, [{"slug": "a"}]) == "INSERT IGNORE INTO oc_tags (slug) VALUES (%s)"
    prepared = prepare_insert_ignore(d, tags, [{"slug": "a"}, {"slug": "b"}], None)
    _bind(prepared, d)
    assert prepared.statements() == 2


def test_mysql_probe_is_a_duplicate_noop() -> None:
    stmt = MySQL().duplicate_noop(users).values(email="a", name="b")
    text = " ".join(str(stmt.compile(dialect=mysql8())).split())
    assert text == (
        "INSERT INTO oc_users (email, name) VALUES (%s, %s)"
        " ON DUPLICATE KEY UPDATE id = oc_users.id"
    )


@pytest.mark.parametrize("dialect", [mysql8(), mariadb()], ids=["mysql8", "mariadb"])
def test_mysql_checks_skipped_rows_where_another_key_is_in_reach(dialect: Dialect) -> None:
    """INSERT IGNORE fires on any key: rows that could collide on another key
    than the target have their skipped rows checked after the statement."""

    def prepared(table: sa.Table, rows: list[dict[str, Any]], on: Any = None) -> Any:
        return prepare_insert_ignore(dialect, table, rows, on, "auto")

    assert prepared(accounts, [{"email": "a", "handle": "b"}], on="email").elsewhere
    assert not prepared(accounts, [{"email": "a", "handle": "b"}], onconflict.ANY_KEY).elsewhere
    # an autoincrement primary key left out of the rows cannot collide
    assert not prepared(users, [{"email": "a", "name": "b"}]).elsewhere


def test_dialect_without_native_form_uses_classify() -> None:
    d = mssql.pyodbc.dialect()
    with pytest.raises(onconflict.NotSupportedError, match=r"'mssql'.*postgresql"):
        sql(d, tags, [{"slug": "a"}], strategy="native")
    plain = "INSERT INTO oc_tags (slug) OUTPUT inserted.slug, inserted.label VALUES (:slug)"
    assert sql(d, tags, [{"slug": "a"}]) == plain
    assert sql(d, tags, [{"slug": "a"}], strategy="classify") == plain


def test_bad_strategy() -> None:
    with pytest.raises(ValueError, match="strategy must be one of auto, native, classify"):
        sql(postgresql.asyncpg.dialect(), tags, [{"slug": "a"}], strategy="fast")


def test_parameter_budget_splits_statements() -> None:
    d = postgresql.asyncpg.dialect()
    rows = [{"a": i, "b": i, "v": "x"} for i in range(25_000)]
    prepared = prepare_insert_ignore(d, pairs, rows, None)
    _bind(prepared, d)
    chunks = list(prepared.chunks(prepared.groups[0]))
    assert max(len(c) for c in chunks) * 3 <= 32_767  # asyncpg's limit
    assert sum(len(c) for c in chunks) == 25_000


def test_mysql_statement_size_budget() -> None:
    d = mariadb()
    rows = [{"slug": f"{i:05d}", "label": "x" * 30_000} for i in range(300)]
    prepared = prepare_insert_ignore(d, tags, rows, None)
    _bind(prepared, d)
    chunks = list(prepared.chunks(prepared.groups[0]))
    assert len(chunks) > 1
    assert all(sum(30_000 for _ in c) <= 2 * 1024 * 1024 for c in chunks)


def test_in_call_duplicates_are_not_sent() -> None:
    d = postgresql.asyncpg.dialect()
    prepared = prepare_insert_ignore(d, tags, [{"slug": "a"}, {"slug": "a", "label": "x"}], None)
    assert prepared.duplicate_of == {1: 0}
    assert [g.indexes for g in prepared.groups] == [[0]]


def test_rows_with_null_keys_are_never_deduplicated() -> None:
    table = sa.Table(
        "oc_nullable",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("code", sa.String(5), unique=True, nullable=True),
    )
    d = postgresql.asyncpg.dialect()
    prepared = prepare_insert_ignore(d, table, [{"code": None}, {"code": None}], "code")
    assert prepared.duplicate_of == {}


def _distributed_dialects() -> list[Any]:
    # sqlalchemy-cockroachdb and sqlalchemy-yugabytedb subclass PostgreSQL's
    # dialects under their own names; they are not installed here (the first
    # pins SQLAlchemy < 2.1, the second's driver package replaces psycopg2), so
    # the same subclasses are made here: onconflict goes by the dialect's name
    def named(base: Any, name: str) -> Any:
        return type(f"{name}_{base.driver}", (base,), {"name": name})()

    return [
        pytest.param(named(postgresql.asyncpg.dialect, "cockroachdb"), id="cockroachdb+asyncpg"),
        pytest.param(named(postgresql.psycopg2.dialect, "cockroachdb"), id="cockroachdb+psycopg2"),
        pytest.param(named(postgresql.psycopg2.dialect, "yugabytedb"), id="yugabytedb"),
    ]


@pytest.mark.parametrize("dialect", _distributed_dialects())
def test_distributed_postgresql_dialects(dialect: Dialect) -> None:
    """CockroachDB and YugabyteDB (their SQLAlchemy dialects): PostgreSQL-family
    native statements, an upsert without xmax, no advisory lock, no COPY path."""
    from onconflict._upsert import prepare_upsert
    from onconflict.dialects import native_support
    from onconflict.dialects.postgresql.distributed import DistributedPostgreSQL

    support = native_support(dialect)
    assert isinstance(support, DistributedPostgreSQL)
    assert "ON CONFLICT (email) DO NOTHING RETURNING" in sql(dialect, users, [{"email": "a"}])
    prepared = prepare_upsert(
        dialect,
        users,
        [{"email": "a", "name": "b"}],
        on=None,
        update=None,
        where=None,
        skip_unchanged=False,
        duplicates="last",
    )
    (plan,) = prepared.plans.values()
    support.prepare_upsert(plan, dialect)
    upsert = " ".join(str(plan.statement.compile(dialect=dialect)).split())
    assert "ON CONFLICT (email) DO UPDATE SET name = excluded.name" in upsert
    assert "xmax" not in upsert
    with support.seed_lock(None, "seed", 1.0):  # type: ignore[arg-type]  # no I/O: no lock
        pass
    assert support.write_bulk(None, users, prepared.target, ("email",), []) is None  # type: ignore[arg-type]


# -- the two fronts --------------------------------------------------------------

FRONT_SPECIFIC = {"conn", "engine", "fn"}  # handle types (and retrying's fn) differ by front


def test_both_fronts_export_the_same_calls_with_the_same_signatures() -> None:
    """onconflict (async) and onconflict.sync: the same call names, each with the
    same parameters (names, kinds, defaults, annotations but the handle's), and
    the same typing overloads."""
    import inspect
    import typing

    import onconflict.sync

    calls = sorted(
        n for n in onconflict.__all__ if inspect.iscoroutinefunction(getattr(onconflict, n))
    )
    assert calls == [
        "get_or_create",
        "get_or_create_many",
        "insert_ignore",
        "retrying",
        "seed",
        "update_or_create",
        "upsert",
    ]
    sync_calls = sorted(
        n for n in onconflict.sync.__all__ if inspect.isfunction(getattr(onconflict.sync, n))
    )
    assert set(calls) <= set(sync_calls), set(calls) - set(sync_calls)
    for name in calls:
        a, s = getattr(onconflict, name), getattr(onconflict.sync, name)
        assert not inspect.iscoroutinefunction(s), name
        pa = list(inspect.signature(a).parameters.values())
        ps = list(inspect.signature(s).parameters.values())
        assert [(p.name, p.kind, p.default) for p in pa] == [
            (p.name, p.kind, p.default) for p in ps
        ], name
        for x, y in zip(pa, ps, strict=True):
            if x.name not in FRONT_SPECIFIC:
                assert x.annotation == y.annotation, (name, x.name)
        assert len(typing.get_overloads(a)) == len(typing.get_overloads(s)), name
    # what both export besides the calls is the same object
    for name in set(onconflict.sync.__all__) - set(sync_calls):
        assert getattr(onconflict.sync, name) is getattr(onconflict, name), name
    for name in onconflict.sync.__all__:
        assert hasattr(onconflict.sync, name), name


def _gen_sync() -> Any:
    """scripts/gen_sync.py, loaded from the checkout (scripts/ is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "gen_sync.py"
    spec = importlib.util.spec_from_file_location("gen_sync", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sync_front_is_generated_from_the_async_one() -> None:
    """onconflict.sync is what scripts/gen_sync.py makes of _async.py (compared
    as syntax trees): a parameter, overload or docstring is written once, in
    _async.py, and a sync.py edited by hand or not regenerated fails here."""
    import ast

    gen = _gen_sync()
    assert gen.is_current(), "src/onconflict/sync.py is stale: run python scripts/gen_sync.py"
    # the comparison sees a drift of one parameter name
    committed = gen.TARGET.read_text()
    drifted = committed.replace("strategy: Strategy", "strategies: Strategy", 1)
    assert drifted != committed
    assert gen.canonical(ast.parse(drifted)) != gen.canonical(gen.sync_tree())


def test_postgresql_partitioned_upsert_statements() -> None:
    """The partitioned-table upsert path: a locking read of the keys in key order
    and one UPDATE ... FROM (VALUES ...), excluded() being the VALUES column."""
    from onconflict._upsert import prepare_upsert
    from onconflict.dialects.postgresql.build import lock_keys_statement, update_statement

    t = sa.Table(
        "pt",
        sa.MetaData(),
        sa.Column("k", sa.Integer, primary_key=True),
        sa.Column("v", sa.String(5)),
        sa.Column("n", sa.Integer),
        postgresql_partition_by="RANGE (k)",
    )
    dialect = postgresql.dialect()
    rows = [{"k": 1, "v": "a", "n": 1}, {"k": 2, "v": "b", "n": 2}]
    prepared = prepare_upsert(
        dialect,
        t,
        rows,
        on=None,
        update={"v": onconflict.excluded("v"), "n": t.c.n + onconflict.excluded("n")},
        where=t.c.n < onconflict.excluded("n"),
        skip_unchanged=False,
        duplicates="last",
    )
    (plan,) = prepared.plans.values()
    lock = " ".join(str(lock_keys_statement(plan, rows).compile(dialect=dialect)).split())
    assert lock == (
        "SELECT pt.k FROM pt WHERE pt.k IN (__[POSTCOMPILE_k_1]) ORDER BY pt.k FOR UPDATE"
    )
    update = " ".join(str(update_statement(plan, rows).compile(dialect=dialect)).split())
    assert update.startswith("UPDATE pt SET v=oc_incoming.v, n=(pt.n + oc_incoming.n) FROM (VALUES")
    assert update.endswith(
        "AS oc_incoming (k, n, v) WHERE pt.k = oc_incoming.k AND pt.n < oc_incoming.n"
        " RETURNING pt.k, pt.v, pt.n"
    )


@pytest.mark.parametrize("dialect", [postgresql.dialect(), sqlite.dialect()], ids=["pg", "sqlite"])
def test_get_or_create_reads_an_expression_keys_row_by_its_expressions(dialect: Dialect) -> None:
    """When a lookup's other columns do not match, get_or_create reads which row
    holds the key. For an expression target that read is the index's expression
    (it was no condition at all: every row, locked FOR UPDATE on PostgreSQL)."""
    md = sa.MetaData()
    t = sa.Table(
        "t",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.String(50), nullable=False),
        sa.Column("v", sa.String(20)),
    )
    sa.Index("uq_lower_email", sa.func.lower(t.c.email), unique=True)
    prepared = prepare_get_or_create(dialect, t, {"email": "A@X", "v": "x"}, None, "uq_lower_email")
    sql = str(prepared.plan.statements["select_key"].compile(dialect=dialect))
    assert "WHERE lower(t.email) = lower(" in sql
