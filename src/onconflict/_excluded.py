"""``onconflict.excluded(col)``: the incoming value of a column, in upsert expressions.

It is a placeholder. Before a statement is compiled, each dialect module
replaces it with what its database calls the incoming row: ``EXCLUDED.col``
(PostgreSQL), ``excluded.col`` (SQLite), ``VALUES(col)`` or the row alias
(MySQL/MariaDB), or a bound parameter where an UPDATE stands in for the upsert.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
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


# -- SQL expressions given as row values ---------------------------------------
#
# A row may give a SQL expression (``func.lower("X")``, ``func.now()``) as the
# value of a column that is not its key: the statement then carries it in its
# VALUES list (SQLAlchemy's multi-row ``insert().values([...])``), never as a
# bound parameter (a driver would send its repr: MariaDB stored the text
# 'lower(:lower_1)'). Key columns are refused: the rows the database returns
# are paired with the input rows by their key values, which an expression
# does not have before the statement runs.


def has_expressions(rows: Iterable[dict[str, Any]]) -> bool:
    """Whether any value of the rows is a SQL expression."""
    kinds = {type(v) for row in rows for v in row.values()}  # a few types: checked once each
    return any(issubclass(kind, sa.sql.ClauseElement) for kind in kinds)


def refuse_key_expressions(
    table: sa.Table, rows: list[dict[str, Any]], keyed: tuple[str, ...]
) -> None:
    """ValueError, before any SQL, for a row giving a SQL expression where the
    call pairs rows by value: in a key column, or in any column when the rows
    are not paired by a key (ANY_KEY, a partial index, rows without the key)."""
    if not has_expressions(rows):
        return
    for i, row in enumerate(rows):
        named = [c for c, v in row.items() if isinstance(v, sa.sql.ClauseElement)]
        if not named:
            continue
        in_key = [c for c in named if c in keyed]
        if in_key:
            raise ValueError(
                f"row {i}: {', '.join(in_key)} is given a SQL expression, but key columns"
                f" of {table.name!r} need plain values (the outcome of a row is known"
                " by its key); compute the value first, e.g. with SELECT"
            )
        if not keyed or not set(keyed) <= row.keys():
            raise ValueError(
                f"row {i}: {', '.join(named)} is given a SQL expression, but rows of"
                f" {table.name!r} without a key of plain values are paired with the"
                " stored rows by all their values; give plain values, or rows that"
                " carry the conflict target's columns (not ANY_KEY or a partial index)"
            )


def rows_statement(stmt: Any, rows: list[dict[str, Any]]) -> tuple[Any, Any]:
    """(statement, parameters) to execute ``stmt`` for ``rows``: the rows as
    bound parameters (executemany), or, when a row gives a SQL expression, in
    the statement's own VALUES list (no parameters)."""
    if has_expressions(rows):
        return stmt.values(rows), None
    return stmt, rows
