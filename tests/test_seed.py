"""seed (API and CLI) on the real servers."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from examples.app import metadata as app_metadata
from examples.app import roles, users
from sqlalchemy.ext.asyncio import AsyncEngine

import onconflict
import onconflict.sync
from onconflict.dialects import support_for
from tests.conftest import Backend

ROOT = Path(__file__).resolve().parent.parent
ROLES = [{"name": "admin", "description": "all"}, {"name": "member", "description": "some"}]
USERS = [
    {"email": "admin@x", "name": "Admin", "role": "admin"},
    {"email": "ada@x", "name": "Ada", "role": "member"},
]


@pytest.fixture
async def app_tables(aengine: AsyncEngine) -> Any:
    async with aengine.begin() as conn:
        await conn.run_sync(app_metadata.drop_all)
        await conn.run_sync(app_metadata.create_all)
    yield
    async with aengine.begin() as conn:
        await conn.run_sync(app_metadata.drop_all)


async def contents(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    async with engine.connect() as conn:
        return {
            "roles": [
                tuple(r) for r in await conn.execute(sa.select(roles).order_by(roles.c.name))
            ],
            "users": [
                tuple(r)[1:] for r in await conn.execute(sa.select(users).order_by(users.c.email))
            ],
        }


pytestmark = pytest.mark.usefixtures("app_tables")


async def test_insert_twice_children_listed_first(aengine: AsyncEngine) -> None:
    data = {users: USERS, roles: ROLES}  # parents are written first anyway
    first = await onconflict.seed(aengine, data)
    assert [(t.table, t.counts()["inserted"]) for t in first.tables] == [("roles", 2), ("users", 2)]
    again = await onconflict.seed(aengine, data)
    assert again.total("inserted") == 0
    assert again.total("existing") == 4
    assert not again.changed


async def test_tables_by_name_are_reflected(aengine: AsyncEngine, sengine: Any) -> None:
    report = onconflict.sync.seed(sengine, {"users": USERS, "roles": ROLES})
    assert report.total("inserted") == 4
    assert (await contents(aengine))["users"][0] == ("ada@x", "Ada", "member")


async def test_upsert_verify_and_dry_run(aengine: AsyncEngine) -> None:
    await onconflict.seed(aengine, {roles: ROLES, users: USERS})
    changed = [dict(USERS[0], name="Root"), {"email": "new@x", "name": "New", "role": "member"}]
    before = await contents(aengine)

    verify = await onconflict.seed(aengine, {users: changed}, mode="verify")
    (part,) = verify.tables
    assert part.missing == [changed[1]]
    assert [(g["email"], s["name"]) for g, s in part.differing] == [("admin@x", "Admin")]
    assert verify.drift

    dry = await onconflict.seed(aengine, {users: changed}, mode="upsert", dry_run=True)
    assert (dry.total("missing"), dry.total("differing")) == (1, 1)
    dry_insert = await onconflict.seed(aengine, {users: changed}, dry_run=True)
    assert (dry_insert.total("missing"), dry_insert.total("existing")) == (1, 1)
    assert await contents(aengine) == before  # verify and dry runs write nothing

    done = await onconflict.seed(aengine, {users: changed}, mode="upsert")
    assert [r["name"] for r in done.tables[0].updated] == ["Root"]
    assert done.total("inserted") == 1
    assert not (await onconflict.seed(aengine, {users: changed}, mode="verify")).drift


async def test_all_or_nothing(aengine: AsyncEngine) -> None:
    bad = [*USERS, {"email": "x@x", "name": "X", "role": "no-such-role"}]  # foreign key
    with pytest.raises(sa.exc.DBAPIError):
        await onconflict.seed(aengine, {roles: ROLES, users: bad})
    assert await contents(aengine) == {"roles": [], "users": []}
    # inside the caller's transaction: the caller's own work survives (not on PostgreSQL,
    # where any error aborts the transaction)
    async with aengine.connect() as conn:
        with pytest.raises(sa.exc.DBAPIError):
            await onconflict.seed(conn, {roles: ROLES, users: bad})
        await conn.rollback()
    assert await contents(aengine) == {"roles": [], "users": []}


async def test_unknown_tables_and_columns_write_nothing(aengine: AsyncEngine) -> None:
    with pytest.raises(ValueError, match="unknown table"):
        await onconflict.seed(aengine, {"roles": ROLES, "nope": [{"a": 1}]})
    with pytest.raises(ValueError, match="'colour' not a column of table 'users'"):
        await onconflict.seed(aengine, {roles: ROLES, users: [{**USERS[0], "colour": "red"}]})
    assert await contents(aengine) == {"roles": [], "users": []}


async def test_progress_is_reported(aengine: AsyncEngine) -> None:
    seen: list[tuple[str, int, int]] = []
    await onconflict.seed(aengine, {roles: ROLES, users: USERS}, progress=lambda *a: seen.append(a))
    assert seen == [("roles", 2, 2), ("users", 2, 2)]


def hold_lock(backend: Backend, release: threading.Event, held: threading.Event) -> None:
    """Take the seed lock as another replica would, until told to let go."""
    assert backend.seed_lock is not None
    engine = sa.create_engine(backend.sync_url)
    with engine.connect() as conn:
        backend.seed_lock.take(conn)
        held.set()
        release.wait(30)
        conn.rollback()
        backend.seed_lock.release(conn)
    engine.dispose()


@pytest.mark.needs("seed_lock")
async def test_lock_timeout_is_a_clear_error(aengine: AsyncEngine, backend: Backend) -> None:
    release, held = threading.Event(), threading.Event()
    holder = threading.Thread(target=hold_lock, args=(backend, release, held))
    holder.start()
    try:
        assert held.wait(10)
        started = time.monotonic()
        with pytest.raises(onconflict.SeedLockTimeout, match="another seed"):
            await onconflict.seed(aengine, {roles: ROLES}, lock_timeout=1.0, retry=None)
        assert time.monotonic() - started < 10
    finally:
        release.set()
        holder.join()
    assert (await onconflict.seed(aengine, {roles: ROLES})).total("inserted") == 2


@pytest.mark.databases("mariadb")
async def test_seed_lock_of_another_database_does_not_wait(
    aengine: AsyncEngine, backend: Backend
) -> None:
    """MySQL's named locks belong to the server: the seed lock is named within
    the database, so a seed of another database on the server goes ahead."""
    url = sa.engine.make_url(backend.sync_url)
    other = f"{url.database}_other_seed"
    admin = sa.create_engine(url)
    quoted = admin.dialect.identifier_preparer.quote(other)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE IF NOT EXISTS {quoted}"))
    holder = sa.create_engine(url.set(database=other))
    try:
        with holder.connect() as conn:
            # a seed of the other database, running under the library's own lock
            lock = support_for(conn.dialect).seed_lock(conn, "onconflict.seed", 1.0)
            with lock:
                seeded = await onconflict.seed(aengine, {roles: ROLES}, lock_timeout=1.0)
                assert seeded.total("inserted") == 2
    finally:
        holder.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {quoted}"))
        admin.dispose()


@pytest.mark.crowd  # dozens of connections at once
@pytest.mark.needs("writer_processes")
def test_8_processes_start_the_fastapi_app_at_once(backend: Backend) -> None:
    """docs' FastAPI example: eight workers run the start-up seeding at once."""
    url = backend.url
    start = time.time() + 4
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.lifespan_worker", str(start)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "ONCONFLICT_URL": url, "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"},
        )
        for _ in range(8)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [err[-2000:] for _, err in outputs]
    inserted = [int(out.split()[0]) for out, _ in outputs]
    assert sum(inserted) == 2  # one role and one admin user, by exactly one worker
    engine = sa.create_engine(backend.sync_url)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(users)).scalar() == 1
    engine.dispose()


@pytest.mark.parametrize("driver", ["async", "sync"])
@pytest.mark.needs("writer_processes")
def test_4_replicas_seed_a_fresh_database_with_the_cli_at_once(
    backend: Backend, driver: str
) -> None:
    """`onconflict seed FILE --schema ...` as 4 replicas' init steps on a fresh
    database: the tables are created under the seed lock, so nobody fails on a
    concurrent CREATE TABLE, and the rows are stored once."""
    url = backend.url if driver == "async" else backend.sync_url
    engine = sa.create_engine(backend.sync_url)
    app_metadata.drop_all(engine)
    start = time.time() + 3
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.seed_cli_worker", str(start), url],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"},
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    try:
        assert [p.returncode for p in procs] == [0] * 4, [o + e for o, e in outputs]
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(users)).scalar() == 2
            assert conn.execute(sa.select(sa.func.count()).select_from(roles)).scalar() == 2
    finally:
        app_metadata.drop_all(engine)
        engine.dispose()


async def test_autoincrement_key_given_as_none_is_numbered(aengine: AsyncEngine) -> None:
    rows = [{"id": None, **u} for u in USERS]
    data = {roles: ROLES, users: rows}
    first = await onconflict.seed(aengine, data)
    assert first.total("inserted") == 4
    again = await onconflict.seed(aengine, data, mode="upsert")
    assert (again.total("inserted"), again.total("existing")) == (0, 4)
    verified = await onconflict.seed(aengine, data, mode="verify")
    assert not verified.drift


async def test_single_table_inheritance(aengine: AsyncEngine, inheritance_tables: None) -> None:
    """Two classes of one single-table hierarchy in one seed: each row gets its
    class's discriminator."""
    from tests.schema import Employee, Engineer, Manager

    data = {
        Manager: [{"email": "m@x", "name": "m", "budget": 1}],
        Engineer: [{"email": "e@x", "name": "e", "language": "py"}],
    }
    first = await onconflict.seed(aengine, data)
    assert first.total("inserted") == 2
    assert [r["kind"] for t in first.tables for r in t.inserted] in (
        ["manager", "engineer"],
        ["engineer", "manager"],
    )
    again = await onconflict.seed(aengine, data, mode="upsert")
    assert (again.total("inserted"), again.total("existing")) == (0, 2)
    assert not (await onconflict.seed(aengine, data, mode="verify")).drift
    async with aengine.connect() as conn:
        kinds = dict((await conn.execute(sa.select(Employee.email, Employee.kind))).all())
    assert kinds == {"m@x": "manager", "e@x": "engineer"}
    with pytest.raises(ValueError, match="given twice"):
        await onconflict.seed(aengine, {Manager: [], Employee.__table__: []})
