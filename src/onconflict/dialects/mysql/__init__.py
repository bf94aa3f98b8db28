"""MySQL and MariaDB: guarded ``INSERT IGNORE``.

Why this form (measured on MariaDB 10.11, see docs/semantics.md):

* ``INSERT ... ON DUPLICATE KEY UPDATE pk = pk`` reacts to duplicates only, but
  under SQLAlchemy's CLIENT_FOUND_ROWS the row count is 1 for an inserted row
  and for a duplicate alike, and MariaDB's ``RETURNING`` returns existing rows
  too: it cannot say which rows were inserted.
* ``INSERT IGNORE ... RETURNING`` (MariaDB >= 10.5) returns exactly the inserted
  rows, but IGNORE turns every error into a warning: NULL stored as ``''``, long
  values truncated, foreign-key failures dropped.

So onconflict runs ``INSERT IGNORE`` inside a SAVEPOINT and then reads the
warnings of that statement. It keeps the statement only when every warning is
a duplicate key (1062) and there is exactly one per skipped row. Otherwise it
rolls the savepoint back (nothing stored) and re-runs the same rows as
``INSERT ... ON DUPLICATE KEY UPDATE pk = pk`` in a savepoint it always rolls
back, so that the server raises its own error (1048, 1406, 1452, 4025, ...).
When more warnings exist than the server keeps (``max_error_count``), the rows
are redone in smaller statements so every warning can be seen.

Without RETURNING (MySQL 8, MariaDB < 10.5) each row is its own statement and
the affected-row count (1 inserted, 0 skipped) gives the outcome.

MySQL has no conflict target: any unique key fires. The core refuses a call
whose rows could hit a unique key other than the requested one unless
``on=onconflict.ANY_KEY``.
"""

from __future__ import annotations

import functools
import hashlib
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.sql import visitors
from sqlalchemy.sql.dml import Insert
from sqlalchemy.util import await_only, greenlet_spawn

from onconflict._excluded import has_expressions, substitute
from onconflict._keys import Keys, align, by_key, fold_text
from onconflict._target import ConflictTarget, duplicate_of_target
from onconflict.dialects.base import (
    DialectSupport,
    DriverStatement,
    FetchPlan,
    Outcome,
    Row,
    UpsertPlan,
    checkout,
    collation_folds,
    connection_lost,
    execute_row,
    execute_rows,
    in_autocommit,
    is_string,
    plain_engine,
    select_by_keys,
    with_primary_key,
)
from onconflict.exceptions import (
    NotSupportedError,
    OutcomeMismatchError,
    SeedLockTimeout,
    UnsafeInsertError,
)
from onconflict.retry import Restart

DUPLICATE_KEY = 1062
SHOW_WARNINGS = sa.text("SHOW WARNINGS")
WARNING_COUNTS = sa.text("SELECT @@warning_count, @@max_error_count")
ERROR_LIMIT = sa.text("SELECT @@max_error_count")
SET_LIMIT = sa.text("SET SESSION max_error_count = :n")
GET_LOCK = sa.select(sa.func.get_lock(sa.bindparam("name"), sa.bindparam("timeout")))
RELEASE_LOCK = sa.select(sa.func.release_lock(sa.bindparam("name")))
WARNINGS_WANTED = 65535  # the largest max_error_count; a statement has at most 1000 rows
SAVED_LIMIT = "onconflict.saved_max_error_count"
OWNED = "onconflict.owned"  # conn.info: the running call owns its transaction
# conn.info: the transaction (begin_owned) whose call may restart after a lost race
RESTARTABLE = "onconflict.restartable"
# conn.info: update_or_create is running (its reads take the exclusive lock)
EXCLUSIVE = "onconflict.exclusive"
READ_COMMITTED = sa.text("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")

# aiomysql turns every server warning into a Python warning; a skipped duplicate
# is the expected outcome of insert_ignore, not something to warn about.
warnings.filterwarnings("ignore", message=r"Duplicate entry .* for key ", category=Warning)


COLLATIONS = "onconflict.collations"  # conn.info: (schema, table) -> column key -> fold
READ_COLLATIONS = sa.text(
    "SELECT COLUMN_NAME, COLLATION_NAME FROM information_schema.COLUMNS"
    " WHERE TABLE_SCHEMA = COALESCE(:schema, DATABASE()) AND TABLE_NAME = :name"
)


def collation_fold(collation: str | None) -> Callable[[str], str] | None:
    """How a collation compares strings, as a Python fold (None: exactly):
    ``_ci`` ignores case, ``_ci`` without ``_as_`` also accents, and PAD SPACE
    (every collation but NO PAD ones and MySQL's ``0900`` ones) ignores
    trailing spaces. An approximation of the collation's tables: it covers
    case, combining accents and padding."""
    if not collation:
        return None
    name = collation.lower()
    parts = name.split("_")
    pad = "nopad" not in parts and "0900" not in parts
    ci = "ci" in parts
    ai = ci and "as" not in parts
    if not (pad or ci):
        return None
    return functools.partial(fold_text, pad=pad, ci=ci, ai=ai)


# Errors after which InnoDB has rolled back the whole transaction, savepoints
# included: deadlock, and lock wait timeout (with innodb_rollback_on_timeout).
TRANSACTION_LOST = frozenset({1213, 1205})
# A FOR UPDATE NOWAIT that met a held row: MariaDB (lock wait timeout), MySQL 8
LOCK_BUSY = frozenset({1205, 3572})


class GuardedInsert(mysql.Insert):
    """``INSERT IGNORE`` as onconflict guards it. A statement of ONE row runs as
    a plain INSERT instead (``MySQL.write_row``); ``target`` is the conflict
    target its duplicate error is checked against (None: any duplicate is
    skipped, as IGNORE skips it)."""

    inherit_cache = True
    target: ConflictTarget | None = None
    returns = False


class _Overflow(Exception):
    def __init__(self, kept: int) -> None:
        self.kept = kept


class MySQL(DialectSupport):
    name = "mysql"
    native = True
    targets_conflicts = False

    def max_statement_bytes(self, dialect: Dialect) -> int | None:
        # well under max_allowed_packet's smallest common default (4 MiB on MySQL 5.7)
        return 2 * 1024 * 1024

    def insert_ignore(self, table: sa.Table, target: ConflictTarget, returning: bool) -> Insert:
        return self._ignore(table, target, returning)

    def _ignore(
        self, table: sa.Table, target: ConflictTarget | None, returning: bool
    ) -> GuardedInsert:
        return _guarded_insert(table, target, returning)

    def one_row_statement(self, table: sa.Table, target: ConflictTarget) -> Insert:
        """A plain INSERT ... RETURNING: its error says exactly what one row met."""
        return _plain_insert(table, True)

    def check_target(self, table: sa.Table, target: ConflictTarget) -> None:
        key = target.key
        if key is not None and not key.columns:
            raise NotSupportedError(
                f"an expression index ({key.describe()}) as the conflict target on"
                f" {table.name!r}: MariaDB has no expression indexes, and MySQL cannot"
                " name a conflict target. Store the expression in a generated column"
                " with a unique index and target that column instead."
            )

    def key_identity(
        self, conn: Connection, table: sa.Table, keys: Keys, columns: tuple[str, ...]
    ) -> bool:
        """Fold string keys as the columns' collations compare them (the default
        utf8mb4 collations are case-insensitive, most accent-insensitive, and
        PAD SPACE ignores trailing spaces). The collations are read from
        information_schema once per connection and table, and only for keys
        with a string column."""
        if not any(is_string(table.c[c]) for c in columns):
            return False

        def read() -> Iterator[tuple[str, Any]]:
            found = conn.execute(READ_COLLATIONS, {"schema": table.schema, "name": table.name})
            return ((column, collation_fold(collation)) for column, collation in found)

        folds = collation_folds(conn, table, COLLATIONS, read)
        keys.set_folds(folds)
        return bool(folds)

    def duplicate_noop(self, table: sa.Table) -> Insert:
        """``INSERT ... ON DUPLICATE KEY UPDATE c = c``: raises every non-duplicate error."""
        col = next(iter(table.primary_key.columns), None)
        if col is None:
            col = next(iter(table.c))
        return mysql.insert(table).on_duplicate_key_update({col: col})  # by Column: key != name

    # -- upsert ------------------------------------------------------------------
    # 1. lock-read: SELECT ... FOR UPDATE the keys, in key order: the existing
    #    rows are locked exclusively before anything else touches them. (Taking
    #    the shared lock of a duplicate check first and upgrading it for the
    #    UPDATE is what deadlocks concurrent upserters of the same keys.)
    # 2. insert: the guarded INSERT IGNORE above for the keys not found: exactly
    #    the inserted rows. A row it skips was inserted by someone else meanwhile
    #    (possible under READ COMMITTED) and is treated as existing; where the
    #    rows can also hit another unique key, a locking read by the target key
    #    first tells that from a duplicate of the other key (then raised).
    # 3. update: the existing rows, by one ON DUPLICATE KEY UPDATE with a
    #    multi-row VALUES list (unconditional update: all of them "updated"),
    #    or, with a condition or another reachable unique key, by one UPDATE
    #    ... WHERE target = key each, whose matched-row count
    #    (CLIENT_FOUND_ROWS) says whether it held;
    # 4. read-back: the updated rows are read for the result.

    def prepare_upsert(self, plan: UpsertPlan, dialect: Dialect) -> None:
        table = plan.table
        plan.extra["returning"] = bool(dialect.insert_returning)
        # (a row skipped though its target key was not found: _check_skipped)
        plan.statement = self._ignore(table, None, plan.extra["returning"])
        if plan.where is None and not plan.extra.get("other_keys"):
            odku = mysql.insert(table)

            def incoming(col: sa.Column[Any]) -> Any:
                return odku.inserted[col.key]

            set_ = {col: substitute(v, table, incoming) for col, v in plan.set_.items()}
            plan.extra["update_all"] = odku.on_duplicate_key_update(set_)
            # the drivers' executemany cannot send bound values of the UPDATE
            # part: with any, the rows go in a multi-row VALUES list instead
            plan.extra["update_binds"] = any(map(_binds, set_.values()))
            return

        def param(col: sa.Column[Any]) -> Any:
            return sa.bindparam(f"oc_new_{col.key}", type_=col.type)

        key = [table.c[c] == sa.bindparam(f"oc_key_{c}", type_=table.c[c].type) for c in plan.match]
        set_ = {col: substitute(v, table, param) for col, v in plan.set_.items()}
        update = sa.update(table).where(*key).values(set_)
        if plan.where is not None:
            update = update.where(substitute(plan.where, table, param))
        plan.extra["update_one"] = update

    def write_upsert(self, conn: Connection, plan: UpsertPlan, rows: list[Row]) -> list[Outcome]:
        keyed = bool(plan.target.columns) and plan.match == plan.target.columns
        found = self._lock_keys(conn, plan, rows) if keyed else set()
        inserted = self._insert_new(conn, plan, rows, found)
        existing = [row for row, ins in zip(rows, inserted, strict=True) if ins is None]
        if existing:
            skipped = [r for r in existing if plan.keys.of(r, plan.match) not in found]
            if plan.extra.get("other_keys"):
                self._check_skipped(conn, plan, skipped, keyed)
            elif keyed and skipped:  # made by another caller since phase 1: a lost
                _restart_if_owned(conn)  # race, whose shared lock the UPDATE would upgrade
        updated = self._update_existing(conn, plan, existing) if existing else []
        stored = self._read_back(conn, plan, updated)
        out: list[Outcome] = []
        for row, ins in zip(rows, inserted, strict=True):
            if ins is not None:
                out.append(("inserted", ins))
            elif (after := stored.get(plan.keys.of(row, plan.match))) is not None:
                out.append(("updated", after))
            else:
                out.append(("unchanged", None))
        return out

    def _lock_keys(
        self, conn: Connection, plan: UpsertPlan, rows: list[Row]
    ) -> set[tuple[Any, ...]]:
        """Phase 1: the keys of ``rows`` that exist, their rows locked FOR UPDATE
        (then, in a call that owns its transaction, phase 1b for the others)."""
        restartable = _restartable(conn)
        if not restartable:
            # the caller's transaction, REPEATABLE READ perhaps: a locking read of
            # a key that does not exist takes a gap lock, which blocks the
            # inserts of every other caller into that gap (deadlocks). A plain
            # read first: only keys that exist are then locked (record locks).
            read = select_by_keys(plan, rows, key_only=True)
            there = {plan.keys.of(dict(r), plan.match) for r in conn.execute(read).mappings()}
            rows = [r for r in rows if plan.keys.of(r, plan.match) in there]
            if not rows:
                return set()
        lock = select_by_keys(plan, rows, key_only=True)
        lock = lock.order_by(*(plan.table.c[c] for c in plan.match)).with_for_update()
        found = {plan.keys.of(dict(r), plan.match) for r in conn.execute(lock).mappings()}
        if len(found) < len(rows) and restartable:
            found |= self._lock_new_keys(conn, plan, rows, found)
        return found

    def _lock_new_keys(
        self, conn: Connection, plan: UpsertPlan, rows: list[Row], found: set[tuple[Any, ...]]
    ) -> set[tuple[Any, ...]]:
        """Phase 1b, in a call that owns its transaction: the keys phase 1 did not
        find, read again FOR UPDATE NOWAIT just before the INSERT. A key another
        caller made since phase 1 is locked now if it is free (it is then an
        existing row); if it is still held (being made, or locked by a caller
        that may be waiting for a row this call holds: out of key order, so a
        deadlock in the making), the call restarts at once instead of waiting."""
        if not _has_nowait(conn.dialect):
            return set()
        missing = [r for r in rows if plan.keys.of(r, plan.match) not in found]
        read = select_by_keys(plan, missing, key_only=True).with_for_update(nowait=True)
        try:
            return {plan.keys.of(dict(r), plan.match) for r in conn.execute(read).mappings()}
        except sa.exc.OperationalError as exc:
            if _error_number(exc) in LOCK_BUSY:
                raise Restart("a key made since the locking read is held: run again") from exc
            raise

    def _insert_new(
        self, conn: Connection, plan: UpsertPlan, rows: list[Row], found: set[tuple[Any, ...]]
    ) -> list[Row | None]:
        """Phase 2: the guarded INSERT IGNORE of the rows whose key was not found;
        the stored row of each input row it inserted, else None."""
        fresh = [i for i, row in enumerate(rows) if plan.keys.of(row, plan.match) not in found]
        inserted: list[Row | None] = [None] * len(rows)
        if not fresh:
            return inserted
        batch = [rows[i] for i in fresh]
        if plan.extra["returning"]:
            returned = self.write_many(conn, plan.statement, batch)
            done = align(plan.keys, plan.table, batch, returned, plan.match)
        else:
            done = [self.write_one(conn, plan.statement, row) for row in batch]
        for i, one in zip(fresh, done, strict=True):
            inserted[i] = one
        return inserted

    def _check_skipped(
        self, conn: Connection, plan: UpsertPlan, skipped: list[Row], keyed: bool
    ) -> None:
        """Rows INSERT IGNORE skipped though their target key was not found: a
        duplicate of the target key made meanwhile is an existing row; anything
        else is a duplicate of another unique key, raised as the server raises
        it (a plain INSERT of those rows, always rolled back), as PostgreSQL
        and SQLite do for a conflict outside their target."""
        if not skipped:
            return
        now: set[tuple[Any, ...]] = set()
        if keyed:  # (rows without the target key can only be duplicates of another)
            lock = select_by_keys(plan, skipped, key_only=True).with_for_update()
            now = {plan.keys.of(dict(r), plan.match) for r in conn.execute(lock).mappings()}
        others = [r for r in skipped if plan.keys.of(r, plan.match) not in now]
        if not others:
            return
        probe = conn.begin_nested()
        try:
            execute_rows(conn, sa.insert(plan.table), others)
        finally:
            probe.rollback()
        keys = ", ".join(k.describe() for k in plan.extra["other_keys"])
        raise OutcomeMismatchError(
            f"{len(others)} row(s) of the upsert into {plan.table.name!r} were skipped as"
            f" duplicates though no row has their {plan.target.describe()}: a duplicate"
            f" of {keys} that is gone again; nothing was stored"
        )

    def _update_existing(self, conn: Connection, plan: UpsertPlan, rows: list[Row]) -> list[Row]:
        """Phase 3: update the existing rows; the rows an update held for."""
        update_all = plan.extra.get("update_all")
        if update_all is not None:
            if plan.extra["update_binds"] or has_expressions(rows):
                # one statement whose VALUES rows carry every row's own values
                # (and SQL expressions as they are); the UPDATE's values bound once
                conn.execute(update_all.values(rows))
            else:  # executemany: the driver batches it, no compile per row count
                conn.execute(update_all, rows)
            return rows
        update = plan.extra["update_one"]
        updated: list[Row] = []
        for row in rows:
            if has_expressions([row]):
                done = conn.execute(_update_with_expressions(plan, row))
            else:
                params = {f"oc_new_{c}": v for c, v in row.items()}
                params.update({f"oc_key_{c}": row[c] for c in plan.match})
                done = conn.execute(update, params)
            if done.rowcount:
                updated.append(row)
        return updated

    def _read_back(
        self, conn: Connection, plan: UpsertPlan, updated: list[Row]
    ) -> dict[tuple[Any, ...], Row]:
        """Phase 4: the updated rows as stored, by key."""
        stored: dict[tuple[Any, ...], Row] = {}
        if updated:
            for now in conn.execute(select_by_keys(plan, updated)).mappings():
                stored[plan.keys.of(dict(now), plan.match)] = dict(now)
        return stored

    # -- the locks of a call's own transaction ------------------------------------
    # Under REPEATABLE READ, a locking read (or a duplicate check) of a key that
    # does not exist yet takes a gap lock; gap locks do not conflict with each
    # other, but each blocks the others' inserts into the gap (insert-intention
    # locks): two upserts of new keys in the same gap deadlock. A call that owns
    # its transaction runs it at READ COMMITTED, where locking reads take no gap
    # locks; its locking reads (FOR UPDATE, phase 1) see the latest committed
    # rows, which is all the upsert and get_or_create rely on.
    #
    # A creation race lost (INSERT IGNORE met a row another caller committed
    # after our read) leaves a SHARED lock on that row; upgrading it for an
    # UPDATE deadlocks with every other loser of the same race. A call that owns
    # its transaction restarts instead (retry.Restart: rolled back at once, which
    # frees the lock; the next run finds the row and locks it exclusively first).

    def begin_owned(self, conn: Connection, restartable: bool) -> None:
        """READ COMMITTED for the call's own transaction, unless the engine (or
        create_engine) names an isolation level of its own; and mark the
        transaction as one whose call may restart after a lost race."""
        if not _level_chosen(conn):
            conn.execute(READ_COMMITTED)  # (the next transaction only: nothing to reset)
        conn.info[RESTARTABLE] = conn.get_transaction() if restartable else None

    def prepare_fetch(self, plan: FetchPlan) -> None:
        super().prepare_fetch(plan)
        # any duplicate skipped: a row that cannot be read after it is what
        # conflict_elsewhere then explains (a race, or another key)
        plan.statements["insert"] = self._ignore(plan.table, None, False)
        plan.statements["insert_returning"] = self._ignore(plan.table, None, True)
        plan.statements["select_exclusive"] = plan.statements["select"].with_for_update()

    def lock_for_update_or_create(self, conn: Connection) -> None:
        """update_or_create reads the row FOR UPDATE (exclusive) from the start:
        the UPDATE that follows needs no upgrade of a shared lock."""
        conn.info[EXCLUSIVE] = True

    def get_or_create_once(self, conn: Connection, plan: FetchPlan) -> tuple[Row, bool] | None:
        """As the base class does; but update_or_create in a call that owns its
        transaction reads the row FOR UPDATE (exclusive) from the start, and
        restarts after a lost race instead of reading the row with the shared
        lock the INSERT left (which the UPDATE would have to upgrade)."""
        if not (conn.info.get(EXCLUSIVE) and _restartable(conn)):
            return super().get_or_create_once(conn, plan)
        look = plan.bound(plan.lookup)
        read = plan.statements["select_exclusive"]
        found = conn.execute(read, look).mappings().first()
        if found is not None:
            return dict(found), False
        made = self.create_row(conn, plan)
        if made is not None:
            return made, True
        if conn.execute(plan.statements["select"], look).first() is not None:
            # (a plain read: no lock) the row is there now: a lost race
            raise Restart("lost a creation race: run again, exclusive lock first")
        return None  # a lookup mismatch, a duplicate of another key: check_miss says

    @contextmanager
    def seed_lock(self, conn: Connection, name: str, timeout: float) -> Iterator[None]:
        """GET_LOCK: a named lock of the session (not the transaction), released
        at the end. Names are limited to 64 characters: longer ones are hashed."""
        if len(name) > 64:
            name = "onconflict." + hashlib.sha256(name.encode()).hexdigest()[:40]
        try:
            got = conn.execute(GET_LOCK, {"name": name, "timeout": max(1, round(timeout))}).scalar()
        except Exception:
            _drop(conn)  # an error may still leave the lock granted to the session
            raise
        if got != 1:
            raise SeedLockTimeout(
                f"could not take the seed lock {name!r} within {timeout:g}s:"
                " another seed is still running"
            )
        try:
            yield
        except BaseException:
            _release_or_drop(conn, name)
            raise
        try:
            conn.execute(RELEASE_LOCK, {"name": name})
        except Exception:
            # (Galera can abort the transaction at any statement, this one too):
            # the session is dropped, which frees the lock; the error is raised
            _drop(conn)
            raise

    async def insert_ignore_fast(self, engine: Any, prepared: Any) -> dict[int, Row] | None:
        """A one-row insert_ignore that owns its work, on aiomysql (MariaDB with
        RETURNING): the plain one-row INSERT ... RETURNING of ``write_row`` run
        on the pooled driver connection, compiled once per shape, without
        SQLAlchemy's per-call execution.

        The same decisions as the ordinary path's, in one transaction: kept
        (COMMIT) only when the row came back with no warning; reported existing
        (ROLLBACK, which also ends the shared lock the duplicate left) only for
        error 1062 naming the conflict target (or a key the table does not
        declare). Anything else is rolled back and None returned: the ordinary
        path then runs the call again and raises the server's own error,
        exactly as it would have. Nothing is committed before that decision, so
        running it again is safe; only a connection lost during the COMMIT
        itself is raised (the outcome is unknown).
        """
        if not plain_engine(engine, "aiomysql") or not engine.dialect.insert_returning:
            return None  # (RETURNING is known once the engine has connected)
        one = self.one_row_insert(engine, prepared)
        if one is None:
            return None
        fast, index, args = one
        sync, table, target = engine.sync_engine, prepared.table, prepared.target
        row = await greenlet_spawn(_insert_ignore_aiomysql, sync, fast, args, table, target)
        if row is None:
            return None
        return {index: row} if row else {}

    async def get_or_create_fast(
        self, engine: Any, plan: FetchPlan, attempts: int
    ) -> tuple[Row, bool] | None:
        """get_or_create on the aiomysql connection of an engine-owned call, in one
        transaction: SELECT (then ROLLBACK: a read) or, when there is no row, the
        guarded INSERT IGNORE ... RETURNING (COMMIT) or, when another caller made
        it meanwhile, a locking read of it. Anything else is rolled back and the
        ordinary path runs. None whenever it does not apply."""
        if not plain_engine(engine, "aiomysql") or not engine.dialect.insert_returning:
            return None
        if has_expressions([plan.params]):
            return None  # a SQL expression would be sent as its text: the usual path
        by_dialect: dict[Any, _FetchStatements] = plan.statements.setdefault("aiomysql", {})
        statements = by_dialect.get(engine.dialect)
        if statements is None:
            dialect, table = engine.dialect, plan.table
            values = {c: sa.bindparam(f"oc_{c}", type_=table.c[c].type) for c in plan.values}
            statements = by_dialect[dialect] = (
                DriverStatement(plan.statements["select"], dialect),
                DriverStatement(plan.statements["select_locked"], dialect),
                DriverStatement(
                    plan.statements["insert_returning"].values(values), dialect, table.c
                ),
            )
        if statements[2].needs_context:
            return None
        return await greenlet_spawn(
            _get_or_create_aiomysql, engine.sync_engine, statements, plan.params, attempts
        )

    def conflict_elsewhere(self, conn: Connection, plan: FetchPlan) -> None:
        """INSERT IGNORE skips a duplicate of ANY unique key, so a get_or_create
        whose values collide with another unique key than the lookup's (a
        ``defaults`` column, say) finds no row, again and again. The same INSERT
        without IGNORE, in a savepoint always rolled back, raises the server's own
        IntegrityError for it, unless the lookup key's row exists by then (a race:
        the caller's next attempt reads it)."""
        values = {k: plan.params[k] for k in plan.values}
        probe = conn.begin_nested()
        try:
            conn.execute(mysql.insert(plan.table), values)
        except sa.exc.DBAPIError as exc:
            if self.transaction_lost(exc) or exc.connection_invalidated:
                raise
            probe.rollback()
            select_key = plan.statements.get("select_key", plan.statements["select_locked"])
            if isinstance(exc, sa.exc.IntegrityError):
                found = conn.execute(select_key, plan.bound(plan.lookup)).first()
                if found is not None:
                    return
            raise
        probe.rollback()  # the row had been deleted: the next attempt makes it

    def transaction_lost(self, exc: BaseException) -> bool:
        args: tuple[Any, ...] = getattr(getattr(exc, "orig", None), "args", ())
        return bool(args) and args[0] in TRANSACTION_LOST

    def write_many(self, conn: Connection, stmt: Insert, rows: list[Row]) -> list[Row]:
        if len(rows) == 1 and _plain_row(conn, stmt):
            one = self.write_row(conn, stmt, rows[0])  # type: ignore[arg-type]
            return [] if one is None else [one]

        def run() -> tuple[list[Row], sa.CursorResult[Any]]:
            result = execute_rows(conn, stmt, rows)
            return [dict(m) for m in result.mappings()], result

        try:
            returned: list[Row] = self._guarded(conn, stmt, rows, run)
            return returned
        except _Overflow as over:
            if over.kept < WARNINGS_WANTED and SAVED_LIMIT not in conn.info:
                # keep enough warnings to check a whole statement; put back by scope()
                conn.info[SAVED_LIMIT] = over.kept
                conn.execute(SET_LIMIT, {"n": WARNINGS_WANTED})
                return self.write_many(conn, stmt, rows)
            out: list[Row] = []
            for i in range(0, len(rows), over.kept):
                out.extend(self.write_many(conn, stmt, rows[i : i + over.kept]))
            return out

    @contextmanager
    def scope(self, conn: Connection, owned: bool = False) -> Iterator[None]:
        if in_autocommit(conn):
            # each statement would commit as it runs: a row INSERT IGNORE coerced
            # (a value cut short, say) would be stored before its warning is read
            raise UnsafeInsertError(
                "onconflict cannot guard INSERT IGNORE on a MySQL/MariaDB connection in"
                " AUTOCOMMIT: a row the server coerced could not be undone. Pass the"
                " engine (the call then runs in a transaction of its own) or a"
                " connection that is not in AUTOCOMMIT."
            )
        outer = conn.info.get(OWNED), conn.info.get(RESTARTABLE), conn.info.get(EXCLUSIVE)
        conn.info[OWNED] = owned
        if not owned:  # (only the transaction begin_owned marked may restart)
            conn.info[RESTARTABLE] = None
        conn.info[EXCLUSIVE] = False
        try:
            yield
        finally:
            # a dead connection has no session to restore (and its info is gone)
            if not conn.invalidated:
                conn.info[OWNED], conn.info[RESTARTABLE], conn.info[EXCLUSIVE] = outer
                if owned:  # the transaction ends with the call: forget it
                    conn.info[RESTARTABLE] = None
                saved = conn.info.pop(SAVED_LIMIT, None)
                if saved is not None:
                    conn.execute(SET_LIMIT, {"n": saved})

    def write_one(self, conn: Connection, stmt: Insert, row: Row) -> Row | None:
        if _plain_row(conn, stmt):
            return self.write_row(conn, stmt, row)  # type: ignore[arg-type]

        def run() -> tuple[Row | None, sa.CursorResult[Any]]:
            result = execute_row(conn, stmt, row)
            if result.rowcount != 1:
                return None, result
            return with_primary_key(stmt.table, row, result), result  # type: ignore[arg-type]

        stored: Row | None = self._guarded(conn, stmt, [row], run)
        return stored

    # -- one row: a plain INSERT ---------------------------------------------------
    # For ONE row, a plain INSERT (no IGNORE, no SAVEPOINT) says exactly what
    # happened: error 1062 is a duplicate (one row, one error), every other
    # problem is the server's own error, and InnoDB rolls back only the failed
    # statement, so the caller's transaction goes on. (Deadlocks and lock wait
    # timeouts roll back more, as they did before: they are raised.) What a
    # plain INSERT can still store with a warning (a note for a rounded decimal
    # or trimmed trailing spaces, a value cut short under a non-strict
    # sql_mode) is undone and raised as UnsafeInsertError, as the guard does.

    def write_row(self, conn: Connection, stmt: GuardedInsert, row: Row) -> Row | None:
        """One row as a plain INSERT: the stored row, or None for a duplicate."""
        table: sa.Table = stmt.table  # type: ignore[assignment]
        plain = _plain_insert(table, stmt.returns)
        try:
            result = execute_row(conn, plain, row)
        except sa.exc.IntegrityError as exc:
            if _error_number(exc) != DUPLICATE_KEY or _elsewhere(conn, stmt, row, exc):
                raise
            return None
        if stmt.returns:
            stored = dict(result.mappings().one())
        else:
            stored = with_primary_key(table, row, result)
        warned = _warnings(conn, result)
        if warned:
            if not conn.info.get(OWNED, False):  # (an owned call's raise rolls back)
                conn.execute(sa.delete(table).where(*_primary_key_of(table, stored)))
            listing = "; ".join(f"{code}: {msg}" for _, code, msg in warned[:5])
            raise UnsafeInsertError(
                f"INSERT into {table.name!r} stored its row with warnings ({listing});"
                " the row was undone: nothing was stored",
                warned,
            )
        return stored

    def _guarded(self, conn: Connection, stmt: Insert, rows: list[Row], run: Any) -> Any:
        table: sa.Table = stmt.table  # type: ignore[assignment]
        # A one-row statement of a call that owns its transaction needs no
        # SAVEPOINT: every problem it can find raises, and the raise rolls the
        # whole transaction back (only a multi-row statement may be redone, after
        # a warnings overflow, and must be undone first).
        bare = len(rows) == 1 and conn.info.get(OWNED, False)
        with nullcontext() if bare else self.savepoint(conn) as sp:
            try:
                out, result = run()
                inserted = len(out) if isinstance(out, list) else int(out is not None)
                problems = self._problems(conn, result, len(rows) - inserted)
            except sa.exc.DBAPIError as exc:
                if not (self.transaction_lost(exc) or exc.connection_invalidated):
                    # IGNORE may fail on a value it coerced itself (NULL -> '' failing
                    # a CHECK): the same rows without IGNORE show the real cause.
                    if sp is not None:
                        sp.rollback()
                    self._probe(conn, table, rows)
                raise
            if not problems:
                return out
            if isinstance(problems, _Overflow):
                assert sp is not None  # one row cannot overflow max_error_count >= 1
                sp.rollback()
                raise problems
            if sp is not None:
                sp.rollback()
            self._raise_database_error(conn, table, rows, problems)

    def _problems(
        self, conn: Connection, result: sa.CursorResult[Any], skipped: int
    ) -> list[tuple[str, int, str]] | _Overflow:
        count = packet_warning_count(conn, result)
        kept: int | None = None
        if count is None:  # a driver we cannot read it from: ask the server
            count, kept = conn.execute(WARNING_COUNTS).one()
        if count == 0:
            return []
        shown = [(str(w[0]), int(w[1]), str(w[2])) for w in conn.execute(SHOW_WARNINGS)]
        bad = [w for w in shown if w[1] != DUPLICATE_KEY]
        if bad:
            return bad
        if count != skipped:
            # more warnings than skipped rows: something besides a duplicate
            return shown or [("Warning", 0, f"{count} warnings, none visible (max_error_count=0)")]
        if count > len(shown):
            if kept is None:
                kept = int(conn.execute(ERROR_LIMIT).scalar_one())
            if kept < 1:
                raise UnsafeInsertError(
                    "cannot check INSERT IGNORE warnings with max_error_count=0;"
                    " set it to 1 or more"
                )
            return _Overflow(kept)
        return []

    def _raise_database_error(
        self,
        conn: Connection,
        table: sa.Table,
        rows: list[Row],
        problems: list[tuple[str, int, str]],
    ) -> None:
        self._probe(conn, table, rows)
        listing = "; ".join(f"{code}: {msg}" for _, code, msg in problems[:5])
        raise UnsafeInsertError(
            f"INSERT IGNORE into {table.name!r} reported more than duplicate keys ({listing});"
            " nothing was stored",
            problems,
        )

    def _probe(self, conn: Connection, table: sa.Table, rows: list[Row]) -> None:
        """Run the rows without IGNORE, always rolled back: raises the server's own
        error for them (in strict mode), or returns."""
        probe = conn.begin_nested()
        try:
            execute_rows(conn, self.duplicate_noop(table), rows)
        finally:
            probe.rollback()


# Statements are built once per shape (SQLAlchemy then finds them in its
# compiled cache by their cache key): building one costs as much as running it.
@functools.lru_cache(maxsize=512)
def _guarded_insert(
    table: sa.Table, target: ConflictTarget | None, returning: bool
) -> GuardedInsert:
    stmt = GuardedInsert(table).prefix_with("IGNORE")
    stmt.target, stmt.returns = target, returning
    if returning:  # (a GuardedInsert still: generative methods keep the class)
        return cast(GuardedInsert, stmt.returning(*by_key(table)))
    return stmt


@functools.lru_cache(maxsize=512)
def _plain_insert(table: sa.Table, returning: bool) -> Insert:
    stmt = mysql.insert(table)
    return stmt.returning(*by_key(table)) if returning else stmt


def _plain_row(conn: Connection, stmt: Insert) -> bool:
    """Whether a one-row statement runs as a plain INSERT (MySQL.write_row): an
    insert_ignore, upsert or get_or_create statement; not where the engine has
    handle_error listeners (they would see the duplicate's error, which the
    guarded INSERT IGNORE never raises); in the caller's transaction only for a
    table with a primary key (a row stored with a warning is deleted by it)."""
    if not isinstance(stmt, GuardedInsert) or conn.dialect.dispatch.handle_error:
        return False
    return bool(conn.info.get(OWNED, False) or stmt.table.primary_key)


def _elsewhere(conn: Connection, stmt: GuardedInsert, row: Row, exc: BaseException) -> bool:
    """A duplicate that is of another unique key than the statement's target
    (the key the error names), while no row has the target key: an error to
    raise, not a row that exists. (A duplicate of both keys names one of them.)"""
    target = stmt.target
    if target is None or duplicate_of_target(exc, stmt.table, target):  # type: ignore[arg-type]
        return False
    table: sa.Table = stmt.table  # type: ignore[assignment]
    cols = [table.c[c] for c in target.columns]
    if not cols or any(row.get(c.key) is None for c in cols):
        return True  # (NULL never collides: it cannot be a duplicate of the target)
    # a locking read: sees the latest committed row, whatever the snapshot
    look = sa.select(*cols).where(*(c == row[c.key] for c in cols)).with_for_update(read=True)
    return conn.execute(look).first() is None


def _warnings(conn: Connection, result: sa.CursorResult[Any]) -> list[tuple[str, int, str]]:
    """The warnings of the statement just run (none: an empty list)."""
    count = packet_warning_count(conn, result)
    if count is None:  # a driver we cannot read it from: ask the server
        count = int(conn.execute(WARNING_COUNTS).first()[0])  # type: ignore[index]
    if not count:
        return []
    shown = [(str(w[0]), int(w[1]), str(w[2])) for w in conn.execute(SHOW_WARNINGS)]
    return shown or [("Warning", 0, f"{count} warnings, none visible (max_error_count=0)")]


def _primary_key_of(table: sa.Table, row: Row) -> list[sa.ColumnElement[bool]]:
    return [col == row[col.key] for col in table.primary_key.columns]


def _level_chosen(conn: Connection) -> bool:
    """Whether the engine, or create_engine, names an isolation level (other
    than AUTOCOMMIT, which onconflict replaces for its own transactions)."""
    chosen = conn.engine.get_execution_options().get("isolation_level")
    if chosen is None:
        chosen = getattr(conn.dialect, "_on_connect_isolation_level", None)
    return chosen not in (None, "AUTOCOMMIT")


def _restartable(conn: Connection) -> bool:
    """Whether the running call owns its transaction and may restart it (see
    MySQL.begin_owned)."""
    marked = conn.info.get(RESTARTABLE)
    return marked is not None and marked is conn.get_transaction()


def _restart_if_owned(conn: Connection) -> None:
    """After a lost creation race: have the call's own transaction rolled back
    and run again at once, where it may."""
    if _restartable(conn):
        raise Restart("lost a creation race: run again, exclusive lock first")


def _has_nowait(dialect: Dialect) -> bool:
    """FOR UPDATE NOWAIT: MariaDB >= 10.3, MySQL >= 8.0.1."""
    version = dialect.server_version_info or (0,)
    return version >= ((10, 3) if dialect.is_mariadb else (8, 0, 1))  # type: ignore[attr-defined]


def _error_number(exc: BaseException) -> Any:
    args: tuple[Any, ...] = getattr(getattr(exc, "orig", None), "args", ())
    return args[0] if args else None


def _release_or_drop(conn: Connection, name: str) -> None:
    """After an error inside the seed lock: release it, or, where the connection
    can no longer run a statement (a deadlock inside a savepoint leaves it
    waiting for a full rollback; Galera's certification aborts do), invalidate
    it: closing the session frees its named locks. Otherwise the pooled session
    would keep the lock, and every other seed would time out waiting for it."""
    if conn.invalidated:
        return
    try:
        conn.execute(RELEASE_LOCK, {"name": name})
    except Exception:
        _drop(conn)


def _drop(conn: Connection) -> None:
    """Invalidate the connection: the server ends its session and frees the
    named locks it holds (a pooled session would keep them)."""
    if not conn.invalidated:
        conn.invalidate()


def _binds(value: Any) -> bool:
    """Whether a SET value has a bound parameter (a plain value is one)."""
    if not isinstance(value, sa.sql.ClauseElement):
        return True
    return any(isinstance(e, sa.sql.elements.BindParameter) for e in visitors.iterate(value))


def _update_with_expressions(plan: UpsertPlan, row: Row) -> sa.Update:
    """The UPDATE of one existing row whose values include SQL expressions:
    those stand in the statement as they are, the others are bound."""
    table = plan.table

    def incoming(col: sa.Column[Any]) -> Any:
        value = row[col.key]
        if isinstance(value, sa.sql.ClauseElement):
            return value
        return sa.bindparam(None, value, type_=col.type)

    key = [table.c[c] == row[c] for c in plan.match]
    set_ = {col: substitute(v, table, incoming) for col, v in plan.set_.items()}
    update = sa.update(table).where(*key).values(set_)
    if plan.where is not None:
        update = update.where(substitute(plan.where, table, incoming))
    return update


class _Driver:
    """One pooled aiomysql connection of a driver-level path, in a transaction
    (autocommit is off) that is committed or rolled back here. ``usable`` is
    False when the connection cannot be used (an autocommit engine: the guard
    needs its transaction)."""

    def __init__(self, raw: Any) -> None:
        self.raw, self.driver = raw, raw.driver_connection
        self.usable = not self.driver.get_autocommit()
        self.ended = True  # no transaction left open for the pool to roll back

    def run(
        self, fast: DriverStatement, args: list[Any], show: bool = True
    ) -> tuple[list[Any], int, list[Any]]:
        """The rows, the warning count and (if any, and ``show``) the warnings
        of a statement."""
        self.ended = False
        cursor = await_only(self.driver.cursor(_quiet_cursor()))
        await_only(cursor.execute(fast.sql, args))
        count = cursor._result.warning_count
        shown = list(await_only(self.driver.show_warnings())) if count and show else []
        return list(cursor._rows or ()), count, shown

    def roll_back(self, exc: BaseException | None = None) -> bool:
        """End the transaction, keeping nothing; False when the connection had to
        be dropped instead (the server then rolls back on its own)."""
        if exc is None or _server_refused(exc):
            try:
                await_only(self.driver.rollback())
                self.ended = True
                return True
            except Exception:
                pass
        self.raw.invalidate()
        return False

    def commit(self, fast: DriverStatement, args: list[Any]) -> bool:
        """COMMIT: True when done, False when the server refused it (a Galera
        certification failure: rolled back). A connection lost on the way is
        raised: the COMMIT may have happened, so the call must not run again."""
        try:
            await_only(self.driver.commit())
        except Exception as exc:
            if not _server_refused(exc):
                raise connection_lost(self.raw, fast, args, exc) from exc
            self.ended = True
            return False
        self.ended = True
        return True

    def close(self) -> None:
        if self.ended and hasattr(self.raw, "_close_special"):
            self.raw._close_special(transaction_reset=True)
        else:
            self.raw.close()


@contextmanager
def _driver(engine: Engine) -> Iterator[_Driver | None]:
    """A pooled driver connection for the call, returned to the pool after it;
    None when there is none to be had or it cannot be used."""
    raw = checkout(engine)
    if raw is None:
        yield None
        return
    conn = _Driver(raw)
    try:
        yield conn if conn.usable else None
    finally:
        conn.close()


def _insert_ignore_aiomysql(
    engine: Engine, fast: DriverStatement, args: list[Any], table: sa.Table, target: ConflictTarget
) -> Row | None:
    """MySQL.insert_ignore_fast's work, inside SQLAlchemy's greenlet bridge: the
    stored row, {} for a duplicate of the target, None to take the ordinary path."""
    with _driver(engine) as conn:
        if conn is None:
            return None
        try:
            records, count, _ = conn.run(fast, args, show=False)
        except Exception as exc:  # not committed: the server drops it with the session
            duplicate = _errno(exc) == DUPLICATE_KEY and duplicate_of_target(exc, table, target)
            conn.roll_back(exc)  # (ends the shared lock a duplicate leaves)
            return {} if duplicate else None
        if count == 0 and len(records) == 1:
            return fast.row(records[0]) if conn.commit(fast, args) else None
        conn.roll_back()  # stored with a warning: the ordinary path raises it
        return None


_FetchStatements = tuple[DriverStatement, DriverStatement, DriverStatement]


def _get_or_create_aiomysql(
    engine: Engine, statements: _FetchStatements, params: dict[str, Any], attempts: int
) -> tuple[Row, bool] | None:
    """MySQL.get_or_create_fast's work: (row, created), or None to take the
    ordinary path (which then reports any error as SQLAlchemy does, and says
    why a duplicate's row could not be read: a lookup mismatch, a duplicate of
    another unique key, or a row deleted meanwhile)."""
    select, locked, insert = statements
    with _driver(engine) as conn:
        if conn is None:
            return None
        look, values = select.arguments(params), insert.arguments(params)
        made: list[Any] = []
        clean = duplicate = False
        try:  # nothing is committed in here: any error is rolled back
            found, _, _ = conn.run(select, look)
            if not found:
                made, count, shown = conn.run(insert, values)
                clean = count == 0 and len(made) == 1
                codes = [w[1] for w in shown]
                duplicate = not made and count == 1 and codes == [DUPLICATE_KEY]
                if duplicate:  # made by another caller after this transaction's
                    # snapshot: a locking read sees the latest committed row
                    found, _, _ = conn.run(locked, look)
        except Exception as exc:
            conn.roll_back(exc)
            return None
        if not found and clean:
            # outside the try: a lost COMMIT is raised, never run again
            return (insert.row(made[0]), True) if conn.commit(insert, values) else None
        if not conn.roll_back() or not found:  # a read, or nothing to keep
            return None
        return select.row(found[0]), False


def _errno(exc: BaseException) -> Any:
    """The MySQL error number of a driver's own exception."""
    return exc.args[0] if exc.args else None


def _server_refused(exc: BaseException) -> bool:
    """An error the server sent (the session lives on), not one of the client
    library's own connection errors (2000-2999: lost, gone away, ...)."""
    code = exc.args[0] if exc.args else None
    return isinstance(code, int) and code > 0 and not 2000 <= code < 3000


@functools.cache
def _quiet_cursor() -> type:
    """aiomysql's cursor without its own ``SHOW WARNINGS`` after every statement
    that warns (it turns them into Python warnings): the fast path reads them
    itself, once."""
    from aiomysql import Cursor  # type: ignore[import-untyped]

    class QuietCursor(Cursor):  # type: ignore[misc]
        async def _show_warnings(self, conn: Any) -> None:
            return None

    return QuietCursor


# The warning count of the last statement, as the server sent it in the OK (or
# EOF) packet, read the way each driver keeps it; a driver not listed here is
# asked with SELECT @@warning_count (one more round trip).
WARNING_COUNT_READERS: dict[str, Callable[[Any, Any], Any]] = {
    "pymysql": lambda cursor, _conn: cursor.warning_count,
    # SQLAlchemy's adapter around the asyncio driver's cursor, which keeps the
    # last result (with the packet's count) on ``_result``
    "aiomysql": lambda cursor, _conn: cursor._cursor._result.warning_count,
    "asyncmy": lambda cursor, _conn: cursor._cursor._result.warning_count,
    "mysqldb": lambda _cursor, conn: conn.warning_count(),
    "mariadbconnector": lambda _cursor, conn: conn.warnings,  # (the cursor may be closed)
}


def packet_warning_count(conn: Connection, result: sa.CursorResult[Any]) -> int | None:
    reader = WARNING_COUNT_READERS.get(conn.dialect.driver)
    if reader is None:
        return None
    try:
        count = reader(result.context.cursor, conn.connection.driver_connection)
        return count if isinstance(count, int) else None
    except Exception:  # another version of the driver, a closed cursor: ask the server
        return None
