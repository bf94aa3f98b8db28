"""Pure helpers for key identity: ``Keys`` makes a row's key as the database sees
it (bound through the column type, collation folded), ``align`` pairs the rows a
statement returned with the input rows by that key (``align_evaluated`` by the
server-evaluated keys of an expression index), and what RETURNING lists."""

from __future__ import annotations

import decimal
import itertools
import unicodedata
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from onconflict.exceptions import OutcomeMismatchError

Row = dict[str, Any]
_COERCIBLE = (int, float, str, decimal.Decimal, uuid.UUID)


def by_key(table: sa.Table) -> list[Any]:
    """The table's columns for a SELECT or RETURNING list, each labelled with its
    column key where that differs from its database name, so that result rows
    are keyed by column key (``Column("rAnK", key="rank")`` reads as ``rank``)."""
    return [c if c.key == c.name else c.label(c.key) for c in table.c]


EXPR_KEY = "onconflict_key_"  # RETURNING labels of an expression index's values


def expression_key(target: Any) -> Any:
    """The target's UniqueKey when it is an expression index (``lower(ext)``), else None."""
    key = getattr(target, "key", None)
    return key if key is not None and not key.columns and key.elements else None


def evaluated_key(target: Any) -> Any:
    """The target's UniqueKey when the server must evaluate it for the input rows
    (an expression index, or a partial index: its WHERE decides which rows can
    conflict), else None."""
    key = getattr(target, "key", None)
    if key is None or not key.elements:
        return None
    return key if not key.columns or key.where is not None else None


def returning_columns(table: sa.Table, target: Any) -> list[Any]:
    """What RETURNING lists: the columns by key and, for an expression index
    target, its expressions evaluated on the stored row (to pair rows by)."""
    key = expression_key(target)
    extra = [] if key is None else [e.label(f"{EXPR_KEY}{j}") for j, e in enumerate(key.elements)]
    return by_key(table) + extra


def strip_keys(row: Row) -> Row:
    """A returned row without its expression-index values."""
    for name in [k for k in row if isinstance(k, str) and k.startswith(EXPR_KEY)]:
        del row[name]
    return row


def align_evaluated(
    wanted: list[tuple[Any, ...] | None], returned: list[Row], table: sa.Table
) -> list[Row | None]:
    """Pair input rows, whose expression-index keys the server evaluated
    (``wanted``), with returned rows carrying the same expressions evaluated on
    the stored row (``EXPR_KEY`` labels, removed here)."""
    queues: dict[tuple[Any, ...], deque[Row]] = {}
    for row in returned:
        names = sorted(k for k in row if isinstance(k, str) and k.startswith(EXPR_KEY))
        queues.setdefault(tuple(row[n] for n in names), deque()).append(strip_keys(row))
    out: list[Row | None] = []
    for key in wanted:
        queue = queues.get(key) if key is not None else None
        out.append(queue.popleft() if queue else None)
    if any(queues.values()):
        raise OutcomeMismatchError(
            f"row(s) returned by the INSERT into {table.name!r} match no input row"
            " on the expressions of its conflict target"
        )
    return out


def fold_text(value: str, pad: bool = False, ci: bool = False, ai: bool = False) -> str:
    """A string as a collation compares it: ``pad`` ignores trailing spaces,
    ``ci`` case, ``ai`` (combining) accents. An approximation of collation
    tables, shared by the dialects that read their columns' collations."""
    if pad:
        value = value.rstrip(" ")
    if ci:
        value = value.casefold()
    if ai:
        value = "".join(
            ch for ch in unicodedata.normalize("NFKD", value) if not unicodedata.combining(ch)
        )
    return value


def _bind_processor(col: sa.Column[Any], dialect: Dialect | None) -> Any:
    """The dialect's bind processing of a TypeDecorator column (its
    process_bind_param and its impl's processor), or None."""
    if dialect is None or not isinstance(col.type, sa.types.TypeDecorator):
        return None
    try:
        return col.type.dialect_impl(dialect).bind_processor(dialect)
    except Exception:  # a type that cannot say: compared as given
        return None


def _rounded(value: decimal.Decimal, places: decimal.Decimal) -> decimal.Decimal:
    """A NUMERIC(p, s) value as the database stores it: rounded to s places,
    half away from zero (PostgreSQL, MariaDB); as given if it cannot be."""
    try:
        return value.quantize(places, rounding=decimal.ROUND_HALF_UP)
    except ArithmeticError:
        return value


class Keys:
    """Key identity as the database sees it: the one place that turns a row's
    key values into something compared in Python.

    A value is taken through its column's bind processing for the dialect (a
    TypeDecorator that lower-cases an e-mail address makes ``"A@X"`` and
    ``"a@x"`` the same key), then brought to the column's Python type (so that
    ``"5"`` given for an integer column matches the ``5`` returned), then folded
    as the column's collation compares it where the dialect installs a fold
    (MySQL/MariaDB ``_ci`` collations, trailing spaces under PAD SPACE).
    Input values and values the database returns go through the same steps.
    """

    def __init__(self, table: sa.Table, dialect: Dialect | None = None) -> None:
        self.types: dict[str, type | None] = {}
        self.places: dict[str, decimal.Decimal] = {}  # NUMERIC(p, s): stored to s places
        self.binds: dict[str, Any] = {}
        self.folds: dict[str, Callable[[Any], Any]] = {}
        for col in table.c:
            try:
                pytype = col.type.python_type
            except NotImplementedError:
                pytype = None
            self.types[col.key] = pytype if pytype in _COERCIBLE else None
            scale = getattr(col.type, "scale", None)
            if pytype is decimal.Decimal and isinstance(scale, int):
                self.places[col.key] = decimal.Decimal(1).scaleb(-scale)
            bind = _bind_processor(col, dialect)
            if bind is not None:
                self.binds[col.key] = bind

    def set_folds(self, folds: Mapping[str, Callable[[Any], Any]]) -> bool:
        """Install collation folds (column key -> function); True if they changed."""
        changed = dict(folds) != self.folds
        self.folds = dict(folds)
        return changed

    def typed(self, col: str, value: Any) -> Any:
        """The value in its column's Python type (for binding it again), or as given."""
        pytype = self.types[col]
        if pytype is None or value is None or isinstance(value, pytype):
            return value  # (asyncpg's UUID is a uuid.UUID of its own: equal, same hash)
        if pytype is decimal.Decimal and isinstance(value, float):
            value = repr(value)  # 1.1 is 1.1, not 1.100000000000000088817841970012523
        try:
            return pytype(value)
        except (TypeError, ValueError, ArithmeticError):
            return value

    def norm(self, col: str, value: Any) -> Any:
        if value is None:
            return value
        bind = self.binds.get(col)
        if bind is not None:
            try:
                value = bind(value)
            except Exception:  # the database would refuse it too: compared as given
                return self.typed(col, value)
        value = self.typed(col, value)
        places = self.places.get(col)
        if places is not None and isinstance(value, decimal.Decimal):
            value = _rounded(value, places)
        fold = self.folds.get(col)
        if fold is not None and isinstance(value, str):
            value = fold(value)
        return value

    def plain(self, col: str) -> bool:
        """No bind processing, rounding or fold: values of the column's type are
        keys as they are."""
        return col not in self.binds and col not in self.folds and col not in self.places

    def of(self, row: Mapping[Any, Any], cols: tuple[str, ...]) -> tuple[Any, ...]:
        return tuple([self.norm(c, row.get(c)) for c in cols])

    def unique_many(
        self,
        rows: list[Row],
        cols: tuple[str, ...],
        types: Mapping[str, set[type]] | None = None,
    ) -> list[tuple[Any, ...] | None]:
        """Each row's key, or None when it can't collide (a column missing or NULL:
        NULLs never collide in a unique index). A column at a time: values
        already of their column's type (the usual case) are taken as they are.
        ``types``: each column's value types, when every row carries every
        column (known beforehand: no pass to learn them)."""
        columns = [self._column(c, rows, types) for c in cols]
        if len(columns) == 1:
            return [None if v is None else (v,) for v in columns[0]]
        return [None if None in key else key for key in zip(*columns, strict=True)]

    def _column(
        self, col: str, rows: list[Row], types: Mapping[str, set[type]] | None = None
    ) -> list[Any]:
        """The rows' values of one key column, normalised unless they are keys as
        they are (no bind processing or fold, every value of the column's type)."""
        pytype = self.types[col]
        if types is not None and col in types:  # every row carries it: C-level loops
            values = list(map(itemgetter(col), rows))
            if self.plain(col) and (pytype is None or types[col] <= {pytype, type(None)}):
                return values
            return [self.norm(col, v) for v in values]
        values = [row.get(col) for row in rows]
        if self.plain(col) and (
            pytype is None or all(type(v) is pytype or v is None for v in values)
        ):
            return values
        return [self.norm(col, v) for v in values]


def align(
    keys: Keys,
    table: sa.Table,
    rows: list[Row],
    returned: list[Row],
    match: tuple[str, ...],
    known: list[tuple[Any, ...] | None] | None = None,
) -> list[Row | None]:
    """Pair each input row with the row the database returned for it, or None.

    ``known``: the input rows' keys where already computed (None: compute).
    Returned values come back in their column's type, so they are keyed as
    they are; only if that leaves rows unpaired (or a match column has bind
    processing or a collation fold) is every value normalised, input and
    returned alike.
    """
    plain = all(map(keys.plain, match))
    out = _pair(keys, rows, returned, match, known, normalise=False) if plain else None
    if out is None:
        out = _pair(keys, rows, returned, match, None, normalise=True)
    if out is None and len(rows) == len(returned) == 1:
        # one row sent, one returned: it is that row, whatever the key's
        # collation made of it (a server-side comparison Python cannot see)
        out = [returned[0]]
    if out is None:
        raise OutcomeMismatchError(
            f"row(s) returned by the INSERT into {table.name!r} match no input row"
            f" on ({', '.join(match)}); pass values of the columns' Python types"
        )
    return out


def _found(keys: Keys, returned: list[Row], match: tuple[str, ...], normalise: bool) -> list[Any]:
    """The returned rows' keys: normalised, or as returned (one getter for all)."""
    if normalise:
        return [keys.of(r, match) for r in returned]
    try:
        found = list(map(itemgetter(*match), returned))
    except KeyError:  # a row without a match column: matches nothing as it is
        return [tuple([r.get(c) for c in match]) for r in returned]
    return [(v,) for v in found] if len(match) == 1 else found


def _pair(
    keys: Keys,
    rows: list[Row],
    returned: list[Row],
    match: tuple[str, ...],
    known: list[tuple[Any, ...] | None] | None,
    normalise: bool,
) -> list[Row | None] | None:
    if known is None:
        wanted = [keys.of(row, match) for row in rows]
    else:
        pairs = zip(known, rows, strict=True)
        wanted = [k if k is not None else keys.of(row, match) for k, row in pairs]
    found = _found(keys, returned, match, normalise)
    pending: dict[tuple[Any, ...], Row] = dict(zip(found, returned, strict=True))
    if len(pending) == len(returned):  # distinct keys, the usual case: one dict
        out: list[Row | None] = [pending.pop(key, None) for key in wanted]
        return None if pending else out
    return _pair_repeated(wanted, found, returned)


def _pair_repeated(
    wanted: list[tuple[Any, ...]], found: list[tuple[Any, ...]], returned: list[Row]
) -> list[Row | None] | None:
    """Pairing when returned rows repeat a key (rows the database saw as
    distinct: a key Python cannot tell apart): in order, key by key."""
    queues: dict[tuple[Any, ...], deque[Row]] = {}
    for key, r in zip(found, returned, strict=True):
        queues.setdefault(key, deque()).append(r)
    out = []
    for key in wanted:
        queue = queues.get(key)
        out.append(queue.popleft() if queue else None)
    if any(queues.values()):
        return None
    return out


class RecordRows(Sequence[Row]):
    """Rows a statement returned, kept as the driver's records (tuples or
    records read by position, in the order of ``names``, values needing no
    result processing): a row is made into a dict only when read, and the
    key columns are read from the records themselves (``values``)."""

    def __init__(self, records: Sequence[Any], names: Sequence[str]) -> None:
        self.records = records
        self.names = list(names)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [dict(zip(self.names, r, strict=True)) for r in self.records[index]]
        return dict(zip(self.names, self.records[index], strict=True))

    def values(self, cols: tuple[str, ...]) -> list[Any]:
        """Each record's values of ``cols``: a value for one column, else a tuple."""
        return list(map(itemgetter(*map(self.names.index, cols)), self.records))

    def build(self, order: list[int], out: Sequence[tuple[str, str]]) -> list[Row]:
        """The records at positions ``order`` as dicts of ``out``'s (column
        key, result key) pairs, in that order. C-level loops."""
        at = [self.names.index(col) for col, _ in out]
        keys = [key for _, key in out]
        records = map(self.records.__getitem__, order)
        if at == list(range(len(self.names))):  # every column, in order
            return list(map(dict, map(zip, itertools.repeat(keys), records)))
        if len(at) == 1:
            return [{keys[0]: value} for value in map(itemgetter(at[0]), records)]
        picked = map(itemgetter(*at), records)
        return list(map(dict, map(zip, itertools.repeat(keys), picked)))


def pair_positions(wanted: list[Any], found: list[Any]) -> list[int | None] | None:
    """Pair input keys with returned keys (both as they are, compared by
    equality): for each input key, the position of its returned row, or None
    (not inserted, or an earlier input row of the same key took it). None when
    the returned keys repeat or one of them pairs with no input key: the
    general ``align`` decides then. C-level loops."""
    pending: dict[Any, int] = dict(zip(found, range(len(found)), strict=True))
    if len(pending) != len(found):
        return None
    out: list[int | None] = list(map(pending.pop, wanted, itertools.repeat(None)))
    return None if pending else out


def returned_mask(wanted: list[Any], found: list[Any]) -> list[bool] | None:
    """For input keys known to be distinct (``wanted``, as they are): whether
    each was returned (a key of ``found``, compared by equality). None when
    the returned keys repeat or one of them pairs with no input key: then
    ``pair_positions`` decides. Set lookups only (C-level loops): cheaper
    than ``pair_positions``' dict, and which returned row is whose is left
    to ``positions_of``, when the rows are read. Exact: distinct input keys,
    distinct returned keys, and as many input keys found as rows returned
    pair them one to one."""
    got = set(found)
    if len(got) != len(found):
        return None
    mask = list(map(got.__contains__, wanted))
    return mask if mask.count(True) == len(found) else None


def positions_of(keys: list[Any], found: list[Any]) -> list[int]:
    """The position in ``found`` (distinct keys) of each of ``keys`` (each one
    of them: see ``returned_mask``)."""
    position = dict(zip(found, range(len(found)), strict=True))
    return list(map(position.__getitem__, keys))
