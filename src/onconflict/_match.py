"""Pure helpers: key tuples of rows, and pairing returned rows with input rows."""

from __future__ import annotations

import decimal
import uuid
from collections import deque
from collections.abc import Mapping
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

    def unique(self, row: Mapping[str, Any], cols: tuple[str, ...]) -> tuple[Any, ...] | None:
        """The row's key, or None when it can't collide (a column missing or NULL:
        NULLs never collide in a unique index)."""
        key = self.of(row, cols)
        return None if None in key else key


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
    pending: dict[tuple[Any, ...], deque[Row]] = {}
    for r in returned:
        found: tuple[Any, ...] = (
            keys.of(r, match) if normalise else tuple([r.get(c) for c in match])
        )
        pending.setdefault(found, deque()).append(r)
    out: list[Row | None] = []
    for n, row in enumerate(rows):
        key = known[n] if known is not None else None
        queue = pending.get(key if key is not None else keys.of(row, match))
        out.append(queue.popleft() if queue else None)
    if any(pending.values()):
        return None
    return out
