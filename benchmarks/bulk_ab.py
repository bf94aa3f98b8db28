"""Before/after of the PostgreSQL COPY path, interleaved in one run.

``python -m benchmarks.bulk_ab --url URL --before DIR [--rows N] [--dups 0,50] [--repeats 2]``

``DIR`` holds another checkout's ``src`` (``git archive <commit> src | tar -x -C DIR``).
Each contender runs in a fresh interpreter (its own ``onconflict``: the
checkout's or this one's), on the bulk benchmark's table reset to the
duplicates and a CHECKPOINT (so that no run pays for the previous one's
writes), one call timed; the contenders alternate within each repeat, in
reverse order every other repeat, so that a load that changes during the run
weighs on all of them alike. Prints
one line per run and the medians: wall time, and the client process's CPU
time (time.process_time: the Python side's work, which a loaded machine
disturbs less than the wall time); exactly-once is checked after every call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
CONTENDERS = {  # name -> (uses the checkout given as --before, what runs)
    "raw driver, counts only": (False, "raw_counts"),
    "onconflict before, counts only": (True, "counts"),
    "onconflict after, counts only": (False, "counts"),
    "raw driver (RETURNING)": (False, "raw"),
    "onconflict before": (True, "full"),
    "onconflict after": (False, "full"),
    "onconflict after, rows read": (False, "read"),
}


async def _child(url: str, n: int, dup: int, what: str) -> dict[str, Any]:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    import onconflict
    from benchmarks import bulk

    engine = create_async_engine(url)
    rows = bulk.make_rows(n)
    preload = rows[: n * dup // 100]
    await bulk.reset(engine, preload)
    async with engine.connect() as conn:  # the previous runs' writes flushed first
        await conn.execute(sa.text("CHECKPOINT"))
    start, cpu = time.perf_counter(), time.process_time()
    if what in ("raw", "raw_counts"):
        inserted = await bulk.raw_for(url, what == "raw_counts")(engine, rows)
    elif what == "counts":
        got = await onconflict.insert_ignore(engine, bulk.table, rows, returning=False)
        inserted = got.inserted_count
    else:
        got = await onconflict.insert_ignore(engine, bulk.table, rows)
        inserted = sum(1 for _ in got.inserted) if what == "read" else got.inserted_count
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    stored = await bulk.rows_in(engine)
    await engine.dispose()
    if stored != n or inserted != n - len(preload):
        raise SystemExit(f"exactly-once broken: {stored} stored, {inserted} inserted")
    return {"seconds": seconds, "cpu": cpu}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--before", type=Path)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dups", default="0,50")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", nargs=3)  # internal: dup what (one timed call)
    args = ap.parse_args()
    if args.child:
        dup, what = int(args.child[1]), args.child[2]
        print(json.dumps(asyncio.run(_child(args.url, args.rows, dup, what))))
        return
    times: dict[tuple[int, str], list[float]] = {}
    cpus: dict[tuple[int, str], list[float]] = {}
    for dup in (int(d) for d in args.dups.split(",")):
        for repeat in range(args.repeats):
            order = list(CONTENDERS.items())
            for name, (before, what) in order if repeat % 2 == 0 else order[::-1]:
                if before and args.before is None:
                    continue
                src = (args.before if before else HERE) / "src"
                env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{HERE}"}
                cmd = [sys.executable, "-m", "benchmarks.bulk_ab", "--url", args.url]
                cmd += ["--rows", str(args.rows), "--child", "x", str(dup), what]
                out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
                got = json.loads(out.stdout.splitlines()[-1])
                times.setdefault((dup, name), []).append(got["seconds"])
                cpus.setdefault((dup, name), []).append(got["cpu"])
                load = os.getloadavg()[0]
                print(
                    f"{dup:>3}% {name:34s} {got['seconds']:7.3f} s, client CPU"
                    f" {got['cpu']:6.3f} s  (load {load:.2f})",
                    flush=True,
                )
    print("\nmedians: wall s (ratio to the raw driver's same statements), client CPU s")
    for (dup, name), got in times.items():
        raw = "raw driver, counts only" if "counts" in name else "raw driver (RETURNING)"
        med = statistics.median(got)
        ref = statistics.median(times[(dup, raw)])
        cpu = statistics.median(cpus[(dup, name)])
        print(f"{dup:>3}% {name:34s} {med:7.3f} ({med / ref:4.2f}x)  {cpu:6.3f}")


if __name__ == "__main__":
    main()
