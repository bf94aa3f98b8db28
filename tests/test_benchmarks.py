"""Smoke runs of every benchmark scenario at a tiny size, so the benchmarks
cannot rot. Their timings are not looked at; their exactly-once checks are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmarks.__main__ import main
from click.testing import CliRunner

from tests.conftest import Backend


@pytest.mark.parametrize("kind", ["race", "bulk"])
@pytest.mark.needs("benchmarks")
def test_smoke(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    monkeypatch.chdir(tmp_path)
    url = backend.url
    if not backend.server:  # a file of its own, beside the benchmark's output
        (tmp_path / "bench").mkdir()
        url = backend.embedded_url.format(dir=tmp_path / "bench")
    sizes = (
        ["--workers", "1,3", "--keys", "4", "--dups", "0,50,99", "--calls", "24", "--settle", "0"]
        if kind == "race"
        else ["--rows", "300", "--dups", "0,50,100"]
    )
    result = CliRunner().invoke(
        main, [kind, "--url", url, *sizes, "--out", "out"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "out" / f"{kind}.json").read_text())
    contenders = {r["contender"] for r in data["results"]}
    assert "onconflict native" in contenders or "onconflict insert_ignore" in contenders
    assert (tmp_path / "out" / f"{kind}.md").read_text().startswith(f"# {kind} benchmark")
    assert list((tmp_path / "out").glob(f"{kind}-*.png"))
    assert data["machine"]["database_url"]


def test_race_without_a_terminal_shows_progress_quick_preset_and_missing_plots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No terminal: a progress line per scenario and contender (stderr); --quick
    gives the goal scenarios (explicit options win); without matplotlib the
    run says that plots were skipped."""
    import sys

    from benchmarks import race as race_mod

    seen: dict[str, object] = {}
    real = race_mod.run

    async def spy(urls, workers, keys, dups, calls, progress, settle):  # type: ignore[no-untyped-def]
        seen.update(workers=workers, keys=keys, dups=dups, calls=calls, settle=settle)
        return await real(urls, workers, keys, dups, 12, progress, settle=settle)

    monkeypatch.setattr(race_mod, "run", spy)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails: not installed
    monkeypatch.chdir(tmp_path)
    url = f"sqlite+aiosqlite:///{tmp_path / 'bench.db'}"
    args = ["race", "--url", url, "--quick", "--workers", "1,3", "--out", "out"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert seen == {"workers": [1, 3], "keys": [10], "dups": [99], "calls": 400, "settle": 0.0}
    lines = [x for x in result.stderr.splitlines() if x.startswith("race [")]
    assert any("insert storm 3w: onconflict native" in x for x in lines)
    assert any("goc 3w 10k 99%dup: onconflict native" in x for x in lines)
    assert "plots skipped: matplotlib is not installed" in result.stderr
    assert not list((tmp_path / "out").glob("race-*.png"))
    report = (tmp_path / "out" / "race.md").read_text()
    assert "p99 3 workers on 1 key <= 1.25x the raw driver's p99" in report
    assert "<= 2x 1 worker" not in report
    assert "a one-row duplicate call <= 2x the raw driver on one connection" in report
    assert "onconflict ops/s >= every peer's" in report


@pytest.mark.needs("benchmarks")
def test_one_row_smoke(backend: Backend, tmp_path: Path) -> None:
    """benchmarks.one_row at a tiny size: every contender, new rows and duplicates."""
    import subprocess
    import sys

    url = backend.url
    if not backend.server:
        url = backend.embedded_url.format(dir=tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.one_row", "--url", url, "--calls", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "onconflict insert_ignore" in done.stdout
    assert "try/except IntegrityError" in done.stdout
