"""One process of the process storm (tests/test_reliability.py).

python -m tests.storm_worker URL START_AT COROUTINES KEYS ITERATIONS SEED

Runs COROUTINES coroutines, each ITERATIONS times picking a hot key and one of
insert_ignore, upsert and get_or_create, and prints JSON: the keys this process
created (one entry per creation) and every error.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

import onconflict
from tests.schema import storm


async def main(
    url: str, start_at: float, coroutines: int, keys: int, iterations: int, seed: int
) -> None:
    kw: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kw["connect_args"] = {"timeout": 60}  # writers wait for each other
    else:
        kw.update(pool_size=4, max_overflow=0, pool_timeout=120)
    engine = create_async_engine(url, **kw)
    if url.startswith("sqlite"):

        @sa.event.listens_for(engine.sync_engine, "connect")
        def wal(dbapi_conn: Any, _: Any) -> None:
            dbapi_conn.cursor().execute("PRAGMA journal_mode=WAL")

    rng = random.Random(seed)
    created: list[str] = []
    touched: set[str] = set()
    errors: list[str] = []

    async def worker() -> None:
        for _ in range(iterations):
            key = f"key-{rng.randrange(keys)}"
            touched.add(key)
            op = rng.choice(["insert_ignore", "upsert", "get_or_create"])
            row = {"k": key, "v": f"{op}-{rng.randrange(1000)}"}
            try:
                if op == "insert_ignore":
                    result = await onconflict.insert_ignore(engine, storm, [row])
                    made = result.inserted_count == 1
                elif op == "upsert":
                    made = (await onconflict.upsert(engine, storm, [row])).inserted_count == 1
                else:
                    made = (
                        await onconflict.get_or_create(engine, storm, {"k": key}, {"v": row["v"]})
                    )[1]
            except Exception as exc:  # reported to the test, which fails on any
                errors.append(f"{op}: {type(exc).__name__}: {exc}"[:500])
                continue
            if made:
                created.append(key)

    try:
        async with engine.connect():
            pass
        await asyncio.sleep(max(0.0, start_at - time.time()))
        await asyncio.gather(*(worker() for _ in range(coroutines)))
    finally:
        await engine.dispose()
    print(json.dumps({"created": created, "touched": sorted(touched), "errors": errors}))


if __name__ == "__main__":
    url, start, co, keys, its, seed = sys.argv[1:7]
    asyncio.run(main(url, float(start), int(co), int(keys), int(its), int(seed)))
