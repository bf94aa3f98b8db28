"""Contention: many callers on few keys, every call, both kinds of transaction.

A bounded slice of ``python -m benchmarks contention`` (the full sweep and its
figures are in docs/reliability.md): engine-owned calls surface no error,
caller-owned calls surface only errors the caller must retry
(``onconflict.is_transient``), and ``onconflict.retrying`` turns those into
none; exactly-once holds in every cell.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import sqlalchemy as sa
from benchmarks import contention
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

import onconflict
import onconflict.sync
from onconflict.retry import Attempts, Restart, Retry
from tests.conftest import Backend

pytestmark = pytest.mark.crowd  # up to 128 callers at once

ISSUE_17 = contention.Cell("upsert_where", "engine", 32, 20, 5)


async def _run(backend: Backend, cells: list[contention.Cell], calls: int) -> list[Any]:
    return await contention.sweep([backend.url], cells, calls)


@pytest.mark.parametrize("call", contention.CALLS)
async def test_sweep_slice(backend: Backend, call: str) -> None:
    """32 callers x 20 hot keys x batches of 5 (one key for the *_or_create
    calls), 3 calls each, through the engine, the caller's transaction and
    onconflict.retrying."""
    cells = contention.cells([call], contention.OWNERS, [32], [20], [5])
    for result in await _run(backend, cells, calls=3):
        s = result.summary()
        assert s["exactly_once"], s
        assert s["errors_other"] == 0, s
        if result.cell.owner != "caller":
            assert s["errors_transient"] == 0, s


@pytest.mark.parametrize("call", ["upsert_where", "update_or_create", "get_or_create"])
async def test_many_callers_one_key(backend: Backend, call: str) -> None:
    """128 engine-owned callers on one new key: no error reaches them."""
    cells = contention.cells([call], ["engine"], [128], [1], [1])
    (result,) = await _run(backend, cells, calls=2)
    s = result.summary()
    assert (s["errors_transient"], s["errors_other"], s["exactly_once"]) == (0, 0, True), s


async def test_issue_17_upsert_where(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    """The issue's run: 32 coroutines, 10 upserts each with where=, batches of
    5 of 20 keys. It surfaced 4 to 302 deadlocks per 320 calls on MariaDB;
    now none, and the deadlocks the retry loop met are few."""
    caplog.set_level(logging.INFO, logger="onconflict")
    (result,) = await _run(backend, [ISSUE_17], calls=10)
    s = result.summary()
    assert (s["errors_transient"], s["errors_other"], s["exactly_once"]) == (0, 0, True), s
    deadlocks = [r for r in caplog.records if "transient error" in r.getMessage()]
    assert len(deadlocks) <= 32, s  # (was 50 to 1,235 per run)


@pytest.mark.mariadb
@pytest.mark.parametrize("front", ["async", "sync"])
@pytest.mark.databases("mariadb")  # MariaDB's locking
async def test_update_or_create_race_takes_the_exclusive_lock_first(
    backend: Backend,
    aengine: AsyncEngine,
    sengine: Engine,
    front: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """32 engine-owned update_or_create of one new key at once, 5 rounds: the
    losers of the creation race restart at once and take the row's exclusive
    lock first; no deadlock at all (they used to upgrade the shared lock of
    the lost race: about 18 deadlocks in 32 callers)."""
    import anyio

    caplog.set_level(logging.INFO, logger="onconflict")
    t = contention.hot
    async with aengine.begin() as conn:
        await conn.run_sync(contention.metadata.drop_all)
        await conn.run_sync(contention.metadata.create_all)
    created = []
    for round_ in range(5):
        lookup = {"k": f"new{round_}"}
        gate = anyio.Event()

        async def one(i: int, lookup: dict[str, Any] = lookup, gate: anyio.Event = gate) -> None:
            await gate.wait()
            more = {"v": i, "version": i}
            if front == "async":
                _, made = await onconflict.update_or_create(aengine, t, lookup, more)
            else:
                _, made = await anyio.to_thread.run_sync(
                    lambda: onconflict.sync.update_or_create(sengine, t, lookup, more)
                )
            created.append(made)

        async with anyio.create_task_group() as tg:
            for i in range(32):
                tg.start_soon(one, i)
            await anyio.sleep(0.05)
            gate.set()
    assert created.count(True) == 5
    assert len(created) == 160
    deadlocks = [r for r in caplog.records if "transient error" in r.getMessage()]
    assert deadlocks == []
    async with aengine.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(t))).scalar() == 5


def test_retry_budget_scales_with_the_calls_in_flight() -> None:
    """5 runs alone; two more per doubling of the calls in flight on the engine;
    waits drawn from [0, min(max_delay, delay * 2**n)]; a restart waits not
    and spends nothing of the budget."""
    engine = object.__new__(sa.engine.Engine)  # a key for the in-flight count
    alone = Attempts(Retry(), engine)
    with alone:
        assert alone.budget == 5
        crowd = [Attempts(Retry(), engine) for _ in range(31)]
        for a in crowd:
            a.__enter__()
        assert alone.budget == 5 + 10  # 32 in flight
        for a in crowd:
            a.__exit__(None, None, None)
        assert alone.budget == 15  # the peak it saw
        assert alone.wait(Restart()) == 0.0
        assert alone.restarts == 1
        assert alone.transient == 0
    assert Attempts(Retry(scale=False), engine).budget == 5
    assert Attempts(Retry(attempts=1), engine).budget == 1


def test_benchmark_command(backend: Backend, tmp_path: Any) -> None:
    """``python -m benchmarks contention`` at a tiny size: it writes its files
    and succeeds only when every goal holds."""
    import json

    from benchmarks.__main__ import main
    from click.testing import CliRunner

    args = ["contention", "--url", backend.url, "--calls", "upsert_where,get_or_create"]
    args += ["--callers", "4", "--keys", "3", "--batch", "2", "--each", "2"]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "contention.json").read_text())
    assert len(data["results"]) == 2 * 3
    assert data["totals"]["engine"]["transient"] == 0
