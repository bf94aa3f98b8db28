"""insert_ignore(..., returning=...): counts only, or only the columns asked for.

On every backend, through every handle (tests/handles.py: both fronts, an
engine, a connection, a session): counts exact with existing rows and
keys repeated in the call, the same rows stored as with the full result, bad
rows raising with nothing stored, and PostgreSQL's COPY path above its
threshold.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

import onconflict
from tests.backends import Backend
from tests.conftest import asyncpg_queries
from tests.handles import Handle
from tests.schema import Item, pairs, users

pytestmark = pytest.mark.usefixtures("tables")


async def stored(engine: AsyncEngine, table: sa.Table, *columns: str) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        cols = [table.c[c] for c in columns]
        return [tuple(r) for r in await conn.execute(sa.select(*cols).order_by(*cols))]


@pytest.fixture
def statements(aengine: AsyncEngine, sengine: Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(_conn: Any, _cur: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    for engine in (aengine.sync_engine, sengine):
        sa.event.listen(engine, "before_cursor_execute", record)
    yield seen
    for engine in (aengine.sync_engine, sengine):
        sa.event.remove(engine, "before_cursor_execute", record)


async def test_counts_only_are_exact(handle: Handle, aengine: AsyncEngine) -> None:
    """Existing rows, new rows and keys repeated in the call: exact counts, the
    first row of a repeated key stored (as with the full result), and no rows
    to read."""
    await onconflict.insert_ignore(aengine, pairs, [{"a": i, "b": 0, "v": "old"} for i in (1, 3)])
    rows = [{"a": i, "b": 0, "v": f"n{i}"} for i in range(6)]
    rows += [{"a": 2, "b": 0, "v": "repeat"}, {"a": 4, "b": 0}, {"a": 3, "b": 0, "v": "x"}]
    got = await handle.call("insert_ignore", pairs, rows, returning=False)
    assert (got.inserted_count, got.existing_count) == (4, 5)
    assert repr(got) == "InsertResult(inserted_count=4, existing_count=5)"
    assert await stored(aengine, pairs, "a", "v") == [
        (0, "n0"),
        (1, "old"),
        (2, "n2"),
        (3, "old"),
        (4, "n4"),
        (5, "n5"),
    ]
    for name in ("inserted", "existing"):
        with pytest.raises(onconflict.NotReturnedError, match="returning=False"):
            getattr(got, name)
        assert not hasattr(got, name)  # an AttributeError as well
    again = await handle.call("insert_ignore", pairs, rows, returning=False)
    assert (again.inserted_count, again.existing_count) == (0, len(rows))


async def test_counts_only_of_several_shapes_and_no_rows(handle: Handle) -> None:
    """Rows carrying different columns (several statements) and an empty call."""
    rows = [{"a": 1, "b": 1}, {"a": 2, "b": 1, "v": "v"}, {"a": 1, "b": 1, "v": "w"}]
    got = await handle.call("insert_ignore", pairs, rows, returning=False)
    assert (got.inserted_count, got.existing_count) == (2, 1)
    none = await handle.call("insert_ignore", pairs, [], returning=False)
    assert (none.inserted_count, none.existing_count) == (0, 0)
    with pytest.raises(onconflict.NotReturnedError):
        none.inserted  # noqa: B018


@pytest.mark.needs("savepoints")  # classify: a SAVEPOINT per row
async def test_counts_only_with_classify(handle: Handle, aengine: AsyncEngine) -> None:
    await onconflict.insert_ignore(aengine, users, [{"email": "a@x", "name": "a"}])
    rows = [{"email": e, "name": e[0]} for e in ("a@x", "b@x", "b@x", "c@x")]
    got = await handle.call("insert_ignore", users, rows, strategy="classify", returning=False)
    assert (got.inserted_count, got.existing_count) == (2, 2)


def bad_rows(backend: Backend) -> list[dict[str, Any]]:
    """Rows that violate something other than a unique key on this backend."""
    bad = [
        {"email": "n@x", "name": None},  # NOT NULL
        {"email": "c@x", "name": ""},  # CHECK
        {"email": "f@x", "name": "f", "pid": 999},  # foreign key
    ]
    if backend.enforces_length:
        bad.append({"email": "l@x", "name": "toolong"})
    return bad


async def test_counts_only_bad_rows_raise_with_nothing_stored(
    handle: Handle, backend: Backend, aengine: AsyncEngine
) -> None:
    await onconflict.insert_ignore(aengine, users, [{"email": "a@x", "name": "a"}])
    good = [{"email": f"g{i}@x", "name": "g"} for i in range(5)] + [{"email": "a@x", "name": "a"}]
    for bad in bad_rows(backend):
        with pytest.raises(sa.exc.DBAPIError):
            await handle.call("insert_ignore", users, [*good, bad], returning=False)
        with pytest.raises(sa.exc.DBAPIError):  # one row: the driver-level paths
            await handle.call("insert_ignore", users, [bad], returning=False)
    assert await stored(aengine, users, "email") == [("a@x",)]


async def test_returning_columns(handle: Handle, aengine: AsyncEngine) -> None:
    """Only the columns named, server-generated ones included; ``existing`` as given."""
    await onconflict.insert_ignore(aengine, users, [{"email": "a@x", "name": "a"}])
    rows = [{"email": "a@x", "name": "b"}, {"email": "b@x", "name": "b"}]
    got = await handle.call("insert_ignore", users, rows, returning=["id", "note"])
    assert [sorted(r) for r in got.inserted] == [["id", "note"]]
    assert got.inserted[0]["note"] == "none"  # a server default
    assert isinstance(got.inserted[0]["id"], int)
    assert got.existing == [{"email": "a@x", "name": "b"}]
    one = await handle.call(
        "insert_ignore", users, [{"email": "c@x", "name": "c"}], returning="email"
    )
    assert one.inserted == [{"email": "c@x"}]
    assert (one.inserted_count, one.existing_count) == (1, 0)


async def test_returning_attribute_names_of_a_mapped_class(handle: Handle) -> None:
    rows = [{"code": "a", "title": "A"}, {"code": "b"}, {"code": "a", "title": "again"}]
    got = await handle.call("insert_ignore", Item, rows, returning=["code", "title"])
    assert got.inserted == [{"code": "a", "title": "A"}, {"code": "b", "title": None}]
    assert got.existing == [{"code": "a", "title": "again"}]
    counted = await handle.call("insert_ignore", Item, rows, returning=False)
    assert (counted.inserted_count, counted.existing_count) == (0, 3)


async def test_unknown_returning_names_are_refused_before_any_sql(
    handle: Handle, statements: list[str]
) -> None:
    rows = [{"email": "a@x", "name": "a"}]
    with pytest.raises(ValueError, match="'nope', not a column of 'oc_users'"):
        await handle.call("insert_ignore", users, rows, returning=["email", "nope"])
    with pytest.raises(ValueError, match="'item_code'"):  # a mapped class: attribute names
        await handle.call("insert_ignore", Item, [{"code": "a"}], returning=["item_code"])
    with pytest.raises(TypeError, match="returning must be"):
        await handle.call("insert_ignore", users, rows, returning=[users.c.email])  # type: ignore[list-item]
    assert not [s for s in statements if "oc_users" in s or "oc_items" in s]


async def test_the_default_is_every_column(handle: Handle) -> None:
    got = await handle.call("insert_ignore", users, [{"email": "a@x", "name": "a"}])
    assert sorted(got.inserted[0]) == ["email", "id", "name", "note", "pid"]
    assert got == onconflict.InsertResult(got.inserted, [])


@pytest.fixture
def copy_threshold(monkeypatch: pytest.MonkeyPatch) -> int:
    """The COPY path from 1,500 rows (above one statement's 1,000), so that a
    test of it stays small."""
    from onconflict.dialects.postgresql import copy

    monkeypatch.setattr(copy, "COPY_THRESHOLD", 1_500)
    return 1_500


@pytest.mark.databases("postgresql")  # the COPY path is PostgreSQL's (asyncpg)
async def test_counts_only_on_the_copy_path(
    backend: Backend,
    aengine: AsyncEngine,
    copy_threshold: int,
) -> None:
    """PostgreSQL on asyncpg: COPY into a temporary table, then INSERT ...
    SELECT ... ON CONFLICT DO NOTHING without RETURNING; the count is the
    server's. Exact with existing rows and repeats; a bad row stores nothing."""
    n = copy_threshold + 1_000
    await onconflict.insert_ignore(aengine, pairs, [{"a": i, "b": 0} for i in range(0, n, 3)])
    rows = [{"a": i, "b": 0, "v": f"v{i}"} for i in range(n)]
    rows += [{"a": 1, "b": 0, "v": "repeat"}, {"a": n, "b": 0, "v": "last"}]
    statements = await asyncpg_queries(aengine)  # (a SQLAlchemy listener turns the path off)
    got = await onconflict.insert_ignore(aengine, pairs, rows, returning=False)
    assert any(s.startswith("INSERT") and "FROM oc_copy_" in s for s in statements)
    assert not any("RETURNING" in s for s in statements)
    new = n - len(range(0, n, 3)) + 1
    assert (got.inserted_count, got.existing_count) == (new, len(rows) - new)
    assert await stored(aengine, pairs, "a", "v") == [
        (i, None if i % 3 == 0 else f"v{i}") for i in range(n)
    ] + [(n, "last")]


@pytest.mark.databases("postgresql")  # the COPY path is PostgreSQL's (asyncpg)
@pytest.mark.parametrize("returning", [True, False])
@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"a": 0, "b": 1, "v": "toolongvalue"}, id="too-long"),  # refused by COPY
        pytest.param({"a": None, "b": 1, "v": "v"}, id="not-null"),  # by the INSERT
    ],
)
async def test_bad_rows_on_the_copy_path_raise_as_sqlalchemy_errors(
    backend: Backend,
    aengine: AsyncEngine,
    copy_threshold: int,
    returning: bool,
    bad: dict[str, Any],
) -> None:
    """A bad row on the COPY path raises SQLAlchemy's error (as every other
    path does: ``DBAPIError`` with the driver's error as ``orig``), not
    asyncpg's own exception, and nothing is stored. (Found by this test: the
    COPY path raised asyncpg's exceptions unwrapped.)"""
    rows = [{"a": -i, "b": 1, "v": "v"} for i in range(1, copy_threshold + 10)] + [bad]
    with pytest.raises(sa.exc.DBAPIError) as raised:
        await onconflict.insert_ignore(aengine, pairs, rows, returning=returning)
    assert raised.value.orig is not None
    assert getattr(raised.value.orig, "sqlstate", None) in ("22001", "23502")
    assert await stored(aengine, pairs, "a") == []


@pytest.mark.databases("postgresql")  # the COPY path is PostgreSQL's (asyncpg)
async def test_counts_only_on_the_copy_path_with_repeats_the_server_folds(
    backend: Backend, aengine: AsyncEngine, copy_threshold: int
) -> None:
    """A key column whose collation ignores case: repeats differing in case are
    repeats (the server says so), and the first of them is the row stored."""
    icu = sa.MetaData()
    ci = sa.Table(
        "oc_rt_icu",
        icu,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("code", sa.String(20, collation="oc_rt_ci"), nullable=False, unique=True),
        sa.Column("n", sa.Integer, nullable=True),
    )
    async with aengine.begin() as conn:
        await conn.execute(
            sa.DDL(
                "CREATE COLLATION IF NOT EXISTS oc_rt_ci"
                " (provider = icu, locale = 'und-u-ks-level2', deterministic = false)"
            )
        )
        await conn.run_sync(icu.drop_all)
        await conn.run_sync(icu.create_all)
    try:
        await onconflict.insert_ignore(aengine, ci, [{"code": "k-1", "n": 0}])
        rows = [{"code": f"K-{i}", "n": 1} for i in range(copy_threshold)]
        rows += [{"code": f"k-{i}", "n": 2} for i in range(10)]
        got = await onconflict.insert_ignore(aengine, ci, rows, returning=False)
        assert (got.inserted_count, got.existing_count) == (copy_threshold - 1, 11)
        stored_rows = dict(await stored(aengine, ci, "code", "n"))
        assert len(stored_rows) == copy_threshold
        assert stored_rows["k-1"] == 0
        assert stored_rows["K-2"] == 1  # the first of K-2 / k-2
    finally:
        async with aengine.begin() as conn:
            await conn.run_sync(icu.drop_all)
