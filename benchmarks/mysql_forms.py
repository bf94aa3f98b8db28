"""Side by side, one run: the MySQL/MariaDB forms onconflict could use.

    python benchmarks/mysql_forms.py [--url mysql+aiomysql://root@127.0.0.1/test] [--rows 20000]

Prints rows/s for each form at 0%, 50% and 100% duplicates, and the ratio to a
plain INSERT of the same new rows (which cannot handle duplicates at all).
Timing here never gates a test.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import onconflict

metadata = sa.MetaData()
table = sa.Table(
    "bench_mysql_forms",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("k", sa.String(40), nullable=False, unique=True),
    sa.Column("v", sa.String(40), nullable=False),
)


async def reset(engine: AsyncEngine, preload: list[dict[str, Any]]) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.run_sync(metadata.create_all)
        if preload:
            await conn.execute(table.insert(), preload)


async def plain(engine: AsyncEngine, rows: list[dict[str, Any]]) -> None:
    async with engine.begin() as conn:
        for i in range(0, len(rows), 1000):
            await conn.execute(table.insert(), rows[i : i + 1000])


async def odku(engine: AsyncEngine, rows: list[dict[str, Any]]) -> None:
    stmt = mysql.insert(table).on_duplicate_key_update(id=table.c.id)
    async with engine.begin() as conn:
        for i in range(0, len(rows), 1000):
            await conn.execute(stmt, rows[i : i + 1000])


async def guarded(engine: AsyncEngine, rows: list[dict[str, Any]]) -> None:
    await onconflict.insert_ignore(engine, table, rows, on="k")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="mysql+aiomysql://root@127.0.0.1:3306/test")
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()
    engine = create_async_engine(args.url)
    no_returning = create_async_engine(args.url)
    async with no_returning.connect():
        pass
    no_returning.dialect.insert_returning = False  # as on MySQL 8: one row per statement

    async def per_row(_: AsyncEngine, rows: list[dict[str, Any]]) -> None:
        await onconflict.insert_ignore(no_returning, table, rows[: len(rows) // 10], on="k")

    n = args.rows
    rows = [{"k": f"key-{i:07d}", "v": "value"} for i in range(n)]
    forms: list[tuple[str, Callable[[AsyncEngine, list[dict[str, Any]]], Awaitable[None]], int]] = [
        ("plain INSERT (new rows only)", plain, n),
        ("INSERT ... ON DUPLICATE KEY UPDATE id=id", odku, n),
        ("onconflict guarded INSERT IGNORE RETURNING", guarded, n),
        ("onconflict one row per statement (MySQL 8)", per_row, n // 10),
    ]
    await reset(engine, [])  # connects: the dialect now knows the server version
    version = ".".join(map(str, engine.dialect.server_version_info or ()))
    print(f"{n} rows, server {version}, best of 3")
    print(f"{'form':45} {'dups':>5} {'rows/s':>10} {'vs plain':>9}")
    baseline = 0.0
    for dup in (0.0, 0.5, 1.0):
        preload = rows[: int(n * dup)]
        for name, fn, count in forms:
            if fn is plain and dup:
                continue
            best = float("inf")
            for _ in range(3):
                await reset(engine, [dict(r) for r in preload])
                start = time.perf_counter()
                await fn(engine, [dict(r) for r in rows])
                best = min(best, time.perf_counter() - start)
            rate = count / best
            if fn is plain:
                baseline = rate
            print(f"{name:45} {dup:5.0%} {rate:10,.0f} {rate / baseline:8.2f}x")
    await engine.dispose()
    await no_returning.dispose()


if __name__ == "__main__":
    asyncio.run(main())
