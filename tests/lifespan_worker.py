"""One worker of the 8-process FastAPI start-up test (tests/test_seed.py).

python -m tests.lifespan_worker START_AT: runs the example app's lifespan at
START_AT and prints the number of rows its seed inserted.
"""

from __future__ import annotations

import asyncio
import sys
import time

from examples.fastapi_app import app


async def main(start_at: float) -> None:
    await asyncio.sleep(max(0.0, start_at - time.time()))
    async with app.router.lifespan_context(app):
        print(app.state.seed_report.total("inserted"))


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1])))
