"""One process of the 8-process get_or_create race (tests/test_get_or_create.py).

python -m tests.race_worker URL START_AT INDEX: waits until START_AT (a time),
then asks for the same key and prints "<primary key> <created>".
"""

from __future__ import annotations

import asyncio
import sys
import time

from sqlalchemy.ext.asyncio import create_async_engine

import onconflict
from tests.schema import users


async def main(url: str, start_at: float, index: int) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.connect():
            pass  # connected before the start, so that the calls overlap
        await asyncio.sleep(max(0.0, start_at - time.time()))
        row, created = await onconflict.get_or_create(
            engine, users, {"email": "proc@x"}, {"name": f"p{index}"}
        )
        print(row["id"], created)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3])))
