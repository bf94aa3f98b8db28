"""PostgreSQL's statements, pure (no I/O): the duplicate-only insert, the upsert
with its "was inserted" flag, get_or_create (one and many) as one statement,
and the partitioned upsert's locking read and UPDATE ... FROM VALUES."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.sql.dml import Insert

from onconflict._excluded import substitute
from onconflict._keys import by_key, returning_columns
from onconflict._target import ConflictTarget
from onconflict.dialects.common import do_nothing, do_update, lookup_condition, select_by_keys
from onconflict.dialects.plans import INSERTED, FetchPlan, Row, UpsertPlan

CREATED = "onconflict_created_"  # RETURNING label of get_or_create's "was created" flag


def insert_ignore(table: sa.Table, target: ConflictTarget, returning: bool) -> Insert:
    """``INSERT ... ON CONFLICT (target) DO NOTHING [RETURNING *]``."""
    return do_nothing(pg.insert(table), table, target, returning)


def insert_counted(table: sa.Table, target: ConflictTarget) -> Insert:
    """A counts-only call's ``INSERT ... ON CONFLICT DO NOTHING RETURNING pk``:
    one column of each inserted row, to count (the drivers give no row count
    for an executemany)."""
    one = next(iter(table.primary_key), None)
    return insert_ignore(table, target, False).returning(one if one is not None else table.c[0])


def upsert_flagged(plan: UpsertPlan) -> Any:
    """``ON CONFLICT DO UPDATE ... RETURNING *, xmax = 0``: xmax is 0 on a row
    version this statement inserted, and set (to the locking transaction) on
    one it updated: the per-row outcome, exactly."""
    was_inserted = (sa.literal_column("xmax") == sa.literal_column("0")).label(INSERTED)
    return do_update(pg.insert(plan.table), plan).returning(
        *returning_columns(plan.table, plan.target), was_inserted
    )


def upsert(plan: UpsertPlan) -> Any:
    """``ON CONFLICT DO UPDATE ... RETURNING *`` without the flag (no xmax)."""
    return do_update(pg.insert(plan.table), plan).returning(
        *returning_columns(plan.table, plan.target)
    )


def get_or_create_statement(plan: FetchPlan) -> sa.CompoundSelect[Any]:
    """get_or_create as ONE statement::

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
    found = sa.select(*by_key(t)).where(lookup_condition(plan)).cte("oc_found")
    values = [sa.bindparam(f"oc_{k}", type_=t.c[k].type) for k in plan.values]
    source = sa.select(*values).where(~sa.exists().select_from(found))
    return _found_or_made(t, plan.target, found, list(plan.values), source)


def get_or_create_many_statement(
    table: sa.Table, target: ConflictTarget, columns: tuple[str, ...], rows: list[Row]
) -> sa.CompoundSelect[Any]:
    """get_or_create_many for rows of one shape as ONE statement. Pure::

        WITH oc_input AS (VALUES ($1, ...), ...),
             oc_found AS (SELECT t.* FROM t JOIN oc_input ON t.key = oc_input.key),
             oc_made AS (INSERT INTO t (...) SELECT ... FROM oc_input
                         WHERE NOT EXISTS (SELECT FROM t WHERE t.key = oc_input.key)
                         ORDER BY key ON CONFLICT (key) DO NOTHING RETURNING *)
        SELECT *, false FROM oc_found UNION ALL SELECT *, true FROM oc_made

    Existing keys are read, not inserted (no sequence value burnt for them); the
    new ones are inserted in key order (one lock order for concurrent callers).
    A key committed by another transaction after the statement's snapshot is in
    neither part (READ COMMITTED), or raises 40001 (REPEATABLE READ and up).
    """
    key = target.key
    assert key is not None
    values = sa.values(*(sa.column(c, table.c[c].type) for c in columns), name="oc_values")
    data = values.data([tuple(r[c] for c in columns) for r in rows])
    given = sa.select(*data.c).cte("oc_input")

    same_key = sa.and_(*(table.c[c] == given.c[c] for c in key.columns))
    found = sa.select(*by_key(table)).select_from(table.join(given, same_key)).cte("oc_found")
    new = (
        sa.select(*(given.c[c] for c in columns))
        .where(~sa.exists().where(same_key))
        .order_by(*(given.c[c] for c in key.columns))
    )
    return _found_or_made(table, target, found, [table.c[c] for c in columns], new)


def _found_or_made(
    table: sa.Table, target: ConflictTarget, found: Any, into: list[Any], source: Any
) -> sa.CompoundSelect[Any]:
    """``SELECT *, false FROM found UNION ALL SELECT *, true FROM made``, made
    being ``INSERT INTO table (into) source ON CONFLICT (key) DO NOTHING
    RETURNING *``: the rows read and the rows created, flagged."""
    key = target.key
    assert key is not None
    made = (
        pg.insert(table)
        .from_select(into, source)
        .on_conflict_do_nothing(index_elements=list(key.elements), index_where=key.where)
        .returning(*by_key(table))
        .cte("oc_made")
    )
    return sa.union_all(
        sa.select(*found.c, sa.false().label(CREATED)),
        sa.select(*made.c, sa.true().label(CREATED)),
    )


def relkind_statement(name: str) -> sa.Select[Any]:
    """The kind of relation named ``name`` (quoted, as SQL would name it)."""
    pg_class = sa.table("pg_class", sa.column("oid"), sa.column("relkind"))
    regclass = sa.func.to_regclass(sa.bindparam("oc_name", name, type_=sa.Text))
    return sa.select(sa.cast(pg_class.c.relkind, sa.Text)).where(pg_class.c.oid == regclass)


def lock_keys_statement(plan: UpsertPlan, rows: list[Row]) -> sa.Select[Any]:
    """SELECT the keys of ``rows`` that are stored, in key order, FOR UPDATE. Pure."""
    key = plan.target.key
    assert key is not None
    read = select_by_keys(plan, rows, key_only=True)
    if key.where is not None:
        read = read.where(key.where)
    return read.order_by(*(plan.table.c[c] for c in plan.match)).with_for_update()


def update_statement(plan: UpsertPlan, rows: list[Row]) -> sa.Update:
    """UPDATE t SET ... FROM (VALUES rows) AS oc_incoming WHERE the key matches AND
    the call's WHERE RETURNING *: ``excluded(col)`` is ``oc_incoming.col``. Pure."""
    t, key = plan.table, plan.target.key
    assert key is not None
    cols = sorted(rows[0])
    incoming = sa.values(*(sa.column(c, t.c[c].type) for c in cols), name="oc_incoming").data(
        [tuple(r[c] for c in cols) for r in rows]
    )

    def value(c: sa.Column[Any]) -> Any:
        return incoming.c[c.key]

    cond = sa.and_(*(t.c[c] == incoming.c[c] for c in plan.match))
    if key.where is not None:
        cond = sa.and_(cond, key.where)
    if plan.where is not None:
        cond = sa.and_(cond, substitute(plan.where, t, value))
    set_ = {c: substitute(v, t, value) for c, v in plan.set_.items()}
    return sa.update(t).values(set_).where(cond).returning(*t.c)


def plain_json(kind: Any) -> bool:
    """A ``json`` column (not ``jsonb``), also behind a TypeDecorator."""
    if isinstance(kind, sa.types.TypeDecorator):
        kind = kind.impl_instance
    return isinstance(kind, sa.JSON) and not isinstance(kind, pg.JSONB)
