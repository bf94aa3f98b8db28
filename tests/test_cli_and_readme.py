"""The README's commands and the demo they run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from onconflict.cli import main, masked

ROOT = Path(__file__).resolve().parent.parent
SEED = ".venv/bin/onconflict seed examples/seed.yaml --schema examples/app.py:metadata"
MAIN_COMMAND = f"python3 -m venv .venv && .venv/bin/pip install -e '.[cli]' && {SEED} && {SEED}"
TEST_COMMAND = "python3 -m venv .venv && .venv/bin/pip install tox && .venv/bin/tox"


def test_readme_has_exactly_the_two_setup_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, flags=re.S)
    assert [b.strip() for b in blocks] == [MAIN_COMMAND, TEST_COMMAND]


def test_ci_runs_the_readme_test_command() -> None:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert TEST_COMMAND in [line.strip() for line in lines if not line.lstrip().startswith("#")]


def test_demo_on_embedded_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["demo"])
    assert result.exit_code == 0, result.output
    assert "32 coroutines race on one key" in result.output
    assert "rows in the table: 4 (expected 4)" in result.output
    assert (tmp_path / "onconflict-demo.db").exists()
    again = CliRunner().invoke(main, ["demo", "--workers", "8"])
    assert again.exit_code == 0
    assert "8 coroutines race" in again.output


def test_demo_failure_is_a_clear_message_without_the_password() -> None:
    url = "postgresql+asyncpg://app:s3cret@127.0.0.1:1/none"
    result = CliRunner().invoke(main, ["demo", "--url", url])
    assert result.exit_code == 1
    assert "demo failed against" in result.output
    assert "s3cret" not in result.output


def test_masked() -> None:
    assert masked("mysql+aiomysql://root:pw@h/db") == "mysql+aiomysql://root:***@h/db"
    assert masked("::not a url::") == "<unparsable URL>"
