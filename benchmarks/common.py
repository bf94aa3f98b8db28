"""What every benchmark shares: runs, statistics, machine facts, output files."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from importlib import metadata as pkg
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url


class ExactlyOnceViolated(AssertionError):
    """A contender that promises exactly-once did not keep it: the run stops."""


@dataclass
class Result:
    """One contender on one scenario."""

    scenario: str
    contender: str
    ops: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    errors: Counter[str] = field(default_factory=Counter)
    extra: dict[str, Any] = field(default_factory=dict)  # dead tuples, WAL, gaps, ...

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    def summary(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "contender": self.contender,
            "ops": self.ops,
            "seconds": round(self.seconds, 4),
            "ops_per_s": round(self.ops_per_s, 1),
            "p50_ms": _round(self.percentile(50)),
            "p95_ms": _round(self.percentile(95)),
            "p99_ms": _round(self.percentile(99)),
            "max_ms": _round(max(self.latencies_ms) if self.latencies_ms else None),
            "errors": dict(self.errors),
            **self.extra,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def machine(url: str) -> dict[str, Any]:
    versions = {}
    for name in (
        "onconflict",
        "SQLAlchemy",
        "asyncpg",
        "aiomysql",
        "aiosqlite",
        "Django",
        "peewee",
    ):
        try:
            versions[name] = pkg.version(name)
        except pkg.PackageNotFoundError:
            versions[name] = None
    return {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "database_url": make_url(url).render_as_string(hide_password=True),
        "packages": versions,
    }


async def server_version(engine: Any) -> str:
    async with engine.connect() as conn:
        return ".".join(map(str, conn.dialect.server_version_info or ())) or "?"


def ratio(results: Iterable[Result], a: tuple[str, str], b: tuple[str, str]) -> float | None:
    """ops/s of (scenario, contender) a over b."""
    found = {(r.scenario, r.contender): r.ops_per_s for r in results}
    if a not in found or b not in found or not found[b]:
        return None
    return found[a] / found[b]


def write(
    out: Path, kind: str, facts: dict[str, Any], results: list[Result], goals: list[dict[str, Any]]
) -> list[Path]:
    """<kind>.json (all figures), <kind>.md (tables), <kind>-*.png (plots)."""
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "machine": facts,
        "results": [r.summary() for r in results],
        "latencies_ms": {
            f"{r.scenario} | {r.contender}": [round(x, 3) for x in r.latencies_ms] for r in results
        },
        "goals": goals,
    }
    paths = [out / f"{kind}.json", out / f"{kind}.md"]
    paths[0].write_text(json.dumps(data, separators=(",", ":"), default=str))
    paths[1].write_text(markdown(kind, facts, results, goals))
    paths += plots(out, kind, results)
    return paths


def markdown(
    kind: str, facts: dict[str, Any], results: list[Result], goals: list[dict[str, Any]]
) -> str:
    lines = [
        f"# {kind} benchmark",
        "",
        f"{facts['when']}, {facts['platform']}, {facts['cpus']} CPUs,",
    ]
    where = facts["database_url"]
    if facts.get("nodes"):
        where = f"a {len(facts['nodes'])}-node cluster: " + ", ".join(facts["nodes"])
    lines.append(f"Python {facts['python']}, database {where} ({facts.get('server', '?')}).")
    lines += [
        "",
        "| scenario | contender | ops/s | p50 ms | p95 ms | p99 ms | max ms | errors | other |",
    ]
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        s = r.summary()
        other = ", ".join(f"{k}={v}" for k, v in r.extra.items())
        errs = ", ".join(f"{k}: {v}" for k, v in r.errors.items()) or "0"
        cells = [r.scenario, r.contender, f"{s['ops_per_s']:,.0f}", s["p50_ms"], s["p95_ms"]]
        cells += [s["p99_ms"], s["max_ms"], errs, other]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    if goals:
        lines += ["", "| goal | measured | verdict |", "|---|---|---|"]
        for g in goals:
            measured = "n/a" if g["measured"] is None else f"{g['measured']:.2f}"
            lines.append(f"| {g['goal']} | {measured} | {g['verdict']} |")
    return "\n".join(lines) + "\n"


def have_matplotlib() -> bool:
    """Whether plots can be drawn (matplotlib comes with the bench extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plots(out: Path, kind: str, results: list[Result]) -> list[Path]:
    """A bar chart per scenario family ("insert ...", "goc ...", "100,000 rows
    ...") and metric; none when matplotlib (the bench extra) is missing."""
    if not have_matplotlib():  # the bench extra is not installed: tables only
        return []
    import matplotlib

    matplotlib.use("Agg")
    families: dict[str, list[str]] = {}
    for scenario in dict.fromkeys(r.scenario for r in results):
        families.setdefault(scenario.split()[0], []).append(scenario)
    paths = []
    for family, scenarios in families.items():
        mine = [r for r in results if r.scenario in scenarios]
        metrics = [("ops_per_s", "operations / s"), ("p99_ms", "p99 latency (ms)")]
        if not any(r.latencies_ms for r in mine):
            metrics = metrics[:1]  # no per-call latencies (bulk): throughput only
        for metric, label in metrics:
            slug = re.sub(r"[^a-z0-9]+", "-", family.lower()).strip("-") or "all"
            path = out / f"{kind}-{slug}-{metric}.png"
            _bar_chart(path, f"{kind} ({family}): {label}", label, scenarios, mine, metric)
            paths.append(path)
    return paths


def _bar_chart(
    path: Path, title: str, label: str, scenarios: list[str], results: list[Result], metric: str
) -> None:
    """One metric of each contender, a group of bars per scenario."""
    import matplotlib.pyplot as plt

    contenders = list(dict.fromkeys(r.contender for r in results))
    found: dict[tuple[str, str], Any] = {}
    for r in results:  # (the first of a repeated pair, as the tables)
        found.setdefault((r.scenario, r.contender), r.summary()[metric])
    fig, ax = plt.subplots(figsize=(min(16, 3 + len(scenarios) * 0.9), 5))
    width = 0.8 / max(1, len(contenders))
    for i, name in enumerate(contenders):
        values = [found.get((scenario, name)) or 0 for scenario in scenarios]
        ax.bar([x + i * width for x in range(len(scenarios))], values, width, label=name)
    ax.set_xticks([x + width * (len(contenders) - 1) / 2 for x in range(len(scenarios))])
    ax.set_xticklabels(scenarios, rotation=35, ha="right", fontsize=7)
    ax.set_ylabel(label)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def goal(text: str, measured: float | None, ok: bool | None, why: str = "") -> dict[str, Any]:
    verdict = "n/a" if ok is None else ("met" if ok else "NOT met")
    if why and ok is not True:
        verdict += f" ({why})"
    return {"goal": text, "measured": measured, "verdict": verdict}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


__all__ = [
    "ExactlyOnceViolated",
    "Result",
    "asdict",
    "goal",
    "have_matplotlib",
    "machine",
    "median",
    "ratio",
    "server_version",
    "write",
]
