"""get_or_create_many: the stored row of every input row, and whether this call made it.

Planning is pure (``prepare_get_or_create_many``); ``execute_get_or_create_many``
is the only I/O, on a synchronous ``Connection`` (the async front runs it through
``run_sync``). Each attempt, for the rows still without a stored row:

1. the dialect's one-statement form where it has one (PostgreSQL: existing rows
   read and missing ones inserted with ``ON CONFLICT DO NOTHING`` in one
   statement), else a SELECT of the existing keys and the duplicate-only insert
   of the others (guarded ``INSERT IGNORE`` on MariaDB);
2. a locking read of the keys neither step returned: rows committed by a
   concurrent caller after the statement's snapshot (it waits for an
   uncommitted one);
3. where the insert cannot name its conflict target (MySQL/MariaDB), a row still
   missing may be a duplicate of another unique key: the same INSERT without
   IGNORE, always rolled back, raises the server's error for it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import Session

from onconflict._excluded import has_expressions, refuse_key_expressions
from onconflict._get_or_create import ATTEMPTS, PreparedFetch, as_instance, refuse_null_keys
from onconflict._keys import Keys, by_key
from onconflict._target import ConflictTarget, OnTarget, fixed_values, read_rows, resolve_table
from onconflict.dialects import native_support
from onconflict.dialects.base import DialectSupport
from onconflict.dialects.common import execute_rows
from onconflict.dialects.plans import FetchPlan
from onconflict.exceptions import (
    LookupMismatchError,
    NotSupportedError,
    OnConflictError,
    OutcomeMismatchError,
)

Row = dict[str, Any]
Key = tuple[Any, ...]


@dataclass(frozen=True)
class GetOrCreateResult:
    """What a ``get_or_create_many`` call found or made, one entry per input row.

    ``rows[i]`` is the stored row for input row ``i`` (a mapping with
    server-generated values, or the mapped instance with an ORM class and a
    session) and ``created[i]`` whether this call inserted it. Input rows that
    repeat a key get the same stored row; only the first of them can be
    ``created``.
    """

    rows: list[Any] = field(default_factory=list)
    created: list[bool] = field(default_factory=list)

    @property
    def created_rows(self) -> list[Any]:
        """The rows this call inserted, in input order."""
        return [r for r, made in zip(self.rows, self.created, strict=True) if made]

    @property
    def existing_rows(self) -> list[Any]:
        """The rows that were there already (or repeat a key made earlier in the
        call), in input order."""
        return [r for r, made in zip(self.rows, self.created, strict=True) if not made]

    @property
    def created_count(self) -> int:
        return sum(self.created)

    @property
    def existing_count(self) -> int:
        return len(self.created) - sum(self.created)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[tuple[Any, bool]]:
        """``(row, created)`` pairs, in input order."""
        return iter(zip(self.rows, self.created, strict=True))

    def __repr__(self) -> str:
        return (
            f"GetOrCreateResult(created_count={self.created_count},"
            f" existing_count={self.existing_count})"
        )


@dataclass
class PreparedMany:
    table: sa.Table
    target: ConflictTarget
    rows: list[Row]  # with column keys
    support: DialectSupport
    outmap: dict[str, str]
    mapper: Any = None
    fixed: dict[str, Any] = field(default_factory=dict)  # single-table inheritance: kind=...
    max_params: int = 0  # the driver's bound-parameter budget of one statement
    one_statement: bool = False  # the whole call is one statement (PostgreSQL, one chunk)

    @property
    def key(self) -> tuple[str, ...]:
        return self.target.columns

    def rows_per_statement(self, width: int) -> int:
        return max(1, min(self.support.page_size, self.max_params // max(1, width)))

    def output(self, row: Row) -> Row:
        out = self.outmap
        return {out.get(k, k): v for k, v in row.items()}


def prepare_get_or_create_many(
    dialect: Dialect, table: Any, rows: Iterable[Mapping[str, Any]], on: OnTarget
) -> PreparedMany | None:
    """Validate and plan a call. Pure: no I/O. None for no rows."""
    head = read_rows(table, rows, on)
    if head is None:
        resolve_table(table)  # a bad table is refused even without rows
        return None
    tbl, _given, data, outmap, target, _types = head
    _check_target(tbl, target, on)
    for i, row in enumerate(data):
        _check_row(tbl, target, i, row)
    refuse_key_expressions(tbl, data, target.columns)
    support = native_support(dialect)
    support.check_target(tbl, target)
    mapper = None if isinstance(table, sa.Table) else sa.inspect(table)
    prepared = PreparedMany(tbl, target, data, support, outmap, mapper, fixed_values(table))
    prepared.max_params = support.max_params(dialect)
    shapes = {tuple(sorted(r)) for r in data}
    prepared.one_statement = (
        support.fetch_in_one_statement
        and len(shapes) == 1
        and len(data) <= prepared.rows_per_statement(len(data[0]))
        and not has_expressions(data)
        and not prepared.fixed  # a row of another class is refused: in a transaction
    )
    return prepared


def _check_target(table: sa.Table, target: ConflictTarget, on: OnTarget) -> None:
    key = target.key
    if key is None or not key.columns or key.where is not None:
        what = (
            "any unique key (ANY_KEY)"
            if key is None
            else f"{key.describe()}, " + ("an expression index" if not key.columns else "partial")
        )
        raise NotSupportedError(
            f"get_or_create_many on {table.name!r} pairs every input row with its stored"
            f" row by a unique key of plain columns, which {what} is not. Pass on=..."
            " naming the primary key, a unique constraint or a unique index without WHERE"
            " (for a partial index, call get_or_create row by row)"
        )


def _check_row(table: sa.Table, target: ConflictTarget, i: int, row: Row) -> None:
    missing = [c for c in target.columns if c not in row]
    if missing:
        raise ValueError(
            f"row {i} does not give {missing[0]!r}, a column of the key rows are"
            f" got or created by ({target.describe()} of {table.name!r})"
        )
    refuse_null_keys(table, target, row, f"row {i}")


# -- execution -------------------------------------------------------------------


@dataclass
class _Call:
    """The state of one execution (a retried call starts a new one)."""

    conn: Connection
    prepared: PreparedMany
    keys: Keys
    row_keys: list[Key] = field(default_factory=list)
    done: dict[int, tuple[Row, bool]] = field(default_factory=dict)  # winner -> (row, created)

    def key_of(self, row: Mapping[str, Any]) -> Key:
        return self.keys.of(row, self.prepared.key)

    def pair(self, returned: list[Row], wanted: dict[Key, int], created: bool | None) -> None:
        """Record returned rows against the input rows with their key (removed
        from ``wanted``); ``created`` None: the row carries the flag itself."""
        for row, flag in returned_pairs(returned, created):
            index = wanted.pop(self.key_of(row), None)
            if index is None:
                raise OutcomeMismatchError(
                    f"a row read or inserted by get_or_create_many on"
                    f" {self.prepared.table.name!r} matches no input row on"
                    f" ({', '.join(self.prepared.key)})"
                )
            self.done[index] = (row, flag)


def returned_pairs(returned: list[Row], created: bool | None) -> Iterator[tuple[Row, bool]]:
    for row in returned:
        if created is None:
            yield row, bool(row.pop(FLAG))
        else:
            yield row, created


FLAG = "onconflict_created_"  # the flag column of a dialect's one-statement form


def execute_get_or_create_many(
    conn: Connection, prepared: PreparedMany, owned: bool
) -> list[tuple[Row, bool]]:
    """Run a prepared call: ``(stored row, created)`` for every input row, in order."""
    support = prepared.support
    with support.scope(conn, owned):
        call = _Call(conn, prepared, Keys(prepared.table, conn.dialect))
        support.key_identity(conn, prepared.table, call.keys, prepared.key)
        call.row_keys = [call.key_of(r) for r in prepared.rows]
        first: dict[Key, int] = {}
        for i, key in enumerate(call.row_keys):
            first.setdefault(key, i)
        support.lock_for_update_or_create(conn)  # SQLite: the write lock first
        with _all_or_nothing(conn, prepared, owned):
            _attempts(call, sorted(first.values(), key=lambda i: _order(call.row_keys[i])))
            for row, _ in call.done.values():
                _check_class(prepared, row)  # (undone with the rest: inside the scope)
    stored = {i: prepared.output(row) for i, (row, _) in call.done.items()}
    out: list[tuple[Row, bool]] = []
    for i, key in enumerate(call.row_keys):
        winner = first[key]
        out.append((stored[winner], call.done[winner][1] and winner == i))
    return out


def _all_or_nothing(
    conn: Connection, prepared: PreparedMany, owned: bool
) -> AbstractContextManager[Any]:
    """In the caller's transaction, the call's rows are undone when it raises:
    the dialect's way for a database error (PostgreSQL: the error aborts the
    transaction), a SAVEPOINT for a row of another class, found after writing."""
    if owned:
        return nullcontext()
    if prepared.fixed:
        return prepared.support.savepoint(conn)
    return prepared.support.atomic(conn) if not prepared.one_statement else nullcontext()


def _check_class(prepared: PreparedMany, row: Row) -> None:
    """A class of single-table inheritance gets only rows of its own kind: a row
    with the key stored as another class's is a mismatch, not this class's row."""
    for column, value in prepared.fixed.items():
        if row.get(column) != value:
            key = ", ".join(f"{c}={row.get(c)!r}" for c in prepared.key)
            raise LookupMismatchError(
                f"get_or_create_many on {prepared.table.name!r}: the row with {key} is"
                f" stored with {column}={row.get(column)!r}, not {value!r} (another class)"
            )


def _order(key: Key) -> tuple[Any, ...]:
    """A sort key for lock order that never fails on mixed types."""
    return tuple((type(v).__name__, v) for v in key)


def _attempts(call: _Call, pending: list[int]) -> None:
    for _ in range(ATTEMPTS):
        for chunk in _chunks(call.prepared, pending):
            _get_or_insert(call, chunk)
        pending = [i for i in pending if i not in call.done]
        if pending:
            _locking_read(call, pending)
            pending = [i for i in pending if i not in call.done]
        if not pending:
            return
        if not call.prepared.support.targets_conflicts:
            _probe(call, pending)
    raise OnConflictError(
        f"get_or_create_many on {call.prepared.table.name!r}: rows conflicted but could"
        f" not be read {ATTEMPTS} times in a row (deleted as fast as they are created?)"
    )


def _chunks(prepared: PreparedMany, indexes: list[int]) -> Iterator[list[int]]:
    """Rows of one shape (column set), in lock order, within the parameter budget."""
    rows = prepared.rows
    shapes: dict[tuple[str, ...], list[int]] = {}
    for i in indexes:
        shapes.setdefault(tuple(sorted(rows[i])), []).append(i)
    for cols, group in shapes.items():
        size = prepared.rows_per_statement(len(cols))
        for start in range(0, len(group), size):
            yield group[start : start + size]


def _get_or_insert(call: _Call, chunk: list[int]) -> None:
    prepared, conn = call.prepared, call.conn
    support, table = prepared.support, prepared.table
    batch = [prepared.rows[i] for i in chunk]
    wanted = {call.row_keys[i]: i for i in chunk}
    both = None
    if not has_expressions(batch):
        both = support.get_or_create_many_once(conn, table, prepared.target, batch)
    if both is not None:
        call.pair(both, wanted, None)
        return
    call.pair(_read(call, chunk, locking=False), wanted, False)
    missing = list(wanted.values())
    if not missing:
        return
    rows = [prepared.rows[i] for i in missing]
    if support.returning(conn.dialect):
        stmt = support.insert_ignore(table, prepared.target, True)
        call.pair(support.write_many(conn, stmt, rows), wanted, True)
        return
    # no RETURNING (MySQL): one row at a time, then the rows inserted read back
    stmt = support.insert_ignore(table, prepared.target, False)
    made = [i for i, r in zip(missing, rows, strict=True) if support.write_one(conn, stmt, r)]
    if made:
        call.pair(_read(call, made, locking=False), {call.row_keys[i]: i for i in made}, True)


def _read(call: _Call, indexes: list[int], locking: bool) -> list[Row]:
    """The stored rows with the keys of these input rows (bound through the key
    columns' types: the database compares them its own way)."""
    prepared = call.prepared
    table, key = prepared.table, prepared.key
    cols = [table.c[c] for c in key]
    values = [tuple(call.keys.typed(c, prepared.rows[i][c]) for c in key) for i in indexes]
    out: list[Row] = []
    step = prepared.rows_per_statement(len(key))
    for start in range(0, len(values), step):
        part = values[start : start + step]
        where = cols[0].in_([v[0] for v in part]) if len(cols) == 1 else sa.tuple_(*cols).in_(part)
        read = sa.select(*by_key(table)).where(where)
        if locking:
            read = prepared.support.for_update(read.order_by(*cols), read=True)
        out += [dict(m) for m in call.conn.execute(read).mappings()]
    return out


def _locking_read(call: _Call, pending: list[int]) -> None:
    """Rows committed by others after this transaction's snapshot (or still
    uncommitted: the read waits for them)."""
    wanted = {call.row_keys[i]: i for i in pending}
    call.pair(_read(call, pending, locking=True), wanted, False)


def _probe(call: _Call, pending: list[int]) -> None:
    """MySQL/MariaDB: rows INSERT IGNORE skipped though no row has their key
    are duplicates of another unique key, or were deleted meanwhile. The same
    rows without IGNORE, always rolled back, raise the server's own error for
    the first case; the second is tried again."""
    conn, prepared = call.conn, call.prepared
    rows = [prepared.rows[i] for i in pending]
    for _cols, group in itertools.groupby(sorted(rows, key=_shape), key=_shape):
        probe = conn.begin_nested()
        try:
            execute_rows(conn, sa.insert(prepared.table), list(group))
        except sa.exc.IntegrityError:
            probe.rollback()
            _locking_read(call, pending)  # made meanwhile: the next attempt reads them
            if all(i in call.done for i in pending):
                return
            raise
        probe.rollback()


def _shape(row: Row) -> tuple[str, ...]:
    return tuple(sorted(row))


def _get_or_create_many_work(
    conn: Connection, prepared: PreparedMany, owned: bool
) -> list[tuple[Row, bool]]:
    return execute_get_or_create_many(conn, prepared, owned)


def as_result(got: list[tuple[Any, bool]]) -> GetOrCreateResult:
    return GetOrCreateResult([r for r, _ in got], [c for _, c in got])


def instances(
    prepared: PreparedMany,
) -> Callable[[Session | None, list[tuple[Row, bool]]], list[tuple[Row, bool]]] | None:
    """With an ORM class: turn the rows into the session's mapped instances."""
    if prepared.mapper is None:
        return None
    plan = FetchPlan(prepared.table, prepared.target, (), ())
    fetch = PreparedFetch(plan, prepared.support, prepared.outmap, prepared.mapper)

    def finish(session: Session | None, got: list[tuple[Row, bool]]) -> list[tuple[Any, bool]]:
        if session is None:
            return got
        made: dict[int, Any] = {}  # one instance per stored row (repeats share it)
        out: list[tuple[Any, bool]] = []
        for row, created in got:
            one = made.get(id(row))
            if one is None:
                one = made[id(row)] = as_instance(session, fetch, row)
            out.append((one, created))
        return out

    return finish
