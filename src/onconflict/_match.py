"""Pure helpers: key tuples of rows, and pairing returned rows with input rows."""

from __future__ import annotations

import decimal
import itertools
import uuid
from collections import deque
from collections.abc import Mapping
from operator import itemgetter
from typing import Any

import sqlalchemy as sa

from onconflict.exceptions import OutcomeMismatchError

Row = dict[str, Any]
_COERCIBLE = (int, float, str, decimal.Decimal, uuid.UUID)


class Keys:
    """Key tuples for rows, with input values brought to the column's Python type
    (so that ``"5"`` given for an integer column matches the ``5`` returned)."""

    def __init__(self, table: sa.Table) -> None:
        self.types: dict[str, type | None] = {}
        for col in table.c:
            try:
                pytype = col.type.python_type
            except NotImplementedError:
                pytype = None
            self.types[col.key] = pytype if pytype in _COERCIBLE else None

    def norm(self, col: str, value: Any) -> Any:
        pytype = self.types[col]
        if pytype is None or value is None or type(value) is pytype:
            return value
        try:
            return pytype(value)
        except (TypeError, ValueError, ArithmeticError):
            return value

    def of(self, row: Mapping[str, Any], cols: tuple[str, ...]) -> tuple[Any, ...]:
        return tuple([self.norm(c, row.get(c)) for c in cols])

    def unique_many(self, rows: list[Row], cols: tuple[str, ...]) -> list[tuple[Any, ...] | None]:
        """Each row's key, or None when it can't collide (a column missing or NULL:
        NULLs never collide in a unique index). A column at a time: values
        already of their column's type (the usual case) are taken as they are."""
        columns = []
        for c in cols:
            values = [row.get(c) for row in rows]
            pytype = self.types[c]
            if pytype is not None and not all(type(v) is pytype or v is None for v in values):
                values = [self.norm(c, v) for v in values]
            columns.append(values)
        if len(columns) == 1:
            return [None if v is None else (v,) for v in columns[0]]
        return [None if None in key else key for key in zip(*columns, strict=True)]


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
    they are; only if that leaves rows unpaired is every value normalised.
    """
    out = _pair(keys, rows, returned, match, known, normalise=False)
    if out is None:
        out = _pair(keys, rows, returned, match, None, normalise=True)
    if out is None:
        raise OutcomeMismatchError(
            f"row(s) returned by the INSERT into {table.name!r} match no input row"
            f" on ({', '.join(match)}); pass values of the columns' Python types"
        )
    return out


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
    if normalise:
        found = [keys.of(r, match) for r in returned]
    else:  # values as returned, a C-level getter for all
        try:
            found = list(map(itemgetter(*match), returned))
        except KeyError:  # a row without a match column: matches nothing as it is
            found = [tuple([r.get(c) for c in match]) for r in returned]
        else:
            if len(match) == 1:
                found = [(v,) for v in found]
    pending: dict[tuple[Any, ...], Row] = dict(zip(found, returned, strict=True))
    if len(pending) == len(returned):  # distinct keys, the usual case: one dict
        out: list[Row | None] = list(map(pending.pop, wanted, itertools.repeat(None)))
        return None if pending else out
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
