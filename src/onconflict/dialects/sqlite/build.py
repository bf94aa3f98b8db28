"""SQLite's statements, pure (no I/O): the upsert clause
``ON CONFLICT (target) DO NOTHING`` / ``DO UPDATE``, never ``INSERT OR IGNORE``."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.sql.dml import Insert

from onconflict._keys import by_key, returning_columns
from onconflict._target import ConflictTarget
from onconflict.dialects.common import do_nothing, do_update
from onconflict.dialects.plans import FetchPlan, UpsertPlan


def insert_ignore(table: sa.Table, target: ConflictTarget, returning: bool) -> Insert:
    """``INSERT ... ON CONFLICT (target) DO NOTHING [RETURNING *]``."""
    return do_nothing(sqlite.insert(table), table, target, returning)


def upsert(plan: UpsertPlan) -> Any:
    """``INSERT ... ON CONFLICT (target) DO UPDATE SET ... RETURNING *``."""
    return do_update(sqlite.insert(plan.table), plan).returning(
        *returning_columns(plan.table, plan.target)
    )


def insert_one_returning(plan: FetchPlan) -> Any:
    """get_or_create's one-row INSERT ... ON CONFLICT DO NOTHING RETURNING (the
    stored row keyed by column key, in table order), its values bound by key."""
    t = plan.table
    values = {k: sa.bindparam(f"oc_{k}", type_=t.c[k].type) for k in plan.values}
    return insert_ignore(t, plan.target, False).values(values).returning(*by_key(t))
