"""PostgreSQL (and PostgreSQL-wire engines): ``INSERT ... ON CONFLICT DO NOTHING``.

The statement skips rows that conflict on the arbiter index and nothing else:
NOT NULL (23502), CHECK (23514), foreign key (23503) and too-long values
(22001) raise as for a plain INSERT.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.dml import Insert

from onconflict._target import ConflictTarget
from onconflict.dialects.base import INSERTED, DialectSupport, UpsertPlan, do_nothing, do_update


class PostgreSQL(DialectSupport):
    name = "postgresql"
    native = True

    def atomic(self, conn: Connection) -> AbstractContextManager[Any]:
        return nullcontext()  # any error aborts the whole transaction: nothing to undo

    def insert_ignore(self, table: sa.Table, target: ConflictTarget, returning: bool) -> Insert:
        return do_nothing(pg.insert(table), table, target, returning)

    def prepare_upsert(self, plan: UpsertPlan, dialect: Dialect) -> None:
        # xmax is 0 on a row version this statement inserted, and set (to the
        # locking transaction) on one it updated: the per-row outcome, exactly.
        was_inserted = (sa.literal_column("xmax") == sa.literal_column("0")).label(INSERTED)
        plan.statement = do_update(pg.insert(plan.table), plan).returning(
            *plan.table.c, was_inserted
        )
