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
from onconflict.dialects.base import (
    INSERTED,
    DialectSupport,
    FetchPlan,
    Row,
    UpsertPlan,
    do_nothing,
    do_update,
    lookup_condition,
)

CREATED = "onconflict_created_"


class PostgreSQL(DialectSupport):
    name = "postgresql"
    native = True
    fetch_in_one_statement = True

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

    def prepare_fetch(self, plan: FetchPlan) -> None:
        """get_or_create as ONE statement:

        WITH found AS (SELECT * FROM t WHERE lookup),
             made AS (INSERT INTO t (...) SELECT $values WHERE NOT EXISTS (SELECT FROM found)
                      ON CONFLICT (key) DO NOTHING RETURNING *)
        SELECT *, false FROM found UNION ALL SELECT *, true FROM made

        A row that exists is read without an INSERT (no sequence value burnt). When
        another transaction commits the row after this statement's snapshot, the
        INSERT meets the conflict and neither part returns a row: no row means
        "try again" (under READ COMMITTED the next statement sees it).
        """
        t = plan.table
        found = sa.select(t).where(lookup_condition(plan)).cte("oc_found")
        values = [sa.bindparam(f"oc_{k}", type_=t.c[k].type) for k in plan.values]
        source = sa.select(*values).where(~sa.exists(sa.select(sa.literal(1)).select_from(found)))
        key = plan.target.key
        assert key is not None
        made = (
            pg.insert(t)
            .from_select(list(plan.values), source)
            .on_conflict_do_nothing(index_elements=list(key.elements), index_where=key.where)
            .returning(*t.c)
            .cte("oc_made")
        )
        plan.statements["one"] = sa.union_all(
            sa.select(*found.c, sa.false().label(CREATED)),
            sa.select(*made.c, sa.true().label(CREATED)),
        )

    def get_or_create_once(self, conn: Connection, plan: FetchPlan) -> tuple[Row, bool] | None:
        got = conn.execute(plan.statements["one"], plan.bound(plan.values)).mappings().first()
        if got is None:
            return None
        row = dict(got)
        return row, bool(row.pop(CREATED))
