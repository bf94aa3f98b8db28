"""The ``onconflict`` command line.

``onconflict demo`` inserts the same rows three times and races 32 coroutines
on one key against an embedded SQLite file (or any async URL), then prints what
was inserted and what already existed.
"""

from __future__ import annotations

import sys
from typing import Any

try:
    import click
    from rich.console import Console
    from rich.table import Table
except ImportError as exc:  # pragma: no cover - depends on the install
    raise SystemExit(
        f"the onconflict command needs the 'cli' extra ({exc.name} is missing):"
        " pip install 'onconflict[cli,sqlite]'"
    ) from exc

import anyio
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import onconflict

DEFAULT_URL = "sqlite+aiosqlite:///onconflict-demo.db"


def masked(url: str) -> str:
    """The URL with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable URL>"


@click.group()
@click.version_option(onconflict.__version__, prog_name="onconflict")
def main() -> None:
    """Idempotent inserts for SQLAlchemy: duplicates skipped, nothing else."""


@main.command()
@click.option(
    "--url",
    default=DEFAULT_URL,
    show_default=True,
    envvar="ONCONFLICT_URL",
    help="Async SQLAlchemy URL (sqlite+aiosqlite, postgresql+asyncpg, mysql+aiomysql).",
)
@click.option("--workers", default=32, show_default=True, type=click.IntRange(1, 1000))
def demo(url: str, workers: int) -> None:
    """Insert the same rows three times, then race WORKERS coroutines on one key."""
    console = Console()
    try:
        table = anyio.run(_demo, url, workers)
    except (sa.exc.SQLAlchemyError, OSError, ImportError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        console.print(f"[red]demo failed against {masked(url)}:[/red] {detail}")
        sys.exit(1)
    console.print(table)
    console.print(f"database: {masked(url)}")


DEMO_ROWS = [
    {"email": "ada@example.org", "name": "Ada"},
    {"email": "grace@example.org", "name": "Grace"},
    {"email": "alan@example.org", "name": "Alan"},
]


async def _demo(url: str, workers: int) -> Table:
    metadata = sa.MetaData()
    users = sa.Table(
        "onconflict_demo_users",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.String(100), nullable=False, unique=True),
        sa.Column("name", sa.String(100), nullable=False),
    )
    engine = _engine(url, pool=workers)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)
            await conn.run_sync(metadata.create_all)
        out = Table(title="onconflict demo: insert_ignore")
        for col in ("step", "inserted", "already existed"):
            out.add_column(col)
        for run in (1, 2, 3):
            result = await onconflict.insert_ignore(engine, users, DEMO_ROWS)
            out.add_row(
                f"insert the same {len(DEMO_ROWS)} rows (run {run})",
                _names(result.inserted),
                _names(result.existing),
            )
        outcomes: list[onconflict.InsertResult] = []

        async def racer(i: int) -> None:
            row = {"email": "race@example.org", "name": f"worker {i}"}
            outcomes.append(await onconflict.insert_ignore(engine, users, [row]))

        async with anyio.create_task_group() as tg:
            for i in range(workers):
                tg.start_soon(racer, i)
        winners = [r.inserted[0] for r in outcomes if r.inserted]
        out.add_row(
            f"{workers} coroutines race on one key",
            f"{len(winners)} ({_names(winners)})",
            str(sum(r.existing_count for r in outcomes)),
        )
        async with engine.connect() as conn:
            count = (await conn.execute(sa.select(sa.func.count()).select_from(users))).scalar()
        out.caption = f"rows in the table: {count} (expected {len(DEMO_ROWS) + 1})"
        return out
    finally:
        await engine.dispose()


def _engine(url: str, pool: int) -> AsyncEngine:
    kwargs: dict[str, Any] = {}
    if make_url(url).get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs.update(pool_size=min(pool, 20), max_overflow=pool)
    return create_async_engine(url, **kwargs)


def _names(rows: list[Any]) -> str:
    return ", ".join(str(r["name"]) for r in rows) or "-"


if __name__ == "__main__":  # pragma: no cover
    main()
