"""What the shared core hands a dialect: the rows' type, one upsert's and one
get_or_create's statement shape. Data only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from onconflict._keys import Keys
from onconflict._target import ConflictTarget

Row = dict[str, Any]
INSERTED = "onconflict_inserted_"  # RETURNING label of PostgreSQL's "was inserted" flag
Outcome = tuple[str, Row | None]  # ("inserted" | "updated" | "unchanged", stored row)


@dataclass
class UpsertPlan:
    """One statement shape of an upsert call, as the dialect's writer needs it."""

    table: sa.Table
    target: ConflictTarget
    keys: Keys
    match: tuple[str, ...]  # columns that identify a returned row
    set_: dict[str, Any]  # column -> value or expression, excluded() placeholders inside
    where: ColumnElement[bool] | None  # the caller's where AND the skip_unchanged test
    statement: Any = None  # built by the dialect at bind time
    extra: dict[str, Any] = field(default_factory=dict)  # dialect-specific statements


@dataclass
class FetchPlan:
    """The statements of one get_or_create shape; ``params`` are per call."""

    table: sa.Table
    target: ConflictTarget
    lookup: tuple[str, ...]  # column keys the row is looked up by
    values: tuple[str, ...]  # column keys written when it is created
    statements: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # column key -> value

    def bound(self, keys: tuple[str, ...]) -> dict[str, Any]:
        return {f"oc_{k}": self.params[k] for k in keys}
