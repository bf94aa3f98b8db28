"""Exactly-once on a 3-node multi-master MariaDB Galera cluster.

The cluster comes from ``scripts/galera.py start`` (``.ci/run`` starts it). Its
nodes' URLs are ``$ONCONFLICT_GALERA_URLS`` (space separated) or the script's
defaults. In CI a missing cluster fails these tests; elsewhere they skip.

On Galera two nodes can insert the same key at once without either seeing the
other: the loser learns at commit, as error 1213 (certification failure) or by
being aborted by the winner's replicated write ("brute force abort"), never as
a duplicate key. These tests show the library turns that into the normal
duplicate outcome when it owns the transaction, and hands the 1213 to the
caller (for :func:`onconflict.retrying`) when the caller owns it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import random
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pymysql
import pytest
import sqlalchemy as sa
from benchmarks.race import conflicts  # Galera's aborts, as the cluster benchmark counts them
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

import onconflict
from onconflict.classify import error_code
from tests.conftest import missing, require_server

pytestmark = pytest.mark.galera
ROOT = Path(__file__).resolve().parent.parent


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("galera_script", ROOT / "scripts" / "galera.py")
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


galera = _script()
URLS = os.environ.get("ONCONFLICT_GALERA_URLS", "").split() or [n.url() for n in galera.ALL]

metadata = sa.MetaData()
hot = sa.Table(
    "galera_hot",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("k", sa.String(40), nullable=False, unique=True),
    sa.Column("v", sa.Integer, nullable=False),
)


@pytest.fixture(scope="module")
def urls() -> list[str]:
    if absent := galera.missing_tools():
        missing("Galera is not installed here (missing " + ", ".join(absent) + ")")
    for n, url in enumerate(URLS, 1):  # (checked once per name: one name per node)
        require_server(f"Galera node {n} (python scripts/galera.py start)", url)
    return URLS


@pytest.fixture
async def engines(urls: list[str]) -> AsyncIterator[list[AsyncEngine]]:
    made = [create_async_engine(url, pool_size=8, max_overflow=8) for url in urls]
    async with made[0].begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.run_sync(metadata.create_all)
    yield made
    async with made[0].begin() as conn:
        await conn.run_sync(metadata.drop_all)
    for engine in made:
        await engine.dispose()


async def stored(engine: AsyncEngine) -> tuple[int, int]:
    """(rows, distinct keys) on this node, read after every commit the cluster
    has certified has been applied here (Galera's causality wait)."""
    async with engine.connect() as conn:
        await conn.execute(sa.text("SET SESSION wsrep_sync_wait = 1"))
        counts = sa.text("SELECT count(*), count(DISTINCT k) FROM galera_hot")
        row = (await conn.execute(counts)).one()
    return int(row[0]), int(row[1])


Call = Callable[[AsyncEngine, str, int], Awaitable[bool]]


async def _insert_ignore(engine: AsyncEngine, key: str, worker: int) -> bool:
    result = await onconflict.insert_ignore(engine, hot, [{"k": key, "v": worker}], on=["k"])
    return len(result.inserted) == 1


async def _get_or_create(engine: AsyncEngine, key: str, worker: int) -> bool:
    _, created = await onconflict.get_or_create(engine, hot, {"k": key}, defaults={"v": worker})
    return created


# 12 workers on 3 nodes upserting one key at the same moment: the default 5
# attempts were once all lost in a full run (docs/distributed.md says so)
HOT_RETRY = onconflict.Retry(attempts=10)


async def _upsert(engine: AsyncEngine, key: str, worker: int) -> bool:
    row = [{"k": key, "v": worker}]
    result = await onconflict.upsert(engine, hot, row, on=["k"], retry=HOT_RETRY)
    return len(result.inserted) == 1


async def hot_keys_storm(
    engines: list[AsyncEngine],
    call: Call,
    *,
    prefix: str = "",
    workers: int = 12,
    rounds: int = 8,
    width: int = 6,
) -> Counter[str]:
    """Every worker calls for the same keys in the same order, workers spread
    over the nodes round robin: each key is raced by all nodes at once."""
    creators: Counter[str] = Counter()

    async def worker(number: int) -> None:
        engine = engines[number % len(engines)]
        for r in range(rounds):
            keys = [f"{prefix}r{r}k{i}" for i in range(width)]
            random.Random(number).shuffle(keys)
            for key in keys:
                created = await call(engine, key, number)  # (not `+= await`: the read
                creators[key] += created  # would happen before the await)

    await asyncio.gather(*(worker(n) for n in range(workers)))
    return creators


# a storm whose every write happened to reach the other nodes before their
# own attempt ran has nothing for Galera to abort (seen once in CI): storm
# again with fresh keys, each storm checked for exactness, until one is aborted
STORMS = 5


@pytest.mark.parametrize(
    "call",
    [_insert_ignore, _get_or_create, _upsert],
    ids=["insert_ignore", "get_or_create", "upsert"],
)
async def test_hot_keys_across_nodes_exactly_once(engines: list[AsyncEngine], call: Call) -> None:
    keys = 8 * 6
    aborted = 0
    for storm in range(1, STORMS + 1):
        before = await conflicts(engines)
        creators = await hot_keys_storm(engines, call, prefix=f"s{storm}")  # errors propagate
        aborted += await conflicts(engines) - before
        assert len(creators) == keys
        assert set(creators.values()) == {1}, "exactly one creator per key"
        for engine in engines:  # every node holds every key once
            assert await stored(engine) == (keys * storm, keys * storm)
        if aborted:
            break
    # the race really happened: Galera aborted transactions the library then retried
    assert aborted > 0, f"no transaction aborted in {STORMS} storms"


async def _owned_by_caller(conn: AsyncConnection, key: str) -> bool:
    result = await onconflict.insert_ignore(conn, hot, [{"k": key, "v": 0}], on=["k"])
    return len(result.inserted) == 1


async def test_callers_transaction_gets_1213_and_retrying_resolves_it(
    engines: list[AsyncEngine],
) -> None:
    first, second = engines[0], engines[1]
    async with first.connect() as a, second.connect() as b:
        # both nodes insert the same key in open transactions: neither sees the other
        assert await _owned_by_caller(a, "shared")
        assert await _owned_by_caller(b, "shared")
        await a.commit()
        with pytest.raises(DBAPIError) as caught:  # certified second: it loses
            await b.commit()
    error = caught.value
    assert error_code(error) == 1213
    assert onconflict.is_transient(error)
    assert not onconflict.is_unique_violation(error)  # not a duplicate: a conflict

    async def work(conn: AsyncConnection) -> bool:
        return await _owned_by_caller(conn, "shared")

    # the caller's unit of work, re-run in a fresh transaction, sees the duplicate
    assert await onconflict.retrying(second, work) is False
    assert await stored(second) == (1, 1)


async def test_owned_transaction_losing_certification_at_commit_is_retried(
    engines: list[AsyncEngine], urls: list[str]
) -> None:
    """Deterministic: just before the library commits on node 2, the same key is
    committed on node 1. Node 2's commit fails certification (1213); the library
    runs the unit again and reports the row as existing, with no error."""
    u = make_url(urls[0])
    fired: list[int] = []

    def rival_commits_first(conn: Any) -> None:
        if fired:
            return
        fired.append(1)
        rival = pymysql.connect(host=u.host, port=u.port, user=u.username, database=u.database)
        try:
            with rival.cursor() as cur:
                cur.execute("INSERT INTO galera_hot (k, v) VALUES ('contested', 1)")
            rival.commit()
        finally:
            rival.close()

    second = engines[1]
    sa.event.listen(second.sync_engine, "commit", rival_commits_first)
    try:
        result = await onconflict.insert_ignore(second, hot, [{"k": "contested", "v": 2}], on=["k"])
    finally:
        sa.event.remove(second.sync_engine, "commit", rival_commits_first)
    assert fired
    assert result.inserted == []
    assert len(result.existing) == 1
    async with second.connect() as conn:
        assert (await conn.execute(sa.select(hot.c.v))).scalars().all() == [1]


async def test_seed_from_every_node_at_once(engines: list[AsyncEngine]) -> None:
    """GET_LOCK is local to a node on Galera, so seeds on different nodes do run
    at once; certification resolves them: all or nothing each, rows once."""
    rows = {hot: [{"k": f"seed{i}", "v": i} for i in range(50)]}
    reports = await asyncio.gather(
        *(onconflict.seed(engines[n % 3], rows, on=["k"]) for n in range(6))
    )
    assert sum(report.total("inserted") for report in reports) == 50
    assert await stored(engines[2]) == (50, 50)


@pytest.mark.parametrize("mode", ["insert", "upsert"])
async def test_seeds_of_overlapping_rows_from_every_node_in_rounds(
    engines: list[AsyncEngine], mode: str
) -> None:
    """12 seeds at once, 4 per node, each of 5 of 20 keys, 5 rounds: no error
    reaches a caller. A certification abort can hit any statement of the seed,
    GET_LOCK and RELEASE_LOCK included; the session is then dropped, which frees
    its lock (a pooled session kept it, and the node's other seeds timed out:
    SeedLockTimeout, or PendingRollbackError from releasing inside an aborted
    savepoint)."""
    rng = random.Random(17)
    for _ in range(5):
        calls = []
        for n in range(12):
            keys = rng.sample(range(20), 5)
            rows = {hot: [{"k": f"s{k}", "v": n} for k in keys]}
            seed = onconflict.seed(engines[n % 3], rows, on=["k"], mode=mode, lock_timeout=10)
            calls.append(seed)
        await asyncio.gather(*calls)
    rows_, keys_ = await stored(engines[0])
    assert rows_ == keys_ <= 20


# -- a node stops mid-run (keep last: it restarts the node at the end) -------------


async def cluster(command: str, node: int) -> None:
    script = [sys.executable, str(ROOT / "scripts" / "galera.py"), command, "--node", str(node)]
    await asyncio.to_thread(subprocess.run, script, check=True, capture_output=True)


LOST_CONNECTION = {1053, 1047, 1927, 2003, 2006, 2013}  # shutdown, not ready, killed, gone


async def test_node_stopped_mid_run(engines: list[AsyncEngine]) -> None:
    victim = len(engines) - 1
    results: list[tuple[int, str, bool]] = []  # node, key, created
    failures: dict[int, list[tuple[str, BaseException]]] = defaultdict(list)
    stop_at, stopped = asyncio.Event(), asyncio.Event()

    async def worker(number: int) -> None:
        """Calls for keys n0..n59 (round and round) until it has made 60 calls
        and 10 more since the node stopped (a clean stop takes a while)."""
        node = number % len(engines)
        calls = since_stop = 0
        while calls < 60 or since_stop < 10:
            key = f"n{calls % 60}"
            if calls == 20 and number == 0:
                stop_at.set()
            calls += 1
            since_stop += stopped.is_set()
            try:
                created = await _insert_ignore(engines[node], key, number)
            except DBAPIError as exc:
                failures[node].append((key, exc))
                await asyncio.sleep(0.05)
                continue
            results.append((node, key, created))

    async def stop_node() -> None:
        await stop_at.wait()
        await cluster("stop", victim + 1)
        stopped.set()

    try:
        await asyncio.gather(stop_node(), *(worker(n) for n in range(9)))
        survivors = [n for n in range(len(engines)) if n != victim]
        assert not any(failures[n] for n in survivors), "surviving nodes keep working"
        assert failures[victim], "calls to the stopped node fail"
        for _, exc in failures[victim]:  # ... clearly: a connection error, not a wrong answer
            assert error_code(exc) in LOST_CONNECTION, exc
            assert not onconflict.is_unique_violation(exc)
        created = Counter(key for _, key, made in results if made)
        assert all(n == 1 for n in created.values())
        # a call that lost its connection has an unknown outcome; being idempotent,
        # it is simply run again (here on a survivor), and then every key has
        # exactly one creator
        unknown = sorted({key for key, _ in failures[victim]} - set(created))
        for key in unknown:
            again = await _insert_ignore(engines[survivors[0]], key, 99)
            created[key] += again
        assert set(created.values()) == {1}
        assert len(created) == 60
        assert await stored(engines[survivors[0]]) == (60, 60)
    finally:
        await engines[victim].dispose()
        await cluster("start", victim + 1)
    assert await stored(engines[victim]) == (60, 60)  # the node rejoined and caught up
