"""Execution options and event listeners are honoured by every call on every
path: a path that sends its statements on the driver's own connection (the
one-row driver-level paths, PostgreSQL's COPY path) is taken only where none
is set, and otherwise the ordinary path runs them through SQLAlchemy.

- ``schema_translate_map`` (multi-tenant applications): every row goes to the
  translated schema, on every call, handle and front.
- A listener of SQLAlchemy's connection or dialect events (``commit``,
  ``before_execute``, ``do_execute``): it sees every call's work.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import Backend
from tests.handles import Handle

meta = sa.MetaData()
things = sa.Table(
    "oc_xo_things",
    meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("code", sa.String(20), nullable=False, unique=True),
    sa.Column("rank", sa.Integer, nullable=False, server_default="0"),  # (no Python default: COPY)
)
TENANT = "oc_xo_tenant" + os.environ.get("PYTEST_XDIST_WORKER", "")
BULK = 20_000  # PostgreSQL's COPY path threshold (dialects/postgresql/copy.py)


@pytest.fixture
async def tenant(aengine: AsyncEngine) -> AsyncIterator[dict[str | None, str]]:
    """``things`` in the default schema and in TENANT, both empty; the map that
    sends unqualified tables to TENANT."""
    translate: dict[str | None, str] = {None: TENANT}
    async with aengine.begin() as conn:
        await conn.execute(sa.schema.CreateSchema(TENANT, if_not_exists=True))
        await conn.run_sync(meta.drop_all)
        await conn.run_sync(meta.create_all)
        translated = await conn.execution_options(schema_translate_map=translate)
        await translated.run_sync(meta.drop_all)
        await translated.run_sync(meta.create_all)
    yield translate
    async with aengine.begin() as conn:
        await conn.run_sync(meta.drop_all)
        cascade = conn.dialect.name not in ("mysql", "mariadb")  # (a database: dropped whole)
        await conn.execute(sa.schema.DropSchema(TENANT, cascade=cascade, if_exists=True))


async def _counts(engine: AsyncEngine) -> tuple[int, int]:
    """Rows of ``things`` in the default schema and in TENANT."""
    tenant = things.to_metadata(sa.MetaData(), schema=TENANT)
    async with engine.connect() as conn:
        here = (await conn.execute(sa.select(sa.func.count()).select_from(things))).scalar()
        there = (await conn.execute(sa.select(sa.func.count()).select_from(tenant))).scalar()
    return int(here or 0), int(there or 0)


@pytest.mark.needs("schemas")
async def test_schema_translate_map_is_honoured_by_every_call(
    handle: Handle, tenant: dict[str | None, str], backend: Backend
) -> None:
    """Each call, through each handle, on an engine whose execution options map
    unqualified tables to another schema: every row is read and written there,
    none in the default schema (the COPY path used to create its temporary
    table in the tenant's schema and fail; a driver-level path would have
    written to the default schema)."""
    translated = Handle(
        handle.kind,
        handle.aengine.execution_options(schema_translate_map=tenant),
        handle.sengine.execution_options(schema_translate_map=tenant),
    )
    one = await translated.call("insert_ignore", things, [{"code": "a"}])
    again = await translated.call("insert_ignore", things, [{"code": "a"}])
    assert (one.inserted_count, again.existing_count) == (1, 1)
    up = await translated.call("upsert", things, [{"code": "a", "rank": 2}, {"code": "b"}])
    assert (up.updated_count, up.inserted_count) == (1, 1)
    row, created = await translated.call("get_or_create", things, {"code": "c"})
    assert (row["code"], created) == ("c", True)
    many = await translated.call("get_or_create_many", things, [{"code": "c"}, {"code": "d"}])
    assert many.created == [False, True]
    row, created = await translated.call("update_or_create", things, {"code": "d"}, {"rank": 5})
    assert (row["rank"], created) == (5, False)
    rows = [{"code": f"bulk{i}"} for i in range(BULK if backend.name == "postgresql" else 500)]
    bulk = await translated.call("insert_ignore", things, rows)
    assert bulk.inserted_count == len(rows)
    assert await _counts(handle.aengine) == (0, 4 + len(rows))


LISTENED = ("commit", "before_execute", "do_execute")


@pytest.mark.handles("async-engine", "sync-engine")
@pytest.mark.parametrize("event", LISTENED)
async def test_a_listener_sees_every_call(handle: Handle, event: str, backend: Backend) -> None:
    """A listener of a connection event (commit, before_execute) or a dialect
    event (do_execute) on the engine: every call that owns its work runs
    through SQLAlchemy, so the listener sees each one (the driver-level paths
    used to check only cursor-execute listeners and bypassed these)."""
    engine = handle.aengine.sync_engine if handle.is_async else handle.sengine
    async with handle.aengine.begin() as conn:
        await conn.run_sync(meta.drop_all)
        await conn.run_sync(meta.create_all)
    seen: list[Any] = []

    def listener(*args: Any) -> None:
        seen.append(args)

    sa.event.listen(engine, event, listener)
    try:
        calls: list[tuple[str, tuple[Any, ...]]] = [
            ("insert_ignore", (things, [{"code": "a"}])),
            ("insert_ignore", (things, [{"code": "a"}])),
            ("get_or_create", (things, {"code": "b"})),
            ("get_or_create", (things, {"code": "b"})),
            ("upsert", (things, [{"code": "b", "rank": 1}])),
            ("get_or_create_many", (things, [{"code": "a"}, {"code": "c"}])),
            ("update_or_create", (things, {"code": "c"}, {"rank": 2})),
        ]
        if backend.name == "postgresql":
            calls.append(("insert_ignore", (things, [{"code": f"k{i}"} for i in range(BULK)])))
        for fn, args in calls:
            before = len(seen)
            await handle.call(fn, *args)
            if (
                event == "commit"
                and fn.startswith("get_or_create")
                and backend.name == "postgresql"
            ):
                continue  # one statement in autocommit: nothing to commit, on any path
            assert len(seen) > before, (fn, args[1] if len(str(args[1])) < 80 else "...")
    finally:
        sa.event.remove(engine, event, listener)
    got = await handle.call("insert_ignore", things, [{"code": "a"}])
    assert got.existing_count == 1
    async with handle.aengine.connect() as conn:
        total = (await conn.execute(sa.select(sa.func.count()).select_from(things))).scalar()
    assert total == 3 + (BULK if backend.name == "postgresql" else 0)
    async with handle.aengine.begin() as conn:
        await conn.run_sync(meta.drop_all)
