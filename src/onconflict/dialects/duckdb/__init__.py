"""DuckDB (through ``duckdb-engine``): ``INSERT ... ON CONFLICT DO NOTHING``.

DuckDB speaks PostgreSQL's upsert clause, so SQLAlchemy's PostgreSQL
``insert()`` construct builds the statements. What DuckDB does differently,
measured on DuckDB 2.0 (see docs/dialects.md):

- no SAVEPOINT: an error aborts the whole transaction (as on PostgreSQL), so a
  call inside the caller's transaction needs no savepoint to be all or
  nothing; what does need one (``strategy="classify"``, a single-table
  inheritance class in ``get_or_create_many``) is refused;
- no ``SELECT ... FOR UPDATE / FOR SHARE``: reads are plain (snapshot) reads;
- no partial indexes, and ``ON CONFLICT`` cannot name an expression index:
  such targets are refused before any SQL;
- ``RETURNING`` gives rows in no particular order (rows are paired by key);
- no ``xmax``: upsert reads the existing keys first, then runs ``ON CONFLICT DO
  UPDATE`` (exact: a concurrent writer of the same key makes one of the two
  transactions fail, see below);
- optimistic concurrency: two transactions writing the same key fail one of
  them ("Conflict on update", "Failed to commit: ... constraint violation"),
  and an ``ON CONFLICT`` statement meeting a key committed after its
  transaction began raises a duplicate-key error instead of skipping the row.
  The classifier counts all three as transient: a call given an engine runs
  again in a new transaction, which sees the row.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, NoReturn

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Connection, Dialect, NestedTransaction
from sqlalchemy.sql.dml import Insert

from onconflict._keys import returning_columns
from onconflict._target import ConflictTarget
from onconflict.dialects.base import Capabilities, DialectSupport
from onconflict.dialects.common import do_nothing, do_update, upsert_reading_keys_first
from onconflict.dialects.plans import Outcome, Row, UpsertPlan
from onconflict.exceptions import NotSupportedError

CAPABILITIES = Capabilities(
    name="duckdb",
    title="DuckDB",
    native=True,
    partial_index_targets=False,  # no partial indexes
    expression_index_targets=False,  # ON CONFLICT names columns only
    error_aborts_transaction=True,  # any error aborts the whole transaction
    savepoints=False,
)


class DuckDB(DialectSupport):
    capabilities = CAPABILITIES

    def reflect(self, conn: Connection, metadata: sa.MetaData, names: list[str]) -> None:
        # duckdb-engine's reflection runs PostgreSQL catalog queries DuckDB lacks
        from onconflict.dialects.duckdb.reflect import reflect

        reflect(conn, metadata, names)

    def insert_ignore(self, table: sa.Table, target: ConflictTarget, returning: bool) -> Insert:
        return do_nothing(pg.insert(table), table, target, returning)

    def savepoint(self, conn: Connection) -> AbstractContextManager[NestedTransaction]:
        refuse_savepoint()

    def prepare_upsert(self, plan: UpsertPlan, dialect: Dialect) -> None:
        plan.statement = do_update(pg.insert(plan.table), plan).returning(
            *returning_columns(plan.table, plan.target)
        )

    def write_upsert(self, conn: Connection, plan: UpsertPlan, rows: list[Row]) -> list[Outcome]:
        """RETURNING cannot say whether a row was inserted or updated (no xmax):
        the keys that exist are read first. A concurrent writer of one of those
        keys makes one transaction fail (optimistic concurrency): exact."""
        with snapshot_conflicts(plan.statement):
            return upsert_reading_keys_first(conn, plan, rows)

    def write_many(self, conn: Connection, stmt: Insert, rows: list[Row]) -> list[Row]:
        with snapshot_conflicts(stmt):
            return super().write_many(conn, stmt, rows)

    def write_one(self, conn: Connection, stmt: Insert, row: Row) -> Row | None:
        with snapshot_conflicts(stmt):
            return super().write_one(conn, stmt, row)

    def for_update(self, select: sa.Select[Any], read: bool = False) -> sa.Select[Any]:
        """No FOR UPDATE / FOR SHARE: the plain read. A row an insert skipped is
        in the transaction's snapshot: one committed after it began makes the
        insert raise (a transient error), not skip."""
        return select


class SnapshotConflict(Exception):
    """A duplicate of the conflict target met by ``ON CONFLICT``: the row was
    committed by another transaction after this one began (DuckDB then raises
    instead of skipping). A transaction conflict: running the transaction again
    sees the row. The classifier reads it as DuckDB's "Conflict on ..." errors."""


@contextmanager
def snapshot_conflicts(stmt: Any) -> Iterator[None]:
    """Raise a duplicate of ``stmt``'s conflict target as the transaction
    conflict it is (an OperationalError, transient); any other error as it is."""
    try:
        yield
    except sa.exc.IntegrityError as exc:
        # imported here: classify loads this package's error table
        from onconflict.classify import unique_violation

        duplicate = unique_violation(exc)
        target = _target_columns(stmt)
        if (
            duplicate is None
            or duplicate.family != "duckdb"
            or not duplicate.columns
            or (target is not None and not set(duplicate.columns) <= target)
        ):
            raise
        conflict = SnapshotConflict(
            f"TransactionContext Error: Conflict on insert: {duplicate.message} (the row was"
            " committed by another transaction after this one began; run it again)"
        )
        raise sa.exc.OperationalError(exc.statement, exc.params, conflict) from exc


def _target_columns(stmt: Any) -> set[str] | None:
    """The column names of an ON CONFLICT's target; None: any unique key."""
    clause = getattr(stmt, "_post_values_clause", None)
    elements = getattr(clause, "inferred_target_elements", None)
    if not elements:
        return None
    return {getattr(e, "name", str(e)) for e in elements}


def refuse_savepoint() -> NoReturn:
    raise NotSupportedError(
        "DuckDB has no SAVEPOINT, which get_or_create_many of a single-table"
        " inheritance class needs inside your transaction: pass the engine"
    )
