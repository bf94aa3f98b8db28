"""The interface of a database to onconflict: its :class:`Capabilities`
(data, declared once per database) and :class:`DialectSupport` (statement
builders, writers, transaction hooks).

Adding a database is one package under ``onconflict.dialects`` with a
subclass of :class:`DialectSupport` and one entry in
``onconflict.dialects.REGISTRY`` (see docs/development.md, "Adding a
database"). Shared statement helpers are in ``dialects/common.py``, the plans
the core hands over in ``dialects/plans.py``, driver-level paths in
``dialects/driver.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect, NestedTransaction
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import ColumnElement

from onconflict._keys import Keys, by_key, strip_keys
from onconflict._target import ConflictTarget, UniqueKey, unique_keys
from onconflict.dialects.common import execute_row, execute_rows, lookup_condition, with_primary_key
from onconflict.dialects.plans import FetchPlan, Outcome, Row, UpsertPlan
from onconflict.exceptions import NotSupportedError


@dataclass(frozen=True)
class Capabilities:
    """What a database can do, as data: declared once per database, read by the
    shared core and by the generic behaviour of :class:`DialectSupport`."""

    name: str = "generic"
    """The family's name (the registry's, in messages)."""
    title: str = "this database"
    """How messages name the database ("MySQL and MariaDB")."""
    native: bool = False
    """It has a duplicate-only INSERT form (else only ``strategy="classify"``)."""
    targets_conflicts: bool = True
    """The insert can name its conflict target (False: any unique key fires;
    the core then refuses rows that could hit another unique key)."""
    partial_index_targets: bool = True
    """A partial unique index (``postgresql_where=``) can be the target."""
    expression_index_targets: bool = True
    """A unique index on expressions (``lower(email)``) can be the target."""
    returning: bool = True
    """``INSERT ... RETURNING``, where the server has it (the dialect says)."""
    page_size: int = 1000
    """Most rows sent in one statement."""
    max_statement_bytes: int | None = None
    """A size budget for one statement's values, where the protocol has one."""
    error_aborts_transaction: bool = False
    """Any error aborts the whole transaction (PostgreSQL): a multi-statement
    call needs no savepoint of its own to be all-or-nothing."""
    savepoints: bool = True
    """False where the database has no SAVEPOINT (DuckDB): ``strategy="classify"``
    (a savepoint per row) is refused before any SQL."""
    fetch_in_one_statement: bool = False
    """get_or_create is one statement (an engine-owned call runs it in
    autocommit: no BEGIN/COMMIT round trips)."""


GENERIC = Capabilities()
"""A database without a package: no native form."""


class DialectSupport:
    """Duplicate-only insert for one database family: what the shared core asks
    of a database. The generic class is what a database without a package of
    its own gets (no native form: ``strategy="auto"`` uses ``classify``).

    A subclass declares its :class:`Capabilities` (data) and overrides the
    statement builders (``insert_ignore``, ``prepare_upsert``,
    ``prepare_fetch``) and, where the database needs it, the writers and the
    transaction hooks. Driver-level fast paths are not here: they are
    :class:`onconflict.dialects.driver.DriverPath` subclasses in the driver's
    module, named in the registry entry.
    """

    capabilities: ClassVar[Capabilities] = GENERIC

    @property
    def name(self) -> str:
        return self.capabilities.name

    @property
    def native(self) -> bool:
        """True where the database has a duplicate-only INSERT form."""
        return self.capabilities.native

    @property
    def targets_conflicts(self) -> bool:
        """False where the statement cannot name its conflict target (MySQL)."""
        return self.capabilities.targets_conflicts

    @property
    def page_size(self) -> int:
        """Most rows sent in one statement."""
        return self.capabilities.page_size

    @property
    def savepoints(self) -> bool:
        """False where the database has no SAVEPOINT."""
        return self.capabilities.savepoints

    @property
    def fetch_in_one_statement(self) -> bool:
        """True where get_or_create is one statement (then an engine-owned call
        runs it in autocommit: no BEGIN/COMMIT round trips)."""
        return self.capabilities.fetch_in_one_statement

    # -- the server: what it supports, how much one statement carries ------------

    def check(self, dialect: Dialect) -> None:
        """Raise NotSupportedError when this server/driver lacks the native form."""

    def returning(self, dialect: Dialect) -> bool:
        """Whether the insert can return its rows on this server."""
        return self.capabilities.returning and bool(dialect.insert_returning)

    def max_params(self, dialect: Dialect) -> int:
        return int(dialect.insertmanyvalues_max_parameters)

    def max_statement_bytes(self, dialect: Dialect) -> int | None:
        """A size budget for one statement's values, where the protocol has one."""
        return self.capabilities.max_statement_bytes

    def check_target(self, table: sa.Table, target: ConflictTarget) -> None:
        """Refuse, before any SQL, a conflict target this database cannot honour
        (what ``capabilities`` says it cannot target)."""
        key, caps = target.key, self.capabilities
        if key is None:
            return
        if not key.columns and not caps.expression_index_targets:
            raise NotSupportedError(
                f"an expression index ({key.describe()}) as the conflict target on"
                f" {table.name!r}: {caps.title} cannot name one"
            )
        if key.where is not None and not caps.partial_index_targets:
            raise NotSupportedError(
                f"a partial index ({key.describe()}) as the conflict target on"
                f" {table.name!r}: {caps.title} cannot name one"
            )

    def key_identity(
        self, conn: Connection, table: sa.Table, keys: Keys, columns: tuple[str, ...]
    ) -> bool:
        """Teach ``keys`` how the server compares the values of ``columns`` (key
        columns) where Python equality differs (collations): True when it
        installed something. Generic: nothing to add."""
        return False

    def key_names(self, table: sa.Table, key: UniqueKey) -> set[str]:
        """Names (lower case) the server may give ``key`` in a duplicate-key
        error: its own; generic, also MySQL's ``PRIMARY`` for a primary key and,
        for an unnamed key, its first column's database name (MySQL names an
        unnamed key after it)."""
        names = {key.name.lower()} if key.name else set()
        if key.kind == "primary key":
            names.add("primary")
        elif not key.name and key.columns:
            names.add(table.c[key.columns[0]].name.lower())
        return names

    def duplicate_of_target(
        self, exc: BaseException, table: sa.Table, target: ConflictTarget
    ) -> bool:
        """``exc`` is a unique violation of the conflict target (not of another
        key): decided from the columns the error names (PostgreSQL, SQLite,
        Oracle 23) or its constraint name (``key_names``); when the error names
        neither, a duplicate counts."""
        from onconflict.classify import unique_violation  # (classify loads the registry)

        violation = unique_violation(exc)
        if violation is None:
            return False
        if target.key is None:
            return True
        if violation.columns:  # the database's column names, not the column keys
            return set(violation.columns) == {table.c[c].name for c in target.columns}
        name = (violation.constraint or "").lower()
        if not name:
            return True
        if name in self.key_names(table, target.key):
            return True
        others = [k for k in unique_keys(table) if k != target.key]
        return not any(name in self.key_names(table, k) for k in others)

    # -- statements (pure, cached by shape) ---------------------------------------

    def one_row_statement(self, table: sa.Table, target: ConflictTarget) -> Insert:
        """The statement a driver-level path runs for one row: the native
        insert_ignore with RETURNING (MySQL: a plain INSERT, whose duplicate
        error it reads)."""
        return self.insert_ignore(table, target, True)

    def insert_ignore(self, table: sa.Table, target: ConflictTarget, returning: bool) -> Insert:
        """The statement that inserts rows and skips duplicates of ``target``."""
        raise NotSupportedError(f"no native duplicate-only insert for {self.name}")

    def count_statement(self, table: sa.Table, target: ConflictTarget) -> Insert | None:
        """The duplicate-only insert of a counts-only call (``returning=False``),
        run by ``write_count``; None where the database cannot count inserted
        rows exactly without reading them (the rows are then read, and counted)."""
        return None

    def changed(self, column: sa.Column[Any], value: Any) -> ColumnElement[bool]:
        """Whether the stored ``column`` differs from ``value`` (upsert's
        ``skip_unchanged``): NULL-safe, for any type the column has."""
        return column.is_distinct_from(value)

    def prepare_upsert(self, plan: UpsertPlan, dialect: Dialect) -> None:
        """Build ``plan.statement`` (and any ``plan.extra``): pure."""
        raise NotSupportedError(f"upsert has no native form for {self.name}")

    def prepare_fetch(self, plan: FetchPlan) -> None:
        """Build the statements of a get_or_create shape: pure, cached by shape."""
        t = plan.table
        select = sa.select(*by_key(t)).where(lookup_condition(plan))
        plan.statements["select"] = select
        # a locking read sees rows committed after the transaction's snapshot
        plan.statements["select_locked"] = self.for_update(select, read=True)
        plan.statements["insert"] = self.insert_ignore(t, plan.target, False)
        plan.statements["insert_returning"] = self.insert_ignore(t, plan.target, True)

    # -- writers: the only places that talk to the database ----------------------

    def write_many(self, conn: Connection, stmt: Insert, rows: list[Row]) -> list[Row]:
        """Execute ``stmt`` (with RETURNING) for rows sharing one key set, as ONE
        statement; return the rows the database reports as inserted."""
        return [dict(m) for m in execute_rows(conn, stmt, rows).mappings()]

    def write_count(self, conn: Connection, stmt: Insert, rows: list[Row]) -> int:
        """Execute ``count_statement`` for rows sharing one key set; how many
        were inserted (the driver's row count of an executemany, as sqlite3 sums it)."""
        return int(execute_rows(conn, stmt, rows).rowcount)

    def check_skipped(
        self, conn: Connection, table: sa.Table, target: ConflictTarget, keys: Keys, rows: list[Row]
    ) -> None:
        """``rows`` were skipped by a duplicate-only INSERT that skips a duplicate
        of ANY unique key (``targets_conflicts`` False) and could collide on
        another key than the target: raise for those that are no duplicate of
        the target. A database whose INSERT names its target has nothing to do."""

    def write_one(self, conn: Connection, stmt: Insert, row: Row) -> Row | None:
        """Without RETURNING: insert one row, the stored row or None if it was a duplicate."""
        result = execute_row(conn, stmt, row)
        if result.rowcount != 1:
            return None
        return with_primary_key(stmt.table, row, result)  # type: ignore[arg-type]

    def bulk_rows(self, dialect: Dialect) -> int | None:
        """The group size from which ``write_bulk`` takes a group (and puts its
        rows in key order itself), or None: no bulk path."""
        return None

    def write_bulk(
        self,
        conn: Connection,
        table: sa.Table,
        target: ConflictTarget,
        columns: tuple[str, ...],
        rows: list[Row],
        in_key_order: bool = False,
        types: Mapping[str, set[type]] | None = None,
    ) -> Sequence[Row] | None:
        """A faster path for a large insert_ignore group, or None (the usual
        statements then run). Returns the inserted rows, like write_many (a
        ``_keys.RecordRows``: rows made dicts when read).
        ``in_key_order``: the rows already are in key order (the lock order);
        otherwise this path puts them in it. ``types``: each column's value
        types, where known (``_target.Types``: every row has every column)."""
        return None

    def count_bulk(
        self,
        conn: Connection,
        table: sa.Table,
        target: ConflictTarget,
        columns: tuple[str, ...],
        rows: list[Row],
        in_key_order: bool = False,
        types: Mapping[str, set[type]] | None = None,
    ) -> int | None:
        """``write_bulk`` for a counts-only call: how many rows were inserted,
        or None (the usual statements then run)."""
        return None

    def write_upsert(self, conn: Connection, plan: UpsertPlan, rows: list[Row]) -> list[Outcome]:
        """Upsert rows sharing one key set as ONE statement; the outcome of each
        row, in order."""
        raise NotSupportedError(f"upsert has no native form for {self.name}")

    def get_or_create_once(self, conn: Connection, plan: FetchPlan) -> tuple[Row, bool] | None:
        """Read the row, or create it: (row, created), or None after a lost race
        whose row could not be read (the caller tries again)."""
        found = conn.execute(plan.statements["select"], plan.bound(plan.lookup)).mappings().first()
        if found is not None:
            return dict(found), False
        made = self.create_row(conn, plan)
        if made is not None:
            return made, True
        locked = plan.statements["select_locked"]
        found = conn.execute(locked, plan.bound(plan.lookup)).mappings().first()
        return (dict(found), False) if found is not None else None

    def create_row(self, conn: Connection, plan: FetchPlan) -> Row | None:
        """The duplicate-only insert of get_or_create's row: the stored row, or
        None when it was skipped (a duplicate)."""
        values = {k: plan.params[k] for k in plan.values}
        if self.returning(conn.dialect):
            made = self.write_many(conn, plan.statements["insert_returning"], [values])
            return strip_keys(made[0]) if made else None
        return self.write_one(conn, plan.statements["insert"], values)

    def get_or_create_many_once(
        self, conn: Connection, table: sa.Table, target: ConflictTarget, rows: list[Row]
    ) -> list[Row] | None:
        """get_or_create_many as ONE statement for rows of one shape (distinct keys):
        the stored rows it read or inserted, each with an ``onconflict_created_``
        flag; rows committed by others after its snapshot may be missing. None:
        no such form here (a SELECT and the duplicate-only insert run instead)."""
        return None

    def conflict_elsewhere(self, conn: Connection, plan: FetchPlan) -> None:
        """After an attempt whose insert was skipped but whose row could not be
        read: raise the database's error if the duplicate was of another unique
        key than the target (possible only where the insert cannot name its
        target: MySQL). Generic: the target is named, nothing to do."""

    # -- transaction policy ------------------------------------------------------

    def scope(self, conn: Connection, owned: bool = False) -> AbstractContextManager[Any]:
        """Wraps a whole call: puts back any session setting the call changed.
        ``owned``: the call owns its transaction (any error it raises rolls back
        everything it did), so per-statement savepoints may be skipped."""
        return nullcontext()

    def atomic(self, conn: Connection) -> AbstractContextManager[Any]:
        """Make a multi-statement call all-or-nothing inside the caller's
        transaction: a savepoint, or nothing where an error aborts the whole
        transaction anyway (``Capabilities.error_aborts_transaction``)."""
        if self.capabilities.error_aborts_transaction:
            return nullcontext()
        return self.savepoint(conn)

    def savepoint(self, conn: Connection) -> AbstractContextManager[NestedTransaction]:
        """A SAVEPOINT, released on success and rolled back on error."""
        return _savepoint(conn, self.transaction_lost)

    def for_update(self, select: sa.Select[Any], read: bool = False) -> sa.Select[Any]:
        """``select`` as a locking read (``FOR UPDATE``, or ``FOR SHARE`` with
        ``read``), which sees rows committed after the transaction's snapshot
        and keeps them until it ends. DuckDB has none: its plain read."""
        return select.with_for_update(read=read)

    def transaction_lost(self, exc: BaseException) -> bool:
        """True when the server has already rolled the whole transaction back
        (rolling back to a savepoint would then fail and hide ``exc``)."""
        return False

    def begin_owned(self, conn: Connection, restartable: bool) -> None:
        """First thing in a transaction onconflict owns for an upsert or an
        update_or_create (an engine was passed), before any statement: set how
        that transaction runs. ``restartable``: the call may still raise
        ``retry.Restart`` to run again at once. Generic: as the engine says."""

    def lock_for_update_or_create(self, conn: Connection) -> None:
        """Before update_or_create's read: take what keeps a concurrent writer from
        coming between the read and the UPDATE, where row locks do not (SQLite)."""

    def seed_lock(self, conn: Connection, name: str, timeout: float) -> AbstractContextManager[Any]:
        """Hold the database-wide lock ``name`` for the rest of the transaction, so
        that replicas seeding at once take turns. Generic: no lock."""
        return nullcontext()

    # -- outside a call ----------------------------------------------------------

    def reflect(self, conn: Connection, metadata: sa.MetaData, names: list[str]) -> None:
        """Add the named tables (they exist) to ``metadata`` as the database has
        them, with their columns, types, primary and unique keys (seed by name)."""
        metadata.reflect(conn, only=names)

    def engine_options(self, pool_size: int) -> dict[str, Any]:
        """``create_engine`` arguments for an engine the CLI makes to run
        ``pool_size`` concurrent callers."""
        return {"pool_size": min(pool_size, 20), "max_overflow": pool_size}


@contextmanager
def _savepoint(
    conn: Connection, lost: Callable[[BaseException], bool]
) -> Iterator[NestedTransaction]:
    sp = conn.begin_nested()
    try:
        yield sp
    except BaseException as exc:
        # not after the server rolled everything back, nor on a dead connection:
        # rolling back to the savepoint would fail and hide the real error
        if sp.is_active and not conn.invalidated and not _disconnect(exc) and not lost(exc):
            sp.rollback()
        raise
    if sp.is_active:
        sp.commit()


def _disconnect(exc: BaseException) -> bool:
    return bool(getattr(exc, "connection_invalidated", False))
