"""insert_ignore against the real servers, through async and sync drivers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

import onconflict
import onconflict.sync
from tests.backends import driver_code
from tests.conftest import Backend, SessionStatements, asyncpg_queries
from tests.handles import ENGINES, Handle
from tests.schema import Item, accounts, active_email, pairs, subscriptions, tags, users

# the async API on the async driver, and the sync twin on the sync driver
pytestmark = [pytest.mark.usefixtures("tables"), pytest.mark.handles(*ENGINES)]

# a SAVEPOINT per row: only where the database has savepoints
CLASSIFY = pytest.param("classify", marks=pytest.mark.needs("savepoints"))


async def rows_of(engine: AsyncEngine, table: sa.Table, order: Any = None) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        stmt = sa.select(table).order_by(*(order or table.primary_key.columns))
        return [dict(r) for r in (await conn.execute(stmt)).mappings()]


@pytest.fixture
def statements(aengine: AsyncEngine) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(_conn: Any, _cur: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    sa.event.listen(aengine.sync_engine, "before_cursor_execute", record)
    yield seen
    sa.event.remove(aengine.sync_engine, "before_cursor_execute", record)


# -- exact outcomes ----------------------------------------------------------


@pytest.mark.parametrize("strategy", ["native", CLASSIFY])
async def test_mixed_batch_outcomes(handle: Handle, aengine: AsyncEngine, strategy: str) -> None:
    await handle.call("insert_ignore", users, [{"email": "a@x", "name": "alice"}])
    result = await handle.call(
        "insert_ignore",
        users,
        [
            {"email": "b@x", "name": "bob"},
            {"email": "a@x", "name": "other"},  # exists
            {"email": "c@x", "name": "carl"},
            {"email": "b@x", "name": "again"},  # repeated in this call
        ],
        strategy=strategy,
    )
    assert [r["email"] for r in result.inserted] == ["b@x", "c@x"]
    assert all(isinstance(r["id"], int) for r in result.inserted)
    assert [r["note"] for r in result.inserted] == ["none", "none"]  # server default returned
    assert result.existing == [{"email": "a@x", "name": "other"}, {"email": "b@x", "name": "again"}]
    assert (result.inserted_count, result.existing_count) == (2, 2)
    stored = await rows_of(aengine, users)
    assert [(r["email"], r["name"]) for r in stored] == [
        ("a@x", "alice"),
        ("b@x", "bob"),
        ("c@x", "carl"),
    ]
    assert {r["id"] for r in result.inserted} == {r["id"] for r in stored[1:]}


async def test_natural_and_composite_keys(handle: Handle, aengine: AsyncEngine) -> None:
    first = await handle.call("insert_ignore", tags, [{"slug": "x", "label": "X"}, {"slug": "y"}])
    assert first.inserted == [{"slug": "x", "label": "X"}, {"slug": "y", "label": None}]
    again = await handle.call("insert_ignore", tags, [{"slug": "y", "label": "Y"}, {"slug": "z"}])
    assert again.existing == [{"slug": "y", "label": "Y"}]
    assert [r["slug"] for r in again.inserted] == ["z"]

    p = await handle.call(
        "insert_ignore",
        pairs,
        [{"a": 1, "b": 1, "v": "first"}, {"a": 1, "b": 2}, {"a": 1, "b": 1, "v": "dup"}],
    )
    assert [(r["a"], r["b"], r["v"]) for r in p.inserted] == [(1, 1, "first"), (1, 2, None)]
    assert p.existing == [{"a": 1, "b": 1, "v": "dup"}]


async def test_heterogeneous_rows_use_their_own_columns(
    handle: Handle, aengine: AsyncEngine
) -> None:
    result = await handle.call(
        "insert_ignore",
        users,
        [
            {"email": "a@x", "name": "a"},
            {"email": "b@x", "name": "b", "note": "given", "pid": 1},
            {"email": "c@x", "name": "c", "pid": None},
            {"email": "a@x", "name": "dup", "note": "x"},
        ],
    )
    assert [r["email"] for r in result.inserted] == ["a@x", "b@x", "c@x"]
    assert result.existing == [{"email": "a@x", "name": "dup", "note": "x"}]
    stored = {r["email"]: r for r in await rows_of(aengine, users)}
    # a row that leaves a column out gets the server default, not NULL
    assert stored["a@x"]["note"] == "none"
    assert stored["c@x"]["note"] == "none"
    assert stored["b@x"]["note"] == "given"
    assert stored["b@x"]["pid"] == 1


async def test_empty_rows_send_no_sql(aengine: AsyncEngine, statements: list[str]) -> None:
    result = await onconflict.insert_ignore(aengine, users, [])
    assert (result.inserted, result.existing) == ([], [])
    assert statements == []


async def test_generator_input(handle: Handle) -> None:
    result = await handle.call("insert_ignore", tags, ({"slug": str(i)} for i in range(3)))
    assert result.inserted_count == 3


# -- only duplicates are skipped ---------------------------------------------

# the driver code each violation raises is backend.error_codes[violation] (None:
# the database stores the row, e.g. SQLite and text longer than VARCHAR(n))
BAD_ROW = {
    "not_null": {"email": "n@x", "name": None},
    "check": {"email": "n@x", "name": ""},
    "foreign_key": {"email": "n@x", "name": "fk", "pid": 99},
    "too_long": {"email": "n@x", "name": "toolongname"},
}


@pytest.mark.parametrize("alone", [False, True], ids=["batch", "alone"])
@pytest.mark.parametrize("strategy", ["native", CLASSIFY])
@pytest.mark.parametrize("violation", list(BAD_ROW))
async def test_other_violations_raise_and_store_nothing(
    handle: Handle,
    aengine: AsyncEngine,
    backend: Backend,
    violation: str,
    strategy: str,
    alone: bool,
) -> None:
    """Also for a bad row alone: a one-row call that owns its transaction takes
    MariaDB's path without a SAVEPOINT, and must still store nothing."""
    await handle.call("insert_ignore", users, [{"email": "a@x", "name": "alice"}])
    batch = [
        {"email": "a@x", "name": "alice"},  # a true duplicate in the same call
        {"email": "ok@x", "name": "fine"},
        BAD_ROW[violation],
    ]
    if alone:
        batch = [BAD_ROW[violation]]
    expected = backend.error_codes[violation]
    if expected is None:
        result = await handle.call("insert_ignore", users, batch, strategy=strategy)
        assert result.inserted[-1]["name"] == "toolongname"  # stored as given, not cut
        return
    with pytest.raises(sa.exc.DBAPIError) as info:
        await handle.call("insert_ignore", users, batch, strategy=strategy)
    assert driver_code(info.value) == expected
    assert [r["email"] for r in await rows_of(aengine, users)] == ["a@x"]


async def test_primary_key_duplicate(
    handle: Handle, aengine: AsyncEngine, backend: Backend
) -> None:
    first = await handle.call(
        "insert_ignore", users, [{"id": 7, "email": "a@x", "name": "alice"}], on="id"
    )
    assert first.inserted[0]["id"] == 7
    rows = [{"id": 7, "email": "new@x", "name": "new"}, {"id": 8, "email": "b@x", "name": "bob"}]
    # (MySQL's INSERT IGNORE fires on email too: the skipped row is checked after)
    result = await handle.call("insert_ignore", users, rows, on="id")
    assert result.existing == [rows[0]]
    assert [r["id"] for r in result.inserted] == [8]
    assert [r["email"] for r in await rows_of(aengine, users)] == ["a@x", "b@x"]


async def test_conflict_on_another_key_raises(aengine: AsyncEngine, backend: Backend) -> None:
    await onconflict.insert_ignore(
        aengine, accounts, [{"email": "a@x", "handle": "a"}], on=onconflict.ANY_KEY
    )
    clash = [{"email": "b@x", "handle": "a"}]  # new email, taken handle
    with pytest.raises(sa.exc.IntegrityError):
        await onconflict.insert_ignore(aengine, accounts, clash, on="email")
    # several rows, one of them clashing: raised, nothing of the call stored
    rows = [{"email": "c@x", "handle": "c"}, *clash, {"email": "a@x", "handle": "z"}]
    with pytest.raises(sa.exc.IntegrityError):
        await onconflict.insert_ignore(aengine, accounts, rows, on="email")
    with pytest.raises(sa.exc.IntegrityError):
        await onconflict.insert_ignore(aengine, accounts, rows, on="email", returning=False)
    assert len(await rows_of(aengine, accounts)) == 1
    result = await onconflict.insert_ignore(aengine, accounts, clash, on=onconflict.ANY_KEY)
    assert result.existing == clash
    assert len(await rows_of(aengine, accounts)) == 1


async def test_a_python_default_key_that_collides_raises(aengine: AsyncEngine) -> None:
    """A key filled by a Python default is within reach of MySQL's INSERT IGNORE
    (a UUID primary key from uuid4, say): a row colliding there is no duplicate
    of the target and raises, on every database; a duplicate of the target is
    existing."""
    md = sa.MetaData()
    t = sa.Table(
        "oc_const_pk",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False, default=lambda: 1),
        sa.Column("sku", sa.String(20), nullable=False, unique=True),
    )
    async with aengine.begin() as conn:
        await conn.run_sync(md.drop_all)
        await conn.run_sync(md.create_all)
    try:
        first = await onconflict.insert_ignore(aengine, t, [{"sku": "a"}], on="sku")
        assert first.inserted_count == 1
        again = await onconflict.insert_ignore(aengine, t, [{"sku": "a"}], on="sku")
        assert again.existing_count == 1
        for rows in ([{"sku": "b"}], [{"sku": "a"}, {"sku": "c"}]):  # id 1 is taken
            with pytest.raises(sa.exc.IntegrityError):
                await onconflict.insert_ignore(aengine, t, rows, on="sku")
        async with aengine.connect() as conn:
            assert (await conn.execute(sa.select(t.c.sku))).scalars().all() == ["a"]
    finally:
        async with aengine.begin() as conn:
            await conn.run_sync(md.drop_all)


async def test_checked_skips_under_concurrency_are_exact(aengine: AsyncEngine) -> None:
    """Callers racing on the same keys of a table whose rows could collide on
    another key (a UUID primary key from uuid4): every key is created once, and
    the after-statement check of skipped rows (MySQL) neither raises nor
    deadlocks (it takes a shared lock, as INSERT IGNORE's duplicate check did)."""
    md = sa.MetaData()
    t = sa.Table(
        "oc_uuid_race",
        md,
        sa.Column("id", sa.Uuid, primary_key=True, default=uuid.uuid4),
        sa.Column("k", sa.String(20), nullable=False, unique=True),
    )
    async with aengine.begin() as conn:
        await conn.run_sync(md.drop_all)
        await conn.run_sync(md.create_all)
    made: list[str] = []

    async def caller(n: int) -> None:
        for batch in range(6):
            keys = [f"k{(batch * 3 + n + j) % 12}" for j in range(4)]
            result = await onconflict.insert_ignore(aengine, t, [{"k": k} for k in keys], on="k")
            made.extend(r["k"] for r in result.inserted)

    try:
        async with anyio.create_task_group() as tg:
            for n in range(8):
                tg.start_soon(caller, n)
        assert sorted(made) == sorted(f"k{i}" for i in range(12))
        async with aengine.connect() as conn:
            assert (await conn.execute(sa.select(sa.func.count()).select_from(t))).scalar() == 12
    finally:
        async with aengine.begin() as conn:
            await conn.run_sync(md.drop_all)


@pytest.mark.parametrize("owner", ["engine", "connection"])
async def test_one_row_planned_once_per_shape_stays_exact(aengine: AsyncEngine, owner: str) -> None:
    """Every database. Where the driver-level path plans a one-row call once
    per call shape (table, the row's keys, on=, returning=; aiomysql,
    aiosqlite), what depends on the values is still checked on every call (a
    SQL expression in the key refused, an autoincrement key given as None left
    to the database), and results are as the planned call's: returning=
    names, counts only."""
    from onconflict.dialects import driver_path

    async def call(rows: list[dict[str, Any]], **kw: Any) -> onconflict.InsertResult:
        if owner == "engine":
            return await onconflict.insert_ignore(aengine, users, rows, **kw)
        async with aengine.begin() as conn:
            return await onconflict.insert_ignore(conn, users, rows, **kw)

    path = driver_path(aengine.dialect)
    first = await call([{"email": "a@x", "name": "a"}])
    assert first.inserted[0]["note"] == "none"
    planned = len(path._one_row_plans)
    again = await call([{"email": "a@x", "name": "b"}])
    assert again.existing == [{"email": "a@x", "name": "b"}]
    made = await call([{"email": "b@x", "name": "b"}])
    assert made.inserted[0]["email"] == "b@x"
    assert len(path._one_row_plans) == planned  # the same shape: planned once
    with pytest.raises(ValueError, match="SQL expression"):
        await call([{"email": sa.func.lower("C@X"), "name": "c"}])
    numbered = await call([{"id": None, "email": "d@x", "name": "d"}], on="email")
    assert numbered.inserted[0]["id"] is not None
    given = await call([{"id": 1000, "email": "e@x", "name": "e"}], on=onconflict.ANY_KEY)
    assert given.inserted[0]["id"] == 1000
    named = await call([{"email": "f@x", "name": "f"}], returning=["email"])
    assert named.inserted == [{"email": "f@x"}]
    counted = await call([{"email": "f@x", "name": "f"}], returning=False)
    assert (counted.inserted_count, counted.existing_count) == (0, 1)
    with pytest.raises(ValueError, match="nope"):
        await call([{"email": "g@x", "name": "g", "nope": 1}])
    with pytest.raises(sa.exc.IntegrityError):
        await call([{"email": "h@x", "name": None}])
    assert len(await rows_of(aengine, users)) == 5


@pytest.mark.needs("partial_indexes")
async def test_partial_unique_index(aengine: AsyncEngine) -> None:
    rows = [
        {"email": "a@x", "active": True},
        {"email": "a@x", "active": False},
        {"email": "a@x", "active": False},  # inactive rows never conflict
        {"email": "a@x", "active": True},
    ]
    result = await onconflict.insert_ignore(aengine, subscriptions, rows, on=active_email)
    assert [r["active"] for r in result.inserted] == [True, False, False]
    assert result.existing == [rows[3]]
    by_name = await onconflict.insert_ignore(
        aengine,
        subscriptions,
        [{"email": "a@x", "active": True}],
        on="uq_subscriptions_active_email",
    )
    assert by_name.existing_count == 1


# -- handles and transactions ------------------------------------------------


async def test_connection_is_the_callers_transaction(aengine: AsyncEngine) -> None:
    async with aengine.connect() as conn:
        result = await onconflict.insert_ignore(conn, tags, [{"slug": "a"}, {"slug": "b"}])
        assert result.inserted_count == 2
        await conn.rollback()
    assert await rows_of(aengine, tags) == []
    async with aengine.begin() as conn:
        await onconflict.insert_ignore(conn, tags, [{"slug": "a"}])
    assert await rows_of(aengine, tags) == [{"slug": "a", "label": None}]


async def test_duplicate_keeps_callers_earlier_work(aengine: AsyncEngine) -> None:
    async with aengine.begin() as conn:
        await conn.execute(tags.insert(), [{"slug": "mine"}])
        await onconflict.insert_ignore(conn, tags, [{"slug": "mine"}, {"slug": "new"}])
    assert [r["slug"] for r in await rows_of(aengine, tags)] == ["mine", "new"]


async def test_async_session_with_orm_class(aengine: AsyncEngine) -> None:
    async with AsyncSession(aengine) as session:
        session.add(Item(code="pending", title="flushed first"))
        result = await onconflict.insert_ignore(
            session, Item, [{"code": "pending", "title": "dup"}, {"code": "b", "title": "B"}]
        )
        assert result.existing == [{"code": "pending", "title": "dup"}]
        assert [r["code"] for r in result.inserted] == ["b"]
        await session.commit()
    stored = await rows_of(aengine, Item.__table__)  # type: ignore[arg-type]
    assert [(r["item_code"], r["item_title"]) for r in stored] == [
        ("pending", "flushed first"),
        ("b", "B"),
    ]


def test_sync_session_and_connection(sengine: Engine) -> None:
    from sqlalchemy.orm import Session

    with Session(sengine) as session:
        r = onconflict.sync.insert_ignore(session, Item, [{"code": "s", "title": "t"}])
        assert r.inserted_count == 1
        session.commit()
    with sengine.begin() as conn:
        r = onconflict.sync.insert_ignore(conn, Item, [{"code": "s"}, {"code": "t"}])
        assert (r.inserted_count, r.existing_count) == (1, 1)


# -- bad input, refused before any SQL ---------------------------------------


@pytest.mark.parametrize(
    ("rows", "kw", "message"),
    [
        ([{"email": "a@x", "nmae": "x"}], {}, "'nmae' not a column of table 'oc_users'"),
        ([{"name": "x"}], {}, "no conflict target for 'oc_users'"),
        ([{"email": "a@x", "handle": "h"}], {"table": accounts}, "several conflict targets"),
        ([{"email": "a@x", "name": "x"}], {"on": "nope"}, "neither a column nor a constraint"),
        ([{"email": "a@x", "name": "x"}], {"on": ["email", "nope"]}, "'nope' is not a column"),
        ([["email", "a@x"]], {}, "expected a mapping"),
        ([{}], {}, "row 0 has no columns"),
    ],
)
async def test_bad_input_is_refused_before_sql(
    aengine: AsyncEngine, statements: list[str], rows: Any, kw: dict[str, Any], message: str
) -> None:
    kw = dict(kw)
    table = kw.pop("table", users)
    with pytest.raises((ValueError, TypeError), match=message):
        await onconflict.insert_ignore(aengine, table, rows, **kw)
    assert statements == []


async def test_bad_handle(aengine: AsyncEngine) -> None:
    with pytest.raises(TypeError, match=r"AsyncConnection, AsyncSession or AsyncEngine"):
        await onconflict.insert_ignore("not a connection", tags, [{"slug": "a"}])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"sqlalchemy\.Table or a mapped ORM class"):
        await onconflict.insert_ignore(aengine, "oc_tags", [{"slug": "a"}])


# -- concurrency and size ----------------------------------------------------


@pytest.mark.crowd  # dozens of connections at once
@pytest.mark.parametrize("strategy", ["native", CLASSIFY])
async def test_64_coroutines_insert_the_same_rows(aengine: AsyncEngine, strategy: Any) -> None:
    rows = [{"slug": f"key-{i:03d}", "label": "x"} for i in range(100)]
    counts: list[int] = []

    async def worker() -> None:
        result = await onconflict.insert_ignore(aengine, tags, rows, strategy=strategy)
        assert result.inserted_count + result.existing_count == 100
        counts.append(result.inserted_count)

    async with anyio.create_task_group() as tg:
        for _ in range(64):
            tg.start_soon(worker)
    assert len(counts) == 64
    assert sum(counts) == 100
    assert len(await rows_of(aengine, tags)) == 100


@pytest.mark.slow
async def test_100k_rows(aengine: AsyncEngine, backend: Backend) -> None:
    n = 100_000
    first = await onconflict.insert_ignore(
        aengine, pairs, ({"a": i, "b": 0} for i in range(0, n, 2))
    )
    assert first.inserted_count == n // 2
    rows = [{"a": i, "b": 0, "v": "v"} for i in range(n)]
    result = await onconflict.insert_ignore(aengine, pairs, rows)
    assert (result.inserted_count, result.existing_count) == (n // 2, n // 2)
    assert [r["a"] for r in result.inserted[:3]] == [1, 3, 5]
    assert [r["a"] for r in result.existing[:3]] == [0, 2, 4]
    async with aengine.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(pairs))).scalar() == n


@pytest.mark.needs("returning_optional")
async def test_without_returning_one_row_per_statement(backend: Backend) -> None:
    """SQLite < 3.35 and MySQL 8 have no INSERT ... RETURNING: one row per
    statement, outcome from the affected-row count. Forced on the real server."""
    engine = backend.async_engine()
    try:
        async with engine.connect():
            pass  # the dialect learns the server version on first connect
        engine.dialect.insert_returning = False
        await onconflict.insert_ignore(engine, users, [{"email": "a@x", "name": "a"}])
        result = await onconflict.insert_ignore(
            engine, users, [{"email": "a@x", "name": "dup"}, {"email": "b@x", "name": "b"}]
        )
        assert result.existing == [{"email": "a@x", "name": "dup"}]
        assert [r["email"] for r in result.inserted] == ["b@x"]
        assert isinstance(result.inserted[0]["id"], int)
        with pytest.raises(sa.exc.IntegrityError):
            await onconflict.insert_ignore(engine, users, [{"email": "c@x", "name": None}])
        assert len(await rows_of(engine, users)) == 2
    finally:
        await engine.dispose()


async def test_failed_multi_statement_call_leaves_nothing_in_callers_transaction(
    aengine: AsyncEngine, backend: Backend
) -> None:
    big = [{"email": f"u{i:05d}@x", "name": "u"} for i in range(2500)]  # several statements
    big.append({"email": "bad@x", "name": None})  # fails in the last one
    async with aengine.connect() as conn:
        await conn.execute(tags.insert(), [{"slug": "mine"}])
        with pytest.raises(sa.exc.IntegrityError):
            await onconflict.insert_ignore(conn, users, big)
        if backend.error_aborts_transaction:
            await conn.rollback()  # PostgreSQL aborts the whole transaction on any error
        else:
            await conn.commit()  # the caller's own work can still be committed
    assert len(await rows_of(aengine, users)) == 0
    expected = [] if backend.error_aborts_transaction else [{"slug": "mine", "label": None}]
    assert await rows_of(aengine, tags) == expected


async def test_first_call_in_a_transaction_stays_in_it(
    aengine: AsyncEngine, backend: Backend
) -> None:
    """A multi-statement call as the first thing in a transaction: its savepoint
    must not commit on release (Python's sqlite3 would, without a BEGIN first)."""
    rows = [{"slug": f"s{i:05d}"} for i in range(2500)]
    async with aengine.connect() as conn:
        result = await onconflict.insert_ignore(conn, tags, rows)
        assert result.inserted_count == 2500
        await conn.rollback()
    assert await rows_of(aengine, tags) == []


# -- the classify strategy -------------------------------------------------------


@pytest.mark.needs("savepoints")
async def test_classify_raises_for_a_duplicate_of_another_key(aengine: AsyncEngine) -> None:
    await onconflict.insert_ignore(
        aengine, accounts, [{"email": "a@x", "handle": "a"}], on=onconflict.ANY_KEY
    )
    clash = [{"email": "b@x", "handle": "a"}]  # new email, taken handle
    with pytest.raises(sa.exc.IntegrityError):
        await onconflict.insert_ignore(aengine, accounts, clash, on="email", strategy="classify")
    again = [{"email": "a@x", "handle": "z"}]  # a true duplicate of the target
    result = await onconflict.insert_ignore(
        aengine, accounts, again, on="email", strategy="classify"
    )
    assert result.existing == again
    any_key = await onconflict.insert_ignore(
        aengine, accounts, clash, on=onconflict.ANY_KEY, strategy="classify"
    )
    assert any_key.existing == clash


@pytest.mark.needs("savepoints")
async def test_classify_primary_key_target(aengine: AsyncEngine) -> None:
    async with aengine.begin() as conn:
        await conn.execute(users.insert(), [{"id": 5, "email": "a@x", "name": "a"}])
    result = await onconflict.insert_ignore(
        aengine, users, [{"id": 5, "email": "b@x", "name": "b"}], on="id", strategy="classify"
    )
    assert result.existing_count == 1


@pytest.mark.needs("savepoints")
async def test_classify_keeps_the_callers_transaction_alive(aengine: AsyncEngine) -> None:
    """On PostgreSQL a failed INSERT aborts the transaction; the per-row SAVEPOINT
    keeps the caller's earlier work."""
    await onconflict.insert_ignore(aengine, tags, [{"slug": "taken"}])
    async with aengine.begin() as conn:
        await conn.execute(tags.insert(), [{"slug": "mine"}])
        result = await onconflict.insert_ignore(
            conn, tags, [{"slug": "taken"}, {"slug": "new"}], strategy="classify"
        )
        assert (result.inserted_count, result.existing_count) == (1, 1)
        await conn.execute(tags.insert(), [{"slug": "after"}])
    assert [r["slug"] for r in await rows_of(aengine, tags)] == ["after", "mine", "new", "taken"]


@pytest.mark.needs("savepoints")
async def test_classify_logs_the_error_it_raises(
    aengine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="onconflict")
    with pytest.raises(sa.exc.IntegrityError):
        await onconflict.insert_ignore(
            aengine, users, [{"email": "x@x", "name": None}], strategy="classify"
        )
    record = next(r for r in caplog.records if r.name == "onconflict")
    assert "oc_users" in record.getMessage()
    assert record.exc_info is not None


@pytest.mark.databases("postgresql")  # the COPY path is PostgreSQL's (asyncpg)
async def test_postgresql_copy_path_for_large_calls(aengine: AsyncEngine, backend: Backend) -> None:
    """Above the threshold, asyncpg calls COPY into a temporary table and insert
    from it: the same exact outcomes as the statement path."""
    from onconflict.dialects.postgresql.copy import COPY_THRESHOLD

    seen = await asyncpg_queries(aengine)  # (a SQLAlchemy listener turns the path off)
    n = COPY_THRESHOLD + 5_000
    await onconflict.insert_ignore(aengine, pairs, [{"a": i, "b": 0} for i in range(0, n, 3)])
    rows = [{"a": i, "b": 0, "v": f"v{i}"} for i in range(n)]
    rows.append({"a": 1, "b": 0, "v": "repeat"})  # repeated in the call
    result = await onconflict.insert_ignore(aengine, pairs, rows)
    assert any(s.startswith("INSERT") and "FROM oc_copy_" in s for s in seen)
    assert [r["a"] for r in result.existing[:3]] == [0, 3, 6]
    assert result.existing[-1] == {"a": 1, "b": 0, "v": "repeat"}
    assert [(r["a"], r["v"]) for r in result.inserted[:2]] == [(1, "v1"), (2, "v2")]
    assert result.inserted_count == n - len(range(0, n, 3))
    assert all(isinstance(r["id"], int) for r in result.inserted)
    async with aengine.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(pairs))).scalar() == n


@pytest.mark.databases("postgresql")  # the autocommit path is PostgreSQL's (asyncpg)
async def test_one_row_with_an_engine_is_one_round_trip(
    aengine: AsyncEngine, backend: Backend
) -> None:
    """PostgreSQL + asyncpg: a one-row call that owns its work is one statement in
    autocommit (counted at the driver); errors still come as SQLAlchemy's."""
    queries: list[str] = []

    @sa.event.listens_for(aengine.sync_engine, "connect")
    def on_connect(dbapi_conn: Any, _: Any) -> None:
        dbapi_conn.driver_connection.add_query_logger(lambda r: queries.append(r.query))

    await aengine.dispose()
    first = await onconflict.insert_ignore(aengine, users, [{"email": "a@x", "name": "a"}])
    again = await onconflict.insert_ignore(aengine, users, [{"email": "a@x", "name": "b"}])
    await asyncio.sleep(0.05)
    assert (first.inserted_count, again.existing_count) == (1, 1)
    assert isinstance(first.inserted[0]["id"], int)
    assert first.inserted[0]["note"] == "none"  # server default, returned
    assert len(queries) == 2, queries
    with pytest.raises(sa.exc.IntegrityError):
        await onconflict.insert_ignore(aengine, users, [{"email": "n@x", "name": None}])
    assert [r["email"] for r in await rows_of(aengine, users)] == ["a@x"]


BAD_USERS = [
    {"email": "n@x", "name": None},  # NOT NULL (IGNORE would store '')
    {"email": "l@x", "name": "toolong"},  # too long (IGNORE would cut it)
    {"email": "f@x", "name": "f", "pid": 999},  # foreign key (IGNORE would drop it)
    {"email": "c@x", "name": ""},  # CHECK
]


@pytest.mark.databases("mariadb")  # the driver-level guarded path is MariaDB's (aiomysql)
async def test_one_row_with_an_engine_on_mariadb_is_insert_and_commit(backend: Backend) -> None:
    """MariaDB + aiomysql: a one-row call that owns its work runs on the driver
    connection: a plain INSERT ... RETURNING then COMMIT for a new row; the
    INSERT (error 1062) and ROLLBACK for a duplicate (counted by the server, on
    the one pooled session). Every other outcome is undone and raised as before."""
    engine = backend.async_engine(pool_size=1, max_overflow=0)
    try:
        await onconflict.insert_ignore(engine, users, [{"email": "w@x", "name": "w"}])
        statements = await SessionStatements.of(engine)
        first = await statements(
            onconflict.insert_ignore(engine, users, [{"email": "a@x", "name": "a"}])
        )
        assert first == {"insert": 1, "commit": 1}
        again = await statements(
            onconflict.insert_ignore(engine, users, [{"email": "a@x", "name": "b"}])
        )
        assert again == {"insert": 1, "rollback": 1}
        made = await onconflict.insert_ignore(engine, users, [{"email": "b@x", "name": "b"}])
        assert isinstance(made.inserted[0]["id"], int)
        assert made.inserted[0]["note"] == "none"  # server default, returned
        stored = [made.inserted[0]]  # with its id: a duplicate of either key
        again = await onconflict.insert_ignore(engine, users, stored, on=onconflict.ANY_KEY)
        assert again.existing
        for bad in BAD_USERS:
            with pytest.raises(sa.exc.DBAPIError):
                await onconflict.insert_ignore(engine, users, [bad])
        assert sorted(r["email"] for r in await rows_of(engine, users)) == ["a@x", "b@x", "w@x"]
    finally:
        await engine.dispose()


@pytest.mark.needs("isolation_levels")  # DuckDB's driver sets none, not even AUTOCOMMIT
async def test_an_autocommit_engine_still_gets_all_or_nothing(backend: Backend) -> None:
    """An engine created with isolation_level="AUTOCOMMIT": a call that owns its
    work still runs in one transaction of its own. Without it, the first chunks
    of a large call would be committed before a bad row in the last one raised,
    and on MariaDB a row INSERT IGNORE cut short would be stored before its
    warning was read (found by this test)."""
    engine = backend.async_engine(isolation_level="AUTOCOMMIT")
    try:
        for _ in range(2):  # the second call runs on a connected engine
            got = await onconflict.insert_ignore(engine, users, [{"email": "a@x", "name": "a"}])
        assert got.existing_count == 1
        bad = BAD_USERS if backend.guarded_ignore else BAD_USERS[:1]
        for row in bad:
            with pytest.raises(sa.exc.DBAPIError):
                await onconflict.insert_ignore(engine, users, [row])
        many = [{"email": f"{i}@x", "name": "m"} for i in range(2500)]
        with pytest.raises(sa.exc.IntegrityError):
            await onconflict.insert_ignore(engine, users, [*many, {"email": "z@x", "name": None}])
        assert [r["email"] for r in await rows_of(engine, users)] == ["a@x"]
        # and the engine's connections are handed back in AUTOCOMMIT, as configured
        async with engine.connect() as conn:
            await conn.execute(sa.insert(users), [{"email": "b@x", "name": "b"}])
        assert len(await rows_of(engine, users)) == 2
    finally:
        await engine.dispose()
    sync = backend.sync_engine(isolation_level="AUTOCOMMIT")  # the sync twin: the same
    try:
        with pytest.raises(sa.exc.IntegrityError):
            onconflict.sync.insert_ignore(sync, users, [*many, {"email": "z@x", "name": None}])
        with sync.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(users)).scalar() == 2
    finally:
        sync.dispose()


@pytest.mark.databases("mariadb")  # the INSERT IGNORE guard is MySQL's and MariaDB's
async def test_mariadb_refuses_a_connection_in_autocommit(
    aengine: AsyncEngine, backend: Backend
) -> None:
    """The caller's own connection in AUTOCOMMIT: the guard cannot undo a coerced
    row there, so MySQL/MariaDB calls are refused before any SQL."""
    async with aengine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        with pytest.raises(onconflict.UnsafeInsertError, match="AUTOCOMMIT"):
            await onconflict.insert_ignore(auto, users, [{"email": "l@x", "name": "toolong"}])
    assert await rows_of(aengine, users) == []


# -- an autoincrement primary key given as None: the database numbers the row ------


async def test_autoincrement_key_given_as_none_is_numbered(
    handle: Handle, aengine: AsyncEngine
) -> None:
    """As Django and Rails do, on every database alike (PostgreSQL raised NOT
    NULL, SQLite OutcomeMismatchError, MariaDB inserted)."""
    given = [
        {"id": None, "email": "a@x", "name": "a"},
        {"id": None, "email": "b@x", "name": "b"},
        {"id": None, "email": "a@x", "name": "dup"},  # repeated in the call
    ]
    first = await handle.call("insert_ignore", users, given)
    assert [r["email"] for r in first.inserted] == ["a@x", "b@x"]
    assert all(isinstance(r["id"], int) for r in first.inserted)
    assert first.existing == [given[2]]
    assert given[0] == {"id": None, "email": "a@x", "name": "a"}  # input rows unchanged
    again = await handle.call(
        "insert_ignore",
        users,
        [{"id": None, "email": "a@x", "name": "a"}, {"email": "c@x", "name": "c"}],
    )
    assert again.existing == [{"id": None, "email": "a@x", "name": "a"}]
    assert [r["email"] for r in again.inserted] == ["c@x"]
    stored = await rows_of(aengine, users)
    assert [(r["email"], r["id"]) for r in stored] == [
        ("a@x", first.inserted[0]["id"]),
        ("b@x", first.inserted[1]["id"]),
        ("c@x", again.inserted[0]["id"]),
    ]
    # an ORM class: the attribute given as None
    items = await handle.call("insert_ignore", Item, [{"id": None, "code": "i1"}])
    assert isinstance(items.inserted[0]["id"], int)
    assert items.inserted[0]["code"] == "i1"


async def test_autoincrement_key_as_none_in_a_session_and_connection(aengine: AsyncEngine) -> None:
    async with AsyncSession(aengine) as session:
        result = await onconflict.insert_ignore(
            session, users, [{"id": None, "email": "s@x", "name": "s"}]
        )
        await session.commit()
    assert isinstance(result.inserted[0]["id"], int)
    async with aengine.begin() as conn:
        result = await onconflict.insert_ignore(
            conn, users, [{"id": None, "email": "s@x", "name": "s"}]
        )
    assert result.existing == [{"id": None, "email": "s@x", "name": "s"}]


# -- inheritance ---------------------------------------------------------------


@pytest.mark.usefixtures("inheritance_tables")
async def test_single_table_inheritance_sets_the_discriminator(
    handle: Handle, aengine: AsyncEngine
) -> None:
    from tests.schema import Employee, Engineer, Manager

    first = await handle.call(
        "insert_ignore",
        Manager,
        [{"email": "m@x", "name": "m", "budget": 5}, {"email": "m2@x", "name": "m2"}],
    )
    assert [(r["email"], r["kind"]) for r in first.inserted] == [
        ("m@x", "manager"),
        ("m2@x", "manager"),
    ]
    eng = await handle.call(
        "insert_ignore", Engineer, [{"email": "e@x", "name": "e", "language": "py"}]
    )
    assert eng.inserted[0]["kind"] == "engineer"
    again = await handle.call("insert_ignore", Manager, [{"email": "m@x", "name": "other"}])
    assert again.existing == [{"email": "m@x", "name": "other"}]  # as given
    base = await handle.call("insert_ignore", Employee, [{"email": "p@x", "name": "p"}])
    assert base.inserted[0]["kind"] == "employee"
    async with AsyncSession(aengine) as session:
        loaded = {e.email: e for e in (await session.scalars(sa.select(Employee))).all()}
    assert {k: type(v).__name__ for k, v in loaded.items()} == {
        "m@x": "Manager",
        "m2@x": "Manager",
        "e@x": "Engineer",
        "p@x": "Employee",
    }
    with pytest.raises(ValueError, match="polymorphic identity"):
        await handle.call(
            "insert_ignore", Manager, [{"email": "x@x", "name": "x", "kind": "engineer"}]
        )


@pytest.mark.usefixtures("inheritance_tables")
async def test_joined_table_inheritance_is_refused_before_sql(
    aengine: AsyncEngine, sengine: Engine, statements: list[str]
) -> None:
    from tests.schema import Car

    rows = [{"plate": "AB-1", "seats": 4}]
    with pytest.raises(onconflict.NotSupportedError, match="joined-table inheritance"):
        await onconflict.insert_ignore(aengine, Car, rows)
    with pytest.raises(onconflict.NotSupportedError, match="'oc_vehicles', 'oc_cars'"):
        await onconflict.upsert(aengine, Car, rows)
    with pytest.raises(onconflict.NotSupportedError, match="joined-table inheritance"):
        await onconflict.get_or_create(aengine, Car, {"plate": "AB-1"}, {"seats": 4})
    with pytest.raises(onconflict.NotSupportedError, match="joined-table inheritance"):
        await onconflict.update_or_create(aengine, Car, {"plate": "AB-1"}, {"seats": 4})
    with pytest.raises(onconflict.NotSupportedError, match="joined-table inheritance"):
        onconflict.sync.insert_ignore(sengine, Car, rows)
    assert statements == []


# -- conflict targets no unique key covers -------------------------------------


@pytest.mark.parametrize("on", ["name", ["name"], ["email", "name"], [users.c.note]])
async def test_a_target_no_unique_key_covers_is_refused_before_sql(
    handle: Handle, aengine: AsyncEngine, statements: list[str], on: Any
) -> None:
    """MariaDB (no conflict target) stored the first of two rows sharing a
    non-unique value and reported the other as existing; PostgreSQL and SQLite
    refused only after sending the statement."""
    rows = [{"email": "a@x", "name": "same"}, {"email": "b@x", "name": "same"}]
    with pytest.raises(
        ValueError, match=r"no primary key, unique constraint or unique index"
    ) as info:
        await handle.call("insert_ignore", users, rows, on=on)
    assert "uq_users_email (email)" in str(info.value)  # the unique keys it could use
    assert not [s for s in statements if "oc_users" in s]
    assert await rows_of(aengine, users) == []


@pytest.mark.needs("partial_indexes")  # MariaDB has no partial indexes
async def test_a_column_whose_only_unique_index_is_partial(
    handle: Handle, aengine: AsyncEngine, backend: Backend
) -> None:
    rows = [
        {"email": "a@x", "active": True},
        {"email": "a@x", "active": False},
        {"email": "a@x", "active": True},
    ]
    result = await handle.call("insert_ignore", subscriptions, rows, on="email")
    assert [r["active"] for r in result.inserted] == [True, False]
    assert result.existing == [rows[2]]
    target = onconflict._target.resolve_target(subscriptions, ["email"], {"email", "active"})
    assert target.key is not None
    assert target.key.name == "uq_subscriptions_active_email"
    assert target.key.where is not None


# -- SQL expressions as row values ---------------------------------------------


@pytest.mark.parametrize("strategy", ["auto", CLASSIFY])
async def test_sql_expressions_as_values_of_other_columns(
    handle: Handle, aengine: AsyncEngine, strategy: Any
) -> None:
    """MariaDB stored func.lower("X") as the text 'lower(:lower_1)'; the value
    now goes in the statement itself, on every database."""
    one = await handle.call(
        "insert_ignore",
        users,
        [{"email": "a@x", "name": sa.func.lower("ALICE")}],
        strategy=strategy,
    )
    assert one.inserted[0]["name"] == "alice"
    rows = [
        {"email": "a@x", "name": sa.func.lower("OTHER")},  # a duplicate: existing
        {"email": "b@x", "name": sa.func.lower("BOB")},
        {"email": "c@x", "name": sa.func.upper("carl")},
    ]
    result = await handle.call("insert_ignore", users, rows, strategy=strategy)
    assert result.existing == [rows[0]]
    assert [(r["email"], r["name"]) for r in result.inserted] == [("b@x", "bob"), ("c@x", "CARL")]
    stored = [(r["email"], r["name"]) for r in await rows_of(aengine, users)]
    assert stored == [("a@x", "alice"), ("b@x", "bob"), ("c@x", "CARL")]


async def test_sql_expression_values_still_get_the_guard(
    handle: Handle, aengine: AsyncEngine
) -> None:
    """A value the expression makes too long (or NULL) still raises, nothing stored."""
    with pytest.raises(sa.exc.DBAPIError):
        await handle.call(
            "insert_ignore",
            users,
            [{"email": "a@x", "name": "ok"}, {"email": "b@x", "name": sa.null()}],
        )
    assert await rows_of(aengine, users) == []


@pytest.mark.parametrize(
    ("on", "row"),
    [
        ("email", {"email": sa.func.lower("A@X"), "name": "a"}),
        (["email"], {"email": sa.literal("a@x"), "name": "a"}),
        (onconflict.ANY_KEY, {"email": "a@x", "name": sa.func.lower("A")}),
    ],
    ids=["key", "key_literal", "any_key"],
)
async def test_sql_expressions_where_rows_are_paired_by_value_are_refused(
    handle: Handle, aengine: AsyncEngine, on: Any, row: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match="SQL expression"):
        await handle.call("insert_ignore", users, [row], on=on)
    assert await rows_of(aengine, users) == []


async def test_sql_expressions_in_get_or_create_defaults(
    handle: Handle, aengine: AsyncEngine
) -> None:
    """PostgreSQL's one-statement get_or_create bound the expression as a
    parameter (asyncpg refused it); MariaDB's driver-level path sent its text."""

    async def call(fn: str, defaults: dict[str, Any]) -> Any:
        return await handle.call(fn, users, {"email": "a@x"}, defaults)

    row, created = await call("get_or_create", {"name": sa.func.lower("ALICE")})
    assert (row["name"], created) == ("alice", True)
    row, created = await call("get_or_create", {"name": sa.func.lower("OTHER")})
    assert (row["name"], created) == ("alice", False)
    row, created = await call("update_or_create", {"name": sa.func.upper("bob")})
    assert (row["name"], created) == ("BOB", False)
    assert [r["name"] for r in await rows_of(aengine, users)] == ["BOB"]
