"""Idempotent bulk loads: N rows with D% already in the table.

Contenders, each on a fresh table preloaded with the duplicates:
- plain INSERT of the same rows (executemany): the reference, 0% duplicates only
  (with duplicates it fails);
- onconflict insert_ignore, as it runs (on PostgreSQL + asyncpg: the COPY path
  above its threshold; there the result's rows are built when first read),
  the same with every inserted row read, with the statements only, and counts
  only (``returning=False``: no rows read back);
- the raw driver floor: the same work hand-written on the driver (on
  PostgreSQL also without RETURNING, the counts-only statements);
- peers, where installed: Django and Tortoise ``bulk_create(ignore_conflicts=True)``,
  Peewee ``insert_many(...).on_conflict_ignore()`` (batches of 1,000, one
  transaction; none of them can say which rows it inserted);
- PostgreSQL: plain COPY into the empty table, the ceiling.
Exactly-once is checked after every onconflict run.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import onconflict
import onconflict.dialects.postgresql.copy as pg_support
from benchmarks import peers
from benchmarks.common import ExactlyOnceViolated, Result, goal, ratio

metadata = sa.MetaData()
table = sa.Table(
    "bench_bulk",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("k", sa.String(40), nullable=False, unique=True),
    sa.Column("qty", sa.Integer, nullable=False),
    sa.Column("label", sa.String(40), nullable=True),
)


def make_rows(n: int) -> list[dict[str, Any]]:
    return [{"k": f"key-{i:08d}", "qty": i % 1000, "label": "x" * (i % 20)} for i in range(n)]


async def reset(engine: AsyncEngine, preload: list[dict[str, Any]]) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.run_sync(metadata.create_all)
        for i in range(0, len(preload), 5000):
            await conn.execute(table.insert(), preload[i : i + 5000])


async def rows_in(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())


async def plain(engine: AsyncEngine, rows: list[dict[str, Any]]) -> int:
    async with engine.begin() as conn:
        for i in range(0, len(rows), 1000):
            await conn.execute(table.insert(), rows[i : i + 1000])
    return len(rows)


async def ours(engine: AsyncEngine, rows: list[dict[str, Any]]) -> int:
    return (await onconflict.insert_ignore(engine, table, rows)).inserted_count


async def ours_read(engine: AsyncEngine, rows: list[dict[str, Any]]) -> int:
    """The full result with every inserted row read (on the COPY path the
    result's dicts are built from the driver's records when first read)."""
    result = await onconflict.insert_ignore(engine, table, rows)
    return sum(1 for _ in result.inserted)


async def ours_statements(engine: AsyncEngine, rows: list[dict[str, Any]]) -> int:
    saved = pg_support.COPY_THRESHOLD
    pg_support.COPY_THRESHOLD = 10**12  # the COPY path off
    try:
        return (await onconflict.insert_ignore(engine, table, rows)).inserted_count
    finally:
        pg_support.COPY_THRESHOLD = saved


async def ours_counts(engine: AsyncEngine, rows: list[dict[str, Any]]) -> int:
    return (await onconflict.insert_ignore(engine, table, rows, returning=False)).inserted_count


def raw_for(
    url: str, counts_only: bool = False
) -> Callable[[AsyncEngine, list[dict[str, Any]]], Any]:
    """The raw driver doing what onconflict's statements do. ``counts_only``:
    on PostgreSQL, the INSERT ... SELECT without RETURNING (its command tag
    counts); the other databases' raw statements return no rows either way."""
    backend = make_url(url).get_backend_name()

    async def raw(engine: AsyncEngine, rows: list[dict[str, Any]]) -> int:
        raw_conn = await engine.raw_connection()
        try:
            driver: Any = raw_conn.driver_connection
            records = [(r["k"], r["qty"], r["label"]) for r in rows]
            if backend == "postgresql":
                async with driver.transaction():
                    await driver.execute(
                        "CREATE TEMP TABLE raw_copy (k varchar(40), qty int, label varchar(40))"
                        " ON COMMIT DROP"
                    )
                    await driver.copy_records_to_table("raw_copy", records=records)
                    # in key order, as onconflict sends it (one lock order for
                    # concurrent loads): the same statement
                    insert = (
                        "INSERT INTO bench_bulk (k, qty, label) SELECT k, qty, label FROM raw_copy"
                        " ORDER BY k ON CONFLICT (k) DO NOTHING"
                    )
                    if counts_only:
                        tag = await driver.execute(insert)
                        return int(tag.rsplit(" ", 1)[-1])
                    done = await driver.fetch(f"{insert} RETURNING id, k, qty, label")
                return len(done)
            if backend in ("mysql", "mariadb"):
                async with driver.cursor() as cur:
                    inserted = 0
                    for i in range(0, len(records), 1000):
                        await cur.executemany(
                            "INSERT IGNORE INTO bench_bulk (k, qty, label) VALUES (%s, %s, %s)",
                            records[i : i + 1000],
                        )
                        inserted += cur.rowcount
                await driver.commit()
                return inserted
            cur = await driver.cursor()
            await cur.executemany(
                "INSERT INTO bench_bulk (k, qty, label) VALUES (?, ?, ?)"
                " ON CONFLICT (k) DO NOTHING",
                records,
            )
            await driver.commit()
            return int(cur.rowcount)
        finally:
            raw_conn.close()

    return raw


async def copy_ceiling(engine: AsyncEngine, rows: list[dict[str, Any]]) -> int:
    raw_conn = await engine.raw_connection()
    try:
        driver: Any = raw_conn.driver_connection
        await driver.copy_records_to_table(
            "bench_bulk",
            records=[(r["k"], r["qty"], r["label"]) for r in rows],
            columns=["k", "qty", "label"],
        )
        return len(rows)
    finally:
        raw_conn.close()


def peer_contenders(url: str) -> list[tuple[str, Any, bool]]:
    import asyncio

    out: list[tuple[str, Any, bool]] = []
    if peers.django_available(url) is None:

        async def django(engine: AsyncEngine, rows: list[dict[str, Any]]) -> int:
            return await asyncio.to_thread(peers.django_bulk, url, rows)

        out.append(("Django bulk_create(ignore_conflicts)", django, False))
    if peers.peewee_available(url) is None:

        async def peewee(engine: AsyncEngine, rows: list[dict[str, Any]]) -> int:
            return await asyncio.to_thread(peers.peewee_bulk, url, rows)

        out.append(("Peewee on_conflict_ignore", peewee, False))
    if peers.tortoise_available(url) is None:

        async def tortoise(engine: AsyncEngine, rows: list[dict[str, Any]]) -> int:
            from tortoise.transactions import in_transaction

            _, model = await peers.tortoise_open(url, 1)
            try:
                async with in_transaction():
                    await model.bulk_create(
                        [model(**r) for r in rows], ignore_conflicts=True, batch_size=1000
                    )
            finally:
                await peers.tortoise_close()
            return -1

        out.append(("Tortoise bulk_create(ignore_conflicts)", tortoise, False))
    return out


async def run(
    url: str, sizes: list[int], dups: list[int], progress: Callable[[str], None] = lambda _: None
) -> list[Result]:
    engine = create_async_engine(
        url, **({"connect_args": {"timeout": 60}} if "sqlite" in url else {})
    )
    backend = make_url(url).get_backend_name()
    results: list[Result] = []
    try:
        for n in sizes:
            rows = make_rows(n)
            for d in dups:
                preload = rows[: n * d // 100]
                scen = f"{n:,} rows {d}%dup"
                contenders: list[tuple[str, Any, bool]] = [
                    ("onconflict insert_ignore", ours, True),
                    ("onconflict, rows read", ours_read, True),
                    ("onconflict, counts only", ours_counts, True),
                    ("raw driver", raw_for(url), False),
                ]
                if backend == "postgresql":
                    contenders.insert(1, ("onconflict, statements only", ours_statements, True))
                    contenders.append(("raw driver, counts only", raw_for(url, True), False))
                contenders += peer_contenders(url)
                if d == 0:
                    contenders.insert(0, ("plain INSERT", plain, False))
                    if backend == "postgresql":
                        contenders.append(("plain COPY (ceiling)", copy_ceiling, False))
                for name, fn, checked in contenders:
                    progress(f"{scen}: {name}")
                    await reset(engine, preload)
                    start = time.perf_counter()
                    inserted = await fn(engine, rows)
                    seconds = time.perf_counter() - start
                    stored = await rows_in(engine)
                    if checked and (stored != n or inserted != n - len(preload)):
                        raise ExactlyOnceViolated(
                            f"{name} on {scen}: {stored} rows, {inserted} inserted"
                        )
                    extra = {"rows_per_s": round(n / seconds), "rows_stored": stored}
                    results.append(Result(scen, name, n, seconds, [], Counter(), extra))
    finally:
        await engine.dispose()
    return results


def goals(results: list[Result], sizes: list[int]) -> list[dict[str, Any]]:
    n = max(sizes)
    out = []
    zero, half = f"{n:,} rows 0%dup", f"{n:,} rows 50%dup"
    r = ratio(results, (zero, "onconflict insert_ignore"), (zero, "plain INSERT"))
    out.append(
        goal(f"insert_ignore >= 0.9x plain INSERT ({zero})", r, None if r is None else r >= 0.9)
    )
    r = ratio(results, (half, "onconflict insert_ignore"), (zero, "plain COPY (ceiling)"))
    out.append(
        goal(
            f"PostgreSQL COPY path >= 0.5x plain COPY ({half} vs COPY into empty)",
            r,
            None if r is None else r >= 0.5,
        )
    )
    names = {r.contender for r in results}
    raw_counts = "raw driver, counts only" if "raw driver, counts only" in names else "raw driver"
    for scen in (zero, half):
        r = ratio(results, (scen, raw_counts), (scen, "onconflict, counts only"))
        out.append(
            goal(
                f"counts only: onconflict <= 1.10x the {raw_counts}'s time ({scen})",
                r,
                None if r is None else r <= 1.10,
            )
        )
        r = ratio(results, (scen, "raw driver"), (scen, "onconflict insert_ignore"))
        out.append(
            goal(
                f"full results: onconflict <= 1.25x the raw driver's time ({scen})",
                r,
                None if r is None else r <= 1.25,
            )
        )
    return out
