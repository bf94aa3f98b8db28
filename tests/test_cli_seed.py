"""The `onconflict seed` command on the embedded SQLite file it defaults to."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from examples.app import roles, users

from onconflict.cli import main

ROOT = Path(__file__).resolve().parent.parent
ROLES = [{"name": "admin", "description": "all"}, {"name": "member", "description": "some"}]


# -- the command line ----------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


SCHEMA = str(ROOT / "examples" / "app.py") + ":metadata"


def run(*args: str) -> Any:
    return CliRunner().invoke(main, ["seed", *args], catch_exceptions=False)


@pytest.mark.usefixtures("workdir")
def test_cli_yaml_twice_on_embedded_sqlite(workdir: Path) -> None:
    example = str(ROOT / "examples" / "seed.yaml")
    first = run(example, "--schema", SCHEMA)
    assert first.exit_code == 0, first.output
    assert "│ users │        2 │        0 │" in first.output
    again = run(example, "--schema", SCHEMA)
    assert "│ users │        0 │        2 │" in again.output
    assert (workdir / "onconflict.db").exists()
    assert run(example, "--mode", "verify").exit_code == 0


def test_cli_json_and_csv_with_types(workdir: Path) -> None:
    (workdir / "seed.json").write_text(json.dumps({"roles": ROLES}))
    assert run("seed.json", "--schema", SCHEMA).exit_code == 0
    (workdir / "people.csv").write_text("id,email,name,role\n7,a@x,A,admin\n8,b@x,B,member\n")
    result = run("people.csv", "--table", "users")
    assert result.exit_code == 0, result.output
    engine = sa.create_engine("sqlite:///onconflict.db")
    with engine.connect() as conn:
        assert conn.execute(sa.select(users.c.id).order_by(users.c.id)).scalars().all() == [7, 8]
    engine.dispose()


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "bad.yaml",
            "roles:\n  - name: a\n    description: [unclosed\n",
            "bad.yaml:4:1: invalid YAML",
        ),
        ("bad.json", '{"roles": [}', "bad.json:1:12: invalid JSON"),
        ("bad.yaml", "- just\n- a list\n", "expected a mapping of table names"),
        ("bad.txt", "x", "unknown format '.txt'"),
        ("seed.yaml", "nope:\n  - a: 1\n", "unknown table(s): 'nope'"),
        ("seed.yaml", "roles:\n  - name: a\n    colour: red\n", "'colour' not a column"),
        ("seed.csv", "id,email,name,role\nx,a@x,A,admin\n", "users[0].id: 'x' is not a valid int"),
    ],
)
def test_cli_errors_exit_1_and_write_nothing(
    workdir: Path, name: str, text: str, message: str
) -> None:
    (workdir / name).write_text(text)
    args = [name, "--schema", SCHEMA] + (["--table", "users"] if name.endswith(".csv") else [])
    result = CliRunner().invoke(main, ["seed", *args])
    assert result.exit_code == 1, result.output
    assert message in " ".join(result.output.split()), result.output
    engine = sa.create_engine("sqlite:///onconflict.db")
    with engine.connect() as conn:
        if sa.inspect(conn).has_table("roles"):
            assert conn.execute(sa.select(sa.func.count()).select_from(roles)).scalar() == 0
    engine.dispose()


def test_cli_verify_drift_exits_2_and_dry_run_writes_nothing(workdir: Path) -> None:
    (workdir / "seed.json").write_text(json.dumps({"roles": ROLES}))
    dry = run("seed.json", "--schema", SCHEMA, "--dry-run")
    assert dry.exit_code == 0
    assert "dry run" in " ".join(dry.output.split())
    verify = run("seed.json", "--mode", "verify")
    assert verify.exit_code == 2
    assert "│ roles │        0 │       2 │" in verify.output


def test_cli_masks_passwords(workdir: Path) -> None:
    url = "postgresql+psycopg://app:s3cr3t@127.0.0.1:1/none"
    (workdir / "seed.json").write_text(json.dumps({"roles": ROLES}))
    result = CliRunner().invoke(main, ["seed", "seed.json", "--url", url])
    assert result.exit_code == 1
    assert "s3cr3t" not in result.output
    assert "app:***@127.0.0.1" in result.output


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://app:s3cr3t@127.0.0.1:1/none?password=hunter2",
        "postgresql+asyncpg://app@no-such-host.invalid/none?password=hunter2",
        "postgresql+psycopg://app@127.0.0.1:1/none?password=hunter2&sslpassword=k3y",
        "mysql+aiomysql://root:s3cr3t@127.0.0.1:1/none?password=hunter2",
    ],
)
def test_cli_connection_failure_is_one_line_with_every_credential_masked(
    workdir: Path, url: str
) -> None:
    (workdir / "seed.json").write_text(json.dumps({"roles": ROLES}))
    result = CliRunner().invoke(main, ["seed", "seed.json", "--url", url, "--schema", SCHEMA])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: cannot connect to ")
    assert "check that the server is running" in lines[0]
    for secret in ("s3cr3t", "hunter2", "k3y"):
        assert secret not in result.output
    assert "password=***" in result.output


def test_cli_summary_masks_query_credentials(workdir: Path) -> None:
    (workdir / "seed.json").write_text(json.dumps({"roles": ROLES}))
    url = f"sqlite:///{workdir / 'q.db'}?password=hunter2"
    result = CliRunner().invoke(main, ["seed", "seed.json", "--url", url, "--schema", SCHEMA])
    assert result.exit_code == 0, result.output
    # the summary wraps the URL to the table's width, at any character: the
    # temporary path (longer under xdist) moves the breaks; read it unwrapped
    unwrapped = "".join(result.output.split())
    assert "hunter2" not in unwrapped
    assert "password=***" in unwrapped
