"""Statement helpers shared by the dialects: the lookup condition, keys
evaluated on the server, the ``ON CONFLICT`` clauses of PostgreSQL and SQLite,
SELECT by keys and the pairing of returned rows, running rows of one shape.
Building is pure; the functions that take a ``Connection`` run what they say."""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql import visitors
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import ColumnElement

from onconflict._excluded import has_expressions, rows_statement, substitute
from onconflict._keys import (
    align,
    align_evaluated,
    by_key,
    evaluated_key,
    expression_key,
    returning_columns,
)
from onconflict._target import ConflictTarget, UniqueKey
from onconflict.dialects.driver import python_default
from onconflict.dialects.plans import FetchPlan, Outcome, Row, UpsertPlan


def lookup_condition(plan: FetchPlan) -> ColumnElement[bool]:
    """The lookup as the database sees the key: an expression target (an index
    on ``lower(ext)``) is compared by its expressions, evaluated on the stored
    row and on the bound lookup values alike; the key's columns by ``=`` (never
    NULL: such a lookup is refused); the other lookup columns NULL-safe."""
    t = plan.table
    key = plan.target.key
    in_expr: set[str] = set()
    conds: list[ColumnElement[bool]] = []
    if key is not None and not key.columns:
        for element in key.elements:
            used = {c.key for c in _columns_in(element, t)}
            in_expr |= used
            conds.append(element == with_values(element, t, _lookup_param))
    keyed = set(plan.target.columns)

    def match(k: str) -> ColumnElement[bool]:
        value = sa.bindparam(f"oc_{k}", type_=t.c[k].type)
        return t.c[k] == value if k in keyed else t.c[k].is_not_distinct_from(value)

    conds += [match(k) for k in plan.lookup if k not in in_expr]
    return sa.and_(*conds)


def _lookup_param(col: sa.Column[Any]) -> Any:
    return sa.bindparam(f"oc_{col.key}", type_=col.type)


def _columns_in(expr: Any, table: sa.Table) -> list[sa.Column[Any]]:
    return [e for e in visitors.iterate(expr) if isinstance(e, sa.Column) and e.table is table]


def with_values(expr: Any, table: sa.Table, value: Callable[[sa.Column[Any]], Any]) -> Any:
    """``expr`` (an index expression) with each column of ``table`` replaced by
    ``value(column)``: a bound parameter of the column's type, say."""

    def replace(element: Any) -> Any:
        if isinstance(element, sa.Column) and element.table is table:
            return value(element)
        return None

    return visitors.replacement_traverse(expr, {}, replace)  # type: ignore[call-overload]


EVALUATE_ROWS = 400  # rows whose key expressions one SELECT evaluates


def evaluate_keys(
    conn: Connection, table: sa.Table, key: UniqueKey, rows: list[Row]
) -> list[tuple[Any, ...] | None]:
    """Each row's key as the database computes it for an expression index
    (``lower(ext)``) or a partial one: the index expressions (and its WHERE)
    evaluated on the server with the row's values bound through their column
    types; None for a row with a NULL (NULLs never collide) or outside the
    partial index's WHERE (it cannot conflict)."""
    out: list[tuple[Any, ...] | None] = []
    parts = list(key.elements)
    if key.where is not None:
        parts.append(sa.case((key.where, 1), else_=None))
    width = len(parts)
    for start in range(0, len(rows), EVALUATE_ROWS):
        chunk = rows[start : start + EVALUATE_ROWS]
        exprs = []
        for i, row in enumerate(chunk):
            for j, part in enumerate(parts):
                bound = with_values(part, table, functools.partial(_row_param, row))
                exprs.append(sa.type_coerce(bound, part.type).label(f"k{i}_{j}"))
        values = list(conn.execute(sa.select(*exprs)).one())
        for i in range(len(chunk)):
            one = tuple(values[i * width : i * width + len(key.elements)])
            out.append(None if None in values[i * width : (i + 1) * width] else one)
    return out


def _row_param(row: Row, col: sa.Column[Any]) -> Any:
    return sa.bindparam(None, row.get(col.key), type_=col.type)


def existing_keys(
    conn: Connection,
    table: sa.Table,
    key: UniqueKey,
    wanted: list[tuple[Any, ...] | None],
    for_update: bool = False,
) -> set[tuple[Any, ...]]:
    """The expression-index keys among ``wanted`` that stored rows have."""
    keys = sorted({k for k in wanted if k is not None}, key=repr)
    found: set[tuple[Any, ...]] = set()
    elements = list(key.elements)
    for start in range(0, len(keys), EVALUATE_ROWS):
        chunk = keys[start : start + EVALUATE_ROWS]
        if len(elements) == 1:
            where = elements[0].in_([k[0] for k in chunk])
        else:
            where = sa.tuple_(*elements).in_(chunk)
        read = sa.select(*(e.label(f"k{j}") for j, e in enumerate(elements))).where(where)
        if key.where is not None:
            read = read.where(key.where)
        if for_update:
            read = read.with_for_update()
        found.update(tuple(r) for r in conn.execute(read))
    return found


def execute_rows(conn: Connection, stmt: Any, rows: list[Row]) -> sa.CursorResult[Any]:
    """Run ``stmt`` for rows of one shape: bound parameters, or, where a row
    gives a SQL expression, a multi-row VALUES list that carries it."""
    stmt, params = rows_statement(stmt, rows)
    return conn.execute(stmt, params)


def execute_row(conn: Connection, stmt: Any, row: Row) -> sa.CursorResult[Any]:
    """Run ``stmt`` for one row (SQL expressions in the row's VALUES)."""
    if has_expressions([row]):
        return conn.execute(stmt.values(row))
    return conn.execute(stmt, row)


def is_string(col: sa.Column[Any]) -> bool:
    """A column whose values are strings (a collation may fold them)."""
    try:
        return col.type.python_type is str
    except NotImplementedError:
        return False


def collation_folds(
    conn: Connection,
    table: sa.Table,
    slot: str,
    read: Callable[[], Iterable[tuple[str, Callable[[str], str] | None]]],
) -> dict[str, Callable[[str], str]]:
    """Column key -> fold for the table's columns whose collation folds strings,
    from ``read()`` (database column name, fold or None), cached per connection
    (in ``conn.info[slot]``) and Table object: a dialect reads its catalog once.
    (By object, not by name: a table dropped and made again under its name with
    other columns, as tests and migrations do, is another Table, read afresh.)"""
    cache: weakref.WeakKeyDictionary[sa.Table, dict[str, Any]] = conn.info.setdefault(
        slot, weakref.WeakKeyDictionary()
    )
    folds = cache.get(table)
    if folds is None:
        keys = {c.name: c.key for c in table.c}
        folds = {keys[name]: fold for name, fold in read() if fold is not None and name in keys}
        cache[table] = folds
    return folds


def in_autocommit(conn: Connection) -> bool:
    """Whether SQLAlchemy runs this connection in AUTOCOMMIT: asked by the
    connection's or engine's execution options, or by create_engine's
    ``isolation_level`` (kept on the dialect; no SQL is run)."""
    level = conn.get_execution_options().get("isolation_level")
    if level is None:
        level = getattr(conn.dialect, "_on_connect_isolation_level", None)
    return level == "AUTOCOMMIT"


def python_defaults(table: sa.Table, given: tuple[str, ...]) -> bool:
    """Whether a row made from the ``given`` columns gets a Python-side default
    (a scalar or a callable), which SQLAlchemy computes per row as it executes."""
    return any(
        c.default is not None and (c.default.is_scalar or c.default.is_callable)
        for c in table.c
        if c.key not in given
    )


def needs_context(table: sa.Table, given: tuple[str, ...]) -> bool:
    """Whether a row made from the ``given`` columns needs a Python-side default
    that takes SQLAlchemy's execution context: only a plain INSERT executed by
    SQLAlchemy gives it a usable one (``get_current_parameters()``)."""
    return any(
        c.default is not None and c.default.is_callable and python_default(c) is None
        for c in table.c
        if c.key not in given
    )


def with_primary_key(table: sa.Table, row: Row, result: sa.CursorResult[Any]) -> Row:
    """The row as inserted, with the primary key the database generated for it."""
    stored = dict(row)
    pk = result.inserted_primary_key
    if pk is not None:
        for col, value in zip(table.primary_key.columns, pk, strict=True):
            if value is not None:
                stored[col.key] = value
    return stored


def do_update(stmt: Any, plan: UpsertPlan) -> Any:
    """``ON CONFLICT (target) DO UPDATE SET ... WHERE ...`` (PostgreSQL, SQLite)."""
    key = plan.target.key
    assert key is not None
    incoming = stmt.excluded
    set_ = {
        col: substitute(v, plan.table, lambda c: incoming[c.key]) for col, v in plan.set_.items()
    }
    where = substitute(plan.where, plan.table, lambda c: incoming[c.key])
    return stmt.on_conflict_do_update(
        index_elements=list(key.elements), index_where=key.where, set_=set_, where=where
    )


def select_by_keys(plan: UpsertPlan, rows: list[Row], key_only: bool = False) -> sa.Select[Any]:
    """SELECT the stored rows (or only their keys) with the keys of ``rows``."""
    cols = [plan.table.c[c] for c in plan.match]
    # bound through the column's type: the database applies its own key identity
    wanted = [tuple([plan.keys.typed(c, r[c]) for c in plan.match]) for r in rows]
    keys = cols[0] if len(cols) == 1 else sa.tuple_(*cols)
    where = keys.in_([k[0] for k in wanted] if len(cols) == 1 else wanted)
    shown = [c if c.key == c.name else c.label(c.key) for c in cols] if key_only else None
    return (sa.select(*shown) if shown else sa.select(*by_key(plan.table))).where(where)


def align_rows(
    conn: Connection,
    plan: UpsertPlan,
    rows: list[Row],
    returned: list[Row],
    wanted: list[tuple[Any, ...] | None] | None = None,
) -> list[Row | None]:
    """Pair returned rows with input rows by the key as the database sees it:
    the match columns (Keys), or for an expression index its expressions, which
    the server evaluates for the input rows (``wanted``: already evaluated)."""
    key = expression_key(plan.target)
    if key is None:
        return align(plan.keys, plan.table, rows, returned, plan.match)
    if wanted is None:
        wanted = evaluate_keys(conn, plan.table, key, rows)
    return align_evaluated(wanted, returned, plan.table)


def upsert_reading_keys_first(
    conn: Connection, plan: UpsertPlan, rows: list[Row], *, for_update: bool = False
) -> list[Outcome]:
    """Upsert where RETURNING cannot say whether its row was inserted or updated
    (SQLite; CockroachDB and YugabyteDB, which have no ``xmax``): the keys that
    exist are read first, then the upsert runs. Exact only if no other writer can
    insert one of the keys in between: the caller holds the write lock (SQLite)
    or the transaction is serializable, reading with ``for_update``."""
    existed, wanted = _existed(conn, plan, rows, for_update)
    returned = [dict(m) for m in execute_rows(conn, plan.statement, rows).mappings()]
    aligned = align_rows(conn, plan, rows, returned, wanted)
    out: list[Outcome] = []
    for there, stored in zip(existed, aligned, strict=True):
        if stored is None:
            out.append(("unchanged", None))
        else:
            out.append(("updated" if there else "inserted", stored))
    return out


def _existed(
    conn: Connection, plan: UpsertPlan, rows: list[Row], for_update: bool
) -> tuple[list[bool], list[tuple[Any, ...] | None] | None]:
    """Whether a row with each row's key is stored, as the database compares keys:
    by the target's columns (bound through their types, collated), or, for an
    expression or partial index, by its expressions and WHERE evaluated on the
    server (then also those evaluated keys)."""
    key = evaluated_key(plan.target)
    if key is not None:
        wanted = evaluate_keys(conn, plan.table, key, rows)
        stored = existing_keys(conn, plan.table, key, wanted, for_update)
        return [k is not None and k in stored for k in wanted], wanted
    if not (plan.target.columns and plan.match == plan.target.columns):
        return [False] * len(rows), None
    read = select_by_keys(plan, rows, key_only=True)
    found = conn.execute(read.with_for_update() if for_update else read).mappings()
    before = {plan.keys.of(r, plan.match) for r in found}
    return [plan.keys.of(row, plan.match) in before for row in rows], None


def do_nothing(stmt: Any, table: sa.Table, target: ConflictTarget, returning: bool) -> Insert:
    """``ON CONFLICT (target) DO NOTHING [RETURNING *]`` on a PostgreSQL or SQLite insert.

    The target is given as columns (and the partial index's WHERE) rather than a
    constraint name: the database infers the arbiter index from them, whatever
    the constraint is called on the server. No target means any unique key.
    """
    key: UniqueKey | None = target.key
    if key is None:
        stmt = stmt.on_conflict_do_nothing()
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(key.elements), index_where=key.where)
    return stmt.returning(*returning_columns(table, target)) if returning else stmt  # type: ignore[no-any-return]
