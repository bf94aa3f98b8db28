"""get_or_create and update_or_create: the shared core.

Planning is pure (``prepare_get_or_create``, ``prepare_update_or_create``);
``execute_get_or_create`` and ``execute_update_or_create`` are the only I/O, on
a synchronous ``Connection`` (the ``_work`` functions are what the fronts run;
``as_instance`` gives a session's mapped instance). The statements of
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
from sqlalchemy.orm.attributes import set_committed_value

from onconflict._keys import by_key
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
from onconflict.dialects import native_support
from onconflict.dialects.base import DialectSupport
from onconflict.dialects.common import lookup_condition
from onconflict.dialects.plans import FetchPlan, Row
from onconflict.exceptions import LookupMismatchError, OnConflictError

ATTEMPTS = 5  # a row that vanishes between the conflict and the read, again and again


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
    """Validate and plan a get_or_create call. Pure: no I/O (callables given as
    values in ``defaults`` are called, once)."""
    return _prepare_fetch(dialect, table, lookup, called(defaults, "defaults"), on)


def called(values: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    """The values, callables among them called (as Django does with ``defaults``)."""
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise TypeError(f"{what} must be a mapping, not {type(values).__name__}")
    # (a SQL expression is a value as it is: some, such as func.lower("X"), are callable)
    return {k: v() if _plain_callable(v) else v for k, v in values.items()}


def _plain_callable(value: Any) -> bool:
    return callable(value) and not isinstance(value, sa.sql.ClauseElement)


def _prepare_fetch(
    dialect: Dialect,
    table: Any,
    lookup: Mapping[str, Any],
    defaults: Mapping[str, Any],
    on: OnTarget,
    what: str = "defaults",
) -> PreparedFetch:
    tbl, keymap, outmap = resolve_table(table)
    if not isinstance(lookup, Mapping) or not lookup:
        raise ValueError("lookup must be a non-empty mapping of column to value")
    # a class with a polymorphic identity (single-table inheritance): looked up and made as it
    look = with_fixed(fixed_values(table), _columns(tbl, keymap, lookup, "lookup"), "lookup")
    more = without_numbered(tbl, _columns(tbl, keymap, defaults, what))
    clash = sorted(set(look) & set(more))
    if clash:
        raise ValueError(f"{clash[0]!r} is both in lookup and in {what}")
    target = _target(tbl, on, set(look))
    refuse_null_keys(tbl, target, look)
    support = native_support(dialect)
    support.check_target(tbl, target)
    plan = _plan(support, tbl, target, tuple(sorted(look)), tuple(sorted(more)))
    plan.params = {**look, **more}
    mapper = None if isinstance(table, sa.Table) else sa.inspect(table)
    return PreparedFetch(plan, support, outmap, mapper)


def refuse_null_keys(
    table: sa.Table, target: ConflictTarget, values: Mapping[str, Any], where: str = "lookup"
) -> None:
    """NULL never equals NULL in a unique key: such a lookup would never find its
    row, and every call would create a new one. Refused before any SQL."""
    nulls = [k for k in target.columns if values[k] is None]
    if nulls:
        raise ValueError(
            f"{where}: {nulls[0]!r} is None, but it is a column of the key the call relies"
            f" on ({target.describe()} of {table.name!r}) and NULL never matches there:"
            " every call would create a new row. Give a value, or use a key whose"
            " columns are not NULL (on=...)"
        )


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
    """The unique key the lookup is made by: ``on``, which the lookup must give
    in full, or else the one unique key the lookup gives (exactly, if several)."""
    if on is not None:
        return _named_target(table, on, lookup)
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


def _named_target(table: sa.Table, on: OnTarget, lookup: set[str]) -> ConflictTarget:
    target = resolve_target(table, on, lookup)
    if target.key is None or not set(target.columns) <= lookup:
        raise ValueError(f"the lookup must give every column of the conflict target ({on!r})")
    return target


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
    if target.key is not None and set(target.columns) != set(lookup):
        # which row holds the key, when the lookup's other columns did not match
        # (an expression target's key is its expressions: lookup_condition's own)
        key = lookup_condition(FetchPlan(table, target, target.columns, ()))
        plan.statements["select_key"] = support.for_update(sa.select(table).where(key), read=True)
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
        check_miss(conn, prepared)
    raise _vanished(plan, "get_or_create")


def fast_attempts(prepared: PreparedFetch) -> int:
    """Attempts of a driver-level path: one where a miss may be a lookup mismatch
    (the ordinary path then says so at once), else the usual bound."""
    plan = prepared.plan
    return ATTEMPTS if set(plan.lookup) == set(plan.target.columns) else 1


def check_miss(conn: Connection, prepared: PreparedFetch) -> None:
    """An attempt met a conflict and found no row with the lookup. Raise at once
    when that is not a row deleted meanwhile: the key's row differs in the other
    lookup columns (LookupMismatchError), or the database reports a duplicate of
    another unique key (MySQL; its IntegrityError)."""
    plan = prepared.plan
    select_key = plan.statements.get("select_key")
    if select_key is not None:
        stored = conn.execute(select_key, plan.bound(plan.lookup)).mappings().first()
        if stored is not None:
            other = sorted(set(plan.lookup) - set(plan.target.columns))
            raise LookupMismatchError(
                f"get_or_create on {plan.table.name!r}: a row with this"
                f" {plan.target.describe()} exists, but its other lookup columns"
                f" ({', '.join(other)}) differ"
            )
    prepared.support.conflict_elsewhere(conn, plan)


def _vanished(plan: FetchPlan, what: str) -> OnConflictError:
    return OnConflictError(
        f"{what} on {plan.table.name!r}: the row conflicted but could not be read"
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
        # the session may hold older values (an update, another writer): the row wins
        held = sa.inspect(existing).mapper
        for name, value in row.items():
            try:
                prop = held.get_property_by_column(by_column[name])
            except sa.orm.exc.UnmappedColumnError:
                continue
            set_committed_value(existing, prop.key, value)
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


@dataclass
class PreparedUpdate:
    """update_or_create: the get_or_create that creates the row, and the UPDATE of
    the ``defaults`` columns that runs when it exists."""

    fetch: PreparedFetch
    statements: dict[str, Any]
    params: dict[str, Any]  # oc_new_<column> -> value


def prepare_update_or_create(
    dialect: Dialect,
    table: Any,
    lookup: Mapping[str, Any],
    defaults: Mapping[str, Any] | None,
    on: OnTarget = None,
    create_defaults: Mapping[str, Any] | None = None,
) -> PreparedUpdate:
    """Validate and plan an update_or_create call. Pure: no I/O. The row is created
    from ``lookup`` and ``create_defaults`` (``defaults`` when that is None); an
    existing row gets the ``defaults`` columns. Callables among the values are called."""
    update = called(defaults, "defaults")
    if create_defaults is None:
        fetch = _prepare_fetch(dialect, table, lookup, update, on)
    else:
        create = called(create_defaults, "create_defaults")
        fetch = _prepare_fetch(dialect, table, lookup, create, on, "create_defaults")
    plan = fetch.plan
    tbl, keymap, _ = resolve_table(table)
    new = without_numbered(tbl, _columns(tbl, keymap, update, "defaults"))
    clash = sorted(set(plan.lookup) & set(new))
    if clash:
        raise ValueError(f"{clash[0]!r} is both in lookup and in defaults")
    # SQL expressions (sa.func.upper("x")) go in the statement as they are
    inline = {k: v for k, v in new.items() if isinstance(v, sa.sql.ClauseElement)}
    bound = {k: v for k, v in new.items() if k not in inline}
    if inline:
        statements = _update_statements(tbl, plan.target, plan.lookup, tuple(sorted(bound)), inline)
    else:
        statements = _update_shape(tbl, plan.target, plan.lookup, tuple(sorted(bound)))
    return PreparedUpdate(fetch, statements, {f"oc_new_{k}": v for k, v in bound.items()})


@lru_cache(maxsize=512)
def _update_shape(
    table: sa.Table, target: ConflictTarget, lookup: tuple[str, ...], columns: tuple[str, ...]
) -> dict[str, Any]:
    """The statements of one update_or_create shape, built once."""
    return _update_statements(table, target, lookup, columns)


def _update_statements(
    table: sa.Table,
    target: ConflictTarget,
    lookup: tuple[str, ...],
    columns: tuple[str, ...],
    inline: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The UPDATE of the ``columns`` (bound) and ``inline`` values (SQL expressions;
    Core applies the columns' ``onupdate``), with RETURNING and without, and the
    read of the row after it."""
    where = lookup_condition(FetchPlan(table, target, lookup, ()))
    values: dict[str, Any] = {
        c: sa.bindparam(f"oc_new_{c}", type_=table.c[c].type) for c in columns
    }
    values.update(inline or {})
    update = sa.update(table).where(where).values(values)
    return {
        "nothing": not values,  # no defaults: an existing row is returned as it is
        "update": update,
        "update_returning": update.returning(*by_key(table)),
        "select_locked": sa.select(*by_key(table)).where(where).with_for_update(read=True),
    }


def execute_update_or_create(conn: Connection, prepared: PreparedUpdate) -> tuple[Row, bool]:
    """get_or_create; when the row existed, the UPDATE of its ``defaults`` columns
    (which waits for, and then holds, the row's lock). A row deleted in between
    is made again by the next attempt (bounded)."""
    fetch = prepared.fetch
    support, plan = fetch.support, fetch.plan
    support.lock_for_update_or_create(conn)
    for _ in range(ATTEMPTS):
        got = support.get_or_create_once(conn, plan)
        if got is None:
            check_miss(conn, fetch)
            continue
        row, created = got
        if not created:
            updated = row if prepared.statements["nothing"] else _update_row(conn, prepared)
            if updated is None:  # deleted since it was read: make it again
                continue
            row = updated
        return fetch.output(row), created
    raise _vanished(plan, "update_or_create")


def _update_row(conn: Connection, prepared: PreparedUpdate) -> Row | None:
    plan, statements = prepared.fetch.plan, prepared.statements
    params = {**plan.bound(plan.lookup), **prepared.params}
    if conn.dialect.update_returning:
        got = conn.execute(statements["update_returning"], params).mappings().first()
        return None if got is None else dict(got)
    if conn.execute(statements["update"], params).rowcount == 0:
        return None  # (MySQL counts matched rows: CLIENT_FOUND_ROWS)
    got = conn.execute(statements["select_locked"], plan.bound(plan.lookup)).mappings().first()
    return None if got is None else dict(got)


def _get_or_create_work(conn: Connection, prepared: PreparedFetch, owned: bool) -> tuple[Row, bool]:
    with prepared.support.scope(conn, owned):
        return execute_get_or_create(conn, prepared)


def _update_or_create_work(
    conn: Connection, prepared: PreparedUpdate, owned: bool
) -> tuple[Row, bool]:
    with prepared.fetch.support.scope(conn, owned):
        return execute_update_or_create(conn, prepared)


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
