"""Race tests of an application with onconflict.testing and its pytest plugin
(docs/testing.md includes this file). ``onconflict_url`` is an empty database
made for each test, once per database of ``--onconflict-databases``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import httpx
import pytest
import sqlalchemy as sa
from examples.app import audit, metadata, roles, users
from examples.fastapi_app import app
from sqlalchemy.ext.asyncio import create_async_engine

import onconflict
from onconflict.testing import (
    assert_exactly_once,
    assert_one_row_per_key,
    race,
    race_processes,
)


@pytest.fixture
async def client(
    onconflict_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    """The example app on a fresh database: tables created (as migrations would),
    the lifespan run (it seeds the admin user), requests served in-process."""
    engine = create_async_engine(onconflict_url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    await engine.dispose()
    monkeypatch.setenv("ONCONFLICT_URL", onconflict_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            yield http


async def test_a_webhook_delivered_64_times_at_once_is_handled_once(
    client: httpx.AsyncClient,
) -> None:
    async def deliver(i: int) -> bool:
        response = await client.post("/webhooks/evt_1", json={"event": "payment.succeeded"})
        response.raise_for_status()
        return bool(response.json()["handled"])

    outcome = await race(deliver, callers=64)
    outcome.raise_errors()  # no delivery failed (no duplicate-key error leaked)
    assert outcome.results.count(True) == 1  # exactly one delivery did the work
    async with app.state.engine.connect() as conn:
        effects = (await conn.execute(sa.select(audit.c.delivery_id))).all()
    assert_one_row_per_key(effects, key=lambda r: r.delivery_id)
    assert len(effects) == 1


@pytest.mark.crowd  # dozens of connections at once
async def test_start_up_seeding_and_get_or_create_under_a_race(
    client: httpx.AsyncClient,
) -> None:
    engine = app.state.engine
    await onconflict.seed(engine, {roles: [{"name": "member", "description": "Reads"}]})
    emails = [f"user{n}@example.org" for n in range(8)]

    async def sign_up(i: int) -> tuple[dict[str, object], bool]:
        email = emails[i % len(emails)]  # 8 callers per key
        return await onconflict.get_or_create(
            engine, users, {"email": email}, {"name": f"caller {i}", "role": "member"}
        )

    outcome = await race(sign_up, callers=64)
    assert_exactly_once(outcome, key=lambda r: r[0]["email"], created=lambda r: r[1], keys=emails)
    async with engine.connect() as conn:
        stored = (await conn.execute(sa.select(users.c.email))).all()
    assert_one_row_per_key(stored, key=lambda r: r.email)
    assert len(stored) == len(emails) + 1  # and the admin user the lifespan seeded


async def create_role(i: int, url: str) -> tuple[str, bool]:
    """One caller of the process race below (importable in a fresh process)."""
    engine = create_async_engine(url, poolclass=sa.pool.NullPool)
    try:
        row = {"name": f"role{i % 3}", "description": f"by caller {i}"}
        return row["name"], bool((await onconflict.insert_ignore(engine, roles, [row])).inserted)
    finally:
        await engine.dispose()


@pytest.mark.crowd  # dozens of connections at once
async def test_processes_race_on_the_same_keys(onconflict_url: str) -> None:
    engine = create_async_engine(onconflict_url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    outcome = race_processes(
        "tests.test_race_kit:create_role", processes=3, callers=8, args=(onconflict_url,)
    )
    assert outcome.calls == 24
    keys = ["role0", "role1", "role2"]
    assert_exactly_once(outcome, key=lambda r: r[0], created=lambda r: r[1], keys=keys)
    async with engine.connect() as conn:
        stored = (await conn.execute(sa.select(roles.c.name))).all()
    await engine.dispose()
    assert sorted(r.name for r in stored) == keys


# -- the kit itself -------------------------------------------------------------------


async def test_race_releases_every_caller_at_once_and_collects_errors() -> None:
    started: list[int] = []

    async def fn(i: int) -> int:
        started.append(i)
        await anyio.lowlevel.checkpoint()
        if i % 4 == 0:
            raise ValueError(f"caller {i}")
        return i

    outcome = await race(fn, callers=16)
    assert sorted(started) == list(range(16))
    assert outcome.results == [i for i in range(16) if i % 4] == outcome.returned_by
    assert [i for i, _ in outcome.errors] == [0, 4, 8, 12]
    with pytest.raises(AssertionError, match=r"4 of 16 callers raised \(4 x ValueError\)"):
        outcome.raise_errors()


def test_assert_exactly_once_catches_two_creators_and_missing_keys() -> None:
    from onconflict.testing import RaceOutcome

    twice = RaceOutcome(results=[("a", True), ("a", True), ("b", True)])
    with pytest.raises(AssertionError, match=r"more than one caller: \{'a': 2\}"):
        assert_exactly_once(twice, key=lambda r: r[0], created=lambda r: r[1])
    none = RaceOutcome(results=[("a", True), ("b", False)])
    with pytest.raises(AssertionError, match="no caller created"):
        assert_exactly_once(none, key=lambda r: r[0], created=lambda r: r[1], keys=["a", "b"])
    with pytest.raises(AssertionError, match=r"stored more than once: {'x': 2}"):
        assert_one_row_per_key(["x", "x", "y"], key=lambda r: r)
