"""python -m benchmarks race|bulk|contention [--url URL] [...] [--out DIR]

Writes <kind>.json (every figure, versions, machine facts), <kind>.md (tables
and goals) and <kind>-*.png (plots, with the bench extra) to --out, and prints
the tables. Exactly-once is checked on every run; a violation stops the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import click
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from sqlalchemy.engine import make_url

from benchmarks import bulk as bulk_mod
from benchmarks import contention as contention_mod
from benchmarks import race as race_mod
from benchmarks.common import goal, machine, ratio, server_version, write

DEFAULT_URL = "sqlite+aiosqlite:///bench.db"


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
def race(
    urls: tuple[str, ...], workers: str, keys: str, dups: str, calls: int, settle: float, out: Path
) -> None:
    """Many callers on the same keys: insert and get_or_create."""
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
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()
        ) as bar:
            task = bar.add_task(kind)
            return list(await job(lambda text: bar.update(task, description=f"{kind}: {text}")))

    return anyio.run(go), facts


def race_goals(results: list[Any], workers: list[int], keys: list[int]) -> list[dict[str, Any]]:
    goals = []
    n = 32 if 32 in workers else max(workers)
    k = keys[0]
    scen = f"insert {n}w {k}k 99%dup"
    r = ratio(results, (scen, "onconflict native"), (scen, "onconflict classify"))
    goals.append(goal(f"native >= 2x classify ({scen})", r, None if r is None else r >= 2))
    storm = {x.scenario: x for x in results if x.contender == "onconflict native"}
    one, many = storm.get("insert storm 1w"), storm.get(f"insert storm {n}w")
    if one and many and one.percentile(99) and many.percentile(99):
        p = many.percentile(99) / one.percentile(99)
        goals.append(goal(f"p99 {n} workers on 1 key <= 2x 1 worker", p, p <= 2))
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
    return goals


def _report(
    kind: str, out: Path, facts: dict[str, Any], results: list[Any], goals: list[dict[str, Any]]
) -> None:
    paths = write(out, kind, facts, results, goals)
    click.echo((out / f"{kind}.md").read_text())
    click.echo("written: " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
