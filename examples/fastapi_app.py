"""Start-up seeding in a FastAPI app, safe with many workers and replicas.

Every worker of every replica runs the lifespan at start-up. `onconflict.seed`
takes a database lock, so they take turns; each inserts what is missing and
leaves the rest alone, so the admin user exists exactly once and no start-up
fails on a duplicate key.

    ONCONFLICT_URL=postgresql+asyncpg://app@db/app uvicorn examples.fastapi_app:app --workers 8

The tables come from your migrations (here: examples/app.py's metadata).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import create_async_engine

import onconflict
from examples.app import audit, deliveries, roles, users

ADMIN_EMAIL = os.environ.get("ADMIN_EMAIL", "admin@example.org")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    engine = create_async_engine(os.environ.get("ONCONFLICT_URL", "sqlite+aiosqlite:///app.db"))
    app.state.engine = engine
    app.state.seed_report = await onconflict.seed(
        engine,
        {
            roles: [{"name": "admin", "description": "Can do everything"}],
            users: [{"email": ADMIN_EMAIL, "name": "Admin", "role": "admin"}],
        },
    )
    yield
    await engine.dispose()


app = FastAPI(lifespan=lifespan)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


class Delivery(BaseModel):
    event: str


@app.post("/webhooks/{delivery_id}")
async def webhook(delivery_id: str, delivery: Delivery) -> dict[str, bool]:
    """Handle a delivery once, however often (and however concurrently) it arrives:
    the record and its effect commit together."""
    async with app.state.engine.begin() as conn:
        record = {"delivery_id": delivery_id, "event": delivery.event}
        result = await onconflict.insert_ignore(conn, deliveries, [record])
        if result.inserted:
            await conn.execute(audit.insert().values(record))
    return {"handled": bool(result.inserted)}
