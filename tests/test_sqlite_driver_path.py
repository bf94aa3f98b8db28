"""The driver-level path of engine-owned one-row calls on SQLite (aiosqlite),
and the behaviour every path must share on all three databases: Python-side
defaults, a column key that differs from its name, errors as SQLAlchemy
raises them, events and execution options honoured, exact outcomes under
concurrency."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

import onconflict
import onconflict.sync
from tests.conftest import Backend

meta = sa.MetaData()
_serial = itertools.count(1000)

parent = sa.Table("oc_dp_parent", meta, sa.Column("id", sa.Integer, primary_key=True))
things = sa.Table(
    "oc_dp_things",
    meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("Code Name", sa.String(20), key="code", nullable=False, unique=True),
    sa.Column("rAnK", sa.Integer, key="rank", nullable=False, default=7),
    sa.Column("serial", sa.Integer, nullable=False, default=lambda: next(_serial)),
    sa.Column("label", sa.String(5), nullable=False, server_default="none"),
    sa.Column("pid", sa.Integer, sa.ForeignKey("oc_dp_parent.id"), nullable=True),
    sa.CheckConstraint("length(label) > 0", name="ck_dp_label"),
)
# a default that takes SQLAlchemy's execution context: only its own path can run it
contextual = sa.Table(
    "oc_dp_contextual",
    meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("code", sa.String(20), nullable=False, unique=True),
    sa.Column(
        "shout",
        sa.String(40),
        default=lambda ctx: ctx.get_current_parameters()["code"].upper(),
    ),
)


@pytest.fixture
async def made(aengine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    async with aengine.begin() as conn:
        await conn.run_sync(meta.drop_all)
        await conn.run_sync(meta.create_all)
    yield aengine
    async with aengine.begin() as conn:
        await conn.run_sync(meta.drop_all)


async def stored(engine: AsyncEngine, table: sa.Table = things) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        keyed = [c.label(c.key) for c in table.c]  # by column key, as results are
        result = await conn.execute(sa.select(*keyed).order_by(table.c.id))
        return [dict(r) for r in result.mappings()]


def traced(engine: AsyncEngine) -> tuple[list[str], list[int]]:
    """The statements SQLite itself runs on the engine's connections (its trace
    callback, on aiosqlite's thread) and the hops to that thread."""
    sql: list[str] = []
    hops: list[int] = []

    @sa.event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_conn: Any, _: Any) -> None:
        driver = dbapi_conn.driver_connection
        driver._conn.set_trace_callback(lambda s: sql.append(s.split(" ")[0].upper()))
        execute = driver._execute

        async def counted(fn: Any, *args: Any, **kw: Any) -> Any:
            hops.append(1)
            return await execute(fn, *args, **kw)

        driver._execute = counted

    return sql, hops


def writer_of(engine: AsyncEngine) -> Any:
    """The engine's in-process writer (the aiosqlite driver-level path's)."""
    from onconflict.dialects import driver_path

    return driver_path(engine.dialect).writer(engine.sync_engine)  # type: ignore[attr-defined]


@pytest.mark.databases("sqlite")  # the driver-level path of aiosqlite
async def test_a_lone_call_runs_on_the_loop_and_a_slow_commit_hops(
    made: AsyncEngine, backend: Backend
) -> None:
    """A call with nothing else of the engine under way runs on the event
    loop's thread: the busy timeout at 0 for the attempt (then put back),
    BEGIN IMMEDIATE, the statement(s), and ROLLBACK when nothing was written (a
    duplicate, an existing row: no hop at all). A new row's COMMIT runs there
    too while this engine's commits are cheap (measured), else it is the one
    hop to aiosqlite's thread. No rollback from the pool afterwards."""
    sql, hops = traced(made)
    await made.dispose()
    async with made.connect() as conn:  # the connection's own busy timeout
        timeout = (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar()
    await onconflict.insert_ignore(made, things, [{"code": "warm"}])
    writer = writer_of(made)
    inline = ["PRAGMA", "PRAGMA", "BEGIN"]
    del sql[:], hops[:]
    writer.commit_cost = 1.0  # commits measured slow: on aiosqlite's thread
    new = await onconflict.insert_ignore(made, things, [{"code": "a"}])
    assert (sql, len(hops)) == ([*inline, "INSERT", "PRAGMA", "COMMIT"], 1)
    assert writer.commit_cost < 1.0  # (measured there too)
    del sql[:], hops[:]
    dup = await onconflict.insert_ignore(made, things, [{"code": "a", "rank": 1}])
    assert (sql, len(hops)) == ([*inline, "INSERT", "ROLLBACK", "PRAGMA"], 0)
    assert (new.inserted_count, dup.existing_count) == (1, 1)
    del sql[:], hops[:]
    row, created = await onconflict.get_or_create(made, things, {"code": "a"})
    assert (sql, len(hops), created) == ([*inline, "SELECT", "ROLLBACK", "PRAGMA"], 0, False)
    del sql[:], hops[:]
    writer.commit_cost = 0.0  # cheap commits: on the loop's thread, no hop at all
    row, created = await onconflict.get_or_create(made, things, {"code": "b"}, {"rank": 2})
    assert (sql, len(hops), created) == ([*inline, "SELECT", "INSERT", "COMMIT", "PRAGMA"], 0, True)
    assert (row["code"], row["rank"], row["label"]) == ("b", 2, "none")
    assert 0.0 < writer.commit_cost < 1.0
    assert [r["code"] for r in await stored(made)] == ["warm", "a", "b"]
    async with made.connect() as conn:  # the connection's busy timeout is its own again
        assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar() == timeout > 0


@pytest.mark.databases("sqlite")  # the driver-level path of aiosqlite
async def test_a_caller_in_a_loop_gives_other_tasks_turns(
    made: AsyncEngine, backend: Backend
) -> None:
    """Calls that run on the loop's thread do not yield one by one, but a
    caller looping on them gives the loop a turn at least every LOOP_HOLD
    seconds: a task ticking meanwhile is never held off for long."""
    from onconflict.dialects.sqlite import aiosqlite

    await onconflict.insert_ignore(made, things, [{"code": "a"}])
    ticks = 0
    done = False

    async def tick() -> None:
        nonlocal ticks
        while not done:
            await asyncio.sleep(0)
            ticks += 1

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(2000):
        await onconflict.insert_ignore(made, things, [{"code": "a"}])
    took, done = loop.time() - started, True
    await ticker
    # a turn per LOOP_HOLD of calls at the least (a caller that never yielded
    # would let the ticker run once or not at all)
    assert ticks >= min(10, took / aiosqlite.LOOP_HOLD / 4)
    assert sys.getswitchinterval() >= aiosqlite.LOOP_HOLD  # (what a thread may hold)
    assert writer_of(made).calls >= 2000
    assert [r["code"] for r in await stored(made)] == ["a"]


async def test_outcomes_defaults_and_key_not_name(made: AsyncEngine, backend: Backend) -> None:
    """Python-side defaults (a scalar, a callable) computed per call, server
    defaults and generated ids returned, rows keyed by column key (the column
    is named otherwise), exactly as the sync front reports them."""
    first = await onconflict.insert_ignore(made, things, [{"code": "a"}])
    (row,) = first.inserted
    assert (row["code"], row["rank"], row["label"]) == ("a", 7, "none")
    assert isinstance(row["id"], int)
    assert isinstance(row["serial"], int)
    again = await onconflict.insert_ignore(made, things, [{"code": "a", "rank": 3}])
    assert (again.inserted_count, again.existing) == (0, [{"code": "a", "rank": 3}])
    got, created = await onconflict.get_or_create(made, things, {"code": "a"})
    assert (got, created) == (row, False)
    new, created = await onconflict.get_or_create(made, things, {"code": "b"}, {"rank": 2})
    assert created
    assert (new["code"], new["rank"]) == ("b", 2)
    assert new["serial"] != row["serial"]
    assert await stored(made) == [row, new]
    sync = backend.sync_engine()
    try:
        twin = onconflict.sync.insert_ignore(sync, things, [{"code": "c"}]).inserted[0]
        assert (twin["code"], twin["rank"], twin["label"]) == ("c", 7, "none")
        assert onconflict.sync.get_or_create(sync, things, {"code": "b"}) == (new, False)
    finally:
        sync.dispose()


async def test_a_default_taking_the_context_takes_the_ordinary_path(
    made: AsyncEngine, backend: Backend
) -> None:
    result = await onconflict.insert_ignore(made, contextual, [{"code": "ab"}])
    assert result.inserted[0]["shout"] == "AB"
    row, created = await onconflict.get_or_create(made, contextual, {"code": "cd"})
    assert (row["shout"], created) == ("CD", True)
    assert [r["shout"] for r in await stored(made, contextual)] == ["AB", "CD"]


BAD = [
    ({"code": None}, sa.exc.IntegrityError),  # NOT NULL
    ({"code": "c", "label": ""}, sa.exc.DBAPIError),  # CHECK (MariaDB: OperationalError)
    ({"code": "f", "pid": 999}, sa.exc.IntegrityError),  # foreign key
]


async def test_errors_raise_as_sqlalchemy_raises_them(made: AsyncEngine, backend: Backend) -> None:
    """Only duplicates are skipped: NOT NULL, CHECK and foreign-key errors raise
    SQLAlchemy's exception with the driver's chained, nothing stored."""
    await onconflict.insert_ignore(made, things, [{"code": "a"}])
    for row, error in BAD:
        with pytest.raises(error) as raised:
            await onconflict.insert_ignore(made, things, [row], retry=None)
        assert raised.value.orig is not None
        if row["code"] is not None:
            lookup = {"code": row["code"]}
            defaults = {k: v for k, v in row.items() if k != "code"}
            with pytest.raises(error):
                await onconflict.get_or_create(made, things, lookup, defaults, retry=None)
    assert [r["code"] for r in await stored(made)] == ["a"]


@pytest.mark.databases("sqlite")  # the driver-level path of aiosqlite
async def test_a_refused_row_runs_on_the_driver_once_then_on_the_ordinary_path(
    made: AsyncEngine, backend: Backend
) -> None:
    """A row the database refused on the driver-level path (engine or caller's
    transaction) is run again by SQLAlchemy's path alone, which raises: two
    INSERTs in all, not a second driver-level attempt in between."""
    sql, _ = traced(made)
    await made.dispose()
    await onconflict.insert_ignore(made, things, [{"code": "a"}])
    for row, error in BAD:
        del sql[:]
        with pytest.raises(error):
            await onconflict.insert_ignore(made, things, [row], retry=None)
        assert sql.count("INSERT") == 2, (row, sql)
        async with made.begin() as conn:
            del sql[:]
            with pytest.raises(error):
                await onconflict.insert_ignore(conn, things, [row])
            assert sql.count("INSERT") == 2, (row, sql)
    assert [r["code"] for r in await stored(made)] == ["a"]


async def test_events_and_options_take_the_ordinary_path(
    made: AsyncEngine, backend: Backend
) -> None:
    """A cursor listener sees every statement; an engine with execution options
    or echo gets SQLAlchemy's own execution (its listener sees the INSERT)."""
    seen: list[str] = []

    def listener(*args: Any) -> None:
        seen.append(args[2])

    sa.event.listen(made.sync_engine, "before_cursor_execute", listener)
    try:
        await onconflict.insert_ignore(made, things, [{"code": "a"}])
        await onconflict.get_or_create(made, things, {"code": "b"})
        assert any("INSERT" in s for s in seen)
        assert any("SELECT" in s for s in seen)
    finally:
        sa.event.remove(made.sync_engine, "before_cursor_execute", listener)
    optioned = made.execution_options(logging_token="x")
    assert (await onconflict.insert_ignore(optioned, things, [{"code": "a"}])).existing_count == 1
    assert (await onconflict.get_or_create(optioned, things, {"code": "b"}))[1] is False


@pytest.mark.databases("sqlite")  # the driver-level path of aiosqlite
async def test_options_and_echo_bypass_the_driver_level_path(
    made: AsyncEngine, backend: Backend
) -> None:
    """On SQLite: the trace shows SQLAlchemy's own transaction (BEGIN, not
    BEGIN IMMEDIATE) for an engine with execution options, echo or a listener."""
    sql: list[str] = []

    @sa.event.listens_for(made.sync_engine, "connect")
    def on_connect(dbapi_conn: Any, _: Any) -> None:
        dbapi_conn.driver_connection._conn.set_trace_callback(sql.append)

    await made.dispose()
    await onconflict.insert_ignore(made, things, [{"code": "a"}])
    assert "BEGIN IMMEDIATE" in sql
    for engine in (made.execution_options(logging_token="x"),):
        del sql[:]
        await onconflict.insert_ignore(engine, things, [{"code": "a"}])
        assert "BEGIN IMMEDIATE" not in sql
        assert any(s.startswith("INSERT") for s in sql)
    made.sync_engine.echo = True
    try:
        del sql[:]
        await onconflict.insert_ignore(made, things, [{"code": "a"}])
        assert "BEGIN IMMEDIATE" not in sql
    finally:
        made.sync_engine.echo = False
    listener = lambda *a: None  # noqa: E731
    sa.event.listen(made.sync_engine, "after_cursor_execute", listener)
    try:
        del sql[:]
        await onconflict.get_or_create(made, things, {"code": "z"})
        assert "BEGIN IMMEDIATE" not in sql
    finally:
        sa.event.remove(made.sync_engine, "after_cursor_execute", listener)


@pytest.mark.databases("sqlite")  # the driver-level path of aiosqlite
async def test_a_locked_database_raises_and_a_killed_connection_is_replaced(
    made: AsyncEngine, backend: Backend, tmp_path: Any
) -> None:
    """Another process holding the write lock: the call waits its busy timeout
    and raises SQLAlchemy's OperationalError, nothing stored; a pooled
    connection closed underneath is dropped and the call runs on a new one."""
    engine = backend.async_engine(connect_args={"timeout": 0.2})
    try:
        await onconflict.insert_ignore(engine, things, [{"code": "a"}])
        other = sqlite3.connect(made.url.database or "", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(sa.exc.OperationalError, match="locked") as raised:
                await onconflict.insert_ignore(engine, things, [{"code": "b"}], retry=None)
            assert isinstance(raised.value.orig, sqlite3.OperationalError)
            with pytest.raises(sa.exc.OperationalError, match="locked"):
                await onconflict.get_or_create(engine, things, {"code": "c"}, retry=None)
        finally:
            other.rollback()
            other.close()
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            await raw.driver_connection.close()  # killed underneath the pool
        got = await onconflict.insert_ignore(engine, things, [{"code": "b"}])
        assert got.inserted_count == 1
        assert (await onconflict.get_or_create(engine, things, {"code": "b"}))[1] is False
        assert [r["code"] for r in await stored(engine)] == ["a", "b"]
    finally:
        await engine.dispose()


@pytest.mark.crowd  # dozens of connections at once
async def test_concurrent_callers_get_exact_outcomes(made: AsyncEngine, backend: Backend) -> None:
    """32 callers over 5 keys, insert_ignore and get_or_create: exactly one
    insert and one create per key."""
    keys = [f"k{i}" for i in range(5)]

    async def insert(i: int) -> int:
        got = await onconflict.insert_ignore(made, things, [{"code": keys[i % 5]}])
        return got.inserted_count

    async def fetch(i: int) -> bool:
        _, created = await onconflict.get_or_create(made, things, {"code": f"g{keys[i % 5]}"})
        return created

    inserted = await asyncio.gather(*(insert(i) for i in range(64)))
    created = await asyncio.gather(*(fetch(i) for i in range(64)))
    assert (sum(inserted), sum(created)) == (5, 5)
    assert len(await stored(made)) == 10


@pytest.mark.databases("sqlite")  # the driver-level path of aiosqlite
async def test_concurrent_calls_share_hops_and_stay_all_or_nothing(
    made: AsyncEngine, backend: Backend
) -> None:
    """Calls queued while a hop runs go in the next hop together, one
    transaction with a savepoint per call: fewer hops than calls, and a call
    that fails (NOT NULL, CHECK, foreign key) raises its own error with nothing
    of it stored, while the calls batched with it keep exact outcomes."""
    sql, hops = traced(made)
    await made.dispose()
    await onconflict.insert_ignore(made, things, [{"code": "warm"}])
    del sql[:], hops[:]
    bad = [{"code": None}, {"code": "c", "label": ""}, {"code": "f", "pid": 999}]

    async def insert(i: int) -> int | str:
        row = bad[i // 10] if i % 10 == 5 and i < 30 else {"code": f"k{i % 8}"}
        try:
            got = await onconflict.insert_ignore(made, things, [row], retry=None)
        except sa.exc.IntegrityError:
            return "error"
        return got.inserted_count

    async def fetch(i: int) -> bool:
        return (await onconflict.get_or_create(made, things, {"code": f"g{i % 4}"}))[1]

    outcomes = await asyncio.gather(*(insert(i) for i in range(64)), *(fetch(i) for i in range(32)))
    inserted, created = outcomes[:64], outcomes[64:]
    assert inserted.count("error") == 3
    assert sum(x for x in inserted if x != "error") == 8
    assert sum(created) == 4
    assert len(hops) < 48  # batched (the three failed calls run again on SQLAlchemy's path)
    assert "SAVEPOINT" in sql
    codes = sorted(r["code"] for r in await stored(made))
    assert codes == sorted(["warm", *(f"k{i}" for i in range(8)), *(f"g{i}" for i in range(4))])


@pytest.mark.databases("sqlite")  # the driver-level path of aiosqlite
async def test_an_engine_used_by_the_path_is_not_kept_alive(
    made: AsyncEngine, backend: Backend
) -> None:
    """The per-engine writer is kept weakly: an engine dropped by its owner is
    collected (with its pool), however many calls went through the path."""
    import gc
    import weakref

    engine = backend.async_engine()
    await asyncio.gather(
        *(onconflict.insert_ignore(engine, things, [{"code": f"w{i % 3}"}]) for i in range(8))
    )
    await onconflict.get_or_create(engine, things, {"code": "w0"})
    gone = weakref.ref(engine.sync_engine)
    await engine.dispose()
    del engine
    gc.collect()
    assert gone() is None


@pytest.mark.databases("sqlite")  # the driver-level path of aiosqlite
async def test_a_driver_in_autocommit_mode_still_commits_each_call(
    made: AsyncEngine, backend: Backend
) -> None:
    """sqlite3 in its autocommit mode (isolation_level=None; Python 3.12's
    autocommit=True, where commit() does nothing, where available): the path
    ends its own transaction, the row is committed and the pool gets the
    connection back outside any transaction."""
    import sys

    args: dict[str, Any] = {"isolation_level": None}
    if sys.version_info >= (3, 12):
        args = {"autocommit": True}
    engine = backend.async_engine(connect_args=args)
    try:
        got = await onconflict.insert_ignore(engine, things, [{"code": "a"}])
        _, created = await onconflict.get_or_create(engine, things, {"code": "b"})
        assert (got.inserted_count, created) == (1, True)
        other = sqlite3.connect(made.url.database or "")
        try:
            codes = [r[0] for r in other.execute('SELECT "Code Name" FROM oc_dp_things')]
        finally:
            other.close()
        assert sorted(codes) == ["a", "b"]
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            assert not raw.driver_connection._conn.in_transaction
    finally:
        await engine.dispose()


HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("ROLLBACK")
"""


HOLD_READ = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN")
db.execute("SELECT count(*) FROM oc_dp_things").fetchall()
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("ROLLBACK")
"""


def hold_lock(path: str, seconds: float, script: str = HOLD_LOCK) -> Any:
    """Another process holding the database's lock (BEGIN EXCLUSIVE; or a read
    lock with HOLD_READ) for ``seconds``, from when this returns."""
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", script, path, str(seconds)], stdout=subprocess.PIPE
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == b"locked"
    return holder


async def file_with_a_row(path: str, journal: str) -> AsyncEngine:
    """An engine on its own database file in this journal mode (a busy timeout
    of 30 s: waits are long enough to see), the tables made, code "a" stored."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(f"sqlite+aiosqlite:///{path}", connect_args={"timeout": 30})
    async with engine.begin() as conn:
        await conn.exec_driver_sql(f"PRAGMA journal_mode={journal}")
        await conn.run_sync(meta.create_all)
    await onconflict.insert_ignore(engine, things, [{"code": "a"}])
    return engine


async def _ticking(call: Any, every: float = 0.005) -> tuple[Any, float]:
    """``call()``'s result and the longest the event loop went without running a
    task that ticks every ``every`` seconds (5 ms) meanwhile."""
    loop = asyncio.get_running_loop()
    gaps = [0.0]
    done = asyncio.Event()

    async def tick() -> None:
        last = loop.time()
        while not done.is_set():
            await asyncio.sleep(every)
            now = loop.time()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.02)  # ticking before the call starts
    try:
        return await call(), max(gaps)
    finally:
        done.set()
        await ticker


@pytest.mark.databases("sqlite")  # the driver-level path of aiosqlite
@pytest.mark.parametrize("journal", ["delete", "wal"])
async def test_a_lock_held_by_another_process_never_blocks_the_loop(
    backend: Backend, tmp_path: Any, journal: str
) -> None:
    """Another process holds the database's lock: a call that would run on the
    loop's thread gives up at once (busy timeout 0 for the attempt) and waits on
    aiosqlite's thread instead; the loop keeps running other tasks, and when the
    lock goes the outcomes are exact (a duplicate, an existing row, a new row,
    a row created)."""
    path = str(tmp_path / "locked.db")
    engine = await file_with_a_row(path, journal)
    try:
        calls = [
            lambda: onconflict.insert_ignore(engine, things, [{"code": "a"}]),
            lambda: onconflict.get_or_create(engine, things, {"code": "a"}),
            lambda: onconflict.insert_ignore(engine, things, [{"code": "b"}]),
            lambda: onconflict.get_or_create(engine, things, {"code": "c"}),
        ]
        got = []
        for call in calls:
            holder = hold_lock(path, 0.6)
            try:
                started = asyncio.get_running_loop().time()
                result, gap = await _ticking(call)
                waited = asyncio.get_running_loop().time() - started
            finally:
                assert holder.wait(10) == 0
            assert waited > 0.3  # it did wait for the lock...
            assert gap < 0.2  # ...on aiosqlite's thread, not the loop's
            got.append(result)
        existing, (row_a, created_a), new, (row_c, created_c) = got
        assert (existing.existing_count, new.inserted_count) == (1, 1)
        assert (row_a["code"], created_a, row_c["code"], created_c) == ("a", False, "c", True)
        assert [r["code"] for r in await stored(engine)] == ["a", "b", "c"]
    finally:
        await engine.dispose()


@pytest.mark.databases("sqlite")  # the driver-level path of aiosqlite
async def test_a_commit_that_must_wait_for_readers_waits_off_the_loop(
    backend: Backend, tmp_path: Any
) -> None:
    """Rollback journal: another process reads (a shared lock), so a new row's
    COMMIT must wait for it. Even with commits measured cheap, the COMMIT tried
    on the loop's thread (busy timeout 0) gives up at once and waits on
    aiosqlite's thread: the loop keeps running, the row is stored once."""
    path = str(tmp_path / "read.db")
    engine = await file_with_a_row(path, "delete")
    try:
        writer = writer_of(engine)
        writer.commit_cost = 0.0
        holder = hold_lock(path, 0.6, HOLD_READ)
        try:
            started = asyncio.get_running_loop().time()
            new, gap = await _ticking(
                lambda: onconflict.insert_ignore(engine, things, [{"code": "b"}])
            )
            waited = asyncio.get_running_loop().time() - started
        finally:
            assert holder.wait(10) == 0
        assert waited > 0.3  # it did wait for the reader...
        assert gap < 0.2  # ...on aiosqlite's thread, not the loop's
        assert new.inserted_count == 1
        assert [r["code"] for r in await stored(engine)] == ["a", "b"]
    finally:
        await engine.dispose()


@pytest.mark.databases("sqlite")  # the driver-level path of aiosqlite
async def test_an_error_on_the_loop_thread_stores_nothing_and_leaves_no_transaction(
    made: AsyncEngine, backend: Backend
) -> None:
    """A NOT NULL, CHECK or foreign-key error in the attempt on the loop's
    thread: rolled back there, raised by the ordinary path, nothing stored, and
    the next call runs on the loop again on a connection with no transaction
    open and its own busy timeout."""
    sql, hops = traced(made)
    await made.dispose()
    async with made.connect() as conn:
        await conn.exec_driver_sql("PRAGMA foreign_keys = ON")
        timeout = (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar()
    await onconflict.insert_ignore(made, things, [{"code": "a"}])
    for row, error in BAD:
        del sql[:]
        with pytest.raises(error):
            await onconflict.insert_ignore(made, things, [row], retry=None)
        assert sql[:3] == ["PRAGMA", "PRAGMA", "BEGIN"]  # tried on the loop first
        assert "ROLLBACK" in sql
        assert "COMMIT" not in sql
        del sql[:], hops[:]
        assert (await onconflict.insert_ignore(made, things, [{"code": "a"}])).existing_count == 1
        assert len(hops) == 0
    assert [r["code"] for r in await stored(made)] == ["a"]
    async with made.connect() as conn:
        raw = await conn.get_raw_connection()
        assert not raw.driver_connection._conn.in_transaction
        assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar() == timeout


@pytest.mark.databases("sqlite")  # the driver-level path of aiosqlite
async def test_a_connection_bound_to_its_thread_takes_the_hop(
    made: AsyncEngine, backend: Backend
) -> None:
    """A connection made with check_same_thread=True cannot be used from the
    loop's thread: the attempt is declined (before anything ran) and the calls
    take their hop, with exact outcomes."""

    engine = backend.async_engine(connect_args={"check_same_thread": True})
    try:
        got = await onconflict.insert_ignore(engine, things, [{"code": "a"}])
        dup = await onconflict.insert_ignore(engine, things, [{"code": "a"}])
        _, created = await onconflict.get_or_create(engine, things, {"code": "a"})
        assert (got.inserted_count, dup.existing_count, created) == (1, 1, False)
        assert writer_of(engine).inline is False
        assert [r["code"] for r in await stored(engine)] == ["a"]
    finally:
        await engine.dispose()


@pytest.mark.databases("sqlite")  # the driver-level path of aiosqlite
async def test_overlapping_callers_share_hops_instead_of_turns_on_the_loop(
    made: AsyncEngine, backend: Backend
) -> None:
    """32 callers at once, duplicates only: after the first round the engine
    sees the calls overlap and sends them in shared hops (batches, savepoints),
    not one by one on the loop's thread; every outcome is exact."""
    sql, hops = traced(made)
    await made.dispose()
    await onconflict.insert_ignore(made, things, [{"code": "a"}])
    del sql[:], hops[:]

    async def caller() -> int:
        existing = 0
        for _ in range(10):
            existing += (
                await onconflict.insert_ignore(made, things, [{"code": "a"}])
            ).existing_count
        return existing

    assert await asyncio.gather(*(caller() for _ in range(32))) == [10] * 32
    assert "SAVEPOINT" in sql  # batched
    assert len(hops) < 320 // 4
    assert [r["code"] for r in await stored(made)] == ["a"]


@pytest.mark.databases("sqlite")  # the driver-level path of aiosqlite
async def test_cancelled_calls_leave_the_pool_usable(made: AsyncEngine, backend: Backend) -> None:
    """Calls cancelled at any point of the path (the inline attempt, the hop,
    the COMMIT's hop; a timeout around them) give their connection back: with
    a pool of one connection every later call still gets one at once, with no
    transaction left open on it, and every key is stored at most once."""
    engine = backend.async_engine(pool_size=1, max_overflow=0, pool_timeout=5)
    try:
        await onconflict.insert_ignore(engine, things, [{"code": "warm"}])
        for i in range(40):
            call = onconflict.insert_ignore(engine, things, [{"code": f"c{i % 4}"}])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(call, timeout=0.0002 * (i % 8))
        for i in range(4):
            done = await onconflict.insert_ignore(engine, things, [{"code": f"c{i}"}])
            assert done.inserted_count + done.existing_count == 1
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            assert not raw.driver_connection._conn.in_transaction
            codes = (await conn.execute(sa.select(things.c.code))).scalars().all()
        assert sorted(codes) == ["c0", "c1", "c2", "c3", "warm"]
    finally:
        await engine.dispose()


# -- inside the caller's transaction (an AsyncConnection) --------------------------------


async def _hops_of(conn: Any, hops: list[int], row: dict[str, Any], **kw: Any) -> int:
    """The hops to aiosqlite's thread of one insert_ignore in ``conn``'s transaction."""
    del hops[:]
    await onconflict.insert_ignore(conn, things, [row], **kw)
    return len(hops)


@pytest.mark.databases("sqlite")  # the driver-level path of aiosqlite
async def test_in_the_callers_transaction_get_or_create_is_one_hop(
    made: AsyncEngine, backend: Backend
) -> None:
    """get_or_create inside the caller's transaction: its statements in ONE hop
    (a row made, a row found), committed with the caller's work or rolled back
    with it; a lookup whose other columns differ from the stored row raises
    LookupMismatchError and a NOT NULL default error raises, nothing stored,
    the transaction usable; with a listener the call is SQLAlchemy's."""
    sql, hops = traced(made)
    await made.dispose()
    async with made.begin() as conn:
        del hops[:]
        row, created = await onconflict.get_or_create(conn, things, {"code": "a"}, {"rank": 3})
        assert (row["code"], row["rank"], row["label"], created, len(hops)) == (
            "a",
            3,
            "none",
            True,
            1,
        )
        del hops[:], sql[:]
        again, created = await onconflict.get_or_create(conn, things, {"code": "a"})
        assert (again, created, len(hops), sql) == (row, False, 1, ["SELECT"])
        with pytest.raises(onconflict.LookupMismatchError):
            await onconflict.get_or_create(conn, things, {"code": "a", "rank": 9})
        with pytest.raises(sa.exc.IntegrityError):
            await onconflict.get_or_create(conn, things, {"code": "b"}, {"label": None})
        await conn.execute(parent.insert(), {"id": 1})  # the caller's own work goes on
    async with made.begin() as conn:
        await onconflict.get_or_create(conn, things, {"code": "gone"})
        await conn.rollback()
    assert [r["code"] for r in await stored(made)] == ["a"]
    listener = lambda *a: None  # noqa: E731
    sa.event.listen(made.sync_engine, "before_cursor_execute", listener)
    try:
        async with made.begin() as conn:
            del hops[:]
            _, created = await onconflict.get_or_create(conn, things, {"code": "a"})
            assert (created, len(hops) > 1) == (False, True)
    finally:
        sa.event.remove(made.sync_engine, "before_cursor_execute", listener)


@pytest.mark.databases("sqlite")  # the driver-level path of aiosqlite
async def test_in_the_callers_transaction_a_call_is_one_hop_and_commits_with_its_work(
    made: AsyncEngine, backend: Backend
) -> None:
    """Inside the caller's transaction a one-row call is its one statement in
    ONE hop to aiosqlite's thread: a new row, a duplicate, and (no statement
    before it) with sqlite3's own implicit BEGIN first, as through SQLAlchemy.
    The rows commit with the caller's other work; the rows returned are those
    stored (key != name, Python and server defaults), as the ordinary path
    returns them; a constraint given as ``on`` (planned per call) too."""
    sql, hops = traced(made)
    await made.dispose()
    async with made.begin() as conn:
        await conn.execute(parent.insert(), {"id": 1})  # the caller's own work
        del sql[:], hops[:]
        new = await onconflict.insert_ignore(conn, things, [{"code": "a", "pid": 1}])
        assert (sql, len(hops)) == (["INSERT"], 1)
        del sql[:], hops[:]
        dup = await onconflict.insert_ignore(conn, things, [{"code": "a", "rank": 3}])
        assert (sql, len(hops)) == (["INSERT"], 1)
    async with made.begin() as conn:
        del sql[:], hops[:]
        first = await onconflict.insert_ignore(conn, things, [{"code": "b"}])
        assert (sql, len(hops)) == (["BEGIN", "INSERT"], 1)
        (key,) = (c for c in things.constraints if isinstance(c, sa.UniqueConstraint))
        assert await _hops_of(conn, hops, {"code": "b"}, on=key) == 1
        counted = await onconflict.insert_ignore(conn, things, [{"code": "c"}], returning=False)
        assert (counted.inserted_count, counted.existing_count) == (1, 0)
    assert (new.inserted_count, dup.existing, first.inserted_count) == (
        1,
        [{"code": "a", "rank": 3}],
        1,
    )
    (row,) = new.inserted
    assert (row["code"], row["rank"], row["label"], row["pid"]) == ("a", 7, "none", 1)
    assert [r for r in await stored(made) if r["code"] != "c"] == [row, first.inserted[0]]
    async with made.connect() as conn:  # the ordinary path, for the same call
        await conn.execution_options(logging_token="ordinary")
        async with conn.begin():
            del hops[:]
            ordinary = await onconflict.insert_ignore(conn, things, [{"code": "d"}])
            assert len(hops) > 1
    (other,) = ordinary.inserted
    (mine,) = first.inserted  # the same row but for its key, id and serial
    assert list(other.items()) == list(
        {**mine, "id": other["id"], "code": "d", "serial": other["serial"]}.items()
    )
    assert other["serial"] > mine["serial"] > row["serial"]


@pytest.mark.databases("sqlite")  # the driver-level path of aiosqlite
async def test_in_a_session_pending_objects_are_flushed_first_and_a_call_is_one_hop(
    made: AsyncEngine, backend: Backend
) -> None:
    """An AsyncSession's transaction takes the same one-hop path on the
    session's connection, after the session is flushed (as the ordinary path
    flushes it): an object the caller added is a duplicate; the rows commit
    with the session."""
    from sqlalchemy.ext.asyncio import AsyncSession

    class Thing:
        def __init__(self, **kw: Any) -> None:
            self.__dict__.update(kw)

    sa.orm.registry().map_imperatively(Thing, things)
    _, hops = traced(made)
    await made.dispose()
    async with AsyncSession(made) as session:
        session.add(Thing(code="a"))  # pending: flushed by the call
        got = await onconflict.insert_ignore(session, things, [{"code": "a"}])
        assert got.existing_count == 1
        del hops[:]
        new = await onconflict.insert_ignore(session, things, [{"code": "b"}])
        assert (new.inserted_count, len(hops)) == (1, 1)
        await session.commit()
    assert [r["code"] for r in await stored(made)] == ["a", "b"]


@pytest.mark.databases("sqlite")  # the driver-level path of aiosqlite
async def test_in_the_callers_transaction_a_rollback_leaves_nothing(
    made: AsyncEngine, backend: Backend
) -> None:
    async def work() -> None:
        async with made.begin() as conn:
            await conn.execute(parent.insert(), {"id": 2})
            got = await onconflict.insert_ignore(conn, things, [{"code": "r", "pid": 2}])
            assert got.inserted_count == 1
            raise RuntimeError("the caller's work failed")

    with pytest.raises(RuntimeError):
        await work()
    assert await stored(made) == []
    assert await stored(made, parent) == []


@pytest.mark.databases("sqlite")  # the driver-level path of aiosqlite
async def test_in_the_callers_transaction_errors_raise_and_the_transaction_goes_on(
    made: AsyncEngine, backend: Backend
) -> None:
    """NOT NULL, CHECK, foreign key: the path's statement failed, leaving the
    transaction as it was, so SQLAlchemy's own path runs the row again and
    raises its error (what SQLAlchemy raises for it); nothing stored, the
    caller's earlier and later work commits."""
    sql, _ = traced(made)
    await made.dispose()
    async with made.begin() as conn:
        await onconflict.insert_ignore(conn, things, [{"code": "a"}])
        for row, error in BAD:
            del sql[:]
            with pytest.raises(error) as raised:
                await onconflict.insert_ignore(conn, things, [row])
            assert isinstance(raised.value.orig, sqlite3.Error)
            assert sql == ["INSERT", "INSERT"], row  # the path's, then SQLAlchemy's
        await onconflict.insert_ignore(conn, things, [{"code": "b"}])
    assert [r["code"] for r in await stored(made)] == ["a", "b"]


@pytest.mark.databases("sqlite")  # the driver-level path of aiosqlite
async def test_in_the_callers_transaction_an_error_that_ends_it_is_raised_not_run_again(
    made: AsyncEngine, backend: Backend
) -> None:
    """A constraint declared ON CONFLICT ROLLBACK ends the caller's whole
    transaction: raised at once, as SQLAlchemy raises it (IntegrityError, the
    driver's error chained), never run again (a second run would store the
    row without the caller's earlier work); nothing stored."""
    rolled = sa.Table(
        "oc_dp_rolled",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("code", sa.String(20), nullable=False, unique=True),
        sa.Column("note", sa.String(20), nullable=False, sqlite_on_conflict_not_null="ROLLBACK"),
    )
    async with made.begin() as conn:
        await conn.run_sync(rolled.create)
    sql, hops = traced(made)
    await made.dispose()

    async def work() -> None:
        async with made.begin() as conn:
            await conn.execute(parent.insert(), {"id": 3})  # the caller's earlier work
            await onconflict.insert_ignore(conn, rolled, [{"code": "a", "note": "x"}])
            del sql[:], hops[:]
            try:
                await onconflict.insert_ignore(conn, rolled, [{"code": "b", "note": None}])
            finally:
                assert (sql, len(hops)) == (["INSERT"], 1)

    with pytest.raises(sa.exc.IntegrityError, match="NOT NULL") as raised:
        await work()
    assert isinstance(raised.value.orig, sqlite3.IntegrityError)
    assert await stored(made, parent) == []
    assert await stored(made, rolled) == []


@pytest.mark.databases("sqlite")  # the driver-level path of aiosqlite
async def test_in_the_callers_transaction_a_locked_database_raises_once(
    made: AsyncEngine, backend: Backend
) -> None:
    """Another connection holding the write lock: the call waits the busy
    timeout once and raises SQLAlchemy's OperationalError (not run again, which
    would wait again); the transaction is as it was: once the lock is free
    the caller's next call in it stores its row."""
    engine = backend.async_engine(connect_args={"timeout": 0.2})
    sql, hops = traced(engine)
    try:
        async with engine.begin() as conn:
            other = sqlite3.connect(made.url.database or "", isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            try:
                del sql[:]
                with pytest.raises(sa.exc.OperationalError, match="locked") as raised:
                    await onconflict.insert_ignore(conn, things, [{"code": "a"}])
                assert isinstance(raised.value.orig, sqlite3.OperationalError)
                assert sql.count("INSERT") == 1
            finally:
                other.rollback()
                other.close()
            assert await _hops_of(conn, hops, {"code": "b"}) == 1
        assert [r["code"] for r in await stored(made)] == ["b"]
    finally:
        await engine.dispose()


@pytest.mark.databases("sqlite")  # the driver-level path of aiosqlite
async def test_in_the_callers_transaction_options_events_and_echo_take_the_ordinary_path(
    made: AsyncEngine, backend: Backend
) -> None:
    """The statement must reach what watches SQLAlchemy's execution: with
    statement or error listeners, echo or execution options on the
    connection, the call is SQLAlchemy's (more than one hop), with the same
    outcome; a default that takes SQLAlchemy's execution context too."""
    _, hops = traced(made)
    await made.dispose()
    sync = made.sync_engine
    listener = lambda *a, **kw: None  # noqa: E731
    async with made.begin() as conn:
        assert await _hops_of(conn, hops, {"code": "a"}) == 1
        sync.echo = True
        try:
            assert await _hops_of(conn, hops, {"code": "a"}) > 1
        finally:
            sync.echo = False
        assert await _hops_of(conn, hops, {"code": "a"}) == 1
        for event in (
            "before_cursor_execute",
            "after_cursor_execute",
            "before_execute",
            "after_execute",
            "handle_error",
            "do_execute",
        ):
            sa.event.listen(sync, event, listener)
            try:
                assert await _hops_of(conn, hops, {"code": "a"}) > 1, event
            finally:
                sa.event.remove(sync, event, listener)
        # a listener once added keeps the ordinary path (SQLAlchemy's flag stays set)
        assert await _hops_of(conn, hops, {"code": "a"}) > 1
        del hops[:]
        shout = await onconflict.insert_ignore(conn, contextual, [{"code": "ab"}])
        assert (shout.inserted[0]["shout"], len(hops) > 1) == ("AB", True)
    async with made.connect() as conn:
        await conn.execution_options(logging_token="x")
        async with conn.begin():
            assert await _hops_of(conn, hops, {"code": "a"}) > 1
    assert [r["code"] for r in await stored(made)] == ["a"]


@pytest.mark.databases("sqlite")  # the driver-level path of aiosqlite
async def test_in_the_callers_transaction_a_closed_connection_raises_as_sqlalchemy_does(
    made: AsyncEngine, backend: Backend
) -> None:
    """The driver's connection closed underneath: nothing sent by the path,
    SQLAlchemy's own path raises its error for it (the connection invalidated)."""
    async with made.connect() as conn:
        await conn.begin()
        raw = await conn.get_raw_connection()
        await raw.driver_connection.close()
        with pytest.raises(sa.exc.DBAPIError) as raised:
            await onconflict.insert_ignore(conn, things, [{"code": "a"}])
        assert raised.value.connection_invalidated
    assert await stored(made) == []
