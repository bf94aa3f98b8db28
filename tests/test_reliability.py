"""Reliability: process storms, killed connections, isolation levels, hostile input."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.dialects.mysql import LONGTEXT
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import onconflict
from onconflict.cli import main
from tests.conftest import Backend
from tests.schema import pairs, storm

pytestmark = pytest.mark.usefixtures("tables")
ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"}


async def count(engine: AsyncEngine, table: sa.Table) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())


# -- a storm of processes ------------------------------------------------------------


def run_storm(url: str, processes: int = 16, coroutines: int = 64) -> list[dict[str, Any]]:
    start = time.time() + 6  # every process connected and waiting by then
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.storm_worker",
                url,
                str(start),
                str(coroutines),
                "20",
                "4",
                str(i),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for i in range(processes)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0] * processes, [e[-1500:] for _, e in outputs]
    return [json.loads(out) for out, _ in outputs]


@pytest.mark.crowd  # dozens of connections at once
@pytest.mark.slow
@pytest.mark.needs("writer_processes")
async def test_process_storm(aengine: AsyncEngine, backend: Backend) -> None:
    """16 processes x 64 coroutines mixing insert_ignore, upsert and get_or_create
    on 20 hot keys: every key once, one creator per key, no error."""
    reports = await asyncio.to_thread(run_storm, backend.url)
    errors = [e for r in reports for e in r["errors"]]
    assert errors == []
    touched = set().union(*(r["touched"] for r in reports))
    creators = Counter(k for r in reports for k in r["created"])
    assert creators == Counter(dict.fromkeys(touched, 1))
    assert await count(aengine, storm) == len(touched)


# -- a connection killed in the middle of a large batch -------------------------------


@pytest.mark.needs("killer")  # SQLite: no server connection; see test_sqlite_writer_killed
async def test_connection_killed_mid_batch(aengine: AsyncEngine, backend: Backend) -> None:
    """The call fails with a clear error, nothing of it is committed, and the same
    call run again converges to the full table."""
    assert backend.killer is not None  # the connection of another session that has written
    find, kill = backend.killer.find, backend.killer.kill
    rows = [{"a": i, "b": 0, "v": "x"} for i in range(150_000)]
    call = asyncio.ensure_future(onconflict.insert_ignore(aengine, pairs, rows))
    killer = create_async_engine(backend.url)
    killed = False
    try:
        async with killer.connect() as conn:
            for _ in range(1000):
                victim = (await conn.execute(sa.text(find))).scalar()
                if victim is not None:
                    await conn.execute(sa.text(kill), {"victim": victim})
                    killed = True
                    break
                if call.done():
                    break
                await asyncio.sleep(0.005)
    finally:
        await killer.dispose()
    assert killed, "the batch finished before it could be interrupted"
    with pytest.raises(sa.exc.DBAPIError) as info:
        await call
    assert not onconflict.is_unique_violation(info.value)
    assert await count(aengine, pairs) == 0  # nothing partial
    again = await onconflict.insert_ignore(aengine, pairs, rows)
    assert again.inserted_count == len(rows)
    assert await count(aengine, pairs) == len(rows)


def test_sqlite_writer_killed(tmp_path: Path) -> None:
    """A process killed inside its transaction: the next opener rolls the hot
    journal back, and the same seed run again converges."""
    db = tmp_path / "killed.db"
    url = f"sqlite:///{db}"
    script = (
        "import sys, sqlalchemy as sa, onconflict.sync\n"
        "from tests.schema import metadata, pairs\n"
        "e = sa.create_engine(sys.argv[1])\n"
        "metadata.create_all(e)\n"
        "print('ready', flush=True)\n"
        "onconflict.sync.insert_ignore(e, pairs, [{'a': i, 'b': 0} for i in range(2_000_000)])\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, url], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    journal = Path(f"{db}-journal")
    deadline = time.monotonic() + 60
    while not journal.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # well inside the transaction
    assert proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(pairs)).scalar() == 0
    import onconflict.sync

    rows = [{"a": i, "b": 0} for i in range(10_000)]
    assert onconflict.sync.insert_ignore(engine, pairs, rows).inserted_count == 10_000
    engine.dispose()


# -- isolation levels ---------------------------------------------------------------


@pytest.mark.crowd  # dozens of connections at once
@pytest.mark.parametrize("level", ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"])
async def test_isolation_levels_with_retrying(
    aengine: AsyncEngine, backend: Backend, level: str, caplog: pytest.LogCaptureFixture
) -> None:
    """16 coroutines, each running transactions of its own at this level: take a
    snapshot, yield to the others, then one insert_ignore, upsert or
    get_or_create on a shared key. Under retrying() all succeed and every key
    exists once; the log counts the transient errors that were retried."""
    if level not in backend.isolation_levels:
        pytest.skip(f"{backend.name} has no {level} of its own")
    caplog.set_level("INFO", logger="onconflict")
    engine = aengine.execution_options(isolation_level=level)
    created: list[str] = []

    def unit(i: int, j: int) -> Any:
        key = f"k{(i + j) % 8}"

        async def run(conn: Any) -> list[str]:
            await conn.execute(sa.select(storm.c.id).limit(1))  # the snapshot, taken early
            await asyncio.sleep(0.001)  # let the others write meanwhile
            if j % 3 == 0:
                r = await onconflict.insert_ignore(conn, storm, [{"k": key, "v": "i"}])
                return [key] * r.inserted_count
            if j % 3 == 1:
                u = await onconflict.upsert(conn, storm, [{"k": key, "v": f"u{i}"}])
                return [key] * u.inserted_count
            _, was_created = await onconflict.get_or_create(conn, storm, {"k": key}, {"v": "g"})
            return [key] * was_created

        return run

    async def worker(i: int) -> None:
        for j in range(6):
            retry = onconflict.Retry(attempts=20, max_delay=0.2)
            created.extend(await onconflict.retrying(engine, unit(i, j), retry=retry))

    await asyncio.gather(*(worker(i) for i in range(16)))
    assert Counter(created) == Counter({f"k{n}": 1 for n in range(8)})
    assert await count(aengine, storm) == 8
    retried = sum("transient error, retrying" in r.getMessage() for r in caplog.records)
    print(f"{backend.name} {level}: {retried} transient errors retried")


# -- hostile names and values ----------------------------------------------------------

HOSTILE_TABLE = "oc_we\"ird'; --tbl ünï"
HOSTILE_KEY = "k'ey; drop table x --"
HOSTILE_COL = 'va"l ünï'
HOSTILE_VALUES = [
    "'; DROP TABLE oc_storm; --",
    '"double" `back` \\slash',
    "unicode ✓ — ünï 🐍",
    "x" * 100_000,
]


@pytest.fixture
async def hostile(aengine: AsyncEngine) -> Any:
    md = sa.MetaData()
    table = sa.Table(
        HOSTILE_TABLE,
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(HOSTILE_KEY, sa.String(100), nullable=False, unique=True),
        # LONGTEXT on MariaDB: its TEXT stops at 64 KiB (and says so: error 1406)
        sa.Column(HOSTILE_COL, sa.Text().with_variant(LONGTEXT(), "mysql"), nullable=True),
    )
    async with aengine.begin() as conn:
        await conn.run_sync(md.drop_all)
        await conn.run_sync(md.create_all)
    yield table
    async with aengine.begin() as conn:
        await conn.run_sync(md.drop_all)


async def test_hostile_names_and_values(
    aengine: AsyncEngine, backend: Backend, hostile: sa.Table
) -> None:
    rows = [{HOSTILE_KEY: f"key {v[:20]}", HOSTILE_COL: v} for v in HOSTILE_VALUES]
    first = await onconflict.insert_ignore(aengine, hostile, rows)
    assert first.inserted_count == len(rows)
    assert (await onconflict.insert_ignore(aengine, hostile, rows)).existing_count == len(rows)
    changed = [{**r, HOSTILE_COL: r[HOSTILE_COL] + " ✓"} for r in rows]
    assert (await onconflict.upsert(aengine, hostile, changed)).updated_count == len(rows)
    row, created = await onconflict.get_or_create(
        aengine, hostile, {HOSTILE_KEY: rows[0][HOSTILE_KEY]}
    )
    assert not created
    assert row[HOSTILE_COL] == changed[0][HOSTILE_COL]
    async with aengine.connect() as conn:
        found = await conn.execute(sa.select(hostile.c[HOSTILE_KEY], hostile.c[HOSTILE_COL]))
        stored = dict(found.all())
    assert stored == {r[HOSTILE_KEY]: r[HOSTILE_COL] for r in changed}  # exactly as given
    assert await count(aengine, storm) == 0  # the "DROP TABLE" in a value was only a value


async def test_nul_bytes(aengine: AsyncEngine, backend: Backend, hostile: sa.Table) -> None:
    row = {HOSTILE_KEY: "nul", HOSTILE_COL: "before\x00after"}
    if not backend.text_holds_nul:  # PostgreSQL: its own error, nothing stored
        with pytest.raises(sa.exc.DBAPIError):
            await onconflict.insert_ignore(aengine, hostile, [row])
        assert await count(aengine, hostile) == 0
        return
    await onconflict.insert_ignore(aengine, hostile, [row])
    async with aengine.connect() as conn:
        assert (await conn.execute(sa.select(hostile.c[HOSTILE_COL]))).scalar() == "before\x00after"


@pytest.mark.parametrize(
    ("kw", "rows", "message"),
    [
        ({"on": "k; DROP TABLE oc_storm"}, [{"k": "a"}], "neither a column nor a constraint"),
        ({}, [{"k; --": "a"}], "'k; --' not a column"),
        ({}, [{"": "a"}], "'' not a column"),
        ({}, [{1: "a"}], "1 not a column"),
    ],
)
async def test_invalid_identifiers_are_refused(
    aengine: AsyncEngine, kw: dict[str, Any], rows: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await onconflict.insert_ignore(aengine, storm, rows, **kw)


async def test_hostile_seed_file(backend: Backend, hostile: sa.Table, tmp_path: Path) -> None:
    data = {HOSTILE_TABLE: [{HOSTILE_KEY: "a", HOSTILE_COL: "'; DROP TABLE x; --"}]}
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps(data))
    url = backend.sync_url
    result = CliRunner().invoke(main, ["seed", str(path), "--url", url])
    assert result.exit_code == 0, result.output
    again = CliRunner().invoke(main, ["seed", str(path), "--url", url, "--mode", "verify"])
    assert again.exit_code == 0, again.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({'nope"; DROP TABLE oc_storm; --': [{"a": 1}]}))
    refused = CliRunner().invoke(main, ["seed", str(bad), "--url", url])
    assert refused.exit_code == 1
    assert "unknown table" in refused.output


@pytest.mark.needs("server")  # no password
async def test_passwords_never_in_the_libraries_errors(backend: Backend) -> None:
    url = sa.engine.make_url(backend.url).set(password="s3cr3t-pw", port=1)
    engine = create_async_engine(url)
    try:
        with pytest.raises((sa.exc.DBAPIError, OSError)) as info:
            await onconflict.seed(engine, {storm: [{"k": "a"}]}, retry=None)
        text = "".join(map(str, [info.value, info.value.__cause__, info.value.__context__]))
        assert "s3cr3t-pw" not in text
    finally:
        await engine.dispose()


# -- the reply of an autocommitted statement lost on the wire --------------------


class CuttingProxy:
    """A TCP proxy in front of the server that, once armed, lets ``after`` more
    client messages through, then forwards the next one, waits for the server
    to act on it, and closes both sides without passing the reply on: a network
    failure after the server did the work."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.armed = False
        self.after = 0
        self.cut = asyncio.Event()

    def arm(self, after: int = 0) -> None:
        self.armed, self.after = True, after

    async def __aenter__(self) -> CuttingProxy:
        self.server = await asyncio.start_server(self._pipe, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: Any) -> None:
        self.server.close()

    async def _pipe(self, client_r: Any, client_w: Any) -> None:
        server_r, server_w = await asyncio.open_connection(*self.target)
        dropping = False

        async def upstream() -> None:
            nonlocal dropping
            while data := await client_r.read(65536):
                if self.armed and self.after:
                    self.after -= 1
                elif self.armed:  # this message goes through, its reply does not
                    self.armed, dropping = False, True
                    server_w.write(data)
                    await server_w.drain()
                    await asyncio.sleep(0.5)  # the server executes and commits
                    client_w.close()
                    server_w.close()
                    self.cut.set()
                    return
                server_w.write(data)
                await server_w.drain()
            server_w.close()  # the client hung up: so does the server's side

        async def downstream() -> None:
            while data := await server_r.read(65536):
                if dropping:
                    return
                client_w.write(data)
                await client_w.drain()
            client_w.close()  # the server hung up: so does the client's side

        with contextlib.suppress(Exception):
            await asyncio.gather(upstream(), downstream())
        for writer in (client_w, server_w):  # either side done: both are
            writer.close()


@contextlib.asynccontextmanager
async def proxied(backend: Backend) -> AsyncIterator[tuple[CuttingProxy, AsyncEngine]]:
    """An engine of one pooled connection through a CuttingProxy, after two
    calls: connected (the dialect knows RETURNING), statements prepared."""
    url = sa.engine.make_url(backend.url)
    async with CuttingProxy(url.host or "127.0.0.1", url.port or 0) as proxy:
        engine = create_async_engine(
            url.set(host="127.0.0.1", port=proxy.port), pool_size=1, max_overflow=0
        )
        try:
            for key in (1, 2):
                await onconflict.insert_ignore(engine, pairs, [{"a": key, "b": 0, "v": "x"}])
            yield proxy, engine
        finally:
            await engine.dispose()


async def count_directly(backend: Backend) -> int:
    direct = backend.async_engine()
    try:
        return await count(direct, pairs)
    finally:
        await direct.dispose()


@pytest.mark.databases("postgresql")  # the autocommitted driver-level path (asyncpg)
async def test_reply_lost_after_commit_is_raised_not_rerun(backend: Backend) -> None:
    """The one-row fast path runs autocommitted on asyncpg. When the connection
    dies after the server committed but before the reply came back, the call
    must fail (its outcome is unknown) rather than run again and report the
    row it created as existing."""
    async with proxied(backend) as (proxy, engine):
        proxy.arm()  # the next message: Bind/Execute/Sync of the INSERT
        with pytest.raises(sa.exc.DBAPIError) as info:
            await onconflict.insert_ignore(engine, pairs, [{"a": 3, "b": 0, "v": "x"}])
        assert proxy.cut.is_set()
        assert info.value.connection_invalidated
        assert not onconflict.is_transient(info.value)  # not retried either
        # the row was committed; run again (idempotent), the call says so
        again = await onconflict.insert_ignore(engine, pairs, [{"a": 3, "b": 0, "v": "x"}])
        assert again.existing_count == 1
    assert await count_directly(backend) == 3


@pytest.mark.databases("mariadb")  # the guarded driver-level path is MariaDB's (aiomysql)
async def test_mariadb_reply_lost_after_commit_is_raised_insert_lost_is_rerun(
    backend: Backend,
) -> None:
    """The one-row driver-level path on MariaDB sends INSERT, then COMMIT. A
    connection lost after the INSERT (not committed: the server rolls it back)
    lets the call run again on a new connection; lost after the COMMIT was sent,
    the outcome is unknown and the call fails."""
    async with proxied(backend) as (proxy, engine):
        proxy.arm()  # the INSERT reaches the server, its reply does not
        lost = await onconflict.insert_ignore(engine, pairs, [{"a": 3, "b": 0, "v": "x"}])
        assert proxy.cut.is_set()
        assert lost.inserted_count == 1  # run again, on a new connection
        proxy.cut.clear()
        proxy.arm(after=1)  # the INSERT goes through; the COMMIT's reply does not
        with pytest.raises(sa.exc.DBAPIError) as info:
            await onconflict.insert_ignore(engine, pairs, [{"a": 4, "b": 0, "v": "x"}])
        assert proxy.cut.is_set()
        assert info.value.connection_invalidated
        assert not onconflict.is_transient(info.value)
        again = await onconflict.insert_ignore(engine, pairs, [{"a": 4, "b": 0, "v": "x"}])
        assert again.existing_count == 1  # it was committed
    assert await count_directly(backend) == 4


@pytest.mark.databases("mariadb")  # the driver-level get_or_create is MariaDB's (aiomysql)
async def test_mariadb_get_or_create_commit_lost_is_raised(backend: Backend) -> None:
    """MariaDB's driver-level get_or_create: SELECT, INSERT, COMMIT. Lost after
    the INSERT, the call runs again (nothing was committed) and creates the row;
    lost after the COMMIT, it raises, and run again it finds the row."""
    async with proxied(backend) as (proxy, engine):
        proxy.arm(after=1)  # the SELECT answers; the INSERT's reply is lost
        made, created = await onconflict.get_or_create(engine, pairs, {"a": 3, "b": 0})
        assert proxy.cut.is_set()
        assert created
        assert made["a"] == 3
        proxy.cut.clear()
        proxy.arm(after=2)  # SELECT, INSERT answer; the COMMIT's reply is lost
        with pytest.raises(sa.exc.DBAPIError) as info:
            await onconflict.get_or_create(engine, pairs, {"a": 4, "b": 0})
        assert proxy.cut.is_set()
        assert info.value.connection_invalidated
        again, created = await onconflict.get_or_create(engine, pairs, {"a": 4, "b": 0})
        assert not created
        assert again["a"] == 4
    assert await count_directly(backend) == 4


@pytest.mark.needs("server")  # SQLite has no server
async def test_server_unreachable_raises_sqlalchemys_error(backend: Backend) -> None:
    """The driver-level paths check a connection out of the pool themselves; when
    a new one cannot be made (the server is gone), the call raises what the
    ordinary path raises (SQLAlchemy's wrapped error for aiomysql; asyncpg's
    refused connection is an OSError SQLAlchemy does not wrap)."""
    async with proxied(backend) as (proxy, engine):
        await engine.dispose()  # no pooled connection left
        proxy.server.close()  # and no new one can be made
        await proxy.server.wait_closed()
        row = [{"a": 3, "b": 0, "v": "x"}]
        with pytest.raises((sa.exc.DBAPIError, OSError)) as fast:
            await onconflict.insert_ignore(engine, pairs, row)
        # an execution option turns the driver-level paths off
        ordinary = engine.execution_options(logging_token="ordinary")
        with pytest.raises((sa.exc.DBAPIError, OSError)) as slow:
            await onconflict.insert_ignore(ordinary, pairs, row)
        assert type(fast.value) is type(slow.value)
        assert not onconflict.is_unique_violation(fast.value)
