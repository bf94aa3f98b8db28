"""The shared core of upsert: pure planning, then one I/O function.

It reuses insert_ignore's planning (table, rows, conflict target, grouping,
budgets) and adds what to update, when, and what to do with keys repeated in
one call.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.elements import ColumnElement

from onconflict._excluded import Excluded, excluded, excluded_names, refuse_key_expressions
from onconflict._gc import paused
from onconflict._insert_ignore import (
    PreparedInsert,
    _group,
    budgets,
    server_identity,
)
from onconflict._target import (
    ANY_KEY,
    ConflictTarget,
    OnTarget,
    UniqueKey,
    fixed_values,
    reachable_keys,
    read_rows,
    resolve_table,
)
from onconflict.dialects import native_support
from onconflict.dialects.base import DialectSupport
from onconflict.dialects.common import align_rows
from onconflict.dialects.plans import Outcome, Row, UpsertPlan
from onconflict.result import UpsertResult

Duplicates = Literal["last", "first", "error"]
UpdateSpec = Sequence[str] | Mapping[str, Any] | None


@dataclass
class PreparedUpsert(PreparedInsert):
    plans: dict[tuple[str, ...], UpsertPlan] = field(default_factory=dict)


def prepare_upsert(
    dialect: Dialect,
    table: Any,
    rows: Iterable[Mapping[str, Any]],
    *,
    on: OnTarget,
    update: UpdateSpec,
    where: Any,
    skip_unchanged: bool,
    duplicates: Duplicates,
) -> PreparedUpsert:
    """Validate and plan an upsert call. Pure: no I/O."""
    if duplicates not in ("last", "first", "error"):
        raise ValueError(f"duplicates must be 'last', 'first' or 'error', not {duplicates!r}")
    if on is ANY_KEY:
        raise ValueError(
            "upsert needs a conflict target to update by; ANY_KEY is for insert_ignore"
        )
    if where is not None and not isinstance(where, ColumnElement):
        raise TypeError(f"where must be a SQLAlchemy expression, not {where!r}")
    listed = rows if isinstance(rows, list) else list(rows)
    with paused(len(listed)):
        head = read_rows(table, listed, on)
    if head is None:
        return PreparedUpsert(resolve_table(table)[0], ConflictTarget(None, any_key=True), [])
    tbl, given, data, outmap, target, types = head
    keymap = resolve_table(table)[1]
    support = native_support(dialect)
    support.check_target(tbl, target)
    prepared = PreparedUpsert(
        tbl, target, data, support, given=given, outmap=outmap, dialect=dialect, types=types
    )
    _check_names(tbl, where, "where")
    refuse_key_expressions(tbl, data, prepared.keyed)
    spec = _update_spec(tbl, keymap, update)
    with paused(len(data)):
        _group(prepared, keep=duplicates)
    kept = frozenset(fixed_values(table))
    for group in prepared.groups:
        set_ = _set_for(tbl, target, spec, group.columns, update is None, kept)
        plan = _plan(prepared, group.columns, group.match, set_, where, skip_unchanged)
        prepared.plans[group.columns] = plan
    return prepared


def _plan(
    prepared: PreparedUpsert,
    columns: tuple[str, ...],
    match: tuple[str, ...],
    set_: dict[str, Any],
    where: Any,
    skip_unchanged: bool,
) -> UpsertPlan:
    """The plan of one group: its SET (with onupdate columns), its condition."""
    tbl, target, support = prepared.table, prepared.target, prepared.support
    assert support is not None
    cond = where
    if skip_unchanged and set_:
        changed = sa.or_(*(support.changed(tbl.c[col], _expr(v)) for col, v in set_.items()))
        cond = changed if cond is None else sa.and_(cond, changed)
    if set_:  # after skip_unchanged's test: a new updated_at is not a change
        set_.update(on_update(tbl, target, set_))
    match = _partial_match(target, columns, set_) or match
    plan = UpsertPlan(tbl, target, prepared.keys, match, set_, cond)
    if not support.targets_conflicts:
        # MySQL/MariaDB: a row may also hit another unique key; the dialect
        # then tells a duplicate of the target from one of those
        plan.extra["other_keys"] = _other_keys(tbl, target, columns)
    return plan


def _other_keys(
    table: sa.Table, target: ConflictTarget, columns: tuple[str, ...]
) -> list[UniqueKey]:
    """The unique keys besides the target that rows with these columns can hit."""
    wanted = set(target.columns)
    return [k for k in reachable_keys(table, columns) if set(k.columns) != wanted]


def _partial_match(
    target: ConflictTarget, columns: tuple[str, ...], set_: dict[str, Any]
) -> tuple[str, ...]:
    """For a partial unique index (rows are paired with the returned rows by
    their values, not a key): the columns an updated row stores as given, the
    index's and those the update sets to the incoming value. A primary key
    the update leaves alone would not match. Empty: pair by all columns."""
    key = target.key
    if key is None or key.where is None or not set_:
        return ()
    same = [
        c
        for c in columns
        if c in key.columns or (isinstance(v := set_.get(c), Excluded) and v.name == c)
    ]
    return tuple(same)


def _check_names(table: sa.Table, expr: Any, what: str) -> None:
    unknown = sorted(n for n in excluded_names(expr) if n not in table.c)
    if unknown:
        raise ValueError(f"{what}: excluded({unknown[0]!r}) is not a column of {table.name!r}")


def _update_spec(table: sa.Table, keymap: Mapping[str, str], update: UpdateSpec) -> dict[str, Any]:
    """update= as column key -> value/expression (None: decided per group)."""
    if update is None:
        return {}
    if isinstance(update, str):
        update = [update]
    if isinstance(update, Mapping):
        items = list(update.items())
    elif isinstance(update, Sequence):
        items = [(name, None) for name in update]
    else:
        raise TypeError(f"update must be column names or a mapping, not {update!r}")
    spec: dict[str, Any] = {}
    for name, value in items:
        if not isinstance(name, str) or name not in keymap:
            raise ValueError(f"update: {name!r} is not a column of {table.name!r}")
        _check_names(table, value, f"update[{name!r}]")
        spec[keymap[name]] = value
    return spec


def _set_for(
    table: sa.Table,
    target: ConflictTarget,
    spec: dict[str, Any],
    columns: tuple[str, ...],
    default: bool,
    kept: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The SET clause for rows carrying ``columns``. ``kept``: columns the default
    update leaves alone besides the keys (a single-table inheritance
    discriminator: an upsert through one class never turns another's row into it)."""
    if default:  # every column the rows carry but the target's and the primary key's
        keys = set(target.columns).union(kept, (c.key for c in table.primary_key.columns))
        return {c: excluded(c) for c in columns if c not in keys}
    set_: dict[str, Any] = {}
    for col, value in spec.items():
        if value is None:  # a bare name: the incoming value
            if col not in columns:
                raise ValueError(
                    f"update: column {col!r} is not in every row (rows with columns"
                    f" {', '.join(columns)}); give it a value: update={{{col!r}: ...}}"
                )
            value = excluded(col)
        set_[col] = value
    return set_


def on_update(table: sa.Table, target: ConflictTarget, set_: dict[str, Any]) -> dict[str, Any]:
    """The ``Column(onupdate=...)`` values of the columns ``set_`` leaves out.

    SQLAlchemy applies them to an UPDATE but not to the update part of an
    upsert (ON CONFLICT DO UPDATE, ON DUPLICATE KEY UPDATE), so every update an
    upsert performs gets them here: a scalar as a bound value, a SQL expression
    (``func.now()``) as it is, a Python callable called once per statement
    (with no execution context). Server-side ``server_onupdate`` is the
    database's own business.
    """
    out: dict[str, Any] = {}
    for col in table.c:
        default = col.onupdate
        if default is None or col.key in set_ or col.key in target.columns:
            continue
        if default.is_clause_element or default.is_scalar:
            out[col.key] = default.arg  # type: ignore[attr-defined]
        elif default.is_callable:
            out[col.key] = sa.bindparam(
                f"oc_onupdate_{col.key}",
                type_=col.type,
                callable_=functools.partial(default.arg, None),  # type: ignore[attr-defined]
            )
    return out


def _expr(value: Any) -> Any:
    return value if isinstance(value, sa.sql.ClauseElement) else sa.literal(value)


def execute_upsert(conn: Connection, prepared: PreparedUpsert, owned: bool) -> UpsertResult:
    """Run a prepared upsert on a synchronous connection. The only I/O of upsert."""
    support = prepared.support
    assert support is not None
    budgets(prepared, support, conn.dialect)
    returning = support.returning(conn.dialect)
    for plan in prepared.plans.values():
        if plan.set_:
            support.prepare_upsert(plan, conn.dialect)
        else:  # nothing to update: existing rows stay as they are
            plan.statement = support.insert_ignore(plan.table, plan.target, returning)
    outcomes: dict[int, Outcome] = {}
    with support.scope(conn, owned), support.atomic(conn) if not owned else nullcontext():
        if server_identity(conn, prepared, support, True):
            _group(prepared, prepared.keep)  # repeats as the server sees them
        for group in prepared.groups:
            plan = prepared.plans[group.columns]
            for chunk in prepared.chunks(group):
                batch = [prepared.rows[i] for i in chunk]
                if plan.set_:
                    done = support.write_upsert(conn, plan, batch)
                else:
                    done = _insert_only(conn, support, plan, batch, returning)
                outcomes.update(zip(chunk, done, strict=True))
    return _result(prepared, outcomes)


def _result(prepared: PreparedUpsert, outcomes: dict[int, Outcome]) -> UpsertResult:
    """The result, from the outcomes by input position (built complete: the
    result is frozen)."""
    lists: dict[str, list[Mapping[str, Any]]] = {"inserted": [], "updated": [], "unchanged": []}
    out = prepared.outmap
    for i, given in enumerate(prepared.given):
        kind, stored = outcomes.get(i, ("unchanged", None))  # superseded repeats: unchanged
        if stored is None:
            lists["unchanged"].append(given)
        else:
            lists[kind].append({out.get(k, k): v for k, v in stored.items()})
    return UpsertResult(**lists)


def _insert_only(
    conn: Connection, support: DialectSupport, plan: UpsertPlan, rows: list[Row], returning: bool
) -> list[Outcome]:
    """Rows whose only columns are the key: insert the new ones, leave the rest."""
    stored: list[Row | None]
    if returning:
        returned = support.write_many(conn, plan.statement, rows)
        stored = align_rows(conn, plan, rows, returned)
    else:
        stored = [support.write_one(conn, plan.statement, row) for row in rows]
    return [("unchanged", None) if r is None else ("inserted", r) for r in stored]
