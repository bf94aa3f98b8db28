"""The ``onconflict`` command line.

``onconflict seed FILE`` writes a YAML, JSON or CSV file of rows into a database
(an embedded SQLite file by default), idempotently. ``onconflict demo`` inserts
the same rows three times and races 32 coroutines on one key, then prints what
was inserted and what already existed.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    import click
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Table
except ImportError as exc:  # pragma: no cover - depends on the install
    raise SystemExit(
        f"the onconflict command needs the 'cli' extra ({exc.name} is missing):"
        " pip install 'onconflict[cli]'"
    ) from exc

import anyio
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import onconflict
from onconflict.dialects import support_named

DEFAULT_URL = "sqlite+aiosqlite:///onconflict-demo.db"


SEED_URL = "sqlite:///onconflict.db"


# query parameters that carry credentials (``?password=...`` is read by the drivers)
SECRET_PARAMETER = re.compile(r"pass|pwd|secret|token|key|auth|credential", re.IGNORECASE)


def masked(url: str) -> str:
    """The URL with every credential hidden (the password, and query parameters
    such as ``password=`` or ``sslpassword=``), for messages."""
    try:
        parsed = make_url(url)
    except Exception:
        return "<unparsable URL>"
    hidden = {k: "***" for k in parsed.query if SECRET_PARAMETER.search(k)}
    shown = parsed.update_query_dict(hidden).render_as_string(hide_password=True)
    return shown.replace("%2A%2A%2A", "***")  # the query is URL-encoded


def _secrets(url: str) -> list[str]:
    try:
        parsed = make_url(url)
    except Exception:
        return []
    found = [str(parsed.password)] if parsed.password else []
    for name, value in parsed.query.items():
        if SECRET_PARAMETER.search(name):
            found.extend([value] if isinstance(value, str) else value)
    return sorted((s for s in found if s), key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """A message with every credential of the URL replaced, wherever it appears."""
    for secret in _secrets(url):
        text = text.replace(secret, "***")
    return text


def unreachable(url: str, exc: BaseException) -> str:
    """One line for a connection that failed: what could not be reached, and what to check."""
    cause = getattr(exc, "orig", None) or exc
    detail = (str(cause).splitlines() or [""])[0] or type(cause).__name__
    return scrub(
        f"cannot connect to {masked(url)} ({type(cause).__name__}: {detail}); check that the"
        " server is running and that the host, port, database and credentials are right;"
        " nothing was written",
        url,
    )


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
    support = support_named(make_url(url).get_backend_name())
    return create_async_engine(url, **support.engine_options(pool))


def _names(rows: Sequence[Any]) -> str:
    return ", ".join(str(r["name"]) for r in rows) or "-"


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--url",
    default=SEED_URL,
    show_default=True,
    envvar="ONCONFLICT_URL",
    help="SQLAlchemy URL, sync or async driver.",
)
@click.option(
    "--mode",
    type=click.Choice(["insert", "upsert", "verify"]),
    default="insert",
    show_default=True,
    help="insert: add missing rows; upsert: also update existing ones;"
    " verify: write nothing, report drift (exit status 2).",
)
@click.option("--dry-run", is_flag=True, help="Report what would change; write nothing.")
@click.option("--on", "on", help="Conflict target columns, comma-separated (default: per table).")
@click.option("--table", help="CSV only: the table the rows go to (default: the file name).")
@click.option(
    "--schema",
    help="Create missing tables first from a SQLAlchemy MetaData: path/to/file.py:NAME"
    " or package.module:NAME.",
)
@click.option("--lock-timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True)
def seed(
    file: Path,
    url: str,
    mode: str,
    dry_run: bool,
    on: str | None,
    table: str | None,
    schema: str | None,
    lock_timeout: float,
) -> None:
    """Seed FILE (YAML, JSON or CSV) into the database, idempotently.

    YAML and JSON files map table names to lists of rows; a CSV file holds one
    table. Tables are reflected from the database. Exit status: 0 done, 1 error
    (nothing written), 2 verify found rows missing or differing.
    """
    from onconflict import seedfile

    console = Console(stderr=False)
    errors = Console(stderr=True)

    def fail(message: str, status: int = 1) -> None:
        errors.print(f"[red]error:[/red] {scrub(message, url)}", highlight=False, soft_wrap=True)
        sys.exit(status)

    try:
        data = seedfile.read(file, table=table)
        metadata = _load_schema(schema) if schema else None
    except (seedfile.SeedFileError, ImportError, AttributeError, OSError) as exc:
        fail(str(exc))
    targets = [c.strip() for c in on.split(",") if c.strip()] if on else None
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        ) as bar:
            tasks: dict[str, Any] = {}

            def progress(name: str, done: int, total: int) -> None:
                if name not in tasks:
                    tasks[name] = bar.add_task(name, total=total)
                bar.update(tasks[name], completed=done)

            report = _run_seed(
                url,
                data,
                metadata,
                mode=mode,
                dry_run=dry_run,
                on=targets,
                lock_timeout=lock_timeout,
                progress=progress,
                source=f"{file}: ",
            )
    except (seedfile.SeedFileError, ValueError, TypeError, onconflict.OnConflictError) as exc:
        fail(str(exc))
    except (OSError, sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        if isinstance(exc, sa.exc.DBAPIError) and not _connecting(exc):
            fail(_failed(exc, url))
        fail(unreachable(url, exc))
    except sa.exc.SQLAlchemyError as exc:
        fail(_failed(exc, url))
    console.print(_summary(report, file, url))
    if mode == "verify" and report.drift:
        sys.exit(2)


def _connecting(exc: sa.exc.DBAPIError) -> bool:
    """Whether a driver error happened while connecting (no statement yet)."""
    return exc.statement is None or isinstance(exc.orig, OSError)


def _failed(exc: sa.exc.SQLAlchemyError, url: str) -> str:
    detail = (str(getattr(exc, "orig", None) or exc).splitlines() or [""])[0]
    return f"{type(exc).__name__} against {masked(url)}: {detail}; nothing was written"


def _load_schema(spec: str) -> sa.MetaData:
    """A MetaData from "path/to/file.py:NAME" or "package.module:NAME"."""
    import importlib
    import importlib.util

    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise ImportError(f"--schema {spec!r}: expected path/to/file.py:NAME or module:NAME")
    if where.endswith(".py"):
        loader = importlib.util.spec_from_file_location("onconflict_schema", where)
        if loader is None or loader.loader is None:
            raise ImportError(f"--schema: cannot load {where!r}")
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    found = getattr(module, name)
    if not isinstance(found, sa.MetaData):
        raise ImportError(f"--schema: {spec!r} is a {type(found).__name__}, not a MetaData")
    return found


def _run_seed(
    url: str,
    data: dict[str, list[dict[str, Any]]],
    metadata: sa.MetaData | None,
    *,
    source: str,
    **kw: Any,
) -> onconflict.SeedReport:
    """Reflect the tables, bring file values to column types, seed. Sync or
    async, as the URL's driver is."""
    import onconflict.sync
    from onconflict import seedfile
    from onconflict._seed import reflect_by_name

    known = dict(metadata.tables) if metadata is not None else {}
    others = [n for n in data if n not in known]  # reflected: they must exist already

    def tables(conn: sa.Connection | None) -> dict[Any, list[dict[str, Any]]]:
        found = dict(known)
        if others:
            assert conn is not None
            found.update(reflect_by_name(conn, others, source).tables)
        return {found[n]: seedfile.coerce(found[n], rows, source) for n, rows in data.items()}

    # the tables of --schema are created by the seed itself, under its lock, so
    # that replicas starting at once on a fresh database do not race on CREATE TABLE
    kw["create"] = metadata

    if make_url(url).get_dialect().is_async:

        async def run() -> onconflict.SeedReport:
            engine = create_async_engine(url)
            try:
                if others:
                    async with engine.connect() as conn:
                        typed = await conn.run_sync(tables)
                else:
                    typed = tables(None)
                return await onconflict.seed(engine, typed, **kw)
            finally:
                await engine.dispose()

        return anyio.run(run)
    engine = sa.create_engine(url)
    try:
        if others:
            with engine.connect() as conn:
                typed = tables(conn)
        else:
            typed = tables(None)
        return onconflict.sync.seed(engine, typed, **kw)
    finally:
        engine.dispose()


def _summary(report: onconflict.SeedReport, file: Path, url: str) -> Table:
    dry = " (dry run: nothing written)" if report.dry_run else ""
    out = Table(title=f"seed {file.name} ({report.mode}){dry}")
    columns = {
        "insert": ["inserted", "existing"],
        "upsert": ["inserted", "updated", "existing"],
        "verify": ["existing", "missing", "differing"],
    }[report.mode]
    if report.dry_run:
        columns = (
            ["missing", "existing"]
            if report.mode == "insert"
            else ["missing", "differing", "existing"]
        )
    out.add_column("table")
    for col in columns:
        out.add_column(col, justify="right")
    for part in report.tables:
        counts = part.counts()
        out.add_row(part.table, *(str(counts[c]) for c in columns))
    out.caption = f"database: {masked(url)}"
    return out


if __name__ == "__main__":  # pragma: no cover
    main()
