"""One way for tests to call the public API through any handle a caller may
pass: {async, sync} x {engine, connection, session}.

The ``handle`` fixture (tests/conftest.py) runs a test once per kind in
``KINDS``; ``@pytest.mark.handles("async-engine", "sync-engine")`` narrows a
test (or a module, through ``pytestmark``) to some of them. A call owns its
work as a caller would: a connection or session is begun for it and
committed after it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

import onconflict
import onconflict.sync

KINDS = (
    "async-engine",
    "async-connection",
    "async-session",
    "sync-engine",
    "sync-connection",
    "sync-session",
)
ENGINES = ("async-engine", "sync-engine")  # the fronts on an engine, async and sync


@dataclass
class Handle:
    """``onconflict.<fn>`` (async kinds) or ``onconflict.sync.<fn>`` (sync kinds,
    run in a worker thread) on an engine, a connection or a session of it."""

    kind: str
    aengine: AsyncEngine
    sengine: Engine

    @property
    def is_async(self) -> bool:
        return self.kind.startswith("async")

    @property
    def on(self) -> str:
        """What the call is given: engine, connection or session."""
        return self.kind.partition("-")[2]

    async def call(self, fn: str, *args: Any, **kw: Any) -> Any:
        return await self.run(fn, args, kw)

    async def run(
        self,
        fn: str,
        args: Sequence[Any],
        kw: dict[str, Any],
        then: Callable[[Any], Any] | None = None,
    ) -> Any:
        """The call; ``then`` (if given) turns its result into what is returned,
        inside the session before it commits (ORM instances expire at commit)."""
        if self.is_async:
            return await self._async(getattr(onconflict, fn), args, kw, then or _same)
        call = getattr(onconflict.sync, fn)
        return await anyio.to_thread.run_sync(lambda: self._sync(call, args, kw, then or _same))

    async def _async(
        self, call: Any, args: Sequence[Any], kw: dict[str, Any], then: Callable[[Any], Any]
    ) -> Any:
        if self.on == "engine":
            return then(await call(self.aengine, *args, **kw))
        if self.on == "connection":
            async with self.aengine.connect() as conn, conn.begin():
                return then(await call(conn, *args, **kw))
        async with AsyncSession(self.aengine) as session:
            got = then(await call(session, *args, **kw))
            await session.commit()
            return got

    def _sync(
        self, call: Any, args: Sequence[Any], kw: dict[str, Any], then: Callable[[Any], Any]
    ) -> Any:
        if self.on == "engine":
            return then(call(self.sengine, *args, **kw))
        if self.on == "connection":
            with self.sengine.connect() as conn, conn.begin():
                return then(call(conn, *args, **kw))
        with Session(self.sengine) as session:
            got = then(call(session, *args, **kw))
            session.commit()
            return got

    async def rows(self, table: sa.Table, by: str) -> dict[Any, dict[str, Any]]:
        """The stored rows by ``by``, keyed by column key."""
        async with self.aengine.connect() as conn:
            found = await conn.execute(sa.select(table))
            rows = [r._mapping for r in found]
            return {r[table.c[by]]: {c.key: r[c] for c in table.c} for r in rows}

    async def add(self, table: sa.Table, *rows: dict[str, Any]) -> None:
        async with self.aengine.begin() as conn:
            await conn.execute(table.insert(), list(rows))


def _same(result: Any) -> Any:
    return result
