"""One process of the 8-process get_or_create_many race (tests/test_get_or_create_many.py).

python -m tests.many_worker URL START_AT INDEX: waits until START_AT (a time),
then gets or creates its overlapping set of keys and prints one line per input
row: "<key> <primary key> <created>".
"""

from __future__ import annotations

import asyncio
import sys
import time

from sqlalchemy.ext.asyncio import create_async_engine

import onconflict
from tests.schema import storm

KEYS = 24


def keys_of(index: int) -> list[str]:
    """Twelve of the 24 keys, overlapping every other process's, in an order of its own."""
    mine = [f"k{(index * 3 + j) % KEYS:02d}" for j in range(12)]
    return mine[index % 12 :] + mine[: index % 12]


async def main(url: str, start_at: float, index: int) -> None:
    engine = create_async_engine(url, connect_args={"timeout": 60} if "sqlite" in url else {})
    try:
        async with engine.connect():
            pass  # connected before the start, so that the calls overlap
        await asyncio.sleep(max(0.0, start_at - time.time()))
        rows = [{"k": k, "v": f"p{index}"} for k in keys_of(index)]
        result = await onconflict.get_or_create_many(engine, storm, rows)
        for row, created in result:
            print(row["k"], row["id"], created)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3])))
