"""PostgreSQL + asyncpg: a one-row insert_ignore inside the caller's
transaction runs on the asyncpg connection itself (AsyncpgPath.in_transaction),
exactly as SQLAlchemy's own execution runs it there: the adapter's lazy BEGIN
with the connection's isolation level, errors raised once as SQLAlchemy raises
them, the transaction then aborted as after SQLAlchemy's own failed statement."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

import onconflict
from onconflict.dialects import driver_path
from tests.conftest import Backend, asyncpg_queries
from tests.test_sqlite_driver_path import meta, parent, stored, things

pytestmark = pytest.mark.databases("postgresql")  # the in-transaction path of asyncpg


@pytest.fixture
async def made(aengine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    async with aengine.begin() as conn:
        await conn.run_sync(meta.drop_all)
        await conn.run_sync(meta.create_all)
    yield aengine
    async with aengine.begin() as conn:
        await conn.run_sync(meta.drop_all)


@pytest.fixture
def taken(made: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements the in-transaction path took (a spy on it, no mock);
    a call it declined (nothing sent) is not counted."""
    path = driver_path(made.dialect)
    sent: list[str] = []
    run = path.in_transaction  # type: ignore[attr-defined]

    async def spy(sync: Any, fast: Any, args: list[Any]) -> Any:
        sent.append(fast.sql)
        try:
            got = await run(sync, fast, args)
        except BaseException:
            raise
        if got is None:
            sent.pop()
        return got

    monkeypatch.setattr(path, "in_transaction", spy)
    return sent


async def inserts(queries: list[str]) -> list[str]:
    """What asyncpg ran (its query loggers are called soon after), briefly."""
    await asyncio.sleep(0.02)
    return [q.split(" ")[0] + (" oc_dp_things" if "oc_dp_things" in q else "") for q in queries]


async def test_one_statement_lazily_begun_commits_with_the_callers_work(
    made: AsyncEngine, backend: Backend, taken: list[str]
) -> None:
    """The call is the INSERT alone on the asyncpg connection: after the
    adapter's own BEGIN when it is the first statement of the block, inside the
    transaction already begun after earlier statements. Rows commit with the
    caller's work; the rows returned (key != name, Python and server defaults)
    are those the ordinary path returns."""
    queries = await asyncpg_queries(made)
    async with made.begin() as conn:
        first = await onconflict.insert_ignore(conn, things, [{"code": "a"}])
        assert await inserts(queries) == ["BEGIN;", "INSERT oc_dp_things"]
        await conn.execute(parent.insert(), {"id": 1})  # the caller's own work
        del queries[:]
        new = await onconflict.insert_ignore(conn, things, [{"code": "b", "pid": 1}])
        dup = await onconflict.insert_ignore(conn, things, [{"code": "a", "rank": 3}])
        (key,) = (c for c in things.constraints if isinstance(c, sa.UniqueConstraint))
        again = await onconflict.insert_ignore(conn, things, [{"code": "b"}], on=key)
        counted = await onconflict.insert_ignore(conn, things, [{"code": "c"}], returning=False)
        assert await inserts(queries) == ["INSERT oc_dp_things"] * 4
    assert len(taken) == 5
    assert (dup.existing, again.existing_count, counted.inserted_count) == (
        [{"code": "a", "rank": 3}],
        1,
        1,
    )
    (row,) = new.inserted
    assert (row["code"], row["rank"], row["label"], row["pid"]) == ("b", 7, "none", 1)
    assert [r for r in await stored(made) if r["code"] != "c"] == [first.inserted[0], row]
    async with made.connect() as conn:  # the ordinary path, for the same call
        await conn.execution_options(logging_token="ordinary")
        async with conn.begin():
            ordinary = await onconflict.insert_ignore(conn, things, [{"code": "d"}])
    assert len(taken) == 5
    (other,) = ordinary.inserted
    (mine,) = first.inserted
    assert list(other.items()) == list(
        {**mine, "id": other["id"], "code": "d", "serial": other["serial"]}.items()
    )


async def test_a_rollback_leaves_nothing(made: AsyncEngine, taken: list[str]) -> None:
    async with made.connect() as conn, conn.begin():
        await conn.execute(parent.insert(), {"id": 1})
        got = await onconflict.insert_ignore(conn, things, [{"code": "a", "pid": 1}])
        assert got.inserted_count == 1
        await conn.rollback()
    assert (len(taken), await stored(made)) == (1, [])
    async with made.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(parent))).scalar() == 0


BAD = {
    "not null": ({"code": "n", "label": None}, sa.exc.IntegrityError),
    "check": ({"code": "c", "label": ""}, sa.exc.IntegrityError),
    "foreign key": ({"code": "f", "pid": 999}, sa.exc.IntegrityError),
    "too long": ({"code": "l", "label": "toolong"}, sa.exc.DBAPIError),
    "another key": ({"code": "k", "id": 100}, sa.exc.IntegrityError),  # the target is code
}


@pytest.mark.parametrize("first", [True, False], ids=["first", "after-others"])
@pytest.mark.parametrize("bad", list(BAD))
async def test_errors_raise_once_and_abort_the_transaction_as_sqlalchemys_own(
    made: AsyncEngine, taken: list[str], bad: str, first: bool
) -> None:
    """Any error is raised once, never run again (PostgreSQL aborted the
    transaction), as SQLAlchemy raises it: its DBAPIError subclass, the
    adapter's error as ``orig``, asyncpg's chained; the transaction is then
    aborted exactly as after the same statement through SQLAlchemy."""
    row, kind = BAD[bad]
    async with made.begin() as conn:
        await onconflict.insert_ignore(conn, things, [{"code": "x", "id": 100}])
    queries = await asyncpg_queries(made)
    seen: list[tuple[type[BaseException], ...]] = []
    for ours in (True, False):
        async with made.connect() as conn:
            await conn.begin()
            if not first:
                await conn.execute(sa.select(parent))
            del queries[:]
            call = (
                onconflict.insert_ignore(conn, things, [row], on="code")
                if ours
                else conn.execute(things.insert().values(row))  # SQLAlchemy's own statement
            )
            with pytest.raises(kind) as raised:
                await call
            sent = await inserts(queries)  # (the failed INSERT is sent once: the spy counts ours)
            assert (sent[:1] == ["BEGIN;"]) == first
            assert sent.count("INSERT oc_dp_things") <= 1
            exc = raised.value
            cause = exc.__cause__
            with pytest.raises(sa.exc.DBAPIError) as after:
                await conn.execute(sa.select(1))
            assert "current transaction is aborted" in str(after.value)
            seen.append((type(exc), type(exc.orig), type(cause), type(cause and cause.__cause__)))
            assert exc.orig is cause
            assert not exc.connection_invalidated
            await conn.rollback()
    assert seen[0] == seen[1]
    assert len(taken) == 2  # the setup row and ours
    assert [r["code"] for r in await stored(made)] == ["x"]


@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
async def test_the_connections_isolation_level_is_honoured(
    made: AsyncEngine, taken: list[str], level: str
) -> None:
    queries = await asyncpg_queries(made)
    async with made.connect() as conn:
        await conn.execution_options(isolation_level=level)
        async with conn.begin():
            got = await onconflict.insert_ignore(conn, things, [{"code": "a"}])
            shown = (await conn.execute(sa.text("SHOW transaction_isolation"))).scalar()
    assert (got.inserted_count, len(taken), shown) == (1, 1, level.lower())
    await asyncio.sleep(0.02)
    assert queries[0] == f"BEGIN ISOLATION LEVEL {level};"
    assert [r["code"] for r in await stored(made)] == ["a"]


async def test_a_serializable_conflict_is_raised_as_sqlalchemy_raises_it(
    made: AsyncEngine, taken: list[str]
) -> None:
    """Two SERIALIZABLE transactions inserting the same key: the second waits,
    then fails with a serialization error (transient: retried by retrying())."""
    async with made.connect() as one, made.connect() as two:
        await one.execution_options(isolation_level="SERIALIZABLE")
        await two.execution_options(isolation_level="SERIALIZABLE")
        await one.begin()
        await two.begin()
        await one.execute(sa.select(things))
        await two.execute(sa.select(things))
        await onconflict.insert_ignore(one, things, [{"code": "a"}])
        pending = asyncio.ensure_future(onconflict.insert_ignore(two, things, [{"code": "a"}]))
        await asyncio.sleep(0.2)
        await one.commit()
        with pytest.raises(sa.exc.DBAPIError) as raised:
            await pending
        assert onconflict.is_transient(raised.value)
        await two.rollback()
    assert len(taken) == 2
    assert [r["code"] for r in await stored(made)] == ["a"]


async def test_an_async_session_is_flushed_first(made: AsyncEngine, taken: list[str]) -> None:
    class Thing:
        def __init__(self, **kw: Any) -> None:
            self.__dict__.update(kw)

    sa.orm.registry().map_imperatively(Thing, things)
    async with AsyncSession(made) as session:
        session.add(Thing(code="a"))  # pending: flushed by the call
        got = await onconflict.insert_ignore(session, things, [{"code": "a"}])
        new = await onconflict.insert_ignore(session, things, [{"code": "b"}])
        await session.commit()
    assert (got.existing_count, new.inserted_count, len(taken)) == (1, 1, 2)
    assert [r["code"] for r in await stored(made)] == ["a", "b"]


async def test_listeners_options_echo_and_autocommit_take_the_ordinary_path(
    made: AsyncEngine, taken: list[str]
) -> None:
    async with made.connect() as conn:
        await conn.execution_options(logging_token="x")
        async with conn.begin():
            await onconflict.insert_ignore(conn, things, [{"code": "a"}])
    async with made.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        async with conn.begin():
            await onconflict.insert_ignore(conn, things, [{"code": "b"}])
    assert taken == []
    async with made.begin() as conn:
        await onconflict.insert_ignore(conn, things, [{"code": "c"}])
    assert len(taken) == 1
    seen: list[str] = []

    def record(_conn: Any, _cur: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    sa.event.listen(made.sync_engine, "before_cursor_execute", record)
    try:
        async with made.begin() as conn:
            await onconflict.insert_ignore(conn, things, [{"code": "d"}])
    finally:
        sa.event.remove(made.sync_engine, "before_cursor_execute", record)
    assert len(taken) == 1
    assert any("INSERT" in s for s in seen)
    assert [r["code"] for r in await stored(made)] == ["a", "b", "c", "d"]


async def test_a_killed_connection_is_raised_as_sqlalchemy_raises_it(
    made: AsyncEngine, taken: list[str]
) -> None:
    """The server ends the session while the statement waits (on another
    transaction's row lock): the call raises SQLAlchemy's error for a lost
    connection, the connection invalidated, nothing of it stored. (A session
    asyncpg already knows closed sends nothing: the ordinary path raises.)"""
    async with made.connect() as holder:
        await holder.begin()
        await onconflict.insert_ignore(holder, things, [{"code": "a"}])  # holds code "a"
        async with made.connect() as conn:
            await conn.begin()
            await onconflict.insert_ignore(conn, things, [{"code": "b"}])
            pid = (await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar()
            waiting = asyncio.ensure_future(onconflict.insert_ignore(conn, things, [{"code": "a"}]))
            await asyncio.sleep(0.2)
            async with made.connect() as other:
                await other.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            with pytest.raises(sa.exc.DBAPIError) as raised:
                await waiting
            assert raised.value.connection_invalidated
            assert conn.invalidated
            await conn.rollback()
        await holder.commit()
    assert len(taken) == 3  # (every call on the asyncpg connection)
    assert [r["code"] for r in await stored(made)] == ["a"]


async def test_a_cancelled_call_drops_the_connection_as_sqlalchemy_does(
    made: AsyncEngine, taken: list[str]
) -> None:
    """A call cancelled while the server works on it (waiting for another
    transaction's row lock): the connection is invalidated, as SQLAlchemy's own
    execution does for a cancelled statement; the other transaction goes on."""
    async with made.connect() as holder:
        await holder.begin()
        await onconflict.insert_ignore(holder, things, [{"code": "a"}])  # holds code "a"
        async with made.connect() as conn:
            await conn.begin()
            waiting = asyncio.ensure_future(onconflict.insert_ignore(conn, things, [{"code": "a"}]))
            await asyncio.sleep(0.2)
            assert not waiting.done()
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert conn.invalidated
            await conn.rollback()
        await holder.commit()
    assert len(taken) == 2
    assert [r["code"] for r in await stored(made)] == ["a"]
