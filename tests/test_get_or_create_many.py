"""get_or_create_many on the real servers: outcomes, stored rows, key identity, races."""

from __future__ import annotations

import asyncio
import functools
import os
import random
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

import onconflict
import onconflict.sync
from tests.conftest import Backend
from tests.handles import KINDS, Handle
from tests.schema import Item, accounts, storm, subscriptions, tags, users

pytestmark = pytest.mark.usefixtures("tables")
ROOT = Path(__file__).resolve().parent.parent
FRONTS = KINDS  # every handle: {async, sync} x {engine, connection, session}

Call = Callable[..., Awaitable[onconflict.GetOrCreateResult]]


def caller(handle: Handle) -> Call:
    """get_or_create_many through one handle; the caller's own transaction
    (connection, session) is committed after the call."""
    return functools.partial(handle.call, "get_or_create_many")


async def stored(engine: AsyncEngine, table: sa.Table, key: str = "id") -> dict[Any, Any]:
    async with engine.connect() as conn:
        return {r[key]: dict(r) for r in (await conn.execute(sa.select(table))).mappings()}


async def count(engine: AsyncEngine, table: sa.Table) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())


@pytest.mark.handles(*FRONTS)
async def test_stored_row_for_every_input_row(
    aengine: AsyncEngine, sengine: Engine, handle: Handle
) -> None:
    call = caller(handle)
    async with aengine.begin() as conn:
        await conn.execute(users.insert(), [{"email": "old@x", "name": "old"}])
    rows = [
        {"email": "new@x", "name": "new"},
        {"email": "old@x", "name": "other"},  # exists: returned as stored, not a mismatch
        {"email": "two@x", "name": "two", "pid": 1},
        {"email": "new@x", "name": "again"},  # an in-call repeat: the same stored row
    ]
    result = await call(users, rows)
    assert result.created == [True, False, True, False]
    db = await stored(aengine, users, "email")
    assert result.rows == [db["new@x"], db["old@x"], db["two@x"], db["new@x"]]
    assert [r["name"] for r in result.rows] == ["new", "old", "two", "new"]
    assert result.rows[0]["note"] == "none"  # server-generated values are there
    assert result.created_rows == [db["new@x"], db["two@x"]]
    assert result.existing_rows == [db["old@x"], db["new@x"]]
    assert (result.created_count, result.existing_count, len(result)) == (2, 2, 4)
    assert list(result) == list(zip(result.rows, result.created, strict=True))
    again = await call(users, [{"email": "two@x", "name": "x"}, {"email": "new@x", "name": "y"}])
    assert again.created == [False, False]
    assert again.rows == [db["two@x"], db["new@x"]]
    assert await count(aengine, users) == 3
    assert (await call(users, [])).rows == []


@pytest.mark.parametrize("front", ["async", "sync"])
async def test_orm_class_with_a_session_gives_attached_instances(
    aengine: AsyncEngine, sengine: Engine, front: str
) -> None:
    """Attribute names differ from column names (code -> item_code)."""
    rows = [{"code": "a", "title": "A"}, {"code": "b"}, {"code": "a", "title": "other"}]
    if front == "async":
        async with AsyncSession(aengine) as session:
            result = await onconflict.get_or_create_many(session, Item, rows)
            assert all(isinstance(i, Item) and i in session for i in result.rows)
            assert result.rows[0] is result.rows[2]
            assert await session.get(Item, result.rows[0].id) is result.rows[0]
            assert [i.title for i in result.rows] == ["A", None, "A"]
            await session.commit()
    else:
        with Session(sengine) as session:
            result = onconflict.sync.get_or_create_many(session, Item, rows)
            assert all(isinstance(i, Item) and i in session for i in result.rows)
            assert result.rows[0] is result.rows[2]
            assert [i.title for i in result.rows] == ["A", None, "A"]
            session.commit()
    assert result.created == [True, True, False]
    # an engine with an ORM class: mappings keyed by attribute name
    plain = await onconflict.get_or_create_many(aengine, Item, [{"code": "b"}, {"code": "c"}])
    assert plain.created == [False, True]
    assert set(plain.rows[0]) == {"id", "code", "title"}


keyed_metadata = sa.MetaData()


class Lowered(sa.types.TypeDecorator[str]):
    """Stores values lower-cased: "A@X" and "a@x" are one key."""

    impl = sa.String(50)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return None if value is None else str(value).lower()


odd = sa.Table(
    "oc_many_odd",
    keyed_metadata,
    sa.Column("Row Id", sa.Integer, primary_key=True, key="rid"),
    sa.Column("Tag Name", sa.String(40), key="tag", nullable=False, unique=True),
    sa.Column("Mail", Lowered(), key="mail", nullable=True, unique=True),
    sa.Column("token", sa.String(40), default=lambda: uuid4().hex),
)


@pytest.fixture
async def odd_table(aengine: AsyncEngine) -> AsyncIterator[None]:
    async with aengine.begin() as conn:
        await conn.run_sync(keyed_metadata.drop_all)
        await conn.run_sync(keyed_metadata.create_all)
    yield
    async with aengine.begin() as conn:
        await conn.run_sync(keyed_metadata.drop_all)


@pytest.mark.usefixtures("odd_table")
@pytest.mark.handles("async-engine", "sync-connection")
async def test_key_identity_as_the_database_sees_it(
    aengine: AsyncEngine, sengine: Engine, handle: Handle
) -> None:
    """Column key != name; a TypeDecorator that lower-cases the key; a
    Python-side default computed per row."""
    call = caller(handle)
    result = await call(odd, [{"tag": "t1"}, {"tag": "t2"}, {"tag": "t1"}], on=["tag"])
    assert result.created == [True, True, False]
    assert result.rows[0] is result.rows[2]
    assert result.rows[0]["rid"] != result.rows[1]["rid"]
    assert len({r["token"] for r in result.rows}) == 2  # one default per row made
    mails = [
        {"tag": "m1", "mail": "A@X"},
        {"tag": "m2", "mail": "a@x"},
        {"tag": "m3", "mail": "b@x"},
    ]
    by_mail = await call(odd, mails, on=["mail"])
    assert by_mail.created == [True, False, True]
    assert by_mail.rows[0] is by_mail.rows[1]
    assert by_mail.rows[0]["mail"] == "a@x"
    again = await call(odd, [{"tag": "zz", "mail": "B@X"}], on="mail")
    assert (again.created, again.rows[0]["tag"]) == ([False], "m3")
    assert await count(aengine, odd) == 4


async def test_collation_decides_the_key(aengine: AsyncEngine, backend: Backend) -> None:
    """MariaDB's default collation ignores case: "Foo" and "foo" are one key
    there (one row, the first created) and two on PostgreSQL and SQLite."""
    result = await onconflict.get_or_create_many(aengine, tags, [{"slug": "Foo"}, {"slug": "foo"}])
    if backend.folds_case:
        assert result.created == [True, False]
        assert result.rows[0] is result.rows[1]
        again = await onconflict.get_or_create_many(aengine, tags, [{"slug": "FOO"}])
        assert (again.created, again.rows[0]["slug"]) == ([False], "Foo")
    else:
        assert result.created == [True, True]
    assert await count(aengine, tags) == (1 if backend.folds_case else 2)


async def test_refused_before_any_sql(aengine: AsyncEngine) -> None:
    statements: list[str] = []

    @sa.event.listens_for(aengine.sync_engine, "before_cursor_execute")
    def log(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    many = onconflict.get_or_create_many
    with pytest.raises(ValueError, match="'email' is None"):
        await many(aengine, users, [{"email": "a@x", "name": "a"}, {"email": None, "name": "b"}])
    with pytest.raises(ValueError, match="does not give 'email'"):
        await many(aengine, users, [{"email": "a@x", "name": "a"}, {"name": "b"}], on="email")
    with pytest.raises(onconflict.NotSupportedError, match="ANY_KEY"):
        await many(aengine, users, [{"email": "a@x", "name": "a"}], on=onconflict.ANY_KEY)
    with pytest.raises(ValueError, match="not a column"):
        await many(aengine, users, [{"email": "a@x", "nope": 1}])
    with pytest.raises(ValueError, match="SQL expression"):
        await many(aengine, users, [{"email": sa.func.lower("A"), "name": "a"}])
    assert statements == []


@pytest.mark.usefixtures("backend")
@pytest.mark.needs("partial_indexes")  # no partial indexes on MariaDB
async def test_partial_index_refused(aengine: AsyncEngine, backend: Backend) -> None:
    with pytest.raises(onconflict.NotSupportedError, match="partial"):
        await onconflict.get_or_create_many(
            aengine, subscriptions, [{"email": "a@x", "active": True}], on="email"
        )


@pytest.mark.handles("async-engine", "async-connection", "sync-session")
async def test_only_duplicates_are_skipped(
    aengine: AsyncEngine, sengine: Engine, backend: Backend, handle: Handle
) -> None:
    """NOT NULL, CHECK, foreign key, too long, a duplicate of another unique
    key: raised, and nothing of the call is stored."""
    call = caller(handle)
    good = {"email": "good@x", "name": "good"}
    bad_rows: list[dict[str, Any]] = [
        {"email": "b@x", "name": None},
        {"email": "b@x", "name": ""},
        {"email": "b@x", "name": "f", "pid": 99},
    ]
    if backend.enforces_length:  # SQLite has no length limit
        bad_rows.append({"email": "b@x", "name": "toolongname"})
    for bad in bad_rows:
        with pytest.raises(sa.exc.DBAPIError):
            await call(users, [good, bad])
        assert await count(aengine, users) == 0, bad
    await onconflict.get_or_create_many(
        aengine, accounts, [{"email": "a@x", "handle": "h"}], on="email"
    )
    with pytest.raises(sa.exc.IntegrityError):
        await call(
            accounts, [{"email": "n@x", "handle": "n"}, {"email": "b@x", "handle": "h"}], on="email"
        )
    assert await count(aengine, accounts) == 1


async def test_the_callers_earlier_work_survives_a_failed_call(
    aengine: AsyncEngine, backend: Backend
) -> None:
    async with aengine.connect() as conn:
        await conn.execute(tags.insert(), [{"slug": "mine"}])
        with pytest.raises(sa.exc.DBAPIError):
            await onconflict.get_or_create_many(
                conn, users, [{"email": "g@x", "name": "g"}, {"email": "b@x", "name": ""}]
            )
        if backend.error_aborts_transaction:  # the error aborted the whole transaction
            await conn.rollback()
            return
        await conn.commit()
    assert await count(aengine, tags) == 1
    assert await count(aengine, users) == 0


@pytest.mark.handles("async-engine", "sync-connection")
async def test_large_inputs_are_chunked(
    aengine: AsyncEngine, sengine: Engine, backend: Backend, handle: Handle
) -> None:
    """More rows than one statement carries (page size, parameter budget), some
    there already, repeats, and rows of two shapes."""
    async with aengine.begin() as conn:
        await conn.execute(tags.insert(), [{"slug": f"s{i:05d}"} for i in range(0, 2500, 5)])
    rows: list[dict[str, Any]] = [{"slug": f"s{i:05d}"} for i in range(2500)]
    rows += [{"slug": f"s{i:05d}", "label": "x"} for i in range(2400, 2600)]
    random.Random(7).shuffle(rows)
    result = await caller(handle)(tags, rows)
    assert [r["slug"] for r in result.rows] == [r["slug"] for r in rows]
    first: dict[str, int] = {}
    for i, r in enumerate(rows):
        first.setdefault(r["slug"], i)
    there = {f"s{i:05d}" for i in range(0, 2500, 5)}
    expected = [first[r["slug"]] == i and r["slug"] not in there for i, r in enumerate(rows)]
    wrong = [(rows[i], c) for i, c in enumerate(result.created) if c != expected[i]]
    assert wrong == []
    assert await count(aengine, tags) == 2600


@pytest.mark.crowd  # dozens of connections at once
async def test_64_coroutines_overlapping_key_sets(aengine: AsyncEngine) -> None:
    """Each key created exactly once across all callers, and every caller gets
    every row's id (the same id for a key, whoever made it)."""
    got: list[onconflict.GetOrCreateResult] = []

    async def worker(i: int) -> None:
        keys = [f"k{(i * 5 + j) % 40:02d}" for j in range(10)]
        random.Random(i).shuffle(keys)
        got.append(
            await onconflict.get_or_create_many(
                aengine, storm, [{"k": k, "v": f"w{i}"} for k in keys]
            )
        )

    async with anyio.create_task_group() as tg:
        for i in range(64):
            tg.start_soon(worker, i)
    assert len(got) == 64
    check_race([(r["k"], r["id"], c) for res in got for r, c in res], distinct=40)
    db = await stored(aengine, storm, "k")
    assert {r["k"]: r["id"] for res in got for r in res.rows} == {k: v["id"] for k, v in db.items()}


def check_race(outcomes: list[tuple[str, Any, bool]], distinct: int) -> None:
    ids: dict[str, set[Any]] = defaultdict(set)
    makers: dict[str, int] = defaultdict(int)
    for key, pk, created in outcomes:
        ids[key].add(str(pk))
        makers[key] += created
    assert len(ids) == distinct
    assert all(len(v) == 1 for v in ids.values()), ids
    assert all(makers[k] == 1 for k in ids), makers


@pytest.mark.crowd  # dozens of connections at once
@pytest.mark.needs("writer_processes")
def test_8_processes_overlapping_key_sets(backend: Backend, aengine: AsyncEngine) -> None:
    """Separate processes (pools, event loops) at once, on overlapping key sets."""
    start = time.time() + 3
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.many_worker", backend.url, str(start), str(i)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )
        for i in range(8)
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [err for _, err in outputs]
    lines = [out.splitlines() for out, _ in outputs]
    assert all(len(one) == 12 for one in lines)  # every process got every row
    outcomes = [(k, pk, c == "True") for one in lines for k, pk, c in map(str.split, one)]
    check_race(outcomes, distinct=24)
    assert asyncio.run(_count_again(backend)) == 24


async def _count_again(backend: Backend) -> int:
    engine = backend.async_engine()
    try:
        return await count(engine, storm)
    finally:
        await engine.dispose()


@pytest.mark.postgresql
@pytest.mark.databases("postgresql")  # PostgreSQL isolation levels
async def test_postgresql_repeatable_read_through_retrying(
    aengine: AsyncEngine, backend: Backend
) -> None:
    """Under REPEATABLE READ a key committed after the snapshot cannot be read:
    PostgreSQL raises 40001 (transient), which retrying() resolves."""
    strict = aengine.execution_options(isolation_level="REPEATABLE READ")
    async with strict.connect() as mine:
        await mine.execute(sa.select(1))  # the snapshot
        async with aengine.begin() as other:
            await other.execute(users.insert(), [{"email": "s@x", "name": "other"}])
        with pytest.raises(sa.exc.DBAPIError) as info:
            await onconflict.get_or_create_many(mine, users, [{"email": "s@x", "name": "me"}])
        assert onconflict.is_transient(info.value)

    attempts: list[int] = []

    async def unit(conn: Any) -> onconflict.GetOrCreateResult:
        attempts.append(1)
        await conn.execute(sa.select(1))
        if len(attempts) == 1:
            async with aengine.begin() as other:
                await other.execute(users.insert(), [{"email": "s2@x", "name": "other"}])
        rows = [{"email": "n@x", "name": "me"}, {"email": "s2@x", "name": "me"}]
        return await onconflict.get_or_create_many(conn, users, rows)

    result = await onconflict.retrying(strict, unit)
    assert len(attempts) == 2
    assert result.created == [True, False]
    assert result.rows[1]["name"] == "other"
    # an engine at REPEATABLE READ owns its work: the call is correct there too
    plain = await onconflict.get_or_create_many(strict, users, [{"email": "s2@x", "name": "x"}])
    assert plain.created == [False]


@pytest.mark.mariadb
@pytest.mark.databases("mariadb")  # its REPEATABLE READ
async def test_mariadb_repeatable_read_finds_rows_committed_after_the_snapshot(
    aengine: AsyncEngine, backend: Backend
) -> None:
    """MariaDB's default REPEATABLE READ: the read after the skipped insert is a
    locking read, which sees rows committed after the snapshot."""
    async with aengine.connect() as mine:
        await mine.execute(sa.select(users.c.id))  # the snapshot
        async with aengine.begin() as other:
            await other.execute(users.insert(), [{"email": "s@x", "name": "other"}])
        rows = [{"email": "n@x", "name": "me"}, {"email": "s@x", "name": "me"}]
        result = await onconflict.get_or_create_many(mine, users, rows)
        assert result.created == [True, False]
        assert result.rows[1]["name"] == "other"
        await mine.commit()

    async def unit(conn: Any) -> onconflict.GetOrCreateResult:
        return await onconflict.get_or_create_many(conn, users, [{"email": "s@x", "name": "z"}])

    again = await onconflict.retrying(aengine, unit)
    assert (again.created, again.rows[0]["name"]) == ([False], "other")


@pytest.mark.needs("concurrent_writers")  # SQLite serialises writers: no interleaving
@pytest.mark.needs("lock_waits")  # DuckDB fails the second writer instead
async def test_lost_race_waits_for_the_other_transaction(
    aengine: AsyncEngine, backend: Backend
) -> None:
    """Another transaction holds a key uncommitted; the call waits on it, then
    returns the row it committed as existing."""
    async with aengine.connect() as other:
        await other.execute(users.insert(), [{"email": "k@x", "name": "other"}])  # not committed
        call = asyncio.ensure_future(
            onconflict.get_or_create_many(
                aengine, users, [{"email": "m@x", "name": "me"}, {"email": "k@x", "name": "me"}]
            )
        )
        await asyncio.sleep(0.3)
        assert not call.done()  # waiting on the other's lock
        await other.commit()
        result = await call
    assert result.created == [True, False]
    assert result.rows[1]["name"] == "other"


@pytest.mark.postgresql
@pytest.mark.databases("postgresql")  # the one-statement path and sequences are PostgreSQL's
async def test_postgresql_one_statement_and_no_sequence_values_burnt(
    aengine: AsyncEngine, backend: Backend
) -> None:
    sent: list[tuple[str, Any]] = []  # (statement, isolation level)

    @sa.event.listens_for(aengine.sync_engine, "before_cursor_execute")
    def log(conn: Any, _cur: Any, statement: str, *_: Any) -> None:
        sent.append((statement, conn.get_execution_options().get("isolation_level")))

    async def last_value() -> int:
        async with aengine.connect() as conn:
            seq = sa.text("SELECT last_value FROM oc_users_id_seq")
            return int((await conn.execute(seq)).scalar_one())

    rows = [{"email": f"{i}@x", "name": "n"} for i in range(3)]
    first = await onconflict.get_or_create_many(aengine, users, rows)
    before = await last_value()
    sent.clear()
    again = await onconflict.get_or_create_many(aengine, users, rows)
    # one statement, autocommitted: one round trip, no BEGIN and no COMMIT
    assert len(sent) == 1, sent
    assert sent[0][1] == "AUTOCOMMIT"
    assert again.rows == first.rows
    assert again.created == [False] * 3
    assert await last_value() == before  # existing keys burnt no sequence value
    more = await onconflict.get_or_create_many(
        aengine, users, [*rows, {"email": "new@x", "name": "n"}]
    )
    assert more.created == [False, False, False, True]
    assert await last_value() == before + 1


@pytest.mark.usefixtures("inheritance_tables")
@pytest.mark.needs("savepoints")  # in a session: the rows of another class are undone
async def test_single_table_inheritance(aengine: AsyncEngine, sengine: Engine) -> None:
    """Through a subclass: the discriminator is written, instances are of the
    subclass, and a key stored as another class's row is a mismatch."""
    from tests.schema import Engineer, Manager

    async with AsyncSession(aengine) as session:
        rows = [{"email": "m1@x", "name": "m1", "budget": 3}, {"email": "m2@x", "name": "m2"}]
        made = await onconflict.get_or_create_many(session, Manager, rows)
        assert made.created == [True, True]
        assert all(type(m) is Manager and m.kind == "manager" for m in made.rows)
        await session.commit()
    got = onconflict.sync.get_or_create_many(sengine, Manager, [{"email": "m1@x", "name": "x"}])
    assert (got.created, got.rows[0]["kind"], got.rows[0]["budget"]) == ([False], "manager", 3)
    with pytest.raises(onconflict.LookupMismatchError, match="kind"):
        await onconflict.get_or_create_many(
            aengine, Engineer, [{"email": "e@x", "name": "e"}, {"email": "m2@x", "name": "x"}]
        )
    async with aengine.connect() as conn:  # in the caller's transaction: undone too
        with pytest.raises(onconflict.LookupMismatchError, match="kind"):
            await onconflict.get_or_create_many(
                conn, Engineer, [{"email": "e@x", "name": "e"}, {"email": "m2@x", "name": "x"}]
            )
        await conn.commit()
        emails = (await conn.execute(sa.select(Engineer.__table__.c.email))).scalars().all()
    assert sorted(emails) == ["m1@x", "m2@x"]  # nothing of the refused calls stored
