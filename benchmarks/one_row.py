"""One caller, one connection, one transaction: the per-call cost of a one-row
insert beside the code it replaces, new rows and duplicates, calls interleaved
so that the machine's load falls on every contender alike.

    python -m benchmarks.one_row [--url mysql+aiomysql://root@127.0.0.1:3306/test]
        [--calls 1000] [--engine]

Contenders: ``onconflict.insert_ignore(conn, ...)`` inside the caller's
transaction; try-INSERT/except-IntegrityError (in a SAVEPOINT on PostgreSQL,
where an error aborts the transaction); the database's raw unguarded statement
(``INSERT IGNORE``, ``ON CONFLICT DO NOTHING``). ``--engine`` (MariaDB):
instead ``onconflict.insert_ignore(engine, ...)`` (its own transaction, a
pooled connection per call) beside the race benchmark's raw driver (an
aiomysql pool, autocommit, ``INSERT IGNORE``). Prints the median and the
10th percentile in ms per call, and the median client CPU per call (this
process's thread time: what many callers on few cores run out of first,
steadier than wall time on a loaded machine). Timing here never gates a test.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

import onconflict

metadata = sa.MetaData()
table = sa.Table(
    "bench_one_row",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("k", sa.String(60), nullable=False, unique=True),
    sa.Column("v", sa.String(40), nullable=True),
)
Call = Callable[[AsyncConnection, str], Awaitable[bool]]


async def mine(conn: AsyncConnection, key: str) -> bool:
    return (await onconflict.insert_ignore(conn, table, [{"k": key}])).inserted_count == 1


async def classic(conn: AsyncConnection, key: str) -> bool:
    try:
        if conn.dialect.name == "postgresql":
            async with conn.begin_nested():
                await conn.execute(table.insert(), {"k": key})
        else:
            await conn.execute(table.insert(), {"k": key})
    except sa.exc.IntegrityError:
        return False
    return True


def raw_statement(name: str) -> Any:
    if name in ("mysql", "mariadb"):
        return mysql.insert(table).prefix_with("IGNORE")
    if name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="mysql+aiomysql://root@127.0.0.1:3306/test")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--engine", action="store_true", help="engine-owned calls (MariaDB)")
    args = parser.parse_args()
    engine = create_async_engine(args.url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.run_sync(metadata.create_all)
        await conn.execute(table.insert(), {"k": "dup"})
    if args.engine:
        await on_engine(engine, args.url, args.calls)
        return
    stmt = raw_statement(engine.dialect.name)

    async def raw(conn: AsyncConnection, key: str) -> bool:
        return (await conn.execute(stmt, {"k": key})).rowcount == 1

    contenders: dict[str, Call] = {
        "onconflict insert_ignore": mine,
        "try/except IntegrityError": classic,
        "raw unguarded statement": raw,
    }
    async with engine.connect() as conn:
        await conn.begin()
        times, cpu = await interleaved(
            {name: functools.partial(fn, conn) for name, fn in contenders.items()}, args.calls
        )
        await conn.rollback()
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
    await engine.dispose()
    print(f"{args.calls} calls each, {engine.dialect.name}, one connection, one transaction")
    report(times, cpu)


async def on_engine(engine: Any, url: str, calls: int) -> None:
    """Engine-owned one-row calls beside the raw aiomysql pool, interleaved."""
    import warnings

    import aiomysql  # type: ignore[import-untyped]
    from sqlalchemy.engine import make_url

    where = make_url(url)
    pool = await aiomysql.create_pool(
        host=where.host,
        port=where.port or 3306,
        user=where.username,
        password=where.password or "",
        db=where.database,
        autocommit=True,
    )
    sql = "INSERT IGNORE INTO bench_one_row (k) VALUES (%s)"  # the raw driver's own SQL

    async def mine_engine(key: str) -> bool:
        return (await onconflict.insert_ignore(engine, table, [{"k": key}])).inserted_count == 1

    async def raw_pool(key: str) -> bool:
        async with pool.acquire() as conn, conn.cursor() as cur:
            return bool(await cur.execute(sql, (key,)))

    contenders = {"onconflict insert_ignore": mine_engine, "raw driver (aiomysql pool)": raw_pool}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # aiomysql's own, for each duplicate
        times, cpu = await interleaved(contenders, calls)
    pool.close()
    await pool.wait_closed()
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
    await engine.dispose()
    print(f"{calls} calls each, {engine.dialect.name}, engine-owned calls, one caller")
    report(times, cpu)


Samples = dict[tuple[str, str], list[float]]


async def interleaved(
    contenders: dict[str, Callable[[str], Awaitable[bool]]], calls: int
) -> tuple[Samples, Samples]:
    """Each contender's call on a new key and on the duplicate, in turn, ``calls``
    times: wall and CPU milliseconds by (contender, case)."""
    times: Samples = {(name, case): [] for name in contenders for case in ("new", "duplicate")}
    cpu: Samples = {shape: [] for shape in times}
    for i in range(calls):
        for case in ("new", "duplicate"):
            for n, (name, fn) in enumerate(contenders.items()):
                key = f"{n}-{i}" if case == "new" else "dup"
                start, used = time.perf_counter(), time.thread_time()
                await fn(key)
                times[(name, case)].append((time.perf_counter() - start) * 1000)
                cpu[(name, case)].append((time.thread_time() - used) * 1000)
    return times, cpu


def report(times: Samples, cpu: Samples) -> None:
    print(f"{'contender':28} {'row':10} {'median ms':>10} {'p10 ms':>8} {'cpu ms':>8}")
    for (name, case), xs in times.items():
        xs.sort()
        used = statistics.median(cpu[(name, case)])
        print(
            f"{name:28} {case:10} {statistics.median(xs):10.3f} {xs[len(xs) // 10]:8.3f}"
            f" {used:8.3f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
