"""get_or_create and update_or_create on the real servers, under races."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

import onconflict
import onconflict.sync
from tests.conftest import Backend, SessionStatements
from tests.handles import ENGINES, Handle
from tests.schema import Item, accounts, tags, users

pytestmark = pytest.mark.usefixtures("tables")
ROOT = Path(__file__).resolve().parent.parent


async def count(engine: AsyncEngine, table: sa.Table) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())


@pytest.mark.handles(*ENGINES)
async def test_get_then_create(aengine: AsyncEngine, sengine: Engine, handle: Handle) -> None:
    async def call(*args: Any, **kw: Any) -> tuple[Any, bool]:
        return await handle.call("get_or_create", *args, **kw)

    row, created = await call(users, {"email": "a@x"}, {"name": "alice"})
    assert created is True
    assert (row["email"], row["name"], row["note"]) == ("a@x", "alice", "none")
    again, created_again = await call(users, {"email": "a@x"}, {"name": "other"})
    assert created_again is False
    assert again == row  # defaults are not applied to an existing row


@pytest.mark.handles(*ENGINES)
async def test_update_or_create(aengine: AsyncEngine, sengine: Engine, handle: Handle) -> None:
    async def call(*args: Any, **kw: Any) -> tuple[Any, bool]:
        return await handle.call("update_or_create", *args, **kw)

    row, created = await call(users, {"email": "a@x"}, {"name": "alice"})
    assert created
    updated, created = await call(users, {"email": "a@x"}, {"name": "bob"})
    assert not created
    assert (updated["id"], updated["name"]) == (row["id"], "bob")
    same, created = await call(users, {"email": "a@x"})  # no defaults: get_or_create
    assert (same["name"], created) == ("bob", False)


@pytest.mark.crowd  # dozens of connections at once
async def test_64_coroutines_one_key(aengine: AsyncEngine) -> None:
    got: list[tuple[Any, bool]] = []

    async def worker(i: int) -> None:
        got.append(
            await onconflict.get_or_create(aengine, users, {"email": "race@x"}, {"name": f"w{i}"})
        )

    async with anyio.create_task_group() as tg:
        for i in range(64):
            tg.start_soon(worker, i)
    assert len({row["id"] for row, _ in got}) == 1
    assert sum(created for _, created in got) == 1
    assert await count(aengine, users) == 1


@pytest.mark.crowd  # dozens of connections at once
async def test_64_coroutines_update_or_create(aengine: AsyncEngine) -> None:
    got: list[bool] = []

    async def worker(i: int) -> None:
        _, created = await onconflict.update_or_create(
            aengine, users, {"email": "r@x"}, {"name": f"w{i % 10}"}
        )
        got.append(created)

    async with anyio.create_task_group() as tg:
        for i in range(64):
            tg.start_soon(worker, i)
    assert sum(got) == 1
    assert await count(aengine, users) == 1


@pytest.mark.crowd  # dozens of connections at once
@pytest.mark.needs("writer_processes")
def test_8_processes_one_key(backend: Backend, tmp_path: Path) -> None:
    """Separate processes (separate pools, separate event loops) at once."""
    start = time.time() + 3
    url = backend.url
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.race_worker", url, str(start), str(i)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )
        for i in range(8)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [err for _, err in outputs]
    results = [line.split() for out, _ in outputs for line in out.splitlines()]
    assert len({pk for pk, _ in results}) == 1
    assert sum(created == "True" for _, created in results) == 1


async def test_orm_instance_attached_to_the_session(aengine: AsyncEngine) -> None:
    async with AsyncSession(aengine) as session:
        item, created = await onconflict.get_or_create(session, Item, {"code": "x"}, {"title": "T"})
        assert created
        assert isinstance(item, Item)
        assert item in session
        assert item.title == "T"
        same = await session.get(Item, item.id)
        assert same is item
        again, created = await onconflict.get_or_create(session, Item, {"code": "x"})
        assert again is item
        assert not created
        item.title = "changed"
        await session.commit()
    async with aengine.connect() as conn:
        title = (await conn.execute(sa.select(Item.__table__.c.item_title))).scalar_one()
    assert title == "changed"


async def test_works_inside_the_callers_transaction(aengine: AsyncEngine) -> None:
    async with aengine.begin() as conn:
        await conn.execute(tags.insert(), [{"slug": "mine"}])
        _row, created = await onconflict.get_or_create(conn, users, {"email": "t@x"}, {"name": "t"})
        assert created
    async with aengine.connect() as conn:
        await onconflict.get_or_create(conn, users, {"email": "u@x"}, {"name": "u"})
        await conn.rollback()
    assert await count(aengine, tags) == 1
    assert await count(aengine, users) == 1


@pytest.mark.needs("concurrent_writers")  # SQLite serialises writers: no interleaving
@pytest.mark.needs("lock_waits")  # DuckDB fails the second writer instead
async def test_lost_race_keeps_the_callers_earlier_work(
    aengine: AsyncEngine, backend: Backend
) -> None:
    """Another transaction holds the key uncommitted; ours waits on the conflict,
    then finds the row it committed. Our earlier work survives."""
    async with aengine.connect() as other:
        await other.execute(users.insert(), [{"email": "k@x", "name": "other"}])  # not committed
        async with aengine.connect() as mine:
            await mine.execute(tags.insert(), [{"slug": "mine"}])
            call = asyncio.ensure_future(
                onconflict.get_or_create(mine, users, {"email": "k@x"}, {"name": "me"})
            )
            await asyncio.sleep(0.3)
            assert not call.done()  # waiting on the other's lock
            await other.commit()
            row, created = await call
            assert (row["name"], created) == ("other", False)
            await mine.commit()
    assert await count(aengine, tags) == 1


@pytest.mark.postgresql
@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
@pytest.mark.databases("postgresql")  # PostgreSQL isolation levels
async def test_postgresql_strict_isolation_raises_retryable(
    aengine: AsyncEngine, backend: Backend, level: str
) -> None:
    """Under REPEATABLE READ / SERIALIZABLE a row committed after the snapshot
    cannot be read: PostgreSQL raises 40001, which retrying() resolves."""
    strict = aengine.execution_options(isolation_level=level)
    async with strict.connect() as mine:
        await mine.execute(sa.select(1))  # the snapshot
        async with aengine.begin() as other:
            await other.execute(users.insert(), [{"email": "s@x", "name": "other"}])
        with pytest.raises(sa.exc.DBAPIError) as info:
            await onconflict.get_or_create(mine, users, {"email": "s@x"}, {"name": "me"})
        assert onconflict.is_transient(info.value)

    attempts: list[int] = []

    async def unit(conn: Any) -> tuple[Any, bool]:
        attempts.append(1)
        await conn.execute(sa.select(1))
        if len(attempts) == 1:
            async with aengine.begin() as other:
                await other.execute(users.insert(), [{"email": "s2@x", "name": "other"}])
        return await onconflict.get_or_create(conn, users, {"email": "s2@x"}, {"name": "me"})

    row, created = await onconflict.retrying(strict, unit)
    assert (row["name"], created, len(attempts)) == ("other", False, 2)


@pytest.mark.mariadb
@pytest.mark.databases("mariadb")  # its REPEATABLE READ
async def test_mariadb_repeatable_read_resolves(aengine: AsyncEngine, backend: Backend) -> None:
    """MariaDB's default REPEATABLE READ: the re-read after the duplicate is a
    locking read, which sees the row committed after the snapshot."""
    async with aengine.connect() as mine:
        await mine.execute(sa.select(users.c.id))  # the snapshot
        async with aengine.begin() as other:
            await other.execute(users.insert(), [{"email": "s@x", "name": "other"}])
        row, created = await onconflict.get_or_create(mine, users, {"email": "s@x"}, {"name": "me"})
        assert (row["name"], created) == ("other", False)


@pytest.mark.mariadb
@pytest.mark.databases("mariadb")  # the driver-level get_or_create is MariaDB's (aiomysql)
async def test_mariadb_engine_statements(backend: Backend) -> None:
    """MariaDB + aiomysql, an engine: a hit is SELECT + ROLLBACK (a read), a miss
    SELECT + guarded INSERT + COMMIT, counted by the server on the one pooled
    session; a bad row is undone and raised as before, nothing stored."""
    engine = backend.async_engine(pool_size=1, max_overflow=0)
    try:
        await onconflict.get_or_create(engine, users, {"email": "w@x"}, {"name": "w"})
        statements = await SessionStatements.of(engine)
        make = onconflict.get_or_create(engine, users, {"email": "o@x"}, {"name": "o"})
        miss = await statements(make)
        assert miss == {"select": 1, "insert": 1, "commit": 1}
        hit = await statements(onconflict.get_or_create(engine, users, {"email": "o@x"}))
        assert hit == {"select": 1, "rollback": 1}
        row, created = await onconflict.get_or_create(engine, users, {"email": "o@x"})
        assert (row["name"], row["note"], created) == ("o", "none", False)
        for bad in ({"name": None}, {"name": "toolong"}, {"name": "f", "pid": 9}, {"name": ""}):
            with pytest.raises(sa.exc.DBAPIError):
                await onconflict.get_or_create(engine, users, {"email": "b@x"}, bad)
        assert await count(engine, users) == 2
    finally:
        await engine.dispose()


@pytest.mark.postgresql
@pytest.mark.databases("postgresql")  # the one-statement path is PostgreSQL's
async def test_postgresql_one_round_trip(aengine: AsyncEngine, backend: Backend) -> None:
    """Counted at the driver: every query asyncpg sends, BEGIN and COMMIT included."""
    queries: list[str] = []

    def log(record: Any) -> None:
        queries.append(record.query)

    @sa.event.listens_for(aengine.sync_engine, "connect")
    def on_connect(dbapi_conn: Any, _: Any) -> None:
        dbapi_conn.driver_connection.add_query_logger(log)

    await aengine.dispose()  # new connections get the logger
    for expected_created in (True, False):  # a miss (no race), then a hit
        queries.clear()
        _, created = await onconflict.get_or_create(aengine, users, {"email": "o@x"}, {"name": "o"})
        await asyncio.sleep(0.05)  # asyncpg calls query loggers soon after, not during
        assert created is expected_created
        assert len(queries) == 1, queries
    # inside the caller's transaction (SQLAlchemy's execution path): one statement too
    statements: list[str] = []

    @sa.event.listens_for(aengine.sync_engine, "before_cursor_execute")
    def count(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    async with aengine.begin() as conn:
        await onconflict.get_or_create(conn, users, {"email": "o@x"})
        await onconflict.get_or_create(conn, users, {"email": "o2@x"}, {"name": "o"})
    assert len(statements) == 2


async def test_errors_are_reported_as_sqlalchemy_reports_them(aengine: AsyncEngine) -> None:
    # name is NOT NULL without a default (MariaDB: 1364, an OperationalError)
    with pytest.raises(sa.exc.DBAPIError) as info:
        await onconflict.get_or_create(aengine, users, {"email": "n@x"})
    assert not onconflict.is_unique_violation(info.value)
    assert await count(aengine, users) == 0


async def test_lookup_that_does_not_match_the_stored_row(aengine: AsyncEngine) -> None:
    await onconflict.get_or_create(aengine, users, {"email": "m@x"}, {"name": "a"})
    with pytest.raises(onconflict.LookupMismatchError, match="name"):
        await onconflict.get_or_create(aengine, users, {"email": "m@x", "name": "b"})


@pytest.mark.parametrize(
    ("table", "lookup", "defaults", "message"),
    [
        (users, {"name": "x"}, None, "must contain exactly one unique key"),
        (accounts, {"email": "a", "handle": "b"}, None, "must contain exactly one unique key"),
        (users, {"nope": 1}, None, "lookup: 'nope' is not a column"),
        (users, {"email": "a"}, {"email": "b"}, "both in lookup and in defaults"),
        (users, {}, None, "non-empty mapping"),
    ],
)
async def test_bad_lookups(
    aengine: AsyncEngine, table: sa.Table, lookup: Any, defaults: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await onconflict.get_or_create(aengine, table, lookup, defaults)


async def test_a_vanished_row_is_retried_not_returned_as_none(
    aengine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a conflicting row is gone before it can be read (the attempt reports
    nothing), the next attempt runs; after five, a clear error. The database
    work of each attempt is real; only the first attempt's answer is dropped."""
    from onconflict.dialects import support_for

    support = support_for(aengine.dialect)
    real = support.get_or_create_once
    calls: list[int] = []

    def first_lost(conn: Any, plan: Any) -> Any:
        calls.append(1)
        got = real(conn, plan)
        return None if len(calls) == 1 else got

    monkeypatch.setattr(support, "get_or_create_once", first_lost)
    # the SQLAlchemy path, where attempts are counted (an execution option keeps
    # the driver-level paths off)
    async with aengine.connect() as plain:
        conn = await plain.execution_options(logging_token="ordinary")
        async with conn.begin():
            row, _created = await onconflict.get_or_create(
                conn, users, {"email": "v@x"}, {"name": "v"}
            )
    assert len(calls) == 2
    assert row["email"] == "v@x"
    monkeypatch.setattr(support, "get_or_create_once", lambda conn, plan: None)
    async with aengine.connect() as conn:
        with pytest.raises(onconflict.OnConflictError, match="could not be read 5 times"):
            await onconflict.get_or_create(conn, users, {"email": "w@x"}, {"name": "w"})


async def test_engines_with_different_type_settings_do_not_share_statements(
    backend: Backend,
) -> None:
    """Two engines whose dialects process a type differently (json_serializer)
    get_or_create the same shape: each writes with its own settings (asyncpg's
    and aiomysql's compiled driver statements are kept per dialect)."""
    import json

    md = sa.MetaData()
    docs = sa.Table(
        "oc_json_docs",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("body", sa.JSON, nullable=False),
    )
    one = backend.async_engine(json_serializer=lambda o: json.dumps({"by": "one", "v": o}))
    two = backend.async_engine(json_serializer=lambda o: json.dumps({"by": "two", "v": o}))
    try:
        async with one.begin() as conn:
            await conn.run_sync(md.drop_all)
            await conn.run_sync(md.create_all)
        for engine, key in ((one, 1), (two, 2), (one, 3), (two, 4)):
            _, created = await onconflict.get_or_create(engine, docs, {"id": key}, {"body": key})
            assert created
        async with one.connect() as conn:
            stored = dict((await conn.execute(sa.select(docs.c.id, docs.c.body))).all())
        by = {i: v["by"] for i, v in stored.items()}
        assert by == {1: "one", 2: "two", 3: "one", 4: "two"}
    finally:
        async with one.begin() as conn:
            await conn.run_sync(md.drop_all)
        await one.dispose()
        await two.dispose()


@pytest.mark.usefixtures("inheritance_tables")
async def test_single_table_inheritance(aengine: AsyncEngine, sengine: Engine) -> None:
    """Through a subclass: the discriminator is written and looked up, and an
    AsyncSession gets an instance of the subclass."""
    from tests.schema import Engineer, Manager

    async with AsyncSession(aengine) as session:
        made, created = await onconflict.get_or_create(
            session, Manager, {"email": "m@x"}, {"name": "m", "budget": 3}
        )
        assert created
        assert type(made) is Manager
        assert (made.kind, made.budget) == ("manager", 3)
        await session.commit()
    async with AsyncSession(aengine) as session:
        got, created = await onconflict.get_or_create(session, Manager, {"email": "m@x"})
        assert not created
        assert type(got) is Manager
        assert got.name == "m"
    row, created = await onconflict.get_or_create(
        aengine, Engineer, {"email": "e@x"}, {"name": "e"}
    )
    assert created
    assert row["kind"] == "engineer"
    row, created = onconflict.sync.get_or_create(sengine, Engineer, {"email": "e@x"})
    assert not created
    assert row["kind"] == "engineer"
    # the key exists as another class: not taken for this one
    with pytest.raises(onconflict.LookupMismatchError, match="kind"):
        await onconflict.get_or_create(aengine, Engineer, {"email": "m@x"}, {"name": "x"})
    row, created = await onconflict.update_or_create(
        aengine, Manager, {"email": "m@x"}, {"name": "m", "budget": 9}
    )
    assert not created
    assert (row["kind"], row["budget"]) == ("manager", 9)
    row, created = await onconflict.update_or_create(
        aengine, Manager, {"email": "q@x"}, {"name": "q"}
    )
    assert created
    assert row["kind"] == "manager"


@pytest.mark.handles(*ENGINES)
async def test_autoincrement_key_given_as_none_in_defaults_is_numbered(
    aengine: AsyncEngine, sengine: Engine, handle: Handle
) -> None:
    async def call(*args: Any) -> tuple[Any, bool]:
        return await handle.call("get_or_create", *args)

    row, created = await call(users, {"email": "n@x"}, {"name": "n", "id": None})
    assert created
    assert isinstance(row["id"], int)
    again, created = await call(users, {"email": "n@x"}, {"name": "n", "id": None})
    assert not created
    assert again["id"] == row["id"]
    row, created = await onconflict.update_or_create(
        aengine, users, {"email": "u@x"}, {"name": "u", "id": None}
    )
    assert created
    assert isinstance(row["id"], int)


# -- Django's get_or_create / update_or_create tests, ported ------------------------

django_metadata = sa.MetaData()
people = sa.Table(
    "oc_people",
    django_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("first", sa.String(20), nullable=False, unique=True),
    sa.Column("last", sa.String(20), nullable=False),
    sa.Column("born", sa.Integer, nullable=True),
    sa.Column("city", sa.String(20), nullable=False),  # no default: given on create only
    sa.Column("nick", sa.String(20), nullable=True, unique=True),
)


def made_on(context: Any) -> str:
    """A default taking SQLAlchemy's context, reading the row's other values."""
    return f"{context.get_current_parameters()['name']}@{context.dialect.name}"


stamped = sa.Table(
    "oc_goc_stamped",  # (test_upsert.py has an oc_stamped of its own)
    django_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(20), nullable=False, unique=True),
    sa.Column("token", sa.String(32), nullable=False, default=lambda: uuid4().hex),
    sa.Column("kind", sa.String(10), nullable=False, default="plain"),
    sa.Column("made_on", sa.String(20), nullable=False, default=lambda ctx: made_on(ctx)),
    sa.Column("changed", sa.Integer, nullable=True, onupdate=1),
)


@pytest.fixture
async def django_tables(aengine: AsyncEngine) -> AsyncIterator[None]:
    async with aengine.begin() as conn:
        await conn.run_sync(django_metadata.drop_all)
        await conn.run_sync(django_metadata.create_all)
    yield
    async with aengine.begin() as conn:
        await conn.run_sync(django_metadata.drop_all)


FRONTS = ["async-engine", "async-connection", "async-session", "sync-engine", "sync-connection"]


@pytest.mark.usefixtures("django_tables")
@pytest.mark.handles(*FRONTS)
async def test_python_side_defaults(
    aengine: AsyncEngine, sengine: Engine, backend: Backend, handle: Handle
) -> None:
    """Scalar, callable and context-taking Python-side defaults are computed on
    every path, the driver-level ones included (a new value per call)."""
    dialect = aengine.dialect.name
    row, created = await handle.call("get_or_create", stamped, {"name": "a"})
    assert created
    assert len(row["token"]) == 32
    assert (row["kind"], row["made_on"]) == ("plain", f"a@{dialect}")
    again, created = await handle.call("get_or_create", stamped, {"name": "a"})
    assert (again, created) == (row, False)
    other, _ = await handle.call("get_or_create", stamped, {"name": "b"})
    assert other["token"] != row["token"]
    done = await handle.call("insert_ignore", stamped, [{"name": "c"}])
    (made,) = done.inserted
    assert len(made["token"]) == 32
    assert made["kind"] == "plain"
    async with aengine.connect() as conn:
        stored = (await conn.execute(sa.select(stamped).order_by(stamped.c.id))).mappings().all()
    assert [len(r["token"]) for r in stored] == [32, 32, 32]
    assert len({r["token"] for r in stored}) == 3


@pytest.mark.usefixtures("django_tables")
async def test_python_side_defaults_without_a_context(aengine: AsyncEngine) -> None:
    """The driver-level paths compute scalar and plain callable defaults themselves
    (and leave a context-taking one to SQLAlchemy): a table without one."""
    plain = sa.Table(
        "oc_plain_defaults",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(20), nullable=False, unique=True),
        sa.Column("token", sa.String(32), nullable=False, default=lambda: uuid4().hex),
        sa.Column("kind", sa.String(10), nullable=False, default="plain"),
    )
    async with aengine.begin() as conn:
        await conn.run_sync(plain.create)
    try:
        row, created = await onconflict.get_or_create(aengine, plain, {"name": "a"})
        assert created
        assert len(row["token"]) == 32
        assert row["kind"] == "plain"
        again, created = await onconflict.get_or_create(aengine, plain, {"name": "a"})
        assert (again, created) == (row, False)
        done = await onconflict.insert_ignore(aengine, plain, [{"name": "b"}])
        assert len(done.inserted[0]["token"]) == 32
        done = await onconflict.insert_ignore(aengine, plain, [{"name": "b"}])
        assert len(done.existing) == 1
    finally:
        async with aengine.begin() as conn:
            await conn.run_sync(plain.drop)


async def lennon(aengine: AsyncEngine) -> dict[str, Any]:
    async with aengine.begin() as conn:
        await conn.execute(
            people.insert(), [{"first": "John", "last": "Lennon", "born": 1940, "city": "Liv"}]
        )
        return dict((await conn.execute(sa.select(people))).mappings().one())


async def stored_people(aengine: AsyncEngine) -> list[dict[str, Any]]:
    async with aengine.connect() as conn:
        got = await conn.execute(sa.select(people).order_by(people.c.id))
        return [dict(r) for r in got.mappings()]


@pytest.mark.usefixtures("django_tables")
@pytest.mark.handles(*FRONTS)
@pytest.mark.parametrize("fn", ["get_or_create", "update_or_create"])
async def test_lookup_mismatch_raises_at_once(
    aengine: AsyncEngine,
    sengine: Engine,
    handle: Handle,
    fn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Django's test_update_or_create / get_or_create with a lookup whose unique
    column matches John Lennon but whose other column does not: raised after one
    attempt, and Lennon's row is left alone."""
    from onconflict.dialects import support_for

    before = await lennon(aengine)
    support = support_for(aengine.dialect)
    real = support.get_or_create_once
    calls: list[int] = []

    def counted(conn: Any, plan: Any) -> Any:
        calls.append(1)
        return real(conn, plan)

    monkeypatch.setattr(support, "get_or_create_once", counted)
    with pytest.raises(onconflict.LookupMismatchError, match="last"):
        await handle.call(
            fn,
            people,
            {"first": "John", "last": "Other"},
            {"born": 2000, "city": "NY"},
        )
    assert len(calls) <= 1  # (the engine's driver-level paths do not count here)
    assert await stored_people(aengine) == [before]


@pytest.mark.usefixtures("django_tables")
@pytest.mark.handles(*FRONTS)
async def test_update_or_create_by_primary_key_keeps_other_columns(
    aengine: AsyncEngine, sengine: Engine, handle: Handle
) -> None:
    """update_or_create(pk=..., defaults=...): the existing row is UPDATEd, so a
    NOT NULL column not given (city) is not needed; Core applies ``onupdate``."""
    before = await lennon(aengine)
    row, created = await handle.call(
        "update_or_create", people, {"id": before["id"]}, {"born": 1941}
    )
    assert created is False
    assert row == {**before, "born": 1941}
    assert await stored_people(aengine) == [row]
    made, created = await handle.call("update_or_create", stamped, {"name": "s"}, {"kind": "k1"})
    assert (created, made["kind"], made["changed"]) == (True, "k1", None)
    changed, created = await handle.call("update_or_create", stamped, {"name": "s"}, {"kind": "k2"})
    assert (created, changed["kind"], changed["changed"]) == (False, "k2", 1)
    assert changed["token"] == made["token"]


@pytest.mark.usefixtures("django_tables")
@pytest.mark.handles(*FRONTS)
async def test_create_defaults_and_callables(
    aengine: AsyncEngine, sengine: Engine, handle: Handle
) -> None:
    """Django 5.0's create_defaults: used only when the row is created (then
    ``defaults`` are not); callables among the values are called."""
    create = {"last": lambda: "McCartney", "city": "Liv", "born": 1941}
    row, created = await handle.call(
        "update_or_create",
        people,
        {"first": "Paul"},
        {"born": lambda: 1942},
        create_defaults=create,
    )
    assert created is True
    assert (row["last"], row["born"], row["city"]) == ("McCartney", 1941, "Liv")
    row, created = await handle.call(
        "update_or_create",
        people,
        {"first": "Paul"},
        {"born": lambda: 1942},
        create_defaults={**create, "last": "Other"},
    )
    assert created is False
    assert (row["last"], row["born"], row["city"]) == ("McCartney", 1942, "Liv")
    got, created = await handle.call(
        "get_or_create",
        people,
        {"first": "George"},
        {"last": lambda: "Harrison", "city": "Liv"},
    )
    assert (got["last"], created) == ("Harrison", True)
    # nothing to update: a get_or_create that creates from create_defaults
    got, created = await handle.call(
        "update_or_create",
        people,
        {"first": "Ringo"},
        create_defaults={"last": "Starr", "city": "Liv"},
    )
    assert (got["last"], created) == ("Starr", True)
    assert [r["last"] for r in await stored_people(aengine)] == [
        "McCartney",
        "Harrison",
        "Starr",
    ]
    with pytest.raises(ValueError, match="both in lookup and in create_defaults"):
        await handle.call(
            "update_or_create",
            people,
            {"first": "Paul"},
            {"born": 1},
            create_defaults={"first": "x"},
        )


@pytest.mark.usefixtures("django_tables")
@pytest.mark.handles(*FRONTS)
@pytest.mark.parametrize("fn", ["get_or_create", "update_or_create"])
async def test_null_in_a_key_column_is_refused(
    aengine: AsyncEngine, sengine: Engine, handle: Handle, fn: str
) -> None:
    """NULL never matches in a unique key: refused before any SQL, instead of a
    new row on every call. NULL in a lookup column outside the key matches."""
    for _ in range(2):
        with pytest.raises(ValueError, match="'nick' is None"):
            await handle.call(fn, people, {"nick": None}, {"born": 1})
    assert await stored_people(aengine) == []
    lookup = {"first": "Pete", "born": None}
    made, created = await handle.call(fn, people, lookup, {"last": "B", "city": "L"})
    assert created is True
    again, created = await handle.call(fn, people, lookup, {"last": "B", "city": "L"})
    assert (again, created) == (made, False)


@pytest.mark.usefixtures("django_tables")
@pytest.mark.handles(*FRONTS)
@pytest.mark.parametrize("fn", ["get_or_create", "update_or_create"])
async def test_defaults_colliding_with_another_unique_key_raise_at_once(
    aengine: AsyncEngine, sengine: Engine, handle: Handle, fn: str
) -> None:
    """The values collide with another row on a unique key that is not the
    lookup's (nick): the database's IntegrityError, at once, nothing stored."""
    before = await lennon(aengine)
    async with aengine.begin() as conn:
        await conn.execute(people.update().values(nick="johnny"))
    before["nick"] = "johnny"
    with pytest.raises(sa.exc.IntegrityError) as info:
        await handle.call(
            fn,
            people,
            {"first": "Paul"},
            {"last": "M", "city": "L", "nick": "johnny"},
        )
    assert onconflict.is_unique_violation(info.value)
    assert await stored_people(aengine) == [before]


@pytest.mark.crowd  # dozens of connections at once
@pytest.mark.usefixtures("django_tables")
async def test_32_coroutines_update_or_create_one_key(aengine: AsyncEngine) -> None:
    """32 callers on one new key, each with its own value: one creates (from
    create_defaults: city, NOT NULL, is never in ``defaults``), the others
    update; exactly one created, the final row holds one of the values, nothing
    raised."""
    got: list[tuple[dict[str, Any], bool]] = []
    errors: list[BaseException] = []

    async def worker(i: int) -> None:
        create = {"last": "Starr", "city": "Liv", "born": 1000 + i}
        try:
            got.append(
                await onconflict.update_or_create(
                    aengine, people, {"first": "Ringo"}, {"born": i}, create_defaults=create
                )
            )
        except Exception as exc:  # collected: a failing task must not cancel the others
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for i in range(32):
            tg.start_soon(worker, i)
    assert errors == []
    assert sum(created for _, created in got) == 1
    (creator,) = [row for row, created in got if created]
    assert (creator["city"], creator["born"] >= 1000) == ("Liv", True)
    assert len({row["id"] for row, _ in got}) == 1
    assert sorted(row["born"] for row, created in got if not created) == sorted(
        set(range(32)) & {row["born"] for row, _ in got}
    )
    (final,) = await stored_people(aengine)
    assert final["born"] in {row["born"] for row, _ in got}
    assert final["city"] == "Liv"


@pytest.mark.parametrize("front", ["async", "sync"])
async def test_session_holding_the_row_gets_the_new_values(
    aengine: AsyncEngine, sengine: Engine, front: str
) -> None:
    """A session that already holds the instance: update_or_create returns it
    with the stored values, not the ones the session loaded before."""
    await onconflict.get_or_create(aengine, Item, {"code": "x"}, {"title": "old"})
    if front == "async":
        async with AsyncSession(aengine) as session:
            (held,) = (await session.execute(sa.select(Item))).scalars().all()
            assert held.title == "old"
            item, created = await onconflict.update_or_create(
                session, Item, {"code": "x"}, {"title": "new"}
            )
            assert (item is held, created, item.title) == (True, False, "new")
            assert not session.dirty
            await session.commit()
    else:

        def run() -> None:
            with sa.orm.Session(sengine) as session:
                (held,) = session.execute(sa.select(Item)).scalars().all()
                item, created = onconflict.sync.update_or_create(
                    session, Item, {"code": "x"}, {"title": "new"}
                )
                assert (item is held, created, item.title) == (True, False, "new")
                session.commit()

        await anyio.to_thread.run_sync(run)
    async with aengine.connect() as conn:
        title = (await conn.execute(sa.select(Item.__table__.c.item_title))).scalar_one()
    assert title == "new"


@pytest.mark.usefixtures("django_tables")
@pytest.mark.databases("postgresql")  # the COPY path is PostgreSQL's
async def test_python_side_defaults_on_the_copy_path(
    aengine: AsyncEngine, backend: Backend
) -> None:
    """insert_ignore's bulk path (PostgreSQL, asyncpg, COPY) leaves a table with
    Python-side defaults to SQLAlchemy's path, which computes them per row."""
    from onconflict.dialects.postgresql.copy import COPY_THRESHOLD

    rows = [{"name": f"n{i}"} for i in range(COPY_THRESHOLD)]
    done = await onconflict.insert_ignore(aengine, stamped, rows)
    assert done.inserted_count == COPY_THRESHOLD
    async with aengine.connect() as conn:
        tokens = (await conn.execute(sa.select(sa.func.count(stamped.c.token.distinct())))).scalar()
    assert tokens == COPY_THRESHOLD
