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
def test_smoke(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    monkeypatch.chdir(tmp_path)
    url = backend.url
    if backend.name == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'bench.db'}"
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
