"""get_or_create on the race path, peers side by side in one run (PostgreSQL).

    python -m benchmarks.get_or_create [--url postgresql+asyncpg://postgres@127.0.0.1/test]
                                       [--workers 32] [--keys 100] [--calls 3200] [--rounds 3]

Contenders, each on a fresh table, warmed up first, in rotation:

- raw asyncpg pool: the same single statement, hand-run on asyncpg (the floor);
- onconflict, engine: ``await onconflict.get_or_create(engine, ...)``;
- onconflict, connection: the call inside a caller's transaction (SQLAlchemy path);
- Django ``get_or_create`` (sync psycopg, one thread per worker), if installed.

Prints calls/s per contender and round, and the goals: onconflict's engine path
>= 2x Django, and within 1.25x of the raw pool (raw / onconflict <= 1.25).
Checks exactly-once on every run: one row per key, one creator per key.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import onconflict
from benchmarks import peers
from onconflict._get_or_create import prepare_get_or_create

metadata = sa.MetaData()
table = sa.Table(
    "bench_goc",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("k", sa.String(40), nullable=False, unique=True),
    sa.Column("v", sa.String(40), nullable=True),
)


async def reset(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.run_sync(metadata.create_all)


async def check(engine: AsyncEngine, keys: int, created: int) -> None:
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar()
    if rows != keys or created != keys:
        raise SystemExit(f"exactly-once violated: {rows} rows, {created} creators, {keys} keys")


async def timed(
    workers: int, plan: list[str], call: Callable[[str], Awaitable[bool]]
) -> tuple[float, int]:
    it = iter(plan)
    made = 0

    async def worker() -> None:
        nonlocal made
        for key in it:
            was_created = await call(key)  # (not `made += await ...`: that loses updates)
            made += was_created

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return len(plan) / (time.perf_counter() - start), made


def django_contender(url: str, workers: int) -> Callable[[list[str]], tuple[float, int]] | None:
    if peers.django_available(url) is not None:
        return None
    from django.db import connections

    model, alias = peers.django_model(url, "goc")
    objects = model.objects.using(alias)

    def run(plan: list[str]) -> tuple[float, int]:
        it = iter(plan)
        lock = threading.Lock()
        made = [0]

        def worker() -> None:
            while True:
                with lock:
                    key = next(it, None)
                if key is None:
                    break
                _, was_created = objects.get_or_create(k=key)
                if was_created:
                    with lock:
                        made[0] += 1
            connections[alias].close()

        threads = [threading.Thread(target=worker) for _ in range(workers)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return len(plan) / (time.perf_counter() - start), made[0]

    return run


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--calls", type=int, default=3200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    engine = create_async_engine(args.url, pool_size=args.workers, max_overflow=0)
    raw_url = make_url(args.url).set(drivername="postgresql").render_as_string(hide_password=False)
    pool = await asyncpg.create_pool(raw_url, min_size=args.workers, max_size=args.workers)
    prepared = prepare_get_or_create(engine.dialect, table, {"k": "x"}, None)
    compiled = prepared.plan.statements["one"].compile(dialect=engine.dialect)
    sql = str(compiled)  # the very statement onconflict sends

    async def raw(key: str) -> bool:
        async with pool.acquire() as conn:
            for _ in range(5):  # the same bounded retry onconflict does
                record = await conn.fetchrow(sql, key)
                if record is not None:
                    return bool(record[-1])
        raise RuntimeError("no row")

    async def ours(key: str) -> bool:
        return (await onconflict.get_or_create(engine, table, {"k": key}))[1]

    async def in_transaction(key: str) -> bool:
        async with engine.begin() as conn:
            return (await onconflict.get_or_create(conn, table, {"k": key}))[1]

    contenders: dict[str, Any] = {
        "raw asyncpg pool": raw,
        "onconflict, engine": ours,
        "onconflict, connection": in_transaction,
    }
    django_run = django_contender(args.url, args.workers)
    results: dict[str, list[float]] = {name: [] for name in contenders}
    if django_run is not None:
        results["Django get_or_create"] = []
    for _ in range(2):  # warm up pools, prepared statements, caches
        await reset(engine)
        for fn in contenders.values():
            await timed(args.workers, [f"w{i}" for i in range(200)], fn)
    for rnd in range(args.rounds):
        plan = [f"k{random.randrange(args.keys)}" for _ in range(args.calls)]
        for name, fn in contenders.items():
            await reset(engine)
            rate, made = await timed(args.workers, plan, fn)
            await check(engine, len(set(plan)), made)
            results[name].append(rate)
            print(f"round {rnd + 1} {name:24} {rate:9,.0f} calls/s")
        if django_run is not None:
            await reset(engine)
            rate, made = await asyncio.to_thread(django_run, plan)
            await check(engine, len(set(plan)), made)
            results["Django get_or_create"].append(rate)
            print(f"round {rnd + 1} {'Django get_or_create':24} {rate:9,.0f} calls/s")
    await pool.close()
    await engine.dispose()

    size = f"{args.workers} workers, {args.keys} keys, {args.calls} calls"
    print(f"\n{size}, {args.rounds} rounds (median):")
    med = {name: statistics.median(v) for name, v in results.items()}
    for name, rate in med.items():
        print(f"  {name:24} {rate:9,.0f} calls/s")
    ours_rate = med["onconflict, engine"]
    floor = med["raw asyncpg pool"] / ours_rate
    verdict = "met" if floor <= 1.25 else "NOT met"
    print(f"  raw pool / onconflict: {floor:.2f}x (goal <= 1.25x: {verdict})")
    if "Django get_or_create" in med:
        vs = ours_rate / med["Django get_or_create"]
        print(f"  onconflict / Django:   {vs:.2f}x (goal >= 2x: {'met' if vs >= 2 else 'NOT met'})")


if __name__ == "__main__":
    asyncio.run(main())
