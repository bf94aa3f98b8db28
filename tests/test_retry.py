"""Transient errors provoked for real, and retried."""

from __future__ import annotations

import os
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

import onconflict
import onconflict.sync
from tests.conftest import DEFAULTS, require_server, sync_url
from tests.schema import metadata, tags


def server_url(name: str) -> str:
    env, default = DEFAULTS[name]
    url = os.environ.get(env, default)
    require_server(name, url)
    return url


@pytest.fixture
async def pg() -> Any:
    url = server_url("postgresql")
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.run_sync(metadata.create_all)
    outside = sa.create_engine(sync_url(url))
    yield engine, outside
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
    await engine.dispose()
    outside.dispose()


def commit_elsewhere(outside: sa.Engine, slug: str) -> None:
    with outside.begin() as conn:
        conn.execute(tags.insert(), [{"slug": slug}])


def snapshot_then_conflict(engine: AsyncEngine, outside: sa.Engine, times: int) -> list[int]:
    """On the first `times` transactions: take a REPEATABLE READ snapshot, then
    commit the same key from another connection, so that the INSERT that
    follows meets a row its snapshot cannot see: SQLSTATE 40001."""
    begun: list[int] = []

    @sa.event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: sa.Connection) -> None:
        begun.append(1)
        if len(begun) <= times:
            conn.exec_driver_sql("SELECT 1")
            commit_elsewhere(outside, f"k{len(begun)}")

    return begun


@pytest.mark.postgresql
async def test_owned_transaction_is_retried_after_serialization_failure(pg: Any) -> None:
    engine, outside = pg
    rr = engine.execution_options(isolation_level="REPEATABLE READ")
    begun = snapshot_then_conflict(engine, outside, times=1)
    result = await onconflict.insert_ignore(rr, tags, [{"slug": "k1"}, {"slug": "new"}])
    assert len(begun) == 2  # failed once, then ran again from the start
    assert result.existing == [{"slug": "k1"}]
    assert [r["slug"] for r in result.inserted] == ["new"]


@pytest.mark.postgresql
async def test_retries_are_bounded_and_can_be_turned_off(pg: Any) -> None:
    engine, outside = pg
    rr = engine.execution_options(isolation_level="REPEATABLE READ")
    begun = snapshot_then_conflict(engine, outside, times=10)
    with pytest.raises(sa.exc.DBAPIError) as info:
        await onconflict.insert_ignore(rr, tags, [{"slug": "k1"}], retry=None)
    assert onconflict.is_transient(info.value)
    assert len(begun) == 1
    with pytest.raises(sa.exc.DBAPIError):
        await onconflict.insert_ignore(
            rr, tags, [{"slug": "k2"}, {"slug": "k3"}], retry=onconflict.Retry(attempts=2, delay=0)
        )
    assert len(begun) == 3


@pytest.mark.postgresql
async def test_callers_transaction_gets_the_error_and_retrying_resolves_it(pg: Any) -> None:
    engine, outside = pg
    rr = engine.execution_options(isolation_level="REPEATABLE READ")
    attempts: list[int] = []

    async def unit(conn: AsyncConnection) -> onconflict.InsertResult:
        attempts.append(1)
        await conn.execute(sa.select(1))  # the snapshot
        if len(attempts) == 1:
            await anyio.to_thread.run_sync(commit_elsewhere, outside, "k")
        return await onconflict.insert_ignore(conn, tags, [{"slug": "k"}])

    async with rr.connect() as conn:
        await conn.execute(sa.select(1))
        await anyio.to_thread.run_sync(commit_elsewhere, outside, "first")
        with pytest.raises(sa.exc.DBAPIError) as info:
            await onconflict.insert_ignore(conn, tags, [{"slug": "first"}])  # no retry: yours
        assert onconflict.is_transient(info.value)

    result = await onconflict.retrying(rr, unit)
    assert len(attempts) == 2
    assert result.existing_count == 1


@pytest.mark.postgresql
def test_sync_retrying(pg: Any) -> None:
    _, outside = pg
    engine = outside.execution_options(isolation_level="REPEATABLE READ")
    attempts: list[int] = []

    def unit(conn: sa.Connection) -> onconflict.InsertResult:
        attempts.append(1)
        conn.execute(sa.select(1))
        if len(attempts) == 1:
            commit_elsewhere(outside, "s")
        return onconflict.sync.insert_ignore(conn, tags, [{"slug": "s"}])

    result = onconflict.sync.retrying(engine, unit, retry=onconflict.Retry(delay=0))
    assert (len(attempts), result.existing_count) == (2, 1)


@pytest.mark.mariadb
async def test_mariadb_deadlock_resolved_by_retrying() -> None:
    engine = create_async_engine(server_url("mariadb"))
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.run_sync(metadata.create_all)
    both_hold_one = anyio.Event()
    holding: list[str] = []
    attempts: list[str] = []

    def worker(first: str, second: str) -> Any:
        async def unit(conn: AsyncConnection) -> None:
            attempts.append(first)
            await onconflict.insert_ignore(conn, tags, [{"slug": first}])
            holding.append(first)
            if len(holding) == 2:
                both_hold_one.set()
            await both_hold_one.wait()
            await onconflict.insert_ignore(conn, tags, [{"slug": second}])  # the other's lock

        return unit

    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(onconflict.retrying, engine, worker("a", "b"))
                tg.start_soon(onconflict.retrying, engine, worker("b", "a"))
        assert len(attempts) == 3  # the deadlock victim ran twice
        async with engine.connect() as conn:
            slugs = (await conn.execute(sa.select(tags.c.slug).order_by(tags.c.slug))).scalars()
            assert list(slugs) == ["a", "b"]
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)
        await engine.dispose()


def test_retry_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="attempts"):
        onconflict.Retry(attempts=0)
    with pytest.raises(ValueError, match="negative"):
        onconflict.Retry(delay=-1)
