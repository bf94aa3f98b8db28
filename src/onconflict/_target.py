"""Pure (no I/O) resolution of what a call is given: the table (a ``Table`` or a
mapped class: ``resolve_table``), the input rows with column keys
(``normalize_rows``; ``read_rows`` does both and returns ``InputRows``), the
table's unique keys (``unique_keys``) and the conflict target (``ANY_KEY``,
``resolve_target``)."""

from __future__ import annotations

import enum
import operator
from collections.abc import Iterable, KeysView, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple, TypeAlias

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from onconflict.exceptions import NotSupportedError


class _AnyKey(enum.Enum):
    ANY_KEY = "ANY_KEY"

    def __repr__(self) -> str:
        return "onconflict.ANY_KEY"


ANY_KEY = _AnyKey.ANY_KEY
"""Conflict target meaning "a duplicate on any unique key of the table".

PostgreSQL and SQLite then use ``ON CONFLICT DO NOTHING`` without a target;
MySQL and MariaDB, which have no conflict target, need it when a row could hit
more than one unique key.
"""

OnTarget: TypeAlias = (
    str | Sequence[str | sa.Column[Any]] | sa.UniqueConstraint | sa.Index | _AnyKey | None
)


@dataclass(frozen=True)
class UniqueKey:
    """A unique key of a table as declared in its metadata."""

    kind: str  # "primary key", "unique constraint" or "unique index"
    name: str | None
    columns: tuple[str, ...]  # column keys; empty when the key has expressions
    elements: tuple[Any, ...]  # what ON CONFLICT (...) lists: columns or expressions
    where: ColumnElement[bool] | None = None  # partial index predicate

    def describe(self) -> str:
        cols = ", ".join(self.columns) if self.columns else "expressions"
        label = f"{self.kind} {self.name}" if self.name else self.kind
        return f"{label} ({cols})"


@dataclass(frozen=True)
class ConflictTarget:
    """What the statement treats as a duplicate."""

    key: UniqueKey | None  # None with any_key
    any_key: bool = False

    @property
    def columns(self) -> tuple[str, ...]:
        return self.key.columns if self.key is not None else ()

    def describe(self) -> str:
        return "any unique key" if self.key is None else self.key.describe()


def resolve_table(table: Any) -> tuple[sa.Table, dict[str, str], dict[str, str]]:
    """The Table for a Table or mapped class, input key -> column key, and
    column key -> the key results use.

    For a mapped class, attribute names are accepted as well as column keys,
    and results use attribute names.
    """
    if isinstance(table, sa.Table):
        keys = {c.key: c.key for c in table.c}
        return table, keys, keys
    try:
        mapper = sa.inspect(table)
    except sa.exc.NoInspectionAvailable:
        mapper = None
    local = getattr(mapper, "local_table", None)
    if not isinstance(local, sa.Table):
        raise TypeError(f"table must be a sqlalchemy.Table or a mapped ORM class, not {table!r}")
    _check_one_table(mapper, local)
    keys = {c.key: c.key for c in local.c}
    out = dict(keys)
    for attr, col in mapper.columns.items():
        if isinstance(col, sa.Column) and col.table is local:
            keys[attr] = col.key
            out[col.key] = attr
    return local, keys, out


def _check_one_table(mapper: Any, local: sa.Table) -> None:
    """Refuse a class whose rows span tables (joined-table inheritance)."""
    parent = mapper.inherits
    if parent is None or mapper.single or mapper.concrete:
        return
    tables = [m.local_table for m in mapper.iterate_to_root()]
    names = ", ".join(repr(t.name) for t in reversed(tables) if isinstance(t, sa.Table))
    raise NotSupportedError(
        f"{mapper.class_.__name__} is mapped with joined-table inheritance: each of its"
        f" rows spans the tables {names}, and onconflict writes one table per statement."
        f" Write each table with its own call (pass the Table objects: parent table"
        f" first, then {local.name!r} with the parent's key), or map the class with"
        " single-table inheritance."
    )


def fixed_values(table: Any) -> dict[str, Any]:
    """Column key -> value that every row written through ``table`` gets, as the
    ORM would set it: the discriminator (``polymorphic_on``) of a mapped class
    with a ``polymorphic_identity`` (single-table inheritance). Empty for a Table."""
    if isinstance(table, sa.Table):
        return {}
    mapper: Any = sa.inspect(table, raiseerr=False)
    on = getattr(mapper, "polymorphic_on", None)
    identity = getattr(mapper, "polymorphic_identity", None)
    local = getattr(mapper, "local_table", None)
    if identity is None or not isinstance(on, sa.Column) or local is None:
        return {}
    if on.table is not local:  # a labelled or expression discriminator: nothing to set
        return {}
    return {on.key: identity}


def with_fixed(fixed: Mapping[str, Any], values: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``values`` (column keys) with the ``fixed`` ones added; ValueError if it
    gives another value for one of them."""
    for key, value in fixed.items():
        if key in values and values[key] != value:
            raise ValueError(
                f"{what}: {key}={values[key]!r}, but rows written through this class have"
                f" {key}={value!r} (its polymorphic identity)"
            )
    return {**values, **fixed}


def normalize_rows(
    table: sa.Table,
    keymap: Mapping[str, str],
    rows: Iterable[Mapping[str, Any]],
    fixed: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The rows with column keys, rejecting anything that is not a column.

    An autoincrement primary key given as ``None`` is left out, so that the
    database numbers the row (as Django and Rails do) on every database alike.
    ``fixed`` (see :func:`fixed_values`) is added to every row; a row giving
    another value for one of its columns is refused.
    A plain dict whose keys already are column keys is used as it is (onconflict
    never changes input rows); anything else is copied.
    """
    return _normalized(table, keymap, rows, fixed)[0]


Types = dict[str, set[type]]
"""Each column's value types, when every input row has the same columns:
learnt in one pass of C-level loops (``column_types``), so that later steps
(a SQL expression in a key, the COPY path's type check, key identity) need no
pass of their own."""


def _normalized(
    table: sa.Table,
    keymap: Mapping[str, str],
    rows: Iterable[Mapping[str, Any]],
    fixed: Mapping[str, Any] | None,
) -> tuple[list[dict[str, Any]], Types | None]:
    """The rows with column keys, and their ``Types`` where known. A list of
    plain dicts of column keys is used as it is, not copied: a second list of
    10^6 rows would lengthen every full cyclic collection while the call runs
    (0.1-0.2 s at 10^6 rows, measured)."""
    identity = all(k == v for k, v in keymap.items())
    rows = rows if isinstance(rows, list) else list(rows)
    given: Any = rows  # plain dicts of column keys, where used as given
    auto = table.autoincrement_column
    numbered = None if auto is None else auto.key  # None for it: the database numbers it
    if not fixed and identity:
        types = column_types(rows)
        if types is not None and _shape_usable(types, keymap.keys(), numbered):
            return given, types  # one shape of plain dicts of column keys (the usual case)
        if types is None and _usable_as_given(rows, keymap.keys(), numbered):
            return given, None  # plain dicts of column keys, of several shapes
    done = [_normalize_row(table, keymap, identity, numbered, i, row) for i, row in enumerate(rows)]
    if fixed:
        done = [with_fixed(fixed, row, f"row {i}") for i, row in enumerate(done)]
    return done, None


def column_types(rows: list[Any]) -> Types | None:
    """Each column's value types, when every row is a plain dict with the same
    keys as the first; else None. C-level loops only (about 0.2 s for 10^6
    rows of 3 columns): same length and every key of the first row present
    means the same keys."""
    if not rows or set(map(type, rows)) != {dict}:
        return None
    first = rows[0]
    if set(map(len, rows)) != {len(first)}:
        return None
    try:
        return {k: set(map(type, map(operator.itemgetter(k), rows))) for k in first}
    except KeyError:  # a row without one of the first row's keys
        return None


def _shape_usable(types: dict[str, set[type]], valid: KeysView[str], numbered: str | None) -> bool:
    """Rows of one shape (``types``: its columns) usable as given: some columns,
    all of them column keys, the autoincrement key ``numbered`` never None."""
    return bool(types) and types.keys() <= valid and type(None) not in types.get(numbered or "", ())


def _usable_as_given(rows: list[Any], valid: KeysView[str], numbered: str | None) -> bool:
    """Every row a non-empty plain dict of column keys, none giving the
    autoincrement key ``numbered`` as None: nothing to copy or check."""
    return all(
        type(row) is dict
        and row
        and row.keys() <= valid
        and (numbered is None or row.get(numbered, 0) is not None)
        for row in rows
    )


def _normalize_row(
    table: sa.Table,
    keymap: Mapping[str, str],
    identity: bool,
    numbered: str | None,
    i: int,
    row: Any,
) -> dict[str, Any]:
    if type(row) is dict and identity and row and row.keys() <= keymap.keys():
        out: dict[str, Any] = row
    else:
        out = _copied(table, keymap, i, row)
    if numbered is not None and numbered in out and out[numbered] is None:
        out = without_numbered(table, out)
        if not out:
            raise ValueError(f"row {i} has no columns but {numbered!r}, given as None")
    return out


def without_numbered(table: sa.Table, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` (column keys) without the autoincrement primary key when it is
    given as None: the database numbers the row."""
    auto = table.autoincrement_column
    if auto is None or values.get(auto.key, 0) is not None:
        return dict(values)
    return {k: v for k, v in values.items() if k != auto.key}


def _copied(table: sa.Table, keymap: Mapping[str, str], i: int, row: Any) -> dict[str, Any]:
    if not isinstance(row, Mapping):
        raise TypeError(f"row {i} is {type(row).__name__}, expected a mapping")
    if not row:
        raise ValueError(f"row {i} has no columns")
    unknown = [k for k in row if k not in keymap]
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        raise ValueError(f"row {i}: {names} not a column of table {table.name!r}")
    return {keymap[k]: v for k, v in row.items()}


def unique_keys(table: sa.Table) -> list[UniqueKey]:
    """The primary key, unique constraints and unique indexes, in that order."""
    # cached per table, and per its shape: a constraint added later is seen
    return list(_unique_keys(table, len(table.constraints), len(table.indexes), len(table.c)))


@lru_cache(maxsize=256)
def _unique_keys(table: sa.Table, *shape: int) -> tuple[UniqueKey, ...]:
    keys: list[UniqueKey] = []
    pk = table.primary_key
    if pk.columns:
        cols = tuple(c.key for c in pk.columns)
        keys.append(UniqueKey("primary key", _name(pk.name), cols, tuple(pk.columns)))
    for cons in sorted(
        (c for c in table.constraints if isinstance(c, sa.UniqueConstraint)),
        key=lambda c: (c.name or "", [col.key for col in c.columns]),
    ):
        cols = tuple(c.key for c in cons.columns)
        keys.append(UniqueKey("unique constraint", _name(cons.name), cols, tuple(cons.columns)))
    for idx in sorted((i for i in table.indexes if i.unique), key=lambda i: _name(i.name) or ""):
        keys.append(_index_key(idx))
    return tuple(keys)


def _index_key(idx: sa.Index) -> UniqueKey:
    exprs = tuple(idx.expressions)
    plain = [e.key for e in exprs if isinstance(e, sa.Column)]
    cols = tuple(plain) if len(plain) == len(exprs) else ()
    return UniqueKey("unique index", _name(idx.name), cols, exprs, _index_where(idx))


def _name(name: Any) -> str | None:
    # conventions may leave a _NONE_NAME / _defer_name marker; str() gives the real name
    return None if name is None else str(name)


def _index_where(idx: sa.Index) -> ColumnElement[bool] | None:
    """A partial index's WHERE, as any dialect's option gives it
    (``postgresql_where=``, ``sqlite_where=``, ``mssql_where=``, ...)."""
    for name, where in idx.dialect_kwargs.items():
        if name.endswith("_where") and where is not None:
            return sa.sql.coercions.expect(sa.sql.roles.WhereHavingRole, where)  # type: ignore[no-any-return]
    return None


def resolve_target(table: sa.Table, on: OnTarget, carried: set[str]) -> ConflictTarget:
    """Turn the ``on=`` argument into a ConflictTarget; ValueError when it can't."""
    keys = unique_keys(table)
    if on is ANY_KEY:
        return ConflictTarget(None, any_key=True)
    if on is None:
        return _default_target(table, keys, carried)
    if isinstance(on, sa.UniqueConstraint | sa.Index | sa.PrimaryKeyConstraint):
        for key in keys:
            if _same(on, key):
                return ConflictTarget(key)
        raise ValueError(f"{on!r} is not a unique constraint or unique index of {table.name!r}")
    if isinstance(on, str):
        return _named_target(table, keys, on)
    if isinstance(on, Sequence) and on:
        return _columns_target(table, keys, _column_keys(table, on))
    raise TypeError(f"on must be column names, a constraint, an index or ANY_KEY, not {on!r}")


def _named_target(table: sa.Table, keys: list[UniqueKey], on: str) -> ConflictTarget:
    """on="name": a constraint or index of that name, else a column."""
    named = [k for k in keys if k.name == on]
    if named:
        return ConflictTarget(named[0])
    if on in table.c:
        return _columns_target(table, keys, (on,))
    raise ValueError(
        f"on={on!r} is neither a column nor a constraint or index of {table.name!r}"
        f" (its unique keys: {_listing(keys)})"
    )


def _column_keys(table: sa.Table, on: Sequence[Any]) -> tuple[str, ...]:
    names: list[str] = []
    for item in on:
        if isinstance(item, sa.Column):
            if item.table is not table:
                raise ValueError(f"column {item} is not a column of {table.name!r}")
            names.append(item.key)
        elif isinstance(item, str):
            if item not in table.c:
                raise ValueError(f"on: {item!r} is not a column of {table.name!r}")
            names.append(item)
        else:
            raise TypeError(f"on: expected column names, got {item!r}")
    return tuple(names)


def _same(obj: sa.UniqueConstraint | sa.Index | sa.PrimaryKeyConstraint, key: UniqueKey) -> bool:
    if isinstance(obj, sa.Index):
        return key.kind == "unique index" and tuple(obj.expressions) == key.elements
    if isinstance(obj, sa.PrimaryKeyConstraint):
        return key.kind == "primary key"
    return key.kind == "unique constraint" and tuple(c.key for c in obj.columns) == key.columns


def _columns_target(
    table: sa.Table, keys: list[UniqueKey], cols: tuple[str, ...]
) -> ConflictTarget:
    """The unique key declared on exactly these columns.

    A full key (primary key, unique constraint, unique index without WHERE)
    first; else the one partial unique index on them (its WHERE goes with it).
    Columns no declared key covers are refused: the conflict target must be
    unique, or MySQL/MariaDB would skip rows that are not duplicates and
    PostgreSQL/SQLite would refuse the statement after it was sent.
    """
    wanted = set(cols)
    exact = [k for k in keys if k.columns and set(k.columns) == wanted]
    full = [k for k in exact if k.where is None]
    if full:
        return ConflictTarget(full[0])
    if len(exact) == 1:
        return ConflictTarget(exact[0])
    shown = ", ".join(cols)
    if exact:
        raise ValueError(
            f"on=({shown}) fits several partial unique indexes of {table.name!r}:"
            f" {_listing(exact)}; pass the index (or its name) to choose one"
        )
    raise ValueError(
        f"on=({shown}): no primary key, unique constraint or unique index of"
        f" {table.name!r} is on exactly these columns, so they cannot tell a duplicate"
        f" (its unique keys: {_listing(keys)}). Name a unique key, or declare the"
        " unique constraint or index in the table's metadata."
    )


def _default_target(table: sa.Table, keys: list[UniqueKey], carried: set[str]) -> ConflictTarget:
    if keys and keys[0].kind == "primary key" and set(keys[0].columns) <= carried:
        return ConflictTarget(keys[0])
    candidates = [k for k in keys[1:] if k.columns and set(k.columns) <= carried]
    if len(candidates) == 1:
        return ConflictTarget(candidates[0])
    if not candidates:
        raise ValueError(
            f"no conflict target for {table.name!r}: the rows do not all carry the columns"
            f" of any unique key ({_listing(keys)}); pass on=..."
        )
    raise ValueError(
        f"several conflict targets for {table.name!r} fit the rows: {_listing(candidates)};"
        " pass on=... to choose one (or on=onconflict.ANY_KEY)"
    )


def _listing(keys: Sequence[UniqueKey]) -> str:
    return "; ".join(k.describe() for k in keys) or "none declared"


def reachable_keys(table: sa.Table, columns: Iterable[str]) -> list[UniqueKey]:
    """Unique keys that a row with these columns could collide on.

    A key is out of reach when one of its columns is left out of the row and
    gets no default, or is the autoincrementing column (a fresh value).
    """
    present = set(columns)
    out = []
    for key in unique_keys(table):
        if not key.columns:
            out.append(key)  # expression index: assume reachable
            continue
        reach = True
        for name in key.columns:
            if name in present:
                continue
            col = table.c[name]
            if col is table.autoincrement_column or (
                col.default is None and col.server_default is None
            ):
                reach = False
                break
        if reach:
            out.append(key)
    return out


class InputRows(NamedTuple):
    """What every write call starts with, read from its arguments before any SQL."""

    table: sa.Table
    given: list[Mapping[str, Any]]  # the rows as the caller gave them
    rows: list[dict[str, Any]]  # the same rows keyed by column key, fixed values applied
    outmap: dict[str, str]  # column key -> the key results use
    target: ConflictTarget
    types: Types | None  # see ``Types``: None unless every row has the same columns


def read_rows(table: Any, rows: Iterable[Mapping[str, Any]], on: OnTarget) -> InputRows | None:
    """The call's table, rows and conflict target; None for no rows. Pure.
    A list is read as it is, not copied (nor are its rows): the caller does
    not change it while the call runs."""
    tbl, keymap, outmap = resolve_table(table)
    given = rows if type(rows) is list else list(rows)
    data, types = _normalized(tbl, keymap, given, fixed_values(table))
    if not data:
        return None
    # one shape (types known): every row carries the first row's columns
    carried = set(types) if types is not None else set(data[0]).intersection(*data[1:])
    target = resolve_target(tbl, on, carried)
    return InputRows(tbl, given, data, outmap, target, types)
