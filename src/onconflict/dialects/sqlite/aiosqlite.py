"""The aiosqlite driver-level paths.

On an engine, a one-row insert_ignore and get_or_create run with BEGIN
IMMEDIATE ... COMMIT on the pooled connection's sqlite3 connection in ONE hop
to aiosqlite's thread, through the engine's :class:`Writer` (calls queued
meanwhile share the hop and the transaction, each in a savepoint). A lone call
is first tried on the event loop's thread (:func:`_inline`: never a lock wait;
its COMMIT there only while the engine's commits are measured cheap,
``COMMIT_BUDGET``).

In the caller's transaction (an AsyncConnection, or an AsyncSession's
connection), a one-row insert_ignore is one hop to aiosqlite's thread with the
connection's own busy timeout (:meth:`AiosqlitePath.in_transaction`)."""

from __future__ import annotations

import asyncio
import functools
import math
import sqlite3
import time
import weakref
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only, greenlet_spawn

from onconflict._excluded import has_expressions
from onconflict._keys import expression_key
from onconflict.dialects.driver import (
    ORDINARY,
    DriverPath,
    DriverStatement,
    Ordinary,
    checkout,
    checkout_async,
    in_caller_transaction,
    plain_engine,
    quiet_return,
    statement_error,
)
from onconflict.dialects.plans import FetchPlan, Row
from onconflict.dialects.sqlite import build
from onconflict.result import InsertResult

MAX_BATCH = 64  # calls run in one hop and one transaction
CONTENDED = 0.05  # seconds after calls last overlapped during which calls take the hop
# Calls run on the event loop's thread (see _inline) hold it for tens of
# microseconds each; a caller looping on them gives other tasks a turn once
# the loop has been held this long (seconds) since its last turn: less than
# CPython's own thread switch interval (5 ms), which a synchronous peer on a
# thread holds the interpreter for. A turn per call (sleep(0), 5-10 us) was a
# fifth of a duplicate's time and its p95.
LOOP_HOLD = 0.002
# A new row's COMMIT (the journal's fsync) runs on the loop's thread while this
# engine's commits take less than this on average (seconds, measured), else on
# aiosqlite's thread (a slow disk, a checkpoint, a busy reader in rollback
# journal mode): the loop is never held for a slow sync.
COMMIT_BUDGET = 0.0005


class AiosqlitePath(DriverPath):
    driver = "aiosqlite"

    def __init__(self, support: Any) -> None:
        super().__init__(support)
        # per engine, per event loop: the queue of its driver-level calls
        self._writers: weakref.WeakKeyDictionary[
            Engine, weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Writer]
        ] = weakref.WeakKeyDictionary()

    def applies(self, engine: Any) -> bool:
        """An aiosqlite engine as created (see plain_engine), with no isolation
        level of create_engine's (the driver-level path sends its own BEGIN
        IMMEDIATE), RETURNING (SQLite 3.35) and a pool that gives each caller a
        connection of its own (the StaticPool of ``:memory:`` shares one)."""
        return bool(
            plain_engine(engine, self.driver)
            and isinstance(engine.sync_engine.pool, (sa.pool.QueuePool, sa.pool.NullPool))
            and getattr(engine.dialect, "_on_connect_isolation_level", None) is None
            and engine.dialect.insert_returning
        )

    def writer(self, engine: Engine) -> Writer:
        """The in-process writer of ``engine`` (one per event loop: asyncio
        futures belong to one)."""
        loops = self._writers.get(engine)
        if loops is None:
            loops = self._writers[engine] = weakref.WeakKeyDictionary()
        loop = asyncio.get_running_loop()
        writer = loops.get(loop)
        if writer is None:
            writer = loops[loop] = Writer()
        return writer

    async def insert_ignore(self, engine: Any, prepared: Any) -> dict[int, Row] | None:
        """A one-row insert_ignore that owns its work, on a plainly created
        aiosqlite engine: the statement compiled once per shape and run with
        BEGIN IMMEDIATE and COMMIT on the pooled connection's sqlite3
        connection in ONE hop to aiosqlite's thread, through the engine's
        :class:`Writer` (calls queued meanwhile share the hop and the
        transaction, each in a savepoint). None whenever it does not
        apply or the database raised: the ordinary path then runs (nothing was
        stored) and raises as SQLAlchemy does."""
        if not self.applies(engine):
            return None
        one = self.one_row_insert(engine, prepared)
        if one is None:
            return None
        fast, index, args = one
        got = await self._hop(engine, functools.partial(_insert_one, fast.sql, args))
        if got is None:
            return None
        return {index: fast.row(got[0])} if got else {}

    async def insert_one(
        self, conn: Any, table: Any, rows: Any, on: Any, strategy: str, returning: Any
    ) -> InsertResult | Ordinary | None:
        """A one-row call on an engine, planned once per shape (``one_row_plan``),
        then as :meth:`insert_ignore`; in the caller's transaction (an
        AsyncConnection), :meth:`insert_one_in`. None where those decline."""
        if not isinstance(conn, AsyncEngine):
            return await self.insert_one_in(conn, table, rows, on, strategy, returning)
        if not self.applies(conn):
            return None
        planned = self.one_row_plan(conn.dialect, table, rows, on, strategy, returning)
        if planned is None:
            return None
        plan, row = planned
        fast = plan.statement
        got = await self._hop(conn, functools.partial(_insert_one, fast.sql, fast.arguments(row)))
        if got is None:  # refused, or no connection: the ordinary path alone runs it
            return ORDINARY
        return plan.result(row, fast.row(got[0]) if got else None)

    async def insert_one_in(
        self, conn: Any, table: Any, rows: Any, on: Any, strategy: str, returning: Any
    ) -> InsertResult | Ordinary | None:
        """A one-row call inside the caller's transaction (an AsyncConnection),
        planned once per shape (``one_row_plan``), run by :meth:`in_transaction`;
        None where that declines."""
        sync = _usable(conn)
        if sync is None:
            return None
        return await self.one_row_in(sync, table, rows, on, strategy, returning)

    async def insert_ignore_in(self, conn: Any, prepared: Any) -> dict[int, Row] | None:
        """A one-row call in the caller's transaction already planned (one
        that :meth:`insert_one_in` did not plan: ``on`` given as a constraint,
        say): see :meth:`in_transaction`."""
        sync = _usable(conn)
        return None if sync is None else await self.planned_in(sync, prepared)

    async def in_transaction(
        self, sync: Connection, fast: DriverStatement, args: list[Any]
    ) -> Row | None:
        """The one-row INSERT ... ON CONFLICT DO NOTHING RETURNING inside the
        caller's transaction, run in ONE hop to aiosqlite's thread on the
        connection's sqlite3 connection (execute and fetchall together), with
        the connection's own busy timeout and transaction control: exactly
        what the same statement through SQLAlchemy does (sqlite3's implicit
        BEGIN before it in its legacy transaction mode included), without
        SQLAlchemy's four hops (cursor, execute, fetch, close), its greenlet
        bridge and per-call setup. The stored row ({}: a duplicate).

        An error that ended the caller's transaction (a constraint declared ON
        CONFLICT ROLLBACK, SQLITE_FULL, ...: a transaction open before the
        statement is gone after it) is raised here, wrapped as SQLAlchemy wraps
        it: running the row again would store it without the caller's earlier
        work. So is a busy or locked database (the busy timeout was waited
        once; the transaction is as it was). Any other error of the statement
        (NOT NULL, CHECK, FK, a duplicate of another key) left nothing and the
        transaction as it was: None, and the ordinary path runs the row again
        and raises it as SQLAlchemy does. None too when the connection is
        closed (nothing was sent)."""
        driver: Any = sync.connection.driver_connection
        try:
            done = await driver._execute(
                _in_caller_transaction, _insert_one, fast.sql, args, driver._conn
            )
        except ValueError:  # aiosqlite: "Connection closed" / "no active connection"
            return None
        if isinstance(done, _Failed):
            if done.ended or _busy(done.exc):
                raise await greenlet_spawn(statement_error, sync, fast.sql, args, done.exc)
            return None
        return fast.row(done[0]) if done else {}

    async def get_or_create(
        self, engine: Any, plan: FetchPlan, attempts: int
    ) -> tuple[Row, bool] | None:
        """get_or_create's SELECT, and if there is no row INSERT ... ON CONFLICT
        DO NOTHING RETURNING (+ the SELECT again after a lost race), under
        BEGIN IMMEDIATE ... COMMIT in one hop to aiosqlite's thread (as
        insert_ignore). Under the write lock the SELECTs see every
        committed row: the outcome is exact, no retry is needed. None: the
        ordinary path runs."""
        if (
            not self.applies(engine)
            or expression_key(plan.target) is not None
            or has_expressions([plan.params])
        ):
            return None
        select, insert = _fetch_statements(plan, engine.dialect)
        if insert.needs_context:
            return None
        work = functools.partial(
            _get_or_create_one,
            select.sql,
            select.arguments(plan.params),
            insert.sql,
            insert.arguments(plan.params),
        )
        got = await self._hop(engine, work)
        if got is None or got[0] is None:
            return None  # no row to read (a lookup mismatch): the ordinary path says why
        record, created = got
        return select.row(record), created

    async def get_or_create_in(self, conn: Any, plan: FetchPlan) -> tuple[Row, bool] | None:
        """get_or_create inside the caller's transaction (an AsyncConnection):
        the engine path's statements (the SELECT, and if there is no row INSERT
        ... ON CONFLICT DO NOTHING RETURNING and the SELECT again) in ONE hop to
        aiosqlite's thread, with the connection's own busy timeout and
        transaction control, as :meth:`in_transaction` runs its INSERT, and
        its errors handled alike (one that ended the caller's transaction, or
        a busy database, raised; others: None). None too when no row could be
        read with the lookup (a lookup mismatch: nothing was written, the
        ordinary path says why)."""
        sync = _usable(conn)
        if (
            sync is None
            or expression_key(plan.target) is not None
            or has_expressions([plan.params])
        ):
            return None
        select, insert = _fetch_statements(plan, sync.dialect)
        if insert.needs_context:
            return None
        args = (select.arguments(plan.params), insert.arguments(plan.params))
        driver: Any = sync.connection.driver_connection
        try:
            done = await driver._execute(
                _in_caller_transaction,
                _get_or_create_one,
                select.sql,
                args[0],
                insert.sql,
                args[1],
                driver._conn,
            )
        except ValueError:  # aiosqlite: "Connection closed" / "no active connection"
            return None
        if isinstance(done, _Failed):
            if done.ended or _busy(done.exc):
                raise await greenlet_spawn(statement_error, sync, insert.sql, args[1], done.exc)
            return None
        record, created = done
        return None if record is None else (select.row(record), created)

    async def _hop(self, engine: Any, work: Callable[[sqlite3.Connection], Any]) -> Any:
        sync = engine.sync_engine
        return await self.writer(sync).submit(sync, work)


def _usable(conn: Any) -> Connection | None:
    """The synchronous connection of an AsyncConnection whose transaction a
    statement may join on the driver's own connection (``in_caller_transaction``)
    with RETURNING (SQLite 3.35); else None."""
    sync: Connection | None = conn.sync_connection
    if sync is None or not sync.dialect.insert_returning:
        return None
    return sync if in_caller_transaction(sync, "aiosqlite") else None


class _Failed:
    """The error of a statement run in the caller's transaction, and whether it
    ended that transaction (open before the statement, not after)."""

    __slots__ = ("ended", "exc")

    def __init__(self, exc: Exception, ended: bool) -> None:
        self.exc, self.ended = exc, ended


def _in_caller_transaction(work: Callable[..., Any], *args: Any) -> Any:
    """On aiosqlite's thread, in the caller's transaction: ``work(*args)`` (its
    last argument the sqlite3 connection), or :class:`_Failed`."""
    db: sqlite3.Connection = args[-1]
    before = db.in_transaction
    try:
        return work(*args)
    except Exception as exc:
        return _Failed(exc, before and not db.in_transaction)


def _busy(exc: Exception) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED, with any extended code."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (5, 6)


def _fetch_statements(plan: FetchPlan, dialect: Dialect) -> tuple[DriverStatement, DriverStatement]:
    """get_or_create's SELECT and one-row INSERT ... RETURNING, compiled for the
    driver-level path once per plan and dialect (both read rows keyed by column
    key, in table order)."""
    by_dialect: dict[Any, tuple[DriverStatement, DriverStatement]] = plan.statements.setdefault(
        "aiosqlite", {}
    )
    pair = by_dialect.get(dialect)
    if pair is None:
        t = plan.table
        pair = by_dialect[dialect] = (
            DriverStatement(plan.statements["select"], dialect, t.c),
            DriverStatement(build.insert_one_returning(plan), dialect, t.c),
        )
    return pair


class Writer:
    """The driver-level calls of one engine in this process, serialised: calls
    queue here and one task at a time runs what has queued as ONE batch, in one
    hop to aiosqlite's thread and ONE transaction (BEGIN IMMEDIATE ... COMMIT),
    each call in a SAVEPOINT of its own. Callers take turns in-process instead
    of spinning on SQLite's file lock with sleeping busy handlers, and the
    calls of a batch share its hop and its COMMIT (one fsync). Each call is
    still all-or-nothing: an error rolls back its savepoint only and sends that
    call down the ordinary path; none is reported before the COMMIT succeeded."""

    def __init__(self) -> None:
        # (no reference to the engine: the writer is kept per engine in a
        # WeakKeyDictionary, which a reference back would keep alive forever)
        self.pending: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self.busy = False  # a call or a hop is under way
        self.task: asyncio.Task[None] | None = None
        self.inline = True  # False once a connection refused use from this thread
        self.contended_until = 0.0  # (loop time) calls queued until lately: no inline attempts
        self.calls = 0  # calls submitted so far
        self.turn_at = 0.0  # (loop time) when an inline call last gave the loop a turn
        self.commit_cost = math.inf  # seconds a COMMIT takes here (moving average)

    async def submit(self, engine: Engine, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """``work``'s result, or None: the call is to take the ordinary path."""
        loop = asyncio.get_running_loop()
        self.calls += 1
        if not self.busy:  # nobody at the database: this call's own turn, in its task
            self.busy = True
            # calls queued lately: the hop (others queue meanwhile and share the
            # next); else first the attempt on this thread
            inline = self.inline and loop.time() >= self.contended_until
            try:
                got = await _alone(self, engine, work, inline)
            finally:
                self.busy = False
                self._next(engine)
            if inline and loop.time() - self.turn_at >= LOOP_HOLD:
                await self._turn(loop)
            return got[0] if got else None
        self.contended_until = loop.time() + CONTENDED
        future: asyncio.Future[Any] = loop.create_future()
        self.pending.append((work, future))
        return await future

    async def _turn(self, loop: asyncio.AbstractEventLoop) -> None:
        """Calls done on this thread never gave the loop a turn: one now (a
        caller in a loop must not starve other tasks). Other calls made
        meanwhile: callers are many, and the hop (which they share) serves them
        better than turns on this thread one by one."""
        calls = self.calls
        await asyncio.sleep(0)
        self.turn_at = loop.time()
        if self.calls != calls:
            self.contended_until = self.turn_at + CONTENDED

    def committed(self, seconds: float) -> None:
        """A COMMIT took ``seconds``: into the moving average."""
        cost = self.commit_cost
        self.commit_cost = seconds if cost == math.inf else 0.75 * cost + 0.25 * seconds

    def _next(self, engine: Engine) -> None:
        """Calls queued during a hop: one task of its own runs them, batch after
        batch (a caller cancelled while waiting cancels no hop of others)."""
        if self.pending and self.task is None:
            self.busy = True
            self.task = asyncio.get_running_loop().create_task(self._drain(engine))

    async def _drain(self, engine: Engine) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending[:MAX_BATCH], self.pending[MAX_BATCH:]
                try:
                    works = [work for work, _ in batch]
                    got = await greenlet_spawn(_on_driver_thread, engine, works)
                except BaseException as exc:  # a pool timeout, say: raised to its callers
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), one in zip(batch, got or [None] * len(batch), strict=True):
                    if not future.done():
                        future.set_result(one)
        finally:
            self.task = None
            self.busy = False


def _on_driver_thread(
    engine: Engine, works: list[Callable[[sqlite3.Connection], Any]]
) -> list[Any] | None:
    """Inside SQLAlchemy's greenlet bridge: a pooled connection, the batch run
    on aiosqlite's thread with the sqlite3 connection (one hop), the connection
    back to the pool. None: every call is to take the ordinary path (no
    connection could be had, it was closed before anything was sent, a
    transaction was open on it, or the batch's transaction failed and was rolled
    back: nothing stored)."""
    raw = checkout(engine)
    if raw is None:
        return None
    with _Lent(raw) as lent:
        driver: Any = raw.driver_connection
        try:
            got = await_only(driver._execute(_batch, works, driver._conn))
        except ValueError:  # aiosqlite: "Connection closed" / "no active connection"
            raw.invalidate()
            return None
        except sqlite3.Error:
            lent.clean = True  # _batch rolled back
            return None
        lent.clean = got is not None
        return got  # type: ignore[no-any-return]


class _Lent:
    """A pooled connection lent to one hop or inline call, given back at the end:
    closed if invalidated, else checked in; ``clean`` when the call ended its
    transaction (COMMIT or ROLLBACK), so that the pool's reset, one more hop to
    aiosqlite's thread, has nothing to roll back and is skipped."""

    def __init__(self, raw: Any, clean: bool = False) -> None:
        self.raw, self.clean = raw, clean

    def __enter__(self) -> _Lent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.give_back()

    def give_back(self) -> None:
        if self.raw.dbapi_connection is None:  # invalidated
            self.raw.close()
        else:
            self.raw._checkin(transaction_was_reset=self.clean)


async def _alone(
    writer: Writer, engine: Engine, work: Callable[[sqlite3.Connection], Any], inline: bool
) -> list[Any] | None:
    """With nothing else of this engine's at the database (the writer is
    idle): a pooled connection and first the call's statements run right here
    on the event loop's thread (:func:`_inline`), which never waits: no lock
    wait (busy timeout 0 for the attempt), no fsync (a COMMIT that has
    something to write goes to aiosqlite's thread). When the attempt cannot
    be made (another connection holds the write lock, the connection is not
    to be used from this thread) the call takes its hop to aiosqlite's thread
    on the same connection. No greenlet bridge where the pool hands over and
    takes back a connection without I/O (checkout_async, quiet_return).
    None: the ordinary path runs (nothing stored)."""
    raw = await checkout_async(engine)
    if raw is None:
        return None
    clean = False
    try:
        driver: Any = raw.driver_connection
        db = _idle_sqlite3(driver) if inline else None
        done: Any = _DECLINED
        if db is not None:
            done = _inline(writer, work, db)
        if done is _DECLINED:  # the hop, as for a batch of one
            done = await driver._execute(_batch, [work], driver._conn)
        elif isinstance(done, _Written):  # written here, committed on aiosqlite's thread
            done = await driver._execute(_commit, writer, done.result, db)
        clean = True  # the transaction was ended: committed or rolled back
        return done  # type: ignore[no-any-return]
    except ValueError:  # aiosqlite: "Connection closed" / "no active connection"
        await greenlet_spawn(raw.invalidate)
        return None
    except sqlite3.Error:
        clean = True  # rolled back
        return None
    finally:
        await _given_back(raw, clean)


async def _given_back(raw: Any, clean: bool) -> None:
    """The connection back to the pool: without the pool's reset when the call
    ended its transaction, and outside the greenlet bridge when that needs no
    I/O (see quiet_return)."""
    if raw.dbapi_connection is not None and clean and quiet_return(raw._pool):
        raw._checkin(transaction_was_reset=True)
    else:
        await greenlet_spawn(_Lent(raw, clean).give_back)


_DECLINED: Any = object()  # the inline attempt was not made, or gave up: take the hop


class _Written:
    """The inline attempt wrote: its result, once aiosqlite's thread has
    run the COMMIT (the transaction is open until then)."""

    __slots__ = ("result",)

    def __init__(self, result: Any) -> None:
        self.result = result


def _idle_sqlite3(driver: Any) -> sqlite3.Connection | None:
    """The sqlite3 connection of a freshly checked-out aiosqlite connection,
    when nothing is queued for its thread (every operation SQLAlchemy sent
    on it was awaited before it came back to the pool, so its thread is
    idle: this thread can use it without the two ever running at once) and
    no transaction is open on it; else None."""
    db = driver._connection
    if db is None or not driver._running or not driver._tx.empty() or db.in_transaction:
        return None
    return db  # type: ignore[no-any-return]


def _inline(
    writer: Writer, work: Callable[[sqlite3.Connection], Any], db: sqlite3.Connection
) -> Any:
    """On the event loop's thread: BEGIN IMMEDIATE with the busy timeout at 0
    (a lock held by another connection or process fails at once instead of
    waiting), the call's statements, then ROLLBACK when they changed nothing
    (a duplicate, an existing row: nothing to commit, nothing to sync). A call
    that wrote gives :class:`_Written`, the transaction still open (its COMMIT
    syncs: aiosqlite's thread runs it, :func:`_commit`). _DECLINED:
    nothing was done (the transaction, if begun, was rolled back): the hop.
    An error of the statements themselves (NOT NULL, CHECK, ...) is raised
    with the transaction rolled back: the ordinary path runs and raises it."""
    try:
        timeout = db.execute("PRAGMA busy_timeout").fetchone()[0]
    except sqlite3.ProgrammingError as exc:
        if "thread" in str(exc):  # made with check_same_thread=True: never from here
            writer.inline = False
        return _DECLINED
    # PRAGMA takes no bound parameters; the values are ints read or fixed here
    db.execute("PRAGMA busy_timeout = 0")
    try:
        db.execute("BEGIN IMMEDIATE")
        changes = db.total_changes
        got = work(db)
    except sqlite3.Error as exc:
        if db.in_transaction:
            db.execute("ROLLBACK")
        if _waits(exc):  # wait on aiosqlite's thread
            return _DECLINED
        raise
    else:
        if db.total_changes == changes:
            db.execute("ROLLBACK")  # nothing written: nothing to commit
            return [got]
        if writer.commit_cost < COMMIT_BUDGET and _committed_here(writer, db):
            return [got]
        return _Written(got)
    finally:
        db.execute(f"PRAGMA busy_timeout = {int(timeout)}")


def _waits(exc: sqlite3.Error) -> bool:
    """Another connection holds a lock this one would have to wait for
    (:func:`_busy`), or the error has no SQLite code to tell: the hop decides."""
    return getattr(exc, "sqlite_errorcode", None) is None or _busy(exc)


def _committed_here(writer: Writer, db: sqlite3.Connection) -> bool:
    """The COMMIT of an inline attempt on the loop's thread, timed, the busy
    timeout still 0: False (the transaction still open) when it would have to
    wait for a lock (readers of a rollback journal's database): aiosqlite's
    thread then commits."""
    start = time.perf_counter()
    try:
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        if db.in_transaction and _waits(exc):
            return False
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    writer.committed(time.perf_counter() - start)
    return True


def _commit(writer: Writer, result: Any, db: sqlite3.Connection) -> list[Any]:
    """On aiosqlite's thread: the COMMIT of an inline attempt that wrote, timed
    (a failed COMMIT is rolled back and raised: nothing stored)."""
    start = time.perf_counter()
    try:
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    writer.committed(time.perf_counter() - start)
    return [result]


def _batch(works: list[Callable[[sqlite3.Connection], Any]], db: sqlite3.Connection) -> Any:
    """On aiosqlite's thread: the calls in one transaction, each in a savepoint.
    A call whose SQL
    raised gives None (its savepoint rolled back); an error that ends the
    transaction, or the COMMIT's, rolls everything back and is raised."""
    if db.in_transaction:
        return None  # not this path's transaction to use
    db.execute("BEGIN IMMEDIATE")
    try:
        # a lone call needs no savepoint: the transaction is its own
        out = [works[0](db)] if len(works) == 1 else [_in_savepoint(w, db) for w in works]
        # statements, not db.commit(): they end the transaction whatever the
        # connection's transaction control (Python 3.12's autocommit=True makes
        # commit() and rollback() do nothing)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return out


def _in_savepoint(work: Callable[[sqlite3.Connection], Any], db: sqlite3.Connection) -> Any:
    db.execute("SAVEPOINT oc_call")
    try:
        got = work(db)
    except sqlite3.Error:
        # a constraint error ends the statement only; one that ended the whole
        # transaction makes ROLLBACK TO fail, which ends the batch
        db.execute("ROLLBACK TO oc_call")
        db.execute("RELEASE oc_call")
        return None
    db.execute("RELEASE oc_call")
    return got


def _insert_one(sql: str, args: list[Any], db: sqlite3.Connection) -> list[Any]:
    """On aiosqlite's thread, in the batch's transaction: the one-row INSERT ...
    RETURNING; the returned records (none: a duplicate)."""
    return db.execute(sql, args).fetchall()


def _get_or_create_one(
    select: str, select_args: list[Any], insert: str, insert_args: list[Any], db: sqlite3.Connection
) -> tuple[Any, bool]:
    """On aiosqlite's thread, under the write lock: (record, created), record
    None when the key's row cannot be read with the lookup."""
    found = db.execute(select, select_args).fetchall()
    if found:
        return found[0], False
    made = db.execute(insert, insert_args).fetchall()
    if made:
        return made[0], True
    found = db.execute(select, select_args).fetchall()
    return (found[0] if found else None), False
