"""The race path: many callers inserting (or get-or-creating) the same keys.

Scenarios:
- storm-N: N workers on one key of a cold table, again and again (each round a
  new key): many replicas starting at once;
- contended-N-K-D: N workers over K hot keys, D% of the calls duplicates (the
  rest new keys);
- goc-...: the same loads through get_or_create.

Each contender runs each scenario on a fresh table. Contenders that promise
exactly-once are checked after every run (rows == distinct keys, one creator per
new key) and the run stops loudly if they broke it.

Given several URLs (the nodes of a multi-master cluster such as Galera), worker
n uses node n mod N, so every hot key is raced from every node; counts are read
with Galera's causality wait, and certification conflicts are reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import onconflict
from benchmarks import peers
from benchmarks.common import ExactlyOnceViolated, Result
from onconflict.classify import error_code

WORKER: contextvars.ContextVar[int] = contextvars.ContextVar("worker", default=0)

metadata = sa.MetaData()
keyed = sa.Table(
    "bench_race",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("k", sa.String(60), nullable=False, unique=True),
    sa.Column("v", sa.String(40), nullable=True),
)
loose_metadata = sa.MetaData()
loose = sa.Table(  # the same without the unique key: what SELECT-then-INSERT does without it
    "bench_race_loose",
    loose_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("k", sa.String(60), nullable=False, index=True),
    sa.Column("v", sa.String(40), nullable=True),
)


@dataclass
class Load:
    name: str
    workers: int
    plan: list[str]  # the key of each call, in order
    preload: list[str] = field(default_factory=list)
    get: bool = False  # get_or_create instead of insert

    @property
    def new_keys(self) -> set[str]:
        return set(self.plan) - set(self.preload)


def loads(
    workers: list[int], keys: list[int], dups: list[int], calls: int, get: bool
) -> list[Load]:
    prefix = "goc" if get else "insert"
    out = []
    for n in workers:  # storm: n workers on one key, fresh each round
        rounds = max(3, calls // max(n, 1) // 4)
        out.append(
            Load(
                f"{prefix} storm {n}w",
                n,
                [f"s{r}" for r in range(rounds) for _ in range(n)],
                get=get,
            )
        )
    if 1 in workers:  # one caller in a loop, a duplicate each time: the per-call cost
        out.append(Load(f"{prefix} 1w 1k 100%dup", 1, ["h0"] * calls, preload=["h0"], get=get))
    for n in [w for w in workers if w > 1]:
        for k in keys:
            for d in dups:
                rng = random.Random(k * 1000 + d)
                hot = [f"h{i}" for i in range(k)]
                plan = [
                    rng.choice(hot) if rng.random() < d / 100 else f"n{i}" for i in range(calls)
                ]
                out.append(Load(f"{prefix} {n}w {k}k {d}%dup", n, plan, preload=hot, get=get))
    return out


# -- contenders --------------------------------------------------------------------


class Contender:
    name = ""
    guarantees = True  # checked for exactly-once
    table = keyed
    sqlalchemy = True  # statements counted on the engine

    @staticmethod
    def available(url: str) -> str | None:
        """None if this contender can run against the URL, else why not."""
        return None

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def call(self, key: str) -> bool:  # True: this call created the row
        raise NotImplementedError

    async def run(self, load: Load) -> tuple[list[float], int, Counter[str]]:
        it = iter(load.plan)
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        made = 0
        storm = load.name.startswith(("insert storm", "goc storm"))

        async def worker(number: int) -> None:
            nonlocal made
            WORKER.set(number)  # picks this worker's node (its own task's context)
            for key in it:
                start = time.perf_counter()
                try:
                    created = await self.call(key)
                except Exception as exc:  # counted by code; the contender carries on
                    errors[str(error_code(exc) or type(exc).__name__)] += 1
                    created = False
                latencies.append((time.perf_counter() - start) * 1000)
                made += created

        if storm:  # all workers hit the same key at once, round after round
            rounds = len(load.plan) // load.workers
            for r in range(rounds):
                key = load.plan[r * load.workers]
                it = iter([key] * load.workers)
                await asyncio.gather(*(worker(n) for n in range(load.workers)))
        else:
            await asyncio.gather(*(worker(n) for n in range(load.workers)))
        return latencies, made, errors


class Native(Contender):
    name = "onconflict native"

    async def call(self, key: str) -> bool:
        if self.ctx.get:
            return (await onconflict.get_or_create(self.ctx.engine, keyed, {"k": key}))[1]
        result = await onconflict.insert_ignore(self.ctx.engine, keyed, [{"k": key}])
        return result.inserted_count == 1


class Classify(Contender):
    name = "onconflict classify"

    async def call(self, key: str) -> bool:
        result = await onconflict.insert_ignore(
            self.ctx.engine, keyed, [{"k": key}], strategy="classify"
        )
        return result.inserted_count == 1


class InTransaction(Contender):
    """A one-row insert_ignore inside the caller's own transaction (what
    docs/webhooks.md recommends: the row and the work it stands for commit
    together)."""

    name = "onconflict in caller's transaction"

    async def call(self, key: str) -> bool:
        async with self.ctx.engine.begin() as conn:
            result = await onconflict.insert_ignore(conn, keyed, [{"k": key}])
        return result.inserted_count == 1


class ClassicInTransaction(Contender):
    """The code insert_ignore replaces there: try the INSERT, catch
    IntegrityError. PostgreSQL needs a SAVEPOINT for it (an error aborts its
    whole transaction); MariaDB and SQLite roll back only the statement."""

    name = "try/except IntegrityError in caller's transaction"
    guarantees = False  # hand-written: reported, not enforced

    async def call(self, key: str) -> bool:
        async with self.ctx.engine.begin() as conn:
            savepoint = conn.dialect.name == "postgresql"
            try:
                if savepoint:
                    async with conn.begin_nested():
                        await conn.execute(keyed.insert(), {"k": key})
                else:
                    await conn.execute(keyed.insert(), {"k": key})
            except sa.exc.IntegrityError:
                return False
            return True


class RawInTransaction(Contender):
    """The database's own unguarded statement in the caller's transaction:
    ON CONFLICT DO NOTHING, or MariaDB's INSERT IGNORE (which also drops or
    coerces bad rows)."""

    name = "raw statement in caller's transaction"
    guarantees = False

    async def call(self, key: str) -> bool:
        async with self.ctx.engine.begin() as conn:
            if conn.dialect.name in ("mysql", "mariadb"):
                stmt: Any = mysql.insert(keyed).prefix_with("IGNORE")
            elif conn.dialect.name == "postgresql":
                stmt = postgresql.insert(keyed).on_conflict_do_nothing()
            else:
                stmt = sqlite.insert(keyed).on_conflict_do_nothing()
            result = await conn.execute(stmt, {"k": key})
        return result.rowcount == 1


class SelectThenInsert(Contender):
    """The hand-written pattern: look, then insert; a race surfaces as an error."""

    name = "select-then-insert"
    guarantees = False

    async def call(self, key: str) -> bool:
        t = self.table
        async with self.ctx.engine.begin() as conn:
            found = (await conn.execute(sa.select(t.c.id).where(t.c.k == key))).first()
            if found is not None:
                return False
            await conn.execute(t.insert().values(k=key))
            return True


class SelectThenInsertLoose(SelectThenInsert):
    name = "select-then-insert, no unique key"
    table = loose


class Raw(Contender):
    """The same SQL hand-run on the raw driver: the floor."""

    name = "raw driver"
    sqlalchemy = False

    async def setup(self) -> None:
        self.pools = [await self._pool(url) for url in self.ctx.urls]

    @property
    def pool(self) -> Any:
        return self.pools[WORKER.get() % len(self.pools)]

    async def _pool(self, text: str) -> Any:
        url = make_url(text)
        backend = self.backend = url.get_backend_name()
        if backend == "postgresql":
            import asyncpg

            plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
            size = self.ctx.pool
            pool = await asyncpg.create_pool(plain, min_size=size, max_size=size)
            if self.ctx.get:
                from onconflict._get_or_create import prepare_get_or_create

                stmt = prepare_get_or_create(self.ctx.engine.dialect, keyed, {"k": "x"}, None)
                self.sql = str(stmt.plan.statements["one"].compile(dialect=self.ctx.engine.dialect))
            else:
                self.sql = (
                    "INSERT INTO bench_race (k) VALUES ($1) ON CONFLICT (k) DO NOTHING RETURNING id"
                )
            return pool
        if backend in ("mysql", "mariadb"):
            import aiomysql

            self.sql = "INSERT IGNORE INTO bench_race (k) VALUES (%s)"
            return await aiomysql.create_pool(
                host=url.host,
                port=url.port or 3306,
                user=url.username,
                password=url.password or "",
                db=url.database,
                maxsize=self.ctx.pool,
                autocommit=True,
            )
        self.sql = "INSERT INTO bench_race (k) VALUES (?) ON CONFLICT (k) DO NOTHING RETURNING id"
        return SQLitePool(make_url(self.ctx.url).database or "", self.ctx.pool)

    async def teardown(self) -> None:
        for pool in self.pools:
            if self.backend in ("postgresql", "sqlite"):
                await pool.close()
            else:
                pool.close()
                await pool.wait_closed()

    async def call(self, key: str) -> bool:
        if self.backend == "postgresql":
            async with self.pool.acquire() as conn:
                for _ in range(5):
                    record = await conn.fetchrow(self.sql, key)
                    if record is not None or not self.ctx.get:
                        return bool(record[-1]) if self.ctx.get else record is not None
                return False
        if self.backend in ("mysql", "mariadb"):
            import pymysql

            async with self.pool.acquire() as conn, conn.cursor() as cur:
                for attempt in range(5):
                    try:
                        return bool(await cur.execute(self.sql, (key,)))
                    except pymysql.err.OperationalError as exc:
                        # Galera: a certification conflict (1213) rolled the
                        # autocommitted statement back (the server's own retry,
                        # wsrep_retry_autocommit, had failed too): run it again
                        if exc.args[0] != 1213 or attempt == 4:
                            raise
                return False  # pragma: no cover
        conn = await self.pool.acquire()
        try:
            rows = await (await conn.execute(self.sql, (key,))).fetchall()
            await conn.commit()
            return bool(rows)
        finally:
            self.pool.release(conn)


class SQLitePool:
    """aiosqlite connections kept open and shared by the raw driver's workers
    (at most ``size``, opened as needed), as the other raw drivers' pools are:
    one caller in a loop uses one connection."""

    def __init__(self, path: str, size: int) -> None:
        self.path, self.size = path, size
        self.idle: asyncio.Queue[Any] = asyncio.Queue()
        self.opened: list[Any] = []

    async def acquire(self) -> Any:
        if self.idle.empty() and len(self.opened) < self.size:
            import aiosqlite

            conn = await aiosqlite.connect(self.path, timeout=60)
            self.opened.append(conn)
            return conn
        return await self.idle.get()

    def release(self, conn: Any) -> None:
        self.idle.put_nowait(conn)

    async def close(self) -> None:
        for conn in self.opened:
            await conn.close()


class Threaded(Contender):
    """A synchronous peer (Django, Peewee), one thread and connection per worker."""

    sqlalchemy = False
    guarantees = False  # a peer: what it does is reported, not enforced
    label = ("", "")  # (insert, get_or_create) names
    factory: Callable[[str, bool], tuple[Callable[[str], bool], Callable[[], None]]]

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.label[1] if self.ctx.get else self.label[0]

    async def run(self, load: Load) -> tuple[list[float], int, Counter[str]]:
        return await asyncio.to_thread(self._threads, load)

    def _threads(self, load: Load) -> tuple[list[float], int, Counter[str]]:
        lock = threading.Lock()
        it = iter(load.plan)
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        made = [0]

        def worker() -> None:
            one, close = type(self).factory(self.ctx.url, self.ctx.get)
            while True:
                with lock:
                    key = next(it, None)
                if key is None:
                    break
                start = time.perf_counter()
                try:
                    created = one(key)
                except Exception as exc:
                    with lock:
                        errors[str(error_code(exc) or type(exc).__name__)] += 1
                    created = False
                with lock:
                    latencies.append((time.perf_counter() - start) * 1000)
                    made[0] += created
            close()

        # one connection per thread: no more threads than the others have connections
        threads = [threading.Thread(target=worker) for _ in range(min(load.workers, self.ctx.pool))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return latencies, made[0], errors


class Django(Threaded):
    label = ("Django bulk_create(ignore_conflicts)", "Django get_or_create")
    factory = staticmethod(peers.django_race)
    available = staticmethod(peers.django_available)


class Peewee(Threaded):
    label = ("Peewee on_conflict_ignore", "Peewee get_or_create")
    factory = staticmethod(peers.peewee_race)
    available = staticmethod(peers.peewee_available)


class Tortoise(Contender):
    """Tortoise ORM (asyncio): get_or_create, bulk_create(ignore_conflicts=True)."""

    sqlalchemy = False
    guarantees = False
    available = staticmethod(peers.tortoise_available)

    @property
    def name(self) -> str:  # type: ignore[override]
        return (
            "Tortoise get_or_create" if self.ctx.get else "Tortoise bulk_create(ignore_conflicts)"
        )

    async def setup(self) -> None:
        self.model, _ = await peers.tortoise_open(self.ctx.url, self.ctx.pool)

    async def teardown(self) -> None:
        await peers.tortoise_close()

    async def call(self, key: str) -> bool:
        if self.ctx.get:
            return bool((await self.model.get_or_create(k=key))[1])
        await self.model.bulk_create([self.model(k=key)], ignore_conflicts=True)
        return False  # cannot say whether it inserted


PEERS: list[type[Contender]] = [Django, Peewee, Tortoise]


# -- running ---------------------------------------------------------------------


@dataclass
class Context:
    urls: list[str]
    engines: list[AsyncEngine]
    pool: int
    get: bool = False

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def engine(self) -> AsyncEngine:
        """The calling worker's node (the only one, on a single server)."""
        return self.engines[WORKER.get() % len(self.engines)]


async def galera(engine: AsyncEngine) -> bool:
    if engine.dialect.name not in ("mysql", "mariadb"):
        return False
    async with engine.connect() as conn:
        on = (await conn.execute(sa.text("SHOW VARIABLES LIKE 'wsrep_on'"))).first()
    return on is not None and on[1] == "ON"


async def conflicts(engines: list[AsyncEngine]) -> int:
    """Galera: certification failures + brute-force aborts over all nodes."""
    total = 0
    for engine in engines:
        async with engine.connect() as conn:
            rows = await conn.execute(
                sa.text(
                    "SHOW GLOBAL STATUS WHERE variable_name IN "
                    "('wsrep_local_cert_failures', 'wsrep_local_bf_aborts')"
                )
            )
            total += sum(int(v) for _, v in rows)
    return total


async def server_statements(engines: list[AsyncEngine]) -> int:
    """MySQL/MariaDB: the statements clients sent, by the servers' own counters
    (Com_*, summed over the nodes), the drivers' own SHOW WARNINGS included. The
    reading's connection adds one ROLLBACK when it is returned to the pool."""
    total = 0
    for engine in engines:
        async with engine.connect() as conn:
            rows = await conn.execute(sa.text("SHOW GLOBAL STATUS LIKE 'Com\\_%'"))
            total += sum(int(v) for k, v in rows if k.lower() != "com_show_status")
    return total


async def reset(engine: AsyncEngine, preload: list[str]) -> None:
    async with engine.begin() as conn:
        for md in (metadata, loose_metadata):
            await conn.run_sync(md.drop_all)
            await conn.run_sync(md.create_all)
        if preload:
            await conn.execute(keyed.insert(), [{"k": k} for k in preload])
            await conn.execute(loose.insert(), [{"k": k} for k in preload])


async def warm(engine: AsyncEngine) -> None:
    """Open the engine pool's connections before the clock starts, as the raw
    driver's pools are opened when made (a server's connection set-up is not
    what the storms measure); SQLite's engine opens a file: its journal is
    evened instead."""
    if engine.dialect.name == "sqlite":
        await even_journal(engine)
        return
    size = engine.sync_engine.pool.size()  # type: ignore[attr-defined]
    opened = await asyncio.gather(*(engine.connect() for _ in range(size)))
    for conn in opened:
        await conn.close()


WAL_PAGES = 1_000  # SQLite's autocheckpoint threshold, in pages


async def even_journal(engine: AsyncEngine) -> None:
    """SQLite in WAL mode: every contender starts with the same journal, its
    file grown to the autocheckpoint size, checkpointed, and written again from
    its start (wal_checkpoint(RESTART)). A journal file still growing makes
    each commit extend it: measured ~330 us per new row against ~180 us once
    it has its size, a cost that fell on whoever ran first (onconflict, in
    the first scenario), and Tortoise's connections shrink it again
    (journal_size_limit=16384)."""
    async with engine.connect() as conn:
        if (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() != "wal":
            return
        page = (await conn.exec_driver_sql("PRAGMA page_size")).scalar() or 4096
        wal = await asyncio.to_thread(_file_bytes, f"{engine.url.database}-wal")
        if wal < WAL_PAGES * page:
            await conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS oc_bench_filler (b BLOB)")
            await conn.exec_driver_sql(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
                "INSERT INTO oc_bench_filler SELECT zeroblob(?) FROM n",
                (WAL_PAGES, page - 100),
            )
            await conn.exec_driver_sql("DELETE FROM oc_bench_filler")
            await conn.commit()
        await conn.exec_driver_sql("PRAGMA wal_checkpoint(RESTART)")
        await conn.commit()


def _file_bytes(path: str) -> int:
    return os.path.getsize(path) if os.path.exists(path) else 0


async def measure_before(engine: AsyncEngine) -> dict[str, Any]:
    if engine.dialect.name != "postgresql":
        return {}
    async with engine.connect() as conn:
        lsn = (await conn.execute(sa.text("SELECT pg_current_wal_lsn()"))).scalar()
    return {"lsn": lsn}


async def measure_after(
    engine: AsyncEngine, table: sa.Table, before: dict[str, Any], settle: float = 1.1
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with engine.connect() as conn:
        if before.get("galera"):  # read after every commit of the cluster has applied here
            await conn.execute(sa.text("SET SESSION wsrep_sync_wait = 1"))
        rows = (await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one()
        distinct = (
            await conn.execute(sa.select(sa.func.count(sa.distinct(table.c.k))))
        ).scalar_one()
        top = (await conn.execute(sa.select(sa.func.max(table.c.id)))).scalar() or 0
        out["rows"], out["duplicate_rows"] = rows, rows - distinct
        if engine.dialect.name == "postgresql":
            await asyncio.sleep(settle)  # statistics reach pg_stat after about a second
            out["wal_bytes"] = (
                await conn.execute(
                    sa.text("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), :lsn)"),
                    {"lsn": before["lsn"]},
                )
            ).scalar()
            out["dead_tuples"] = (
                await conn.execute(
                    sa.text("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = :t"),
                    {"t": table.name},
                )
            ).scalar()
            seq = (
                await conn.execute(sa.text(f"SELECT last_value FROM {table.name}_id_seq"))
            ).scalar()
            out["id_gap"] = int(seq or 0) - rows
        elif engine.dialect.name in ("mysql", "mariadb") and not before.get("galera"):
            # (not on Galera: each node steps AUTO_INCREMENT by the cluster size)
            auto = (
                await conn.execute(
                    sa.text(
                        "SELECT AUTO_INCREMENT FROM information_schema.TABLES"
                        " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t"
                    ),
                    {"t": table.name},
                )
            ).scalar()
            out["id_gap"] = int(auto or 1) - 1 - rows
        else:
            out["id_gap"] = int(top) - rows
    return out


class Statements:
    """Counts the statements the contenders send. A cursor listener would turn
    the library's driver-level paths off (they defer to SQLAlchemy's events):
    PostgreSQL and SQLite count at the driver, MySQL and MariaDB at the server
    (its Com_* counters)."""

    def __init__(self, backend: str, engines: list[AsyncEngine], cluster: bool) -> None:
        self.engines, self.cluster = engines, cluster
        self.on_server = backend in ("mysql", "mariadb")
        self.count = 0
        self.base = 0
        for each in engines:
            if backend == "postgresql":
                sa.event.listen(each.sync_engine, "connect", self._log_queries)
            elif backend == "sqlite" and each.dialect.driver == "aiosqlite":
                sa.event.listen(each.sync_engine, "connect", self._trace_sqlite)
            elif not self.on_server:
                sa.event.listen(each.sync_engine, "before_cursor_execute", self._one)

    def _one(self, *_: Any) -> None:
        self.count += 1

    def _log_queries(self, dbapi_conn: Any, _: Any) -> None:
        dbapi_conn.driver_connection.add_query_logger(self._one)

    def _trace_sqlite(self, dbapi_conn: Any, _: Any) -> None:
        # SQLite's own trace (on aiosqlite's thread): every statement it runs,
        # BEGIN and COMMIT included
        dbapi_conn.driver_connection._conn.set_trace_callback(self._one)

    async def start(self) -> None:
        self.count = 0
        self.base = await server_statements(self.engines) if self.on_server else 0

    async def stop(self) -> int | None:
        """The statements sent since start(); None where they cannot be told
        apart (on a cluster the servers' counters also count what each node
        applies for the others)."""
        if self.on_server:
            if self.cluster:
                return None
            # (the reading's connection adds one ROLLBACK per node)
            self.count = await server_statements(self.engines) - self.base - len(self.engines)
        return self.count


def contenders(get: bool, urls: list[str]) -> list[type[Contender]]:
    kinds: list[type[Contender]] = [Native, Raw]
    if get:
        kinds += [SelectThenInsert]
    else:
        kinds += [InTransaction, ClassicInTransaction, RawInTransaction]
        kinds += [Classify, SelectThenInsert, SelectThenInsertLoose]
    if len(urls) == 1:  # peers talk to one database
        kinds += [k for k in PEERS if k.available(urls[0]) is None]
    return kinds


def check_exactly_once(
    contender: Contender, load: Load, extra: dict[str, Any], errors: Counter[str]
) -> None:
    """Stop the run loudly when a contender that promises exactly-once broke it."""
    if not contender.guarantees:
        return
    made = extra["creators"]
    expected = len(set(load.plan) | set(load.preload))
    if extra["rows"] != expected or made != len(load.new_keys) or errors:
        found = f"{extra['rows']} rows for {expected} keys"
        makers = f"{made} creators for {len(load.new_keys)} new keys"
        raise ExactlyOnceViolated(
            f"{contender.name} on {load.name}: {found}, {makers}, errors {dict(errors)}"
        )


@contextlib.contextmanager
def settled_heap() -> Iterator[None]:
    """A contender's timed run starts after a full collection, with every
    object alive then frozen (gc.freeze) until it ends. This process holds
    four ORMs' modules: a full collection walking them took up to ~100 ms and
    landed on whichever contender was running (about one run in ten). Frozen,
    a collection walks only what the run itself made, so each contender pays
    for collecting its own allocations and nothing else."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@dataclass
class Runner:
    """One benchmark run over its engines: runs each contender on each load."""

    ctx: Context
    statements: Statements
    cluster: bool
    settle: float

    async def one(self, contender: Contender, load: Load) -> Result:
        engine, engines = self.ctx.engines[0], self.ctx.engines
        await reset(engine, load.preload)
        if hasattr(contender, "setup"):
            await contender.setup()
        for each in engines:
            await warm(each)
        before = await measure_before(engine)
        if self.cluster:
            before["galera"] = True
            before["conflicts"] = await conflicts(engines)
        spent = onconflict.retry_stats()
        await self.statements.start()
        with settled_heap():
            start = time.perf_counter()
            latencies, made, errors = await contender.run(load)
            seconds = time.perf_counter() - start
        sent = await self.statements.stop()
        if hasattr(contender, "teardown"):
            await contender.teardown()
        extra = await measure_after(engine, contender.table, before, self.settle)
        if self.cluster:
            extra["conflicts"] = await conflicts(engines) - before["conflicts"]
        # counted by the retry loops themselves (onconflict.retry_stats)
        retried = onconflict.retry_stats() - spent
        extra["retries"], extra["restarts"] = retried.retries, retried.restarts
        if contender.sqlalchemy and sent is not None:
            extra["statements_per_op"] = round(sent / len(load.plan), 2)
        extra["creators"] = made
        check_exactly_once(contender, load, extra, errors)
        return Result(load.name, contender.name, len(load.plan), seconds, latencies, errors, extra)


def engine_options(backend: str, pool: int) -> dict[str, Any]:
    if backend == "sqlite":
        return {"connect_args": {"timeout": 60}}
    return {"pool_size": min(pool, 40), "max_overflow": 0, "pool_timeout": 300}


async def run(
    url: str | list[str],
    workers: list[int],
    keys: list[int],
    dups: list[int],
    calls: int,
    progress: Callable[[str], None] = lambda _: None,
    settle: float = 1.1,
) -> list[Result]:
    urls = [url] if isinstance(url, str) else list(url)
    pool = max(workers)
    backend = make_url(urls[0]).get_backend_name()
    engines = [create_async_engine(u, **engine_options(backend, pool)) for u in urls]
    results: list[Result] = []
    try:
        cluster = await galera(engines[0])
        statements = Statements(backend, engines, cluster)
        if backend == "sqlite":
            # Tortoise turns the file to WAL on connecting, and that persists:
            # every contender runs on WAL from the start, not only those after it
            async with engines[0].connect() as conn:
                await conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        for get in (False, True):
            runner = Runner(Context(urls, engines, min(pool, 40), get), statements, cluster, settle)
            for load in loads(workers, keys, dups, calls, get):
                for kind in contenders(get, urls):
                    if get and kind is Raw and backend != "postgresql":
                        continue  # the one-statement floor exists on PostgreSQL only
                    contender = kind(runner.ctx)
                    progress(f"{load.name}: {contender.name}")
                    results.append(await runner.one(contender, load))
    finally:
        for each in engines:
            await each.dispose()
    return results
