"""The contention sweep: every call x who owns the transaction x callers x hot
keys x batch size, on one database (or the nodes of a cluster), counting the
runs the retry loop spent, the errors that reached the caller, and p99.

Who owns the transaction:

* ``engine``: the call gets the engine and owns its transaction; onconflict
  retries. Goal: 0 errors.
* ``caller``: the call runs in the caller's ``engine.begin()`` transaction,
  once. Errors that reach the caller are counted by kind: ``transient`` (a
  deadlock, a serialization failure, SQLite busy: the caller must run the
  transaction again) and ``other`` (goal: 0).
* ``retrying``: the same caller-owned work through ``onconflict.retrying``.
  Goal: 0 errors.

Every cell starts from an empty table (the creation races are the hard part)
and checks exactly-once at the end: each touched key stored once, and the
calls that reported creating a row created exactly that many.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

import onconflict

CALLS = ("insert_ignore", "upsert", "upsert_where", "get_or_create", "update_or_create", "seed")
OWNERS = ("engine", "caller", "retrying")
ONE_KEY_CALLS = ("get_or_create", "update_or_create")  # one key a call: batch is 1

metadata = sa.MetaData()
hot = sa.Table(
    "oc_contention",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("k", sa.String(20), nullable=False, unique=True),
    sa.Column("v", sa.Integer, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
)


@dataclass(frozen=True)
class Cell:
    call: str
    owner: str
    callers: int
    keys: int
    batch: int

    @property
    def name(self) -> str:
        return f"{self.call} {self.owner} {self.callers}c {self.keys}k b{self.batch}"


@dataclass
class Outcome:
    cell: Cell
    calls: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    errors: Counter[str] = field(default_factory=Counter)  # transient / other: repr
    retries: int = 0  # runs after a transient error (the retry loop's and retrying's)
    restarts: int = 0  # runs after a lost creation race (MySQL/MariaDB)
    created: int = 0  # rows the calls reported creating
    stored: int = 0  # rows in the table at the end
    touched: int = 0  # distinct keys the calls were given

    @property
    def surfaced(self) -> int:
        return sum(self.errors.values())

    @property
    def transient(self) -> int:
        return self.errors["transient"]

    @property
    def other(self) -> int:
        return self.surfaced - self.transient

    def p99(self) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]

    def exactly_once(self) -> bool:
        """Every touched key stored once, and created once (the calls that
        failed did nothing: their transactions were rolled back)."""
        if self.surfaced:
            return self.stored <= self.touched and self.created == self.stored
        return self.stored == self.touched and self.created == self.stored

    def summary(self) -> dict[str, Any]:
        c = self.cell
        return {
            "call": c.call,
            "owner": c.owner,
            "callers": c.callers,
            "keys": c.keys,
            "batch": c.batch,
            "calls": self.calls,
            "retries": self.retries,
            "restarts": self.restarts,
            "errors_transient": self.transient,
            "errors_other": self.other,
            "p99_ms": None if (p := self.p99()) is None else round(p, 1),
            "seconds": round(self.seconds, 2),
            "exactly_once": self.exactly_once(),
            "created": self.created,
            "stored": self.stored,
            "touched": self.touched,
            "samples": [*self.errors.keys()][:3] if self.other else [],
        }


def cells(
    calls: Iterable[str],
    owners: Iterable[str],
    callers: Iterable[int],
    keys: Iterable[int],
    batches: Iterable[int],
) -> list[Cell]:
    """The grid; one-key calls take batch 1 only, and a batch never exceeds the keys."""
    out: dict[Cell, None] = {}
    for call, owner, n, k, b in itertools.product(calls, owners, callers, keys, batches):
        b = 1 if call in ONE_KEY_CALLS else min(b, k)
        out[Cell(call, owner, n, k, b)] = None
    return list(out)


def _work(call: str, rows: list[dict[str, Any]]) -> Callable[[Any], Awaitable[int]]:
    """The call on a handle (engine or connection): the number of rows it created."""
    t = hot

    async def run(handle: Any) -> int:
        if call == "insert_ignore":
            return (await onconflict.insert_ignore(handle, t, rows, on=["k"])).inserted_count
        if call == "upsert":
            got = await onconflict.upsert(handle, t, rows, on=["k"], update=["version"])
            return got.inserted_count
        if call == "upsert_where":
            where = t.c.version < onconflict.excluded("version")
            got = await onconflict.upsert(
                handle, t, rows, on=["k"], update=["version"], where=where
            )
            return got.inserted_count
        if call == "seed":
            report = await onconflict.seed(handle, {t: rows}, on="k")
            return sum(len(part.inserted) for part in report.tables)
        (row,) = rows
        lookup, more = {"k": row["k"]}, {"v": row["v"], "version": row["version"]}
        if call == "get_or_create":
            _, created = await onconflict.get_or_create(handle, t, lookup, more)
        else:
            _, created = await onconflict.update_or_create(handle, t, lookup, more)
        return int(created)

    return run


async def run_cell(
    engines: list[AsyncEngine], cell: Cell, calls_each: int, seed: int = 0
) -> Outcome:
    """One cell: ``cell.callers`` coroutines, ``calls_each`` calls each, caller
    i on engine i mod N (the nodes of a cluster), released at once."""
    rng = random.Random(seed)
    async with engines[0].begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.run_sync(metadata.create_all)
    await _visible(engines)
    plans = [
        [
            [
                {"k": f"k{x}", "v": i, "version": rng.randrange(100)}
                for x in sorted(rng.sample(range(cell.keys), cell.batch))
            ]
            for _ in range(calls_each)
        ]
        for i in range(cell.callers)
    ]
    out = Outcome(cell)
    out.touched = len({r["k"] for p in plans for rows in p for r in rows})
    before = onconflict.retry_stats()
    gate = asyncio.Event()

    async def caller(i: int) -> None:
        engine = engines[i % len(engines)]
        await gate.wait()
        for rows in plans[i]:
            work = _work(cell.call, rows)
            start = time.perf_counter()
            try:
                made = await _owned(cell.owner, engine, work)
                out.created += made
            except Exception as exc:
                kind = "transient" if onconflict.is_transient(exc) else repr(exc)[:200]
                out.errors[kind] += 1
            out.latencies_ms.append((time.perf_counter() - start) * 1000)
            out.calls += 1

    tasks = [asyncio.create_task(caller(i)) for i in range(cell.callers)]
    await asyncio.sleep(0)
    start = time.perf_counter()
    gate.set()
    await asyncio.gather(*tasks)
    out.seconds = time.perf_counter() - start
    spent = onconflict.retry_stats() - before
    out.retries, out.restarts = spent.retries, spent.restarts
    async with engines[0].connect() as conn:
        count = sa.select(sa.func.count()).select_from(hot)
        out.stored = int((await conn.execute(count)).scalar_one())
    return out


async def _visible(engines: list[AsyncEngine]) -> None:
    """Wait until the new table is there on every node (a cluster applies the
    DDL on the others a moment later)."""
    for engine in engines[1:]:
        for _ in range(100):
            async with engine.connect() as conn:
                if await conn.run_sync(lambda c: sa.inspect(c).has_table(hot.name)):
                    break
            await asyncio.sleep(0.05)


async def _owned(owner: str, engine: AsyncEngine, work: Callable[[Any], Awaitable[int]]) -> int:
    if owner == "engine":
        return await work(engine)
    if owner == "caller":
        async with engine.begin() as conn:
            return await work(conn)

    async def unit(conn: AsyncConnection) -> int:
        return await work(conn)

    return await onconflict.retrying(engine, unit)


def engines_for(urls: list[str], pool_size: int = 20, max_overflow: int = 20) -> list[AsyncEngine]:
    out = []
    for url in urls:
        if url.startswith("sqlite"):
            engine = create_async_engine(url, connect_args={"timeout": 60})

            @sa.event.listens_for(engine.sync_engine, "connect")
            def _wal(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.close()

        else:
            engine = create_async_engine(url, pool_size=pool_size, max_overflow=max_overflow)
        out.append(engine)
    return out


async def sweep(
    urls: list[str],
    grid: list[Cell],
    calls_each: int,
    progress: Callable[[str], None] = lambda _: None,
) -> list[Outcome]:
    engines = engines_for(urls)
    results = []
    try:
        for i, cell in enumerate(grid):
            progress(f"{cell.name} ({i + 1}/{len(grid)})")
            results.append(await run_cell(engines, cell, calls_each, seed=i))
        async with engines[0].begin() as conn:
            await conn.run_sync(metadata.drop_all)
    finally:
        for engine in engines:
            await engine.dispose()
    return results


def table(results: list[Outcome]) -> str:
    """A Markdown table: one line per cell."""
    lines = [
        "| call | owner | callers | keys | batch | calls | retries | restarts"
        " | errors (transient / other) | p99 ms | exactly once |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r.summary()
        lines.append(
            f"| {s['call']} | {s['owner']} | {s['callers']} | {s['keys']} | {s['batch']}"
            f" | {s['calls']} | {s['retries']} | {s['restarts']}"
            f" | {s['errors_transient']} / {s['errors_other']} | {s['p99_ms']}"
            f" | {'yes' if s['exactly_once'] else 'NO'} |"
        )
    return "\n".join(lines)


def totals(results: list[Outcome]) -> dict[str, dict[str, Any]]:
    """By owner: calls, retries, restarts, errors, worst p99."""
    out: dict[str, dict[str, Any]] = {}
    for r in results:
        t = out.setdefault(
            r.cell.owner,
            {"calls": 0, "retries": 0, "restarts": 0, "transient": 0, "other": 0, "p99_ms": 0.0},
        )
        t["calls"] += r.calls
        t["retries"] += r.retries
        t["restarts"] += r.restarts
        t["transient"] += r.transient
        t["other"] += r.other
        t["p99_ms"] = max(t["p99_ms"], round(r.p99() or 0.0, 1))
    return out
