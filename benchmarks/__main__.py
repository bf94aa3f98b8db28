"""python -m benchmarks race|bulk|contention [--url URL] [...] [--out DIR]

Writes <kind>.json (every figure, versions, machine facts), <kind>.md (tables
and goals) and <kind>-*.png (plots, with the bench extra) to --out, and prints
the tables. Exactly-once is checked on every run; a violation stops the run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import anyio
import click
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from sqlalchemy.engine import make_url

from benchmarks import bulk as bulk_mod
from benchmarks import contention as contention_mod
from benchmarks import race as race_mod
from benchmarks.common import goal, have_matplotlib, machine, ratio, server_version, write

DEFAULT_URL = "sqlite+aiosqlite:///bench.db"
# --quick: the goal scenarios only, about a minute on SQLite (2 cores)
QUICK = {"workers": "1,32", "keys": "10", "dups": "99", "calls": 400, "settle": 0.0}
PEER_NAMES = ("Django", "Peewee", "Tortoise")


def numbers(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


@click.group()
def main() -> None:
    """Benchmarks of onconflict beside the alternatives, measured side by side."""


@main.command()
@click.option(
    "--url",
    "urls",
    multiple=True,
    default=[DEFAULT_URL],
    show_default=True,
    envvar="ONCONFLICT_BENCH_URL",
    help="the database; repeat it for the nodes of a multi-master cluster (Galera):"
    " worker n then calls node n mod N",
)
@click.option("--workers", default="1,8,32,128", show_default=True)
@click.option("--keys", default="10,1000", show_default=True)
@click.option("--dups", default="0,50,99", show_default=True, help="duplicate percentages")
@click.option("--calls", default=2000, show_default=True, type=click.IntRange(1))
@click.option(
    "--settle",
    default=1.1,
    show_default=True,
    type=click.FloatRange(0),
    help="seconds to wait for PostgreSQL's statistics (dead tuples) after each run; 0 skips",
)
@click.option("--out", default="bench-results", show_default=True, type=click.Path(path_type=Path))
@click.option(
    "--quick",
    is_flag=True,
    help="the goal scenarios only, in about a minute: --workers 1,32 --keys 10 --dups 99"
    " --calls 400 --settle 0 (options given explicitly win)",
)
@click.pass_context
def race(
    ctx: click.Context,
    urls: tuple[str, ...],
    workers: str,
    keys: str,
    dups: str,
    calls: int,
    settle: float,
    out: Path,
    quick: bool,
) -> None:
    """Many callers on the same keys: insert and get_or_create."""
    if quick:
        given = {
            name
            for name in QUICK
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
        }
        preset = {k: v for k, v in QUICK.items() if k not in given}
        workers = str(preset.get("workers", workers))
        keys = str(preset.get("keys", keys))
        dups = str(preset.get("dups", dups))
        calls = int(preset.get("calls", calls))
        settle = float(preset.get("settle", settle))
    results, facts = _with_progress(
        "race",
        urls[0],
        lambda p: race_mod.run(
            list(urls), numbers(workers), numbers(keys), numbers(dups), calls, p, settle=settle
        ),
    )
    if len(urls) > 1:
        facts["nodes"] = [make_url(u).render_as_string(hide_password=True) for u in urls]
    w, k = numbers(workers), numbers(keys)
    goals = race_goals(results, w, k)
    _report("race", out, facts, results, goals)


@main.command()
@click.option("--url", default=DEFAULT_URL, show_default=True, envvar="ONCONFLICT_BENCH_URL")
@click.option("--rows", default="100000", show_default=True, help="row counts, comma-separated")
@click.option("--dups", default="0,50,100", show_default=True, help="duplicate percentages")
@click.option("--out", default="bench-results", show_default=True, type=click.Path(path_type=Path))
def bulk(url: str, rows: str, dups: str, out: Path) -> None:
    """Idempotent bulk loads beside plain INSERT and COPY."""
    results, facts = _with_progress(
        "bulk", url, lambda p: bulk_mod.run(url, numbers(rows), numbers(dups), p)
    )
    _report("bulk", out, facts, results, bulk_mod.goals(results, numbers(rows)))


@main.command()
@click.option(
    "--url",
    "urls",
    multiple=True,
    default=[DEFAULT_URL],
    show_default=True,
    envvar="ONCONFLICT_BENCH_URL",
    help="the database; repeat it for the nodes of a cluster (caller n calls node n mod N)",
)
@click.option("--calls", "names", default=",".join(contention_mod.CALLS), show_default=True)
@click.option("--owners", default=",".join(contention_mod.OWNERS), show_default=True)
@click.option("--callers", default="8,32,128", show_default=True)
@click.option("--keys", default="1,20,1000", show_default=True, help="hot keys")
@click.option("--batch", default="1,5,50", show_default=True, help="rows a call")
@click.option("--each", default=3, show_default=True, type=click.IntRange(1), help="calls a caller")
@click.option("--out", default="bench-results", show_default=True, type=click.Path(path_type=Path))
def contention(
    urls: tuple[str, ...],
    names: str,
    owners: str,
    callers: str,
    keys: str,
    batch: str,
    each: int,
    out: Path,
) -> None:
    """Every call x engine- and caller-owned transactions x callers x hot keys x
    batch size: retries spent, errors surfaced, p99; exactly-once checked."""
    import json

    grid = contention_mod.cells(
        names.split(","), owners.split(","), numbers(callers), numbers(keys), numbers(batch)
    )
    facts = machine(urls[0])
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()) as bar:
        task = bar.add_task("contention")
        results = anyio.run(
            contention_mod.sweep,
            list(urls),
            grid,
            each,
            lambda text: bar.update(task, description=f"contention: {text}"),
        )
    totals = contention_mod.totals(results)
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "machine": facts,
        "nodes": [make_url(u).render_as_string(hide_password=True) for u in urls],
        "totals": totals,
        "results": [r.summary() for r in results],
    }
    (out / "contention.json").write_text(json.dumps(data, indent=2, default=str))
    lines = [
        "# contention benchmark",
        "",
        "| owner | calls | retries | restarts | errors transient | errors other | worst p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for owner, t in totals.items():
        lines.append(
            f"| {owner} | {t['calls']} | {t['retries']} | {t['restarts']} | {t['transient']}"
            f" | {t['other']} | {t['p99_ms']} |"
        )
    text = "\n".join([*lines, "", contention_mod.table(results), ""])
    (out / "contention.md").write_text(text)
    click.echo(text)
    broken = [r.cell.name for r in results if not r.exactly_once()]
    owned = [r.cell.name for r in results if r.cell.owner != "caller" and r.surfaced]
    other = [r.cell.name for r in results if r.other]
    if broken or owned or other:
        raise click.ClickException(
            f"exactly-once broken: {broken}; errors surfaced by owned calls: {owned};"
            f" non-transient errors: {other}"
        )


def _with_progress(kind: str, url: str, job: Any) -> tuple[list[Any], dict[str, Any]]:
    facts = machine(url)

    async def go() -> list[Any]:
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(url)
        facts["server"] = await server_version(engine)
        await engine.dispose()
        if not sys.stderr.isatty():  # a log, a pipe, CI: a line per scenario and contender
            return list(await job(progress_lines(kind)))
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()
        ) as bar:
            task = bar.add_task(kind)
            return list(await job(lambda text: bar.update(task, description=f"{kind}: {text}")))

    return anyio.run(go), facts


def progress_lines(kind: str) -> Any:
    """Progress without a terminal: one line (to stderr) as each run starts."""
    start = time.monotonic()
    runs = [0]

    def line(text: str) -> None:
        runs[0] += 1
        elapsed = time.monotonic() - start
        click.echo(f"{kind} [{runs[0]}] {elapsed:6.1f}s {text}", err=True)

    return line


def race_goals(results: list[Any], workers: list[int], keys: list[int]) -> list[dict[str, Any]]:
    goals = []
    n = 32 if 32 in workers else max(workers)
    k = keys[0]
    scen = f"insert {n}w {k}k 99%dup"
    r = ratio(results, (scen, "onconflict native"), (scen, "onconflict classify"))
    goals.append(goal(f"native >= 2x classify ({scen})", r, None if r is None else r >= 2))
    goals += storm_goal(results, n)
    goals += loop_goal(results)
    quiet = [x for x in results if x.contender == "onconflict native" and "0%dup" in x.scenario]
    dead = [x.extra.get("dead_tuples") for x in quiet if x.extra.get("dead_tuples") is not None]
    if dead:
        goals.append(
            goal(
                "0 dead tuples without true races (native, 0% duplicates)",
                float(max(dead)),
                max(dead) == 0,
            )
        )
    for prefix in ("insert", "goc"):
        scen = f"{prefix} {n}w {k}k 50%dup"
        r = ratio(results, (scen, "raw driver"), (scen, "onconflict native"))
        goals.append(
            goal(f"raw driver / onconflict <= 1.25x ({scen})", r, None if r is None else r <= 1.25)
        )
    return goals + transaction_goals(results, n, k) + peer_goals(results)


MINE_IN_TX = "onconflict in caller's transaction"
CLASSIC_IN_TX = "try/except IntegrityError in caller's transaction"


def transaction_goals(results: list[Any], n: int, k: int) -> list[dict[str, Any]]:
    """Inside the caller's own transaction: a one-row insert_ignore no slower
    than the try-INSERT/except-IntegrityError it replaces for new rows (0%
    duplicates), and faster for duplicates (99%)."""
    out = []
    for dup, want, text in ((0, 1.0, "no slower than"), (99, 1.0, "faster than")):
        scen = f"insert {n}w {k}k {dup}%dup"
        r = ratio(results, (scen, MINE_IN_TX), (scen, CLASSIC_IN_TX))
        ok = None if r is None else (r >= want if dup == 0 else r > want)
        out.append(goal(f"in the caller's transaction, {text} try/except ({scen})", r, ok))
    return out


def _p99(results: list[Any], scenario: str, contender: str) -> float | None:
    for x in results:
        if x.scenario == scenario and x.contender == contender:
            return x.percentile(99)  # type: ignore[no-any-return]
    return None


def storm_goal(results: list[Any], n: int) -> list[dict[str, Any]]:
    """p99 of n workers on one key against the raw driver's in the same run
    (n callers sharing the cores with the server: the raw driver's own p99 is
    the floor, not one worker's)."""
    scen = f"insert storm {n}w"
    mine, raw = _p99(results, scen, "onconflict native"), _p99(results, scen, "raw driver")
    if not mine or not raw:
        return []
    p = mine / raw
    return [goal(f"p99 {n} workers on 1 key <= 1.25x the raw driver's p99 ({scen})", p, p <= 1.25)]


def loop_goal(results: list[Any]) -> list[dict[str, Any]]:
    """One caller in a loop, a duplicate each time, against the raw driver on
    one connection: the per-call cost of the library."""
    scen = "insert 1w 1k 100%dup"
    r = ratio(results, (scen, "raw driver"), (scen, "onconflict native"))
    if r is None:
        return []
    return [
        goal(f"a one-row duplicate call <= 2x the raw driver on one connection ({scen})", r, r <= 2)
    ]


def peer_goals(results: list[Any]) -> list[dict[str, Any]]:
    """onconflict ahead of every peer (Django, Peewee, Tortoise) in every insert
    and get_or_create scenario both ran: the worst ops/s ratio (onconflict /
    peer, >= 1) and the worst p99 ratio (onconflict / peer, <= 1), and where."""
    mine = {x.scenario: x for x in results if x.contender == "onconflict native"}
    ops: list[tuple[float, str]] = []
    p99: list[tuple[float, str]] = []
    for x in results:
        own = mine.get(x.scenario)
        if own is None or not x.contender.startswith(PEER_NAMES) or not x.ops_per_s:
            continue
        where = f"{x.scenario}, {x.contender}"
        ops.append((own.ops_per_s / x.ops_per_s, where))
        if own.percentile(99) and x.percentile(99):
            p99.append((own.percentile(99) / x.percentile(99), where))
    out = []
    if ops:
        worst, where = min(ops)
        out.append(
            goal("onconflict ops/s >= every peer's, every scenario", worst, worst >= 1, where)
        )
    if p99:
        worst, where = max(p99)
        out.append(goal("onconflict p99 <= every peer's, every scenario", worst, worst <= 1, where))
    return out


def _report(
    kind: str, out: Path, facts: dict[str, Any], results: list[Any], goals: list[dict[str, Any]]
) -> None:
    paths = write(out, kind, facts, results, goals)
    if not have_matplotlib():
        click.echo(
            "plots skipped: matplotlib is not installed (pip install 'onconflict[bench]')",
            err=True,
        )
    click.echo((out / f"{kind}.md").read_text())
    click.echo("written: " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
