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

ONE row needs none of that: a plain INSERT (no IGNORE, no SAVEPOINT) raises
error 1062 for a duplicate and the server's own error for anything else, and
InnoDB rolls back only the failed statement. Without RETURNING (MySQL 8,
MariaDB < 10.5) every row is such a statement.

MySQL has no conflict target: any unique key fires. The core refuses a call
whose rows could hit a unique key other than the requested one unless
``on=onconflict.ANY_KEY``; a one-row statement's error names the key it hit.

The package: this module holds the dialect support (``MySQL``: capabilities,
upsert, get_or_create, the seed lock, collations); ``guard`` writes rows (the
guarded ``INSERT IGNORE``, the one-row plain INSERT); ``readers`` reads each
driver's warning count; ``aiomysql`` is the driver-level path of engine-owned
one-row calls.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql import visitors

from onconflict._excluded import has_expressions, substitute
from onconflict._keys import Keys, align, fold_text
from onconflict._target import ConflictTarget, reachable_keys
from onconflict.dialects.base import Capabilities
from onconflict.dialects.common import (
    collation_folds,
    execute_rows,
    in_autocommit,
    is_string,
    select_by_keys,
)
from onconflict.dialects.mysql.guard import (
    OWNED,
    SAVED_LIMIT,
    SET_LIMIT,
    TRANSACTION_LOST,
    Guard,
    GuardedInsert,
    error_number,
    quiet_driver_warnings,
)
from onconflict.dialects.mysql.readers import WARNING_COUNT_READERS, packet_warning_count
from onconflict.dialects.plans import FetchPlan, Outcome, Row, UpsertPlan
from onconflict.exceptions import (
    NotSupportedError,
    OutcomeMismatchError,
    SeedLockTimeout,
    UnsafeInsertError,
)
from onconflict.retry import Restart

__all__ = [
    "TRANSACTION_LOST",
    "WARNING_COUNT_READERS",
    "GuardedInsert",
    "MySQL",
    "collation_fold",
    "packet_warning_count",
    "seed_lock_name",
]

GET_LOCK = sa.select(sa.func.get_lock(sa.bindparam("name"), sa.bindparam("timeout")))
RELEASE_LOCK = sa.select(sa.func.release_lock(sa.bindparam("name")))
CURRENT_DATABASE = sa.select(sa.func.database())
# conn.info: the transaction (begin_owned) whose call may restart after a lost race
RESTARTABLE = "onconflict.restartable"
# conn.info: update_or_create is running (its reads take the exclusive lock)
EXCLUSIVE = "onconflict.exclusive"
READ_COMMITTED = sa.text("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")


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


# A FOR UPDATE NOWAIT that met a held row: MariaDB (lock wait timeout), MySQL 8
LOCK_BUSY = frozenset({1205, 3572})


CAPABILITIES = Capabilities(
    name="mysql",
    title="MySQL and MariaDB",
    native=True,
    targets_conflicts=False,
    partial_index_targets=False,
    expression_index_targets=False,
    # well under max_allowed_packet's smallest common default (4 MiB on MySQL 5.7)
    max_statement_bytes=2 * 1024 * 1024,
)


class MySQL(Guard):
    capabilities = CAPABILITIES

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
        found = self._lock_keys(conn, plan, rows) if keyed else set()  # 1. lock-read
        inserted = self._insert_new(conn, plan, rows, found)  # 2. insert
        existing = [row for row, ins in zip(rows, inserted, strict=True) if ins is None]
        if existing:
            self._after_skips(conn, plan, existing, found, keyed)
        updated = self._update_existing(conn, plan, existing) if existing else []  # 3. update
        stored = self._read_back(conn, plan, updated)  # 4. read-back
        return _outcomes(plan, rows, inserted, stored)

    def _after_skips(
        self,
        conn: Connection,
        plan: UpsertPlan,
        existing: list[Row],
        found: set[tuple[Any, ...]],
        keyed: bool,
    ) -> None:
        """Between phases 2 and 3: rows the INSERT skipped though phase 1 did
        not find their key."""
        skipped = [r for r in existing if plan.keys.of(r, plan.match) not in found]
        if plan.extra.get("other_keys"):
            self._check_skipped(conn, plan, skipped, keyed)
        elif keyed and skipped:  # made by another caller since phase 1: a lost
            _restart_if_owned(conn)  # race, whose shared lock the UPDATE would upgrade

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
            if error_number(exc) in LOCK_BUSY:
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

    def check_skipped(
        self, conn: Connection, table: sa.Table, target: ConflictTarget, keys: Keys, rows: list[Row]
    ) -> None:
        """insert_ignore's rows that INSERT IGNORE skipped, where they could
        also collide on another unique key than the target: as upsert's."""
        plan = UpsertPlan(table, target, keys, target.columns, set_={}, where=None)
        wanted = set(target.columns)
        reached = {k for shape in {tuple(r) for r in rows} for k in reachable_keys(table, shape)}
        plan.extra["other_keys"] = [k for k in reached if set(k.columns) != wanted]
        self._check_skipped(conn, plan, rows, keyed=bool(target.columns), what="insert_ignore")

    def _check_skipped(
        self,
        conn: Connection,
        plan: UpsertPlan,
        skipped: list[Row],
        keyed: bool,
        what: str = "upsert",
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
            # a shared lock for insert_ignore: INSERT IGNORE left one on each
            # duplicate, and upgrading it is what deadlocks concurrent callers
            shared = what == "insert_ignore"
            lock = select_by_keys(plan, skipped, key_only=True).with_for_update(read=shared)
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
            f"{len(others)} row(s) of the {what} into {plan.table.name!r} were skipped as"
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
        """Phase 4: the updated rows as stored, by the input rows' keys. A
        locking read (the rows are this transaction's already: no new wait): a
        plain read under REPEATABLE READ sees the caller's snapshot, where a row
        another caller committed since, that the update left as it was, is
        missing."""
        stored: dict[tuple[Any, ...], Row] = {}
        if updated:
            read = select_by_keys(plan, updated).with_for_update()
            for now in conn.execute(read).mappings():
                stored[plan.keys.of(dict(now), plan.match)] = dict(now)
        wanted = [plan.keys.of(row, plan.match) for row in updated]
        missing = [key for key in wanted if key not in stored]
        if missing:  # the server's collation matched what onconflict's fold did not
            asked = set(wanted)
            extra = [key for key in stored if key not in asked]
            if len(missing) != 1 or len(extra) != 1:
                raise OutcomeMismatchError(
                    f"upsert on {plan.table.name!r}: row(s) updated but read back"
                    f" under other keys ({', '.join(plan.match)}): the column's"
                    " collation compares them in a way onconflict cannot follow"
                )
            stored[missing[0]] = stored.pop(extra[0])  # one updated, one read: that row
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
        at the end, named within the current database (see seed_lock_name)."""
        name = seed_lock_name(conn, name)
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
            with quiet_driver_warnings(conn):
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


def _outcomes(
    plan: UpsertPlan, rows: list[Row], inserted: list[Row | None], stored: dict[Any, Row]
) -> list[Outcome]:
    """Each row's outcome: inserted (phase 2), updated (read back in phase 4)
    or unchanged (a condition did not hold)."""
    out: list[Outcome] = []
    for row, ins in zip(rows, inserted, strict=True):
        if ins is not None:
            out.append(("inserted", ins))
        elif (after := stored.get(plan.keys.of(row, plan.match))) is not None:
            out.append(("updated", after))
        else:
            out.append(("unchanged", None))
    return out


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


def seed_lock_name(conn: Connection, name: str) -> str:
    """The GET_LOCK name of seed lock ``name``. MySQL's named locks are the
    server's, not a database's: the name is prefixed with the current database
    (as PostgreSQL's advisory locks are scoped), so seeds of two databases on
    one server do not wait for each other. Names are limited to 64 characters:
    longer ones are hashed."""
    database = conn.execute(CURRENT_DATABASE).scalar()
    if database is not None:
        name = f"{database}.{name}"
    if len(name) > 64:
        name = "onconflict." + hashlib.sha256(name.encode()).hexdigest()[:40]
    return name


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
