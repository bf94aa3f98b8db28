"""``onconflict.excluded(col)``: the incoming value of a column, in upsert expressions.

It is a placeholder. Before a statement is compiled, each dialect module
replaces it with what its database calls the incoming row: ``EXCLUDED.col``
(PostgreSQL), ``excluded.col`` (SQLite), ``VALUES(col)`` or the row alias
(MySQL/MariaDB), or a bound parameter where an UPDATE stands in for the upsert.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal


class Excluded(ColumnElement[Any]):
    """The incoming value of column ``name`` in an upsert."""

    __visit_name__ = "onconflict_excluded"
    inherit_cache = True
    _traverse_internals = [("name", InternalTraversal.dp_string)]  # noqa: RUF012

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"excluded() takes a column name, not {name!r}")
        self.name = name
        self.type = sa.types.NULLTYPE


def excluded(name: str) -> Any:
    """The value the upsert brings for column ``name`` (as opposed to
    ``table.c.name``, the stored value), for ``update=`` and ``where=``."""
    return Excluded(name)


@compiles(Excluded)
def _refuse(element: Excluded, compiler: Any, **kw: Any) -> str:
    raise sa.exc.CompileError(
        f"onconflict.excluded({element.name!r}) can only be used in onconflict.upsert()"
    )


def excluded_names(expr: Any) -> set[str]:
    """The column names an expression takes from the incoming row."""
    if not isinstance(expr, sa.sql.ClauseElement):
        return set()
    return {e.name for e in visitors.iterate(expr) if isinstance(e, Excluded)}


def substitute(expr: Any, table: sa.Table, incoming: Callable[[sa.Column[Any]], Any]) -> Any:
    """``expr`` with every ``excluded(col)`` replaced by ``incoming(table.c[col])``.

    Plain Python values are returned as they are (bound later as parameters).
    """
    if not isinstance(expr, sa.sql.ClauseElement):
        return expr

    def replace(element: Any) -> Any:
        if isinstance(element, Excluded):
            return incoming(table.c[element.name])
        return None

    return visitors.replacement_traverse(expr, {}, replace)  # type: ignore[call-overload]
