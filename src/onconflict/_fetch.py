"""get_or_create and update_or_create: the shared core.

Planning is pure; ``execute_get_or_create`` is the only I/O. The statements of
a call shape (table, key, lookup columns, value columns) are built once and
reused, so a repeated call costs one statement execution and little Python.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import Mapper, Session, make_transient_to_detached

from onconflict._target import (
    ConflictTarget,
    OnTarget,
    UniqueKey,
    fixed_values,
    resolve_table,
    resolve_target,
    unique_keys,
    with_fixed,
    without_numbered,
)
from onconflict._upsert import PreparedUpsert, execute_upsert, prepare_upsert
from onconflict.dialects import native_support
from onconflict.dialects.base import DialectSupport, FetchPlan, Row
from onconflict.exceptions import OnConflictError

ATTEMPTS = 5  # a row that vanishes between the conflict and the read, again and again


class LookupMismatchError(OnConflictError):
    """A row with the lookup's key exists but differs in the other lookup columns."""


@dataclass
class PreparedFetch:
    plan: FetchPlan
    support: DialectSupport
    outmap: dict[str, str] = field(default_factory=dict)
    mapper: Mapper[Any] | None = None

    def output(self, row: Row) -> Row:
        """The row with the keys results use (attribute names for an ORM class)."""
        return {self.outmap.get(k, k): v for k, v in row.items()}


def prepare_get_or_create(
    dialect: Dialect,
    table: Any,
    lookup: Mapping[str, Any],
    defaults: Mapping[str, Any] | None,
    on: OnTarget = None,
) -> PreparedFetch:
    """Validate and plan a get_or_create call. Pure: no I/O."""
    tbl, keymap, outmap = resolve_table(table)
    if not isinstance(lookup, Mapping) or not lookup:
        raise ValueError("lookup must be a non-empty mapping of column to value")
    defaults = defaults or {}
    if not isinstance(defaults, Mapping):
        raise TypeError(f"defaults must be a mapping, not {type(defaults).__name__}")
    # a class with a polymorphic identity (single-table inheritance): looked up and made as it
    look = with_fixed(fixed_values(table), _columns(tbl, keymap, lookup, "lookup"), "lookup")
    more = without_numbered(tbl, _columns(tbl, keymap, defaults, "defaults"))
    clash = sorted(set(look) & set(more))
    if clash:
        raise ValueError(f"{clash[0]!r} is both in lookup and in defaults")
    target = _target(tbl, on, set(look))
    support = native_support(dialect)
    support.check_target(tbl, target)
    plan = _plan(support, tbl, target, tuple(sorted(look)), tuple(sorted(more)))
    plan.params = {**look, **more}
    mapper = None if isinstance(table, sa.Table) else sa.inspect(table)
    return PreparedFetch(plan, support, outmap, mapper)


def _columns(
    table: sa.Table, keymap: Mapping[str, str], values: Mapping[str, Any], what: str
) -> dict[str, Any]:
    out = {}
    for name, value in values.items():
        if name not in keymap:
            raise ValueError(f"{what}: {name!r} is not a column of {table.name!r}")
        out[keymap[name]] = value
    return out


def _target(table: sa.Table, on: OnTarget, lookup: set[str]) -> ConflictTarget:
    if on is not None:
        target = resolve_target(table, on, lookup)
        if target.key is None or not set(target.columns) <= lookup:
            raise ValueError(f"the lookup must give every column of the conflict target ({on!r})")
        return target
    fits = [
        k for k in unique_keys(table) if k.columns and k.where is None and set(k.columns) <= lookup
    ]
    exact = [k for k in fits if set(k.columns) == lookup]
    chosen: list[UniqueKey] = exact or fits
    if len(chosen) == 1:
        return ConflictTarget(chosen[0])
    names = "; ".join(k.describe() for k in chosen) or "none"
    raise ValueError(
        f"the lookup ({', '.join(sorted(lookup))}) must contain exactly one unique key of"
        f" {table.name!r} to be race-safe (found: {names}); pass on=..."
    )


@lru_cache(maxsize=512)
def _shape(
    support: DialectSupport,
    table: sa.Table,
    target: ConflictTarget,
    lookup: tuple[str, ...],
    values: tuple[str, ...],
) -> FetchPlan:
    plan = FetchPlan(table, target, lookup, tuple(sorted(lookup + values)))
    support.prepare_fetch(plan)
    return plan


def _plan(
    support: DialectSupport,
    table: sa.Table,
    target: ConflictTarget,
    lookup: tuple[str, ...],
    values: tuple[str, ...],
) -> FetchPlan:
    shared = _shape(support, table, target, lookup, values)
    return FetchPlan(shared.table, target, lookup, shared.values, shared.statements)


def execute_get_or_create(conn: Connection, prepared: PreparedFetch) -> tuple[Row, bool]:
    """One attempt after another until the row is read or made (bounded)."""
    support, plan = prepared.support, prepared.plan
    for _ in range(ATTEMPTS):
        got = support.get_or_create_once(conn, plan)
        if got is not None:
            row, created = got
            return prepared.output(row), created
    if set(plan.lookup) != set(plan.target.columns):
        raise LookupMismatchError(
            f"get_or_create on {plan.table.name!r}: a row with this"
            f" {plan.target.describe()} exists, but its other lookup columns"
            f" ({', '.join(sorted(set(plan.lookup) - set(plan.target.columns)))}) differ"
        )
    raise OnConflictError(
        f"get_or_create on {plan.table.name!r}: the row conflicted but could not be read"
        f" {ATTEMPTS} times in a row (deleted as fast as it is created?)"
    )


def as_instance(session: Session, prepared: PreparedFetch, row: Row) -> Any:
    """The mapped instance for a row, attached to the session without a query."""
    mapper = prepared.mapper
    assert mapper is not None
    by_column = {prepared.outmap.get(c.key, c.key): c for c in prepared.plan.table.c}
    pk = tuple(row[prepared.outmap.get(str(c.key), str(c.key))] for c in mapper.primary_key)
    key = mapper.identity_key_from_primary_key(pk)
    existing = session.identity_map.get(key)
    if existing is not None:
        return existing
    sa.orm.configure_mappers()  # instrumentation is complete once mappers are configured
    instance = mapper.class_manager.new_instance()
    for name, value in row.items():
        try:
            prop = mapper.get_property_by_column(by_column[name])
        except sa.orm.exc.UnmappedColumnError:  # another subclass's column (single table)
            continue
        setattr(instance, prop.key, value)
    make_transient_to_detached(instance)
    return session.merge(instance, load=False)


def prepare_update_or_create(
    dialect: Dialect,
    table: Any,
    lookup: Mapping[str, Any],
    defaults: Mapping[str, Any],
    on: OnTarget = None,
) -> tuple[PreparedFetch, PreparedUpsert]:
    """update_or_create is an upsert of one row, updating the ``defaults`` columns."""
    fetch = prepare_get_or_create(dialect, table, lookup, defaults, on)
    upsert = prepare_upsert(
        dialect,
        table,
        [{**lookup, **defaults}],
        on=on if on is not None else list(fetch.plan.target.columns),
        update=sorted(set(fetch.plan.values) - set(fetch.plan.lookup)),
        where=None,
        skip_unchanged=False,
        duplicates="last",
    )
    return fetch, upsert


def _get_or_create_work(conn: Connection, prepared: PreparedFetch, owned: bool) -> tuple[Row, bool]:
    with prepared.support.scope(conn, owned):
        return execute_get_or_create(conn, prepared)


def _update_or_create_work(
    conn: Connection, prepared: PreparedUpsert, owned: bool
) -> tuple[Row, bool]:
    result = execute_upsert(conn, prepared, owned)
    if result.inserted:
        return dict(result.inserted[0]), True
    return dict(result.updated[0]), False


def _as_instances(
    prepared: PreparedFetch,
) -> Callable[[Session | None, tuple[Row, bool]], tuple[Any, bool]] | None:
    """With an ORM class: turn the row into the session's mapped instance."""
    if prepared.mapper is None:
        return None

    def finish(session: Session | None, got: tuple[Row, bool]) -> tuple[Any, bool]:
        row, created = got
        return (as_instance(session, prepared, row) if session is not None else row), created

    return finish
