"""insert_ignore's core, shared by both fronts: plan, write, result.

``prepare_insert_ignore`` is pure: it validates the input, resolves the conflict
target, removes in-call duplicates, groups rows by key set and builds the
statements, all before any SQL is sent. ``execute_insert_ignore`` is the only
part that does I/O, on a synchronous ``Connection``; the async front runs it
through ``AsyncConnection.run_sync``, so both fronts share every line.
"""

from __future__ import annotations

import itertools
import logging
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.dml import Insert

from onconflict._excluded import refuse_key_expressions
from onconflict._gc import paused
from onconflict._keys import (
    Keys,
    RecordRows,
    align,
    align_evaluated,
    by_key,
    evaluated_key,
    expression_key,
    pair_positions,
    positions_of,
    returned_mask,
)
from onconflict._target import (
    ConflictTarget,
    OnTarget,
    Types,
    reachable_keys,
    read_rows,
    resolve_table,
)
from onconflict.dialects import DialectSupport, native_support, support_for
from onconflict.dialects.common import evaluate_keys, execute_row, with_primary_key
from onconflict.exceptions import NotSupportedError
from onconflict.result import InsertResult, LazyRows

Row = dict[str, Any]
Strategy = Literal["auto", "native", "classify"]
Returning = bool | Sequence[str]
STRATEGIES: tuple[str, ...] = ("auto", "native", "classify")
logger = logging.getLogger("onconflict")


@dataclass
class _Group:
    """Rows with the same key set: one statement shape."""

    columns: tuple[str, ...]
    # positions in the input: a range for every row in input order (no list of
    # 10^6 ints for the cyclic collector to walk while the call runs)
    indexes: list[int] | range = field(default_factory=list)
    match: tuple[str, ...] = ()  # columns that identify a returned row
    in_key_order: bool = False  # indexes sorted by key (the lock order)
    distinct: bool = False  # no two rows share a value of ``match`` (known when planned)


@dataclass
class PreparedInsert:
    table: sa.Table
    target: ConflictTarget
    rows: list[Row]  # with column keys
    support: DialectSupport | None = None
    native: bool = True  # the native statement, or classify
    given: list[Mapping[str, Any]] = field(default_factory=list)  # as the caller passed them
    dialect: Dialect | None = None  # key identity: the dialect's bind processing
    outmap: dict[str, str] = field(default_factory=dict)  # column key -> result key
    keys: Keys = field(init=False)
    row_keys: list[tuple[Any, ...] | None] = field(default_factory=list)  # by input position
    types: Types | None = None  # each column's value types, when every row has the same columns

    def __post_init__(self) -> None:
        self.keys = Keys(self.table, self.dialect)

    statement: Insert | None = None
    returning: bool = True  # the statement returns its rows (the server can)
    counts_only: bool = False  # returning=False: the caller wants counts, no rows
    wanted: tuple[str, ...] | None = None  # the column keys results keep (None: all)
    counting: bool = False  # the dialect counts inserted rows exactly: no rows read
    elsewhere: bool = False  # skipped rows may be duplicates of another key: checked
    lean: bool = False  # one group, repeats left to the statement (see _lean)
    groups: list[_Group] = field(default_factory=list)
    duplicate_of: dict[int, int] = field(default_factory=dict)  # in-call repeats
    max_rows: dict[tuple[str, ...], int] = field(default_factory=dict)
    max_bytes: int | None = None
    keep: str = "first"  # which of the rows repeating a key is written
    bulk_from: int | None = None
    server_keys: list[tuple[Any, ...] | None] | None = None  # expression index keys, evaluated

    @property
    def empty(self) -> bool:
        return not self.rows

    @property
    def keyed(self) -> tuple[str, ...]:
        """The columns rows are keyed by in the call: the target's, except for a
        partial index (it covers only rows matching its WHERE: the database decides)."""
        key = self.target.key
        return self.target.columns if key is not None and key.where is None else ()

    def known_keys(
        self, group: _Group, indexes: Sequence[int]
    ) -> list[tuple[Any, ...] | None] | None:
        """The keys _group computed for these rows, when they are the match keys."""
        if not self.row_keys or group.match != self.target.columns:
            return None
        return [self.row_keys[i] for i in indexes]

    def statements(self) -> int:
        if not self.counting and (not self.returning or not self.native):
            return sum(len(g.indexes) for g in self.groups)
        return sum(len(list(self.chunks(g))) for g in self.groups)

    def chunks(self, group: _Group) -> Iterator[Sequence[int]]:
        """Split a group so that each piece is one statement within the budgets."""
        limit = self.max_rows[group.columns]
        if not self.max_bytes:  # a row budget only: plain slices
            for start in range(0, len(group.indexes), limit):
                yield group.indexes[start : start + limit]
            return
        chunk: list[int] = []
        size = 0
        for i in group.indexes:
            cost = _row_bytes(self.rows[i]) if self.max_bytes else 0
            if chunk and (len(chunk) >= limit or (self.max_bytes and size + cost > self.max_bytes)):
                yield chunk
                chunk, size = [], 0
            chunk.append(i)
            size += cost
        if chunk:
            yield chunk


def prepare_insert_ignore(
    dialect: Dialect,
    table: Any,
    rows: Iterable[Mapping[str, Any]],
    on: OnTarget,
    strategy: Strategy = "auto",
    returning: Returning = True,
) -> PreparedInsert:
    """Validate and plan an insert_ignore call. Pure: no I/O."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    wanted = wanted_columns(table, returning)
    given = rows if isinstance(rows, list) else list(rows)
    with paused(len(given)):
        return _prepare_insert_ignore(dialect, table, given, on, strategy, wanted)


def wanted_columns(table: Any, returning: Returning) -> tuple[str, ...] | None:
    """``returning=`` as column keys: None for every column (True), () for
    counts only (False, or no names), else the named columns (result keys: the
    attribute names of a mapped class). Unknown names raise before any SQL."""
    if returning is True:
        return None
    if returning is False:
        return ()
    names = (returning,) if isinstance(returning, str) else tuple(returning)
    if not all(isinstance(n, str) for n in names):
        raise TypeError(f"returning must be True, False or column names, not {returning!r}")
    _tbl, _keys, outmap = resolve_table(table)
    by_result = {result: column for column, result in outmap.items()}
    unknown = [n for n in names if n not in by_result]
    if unknown:
        raise ValueError(
            f"returning names {', '.join(map(repr, unknown))}, not a column of"
            f" {_tbl.name!r} (known: {', '.join(sorted(by_result))})"
        )
    return tuple(dict.fromkeys(by_result[n] for n in names))


def _prepare_insert_ignore(
    dialect: Dialect,
    table: Any,
    rows: list[Mapping[str, Any]],
    on: OnTarget,
    strategy: str,
    wanted: tuple[str, ...] | None = None,
) -> PreparedInsert:
    head = read_rows(table, rows, on)
    if head is None:
        empty = PreparedInsert(resolve_table(table)[0], ConflictTarget(None, any_key=True), [])
        empty.counts_only = wanted == ()
        return empty
    tbl, given, data, outmap, target, types = head
    support, native = _choose(dialect, strategy)
    support.check_target(tbl, target)
    prepared = PreparedInsert(
        tbl, target, data, support, given=given, outmap=outmap, dialect=dialect, types=types
    )
    prepared.native = native
    prepared.counts_only, prepared.wanted = wanted == (), wanted or None
    if _may_have_expressions(prepared):
        refuse_key_expressions(tbl, data, prepared.keyed)
    # groups the dialect writes with its bulk path are put in key order there
    bulk_from = support.bulk_rows(dialect) if native else None
    if not _lean(prepared, bulk_from):
        _group(prepared, bulk_from=bulk_from)
    if native and not support.targets_conflicts and not target.any_key:
        prepared.elsewhere = _collide_elsewhere(prepared)
    return prepared


def _may_have_expressions(prepared: PreparedInsert) -> bool:
    """Whether a row may give a SQL expression as a value: False when the
    column types known for one shape hold none."""
    types = prepared.types
    if types is None:
        return True
    kinds = set().union(*types.values())
    return any(issubclass(kind, sa.sql.ClauseElement) for kind in kinds)


def _choose(dialect: Dialect, strategy: str) -> tuple[DialectSupport, bool]:
    """The dialect's support and whether the native statement is used."""
    if strategy == "classify":
        support = support_for(dialect)
        if not support.savepoints:
            raise NotSupportedError(
                f"strategy='classify' needs a SAVEPOINT per row, which {support.name} does not"
                " have; use the native strategy ('auto')"
            )
        return support, False
    try:
        return native_support(dialect), True
    except NotSupportedError:
        if strategy == "native":
            raise
        return support_for(dialect), False


def _bind(prepared: PreparedInsert, dialect: Dialect) -> DialectSupport:
    """Settle what depends on the server version: known once a connection exists
    (a fresh engine's dialect learns it on its first connect)."""
    support = prepared.support
    assert support is not None
    prepared.returning = support.returning(dialect)
    counted = None
    if prepared.counts_only and prepared.native and not prepared.elsewhere:
        # where the dialect counts exactly (and no skipped row needs checking)
        counted = support.count_statement(prepared.table, prepared.target)
    prepared.counting = counted is not None
    if counted is not None:
        stmt = counted
    elif prepared.native:
        stmt = support.insert_ignore(prepared.table, prepared.target, prepared.returning)
    else:
        stmt = sa.insert(prepared.table)
        stmt = stmt.returning(*by_key(prepared.table)) if prepared.returning else stmt
    prepared.statement = stmt
    budgets(prepared, support, dialect)
    return support


def budgets(prepared: PreparedInsert, support: DialectSupport, dialect: Dialect) -> None:
    """Rows per statement for each group, within the driver's parameter budget."""
    prepared.max_bytes = support.max_statement_bytes(dialect)
    params = support.max_params(dialect)
    for g in prepared.groups:
        prepared.max_rows[g.columns] = max(1, min(support.page_size, params // len(g.columns)))


def _group(prepared: PreparedInsert, keep: str = "first", bulk_from: int | None = None) -> None:
    """Group rows by the columns they carry; resolve keys repeated in the call.

    keep: which of the rows sharing a key is written ("first", "last"), or
    "error" to refuse them. The others are recorded in ``duplicate_of``.
    Groups are put in key order (one lock order for every caller), except
    those of ``bulk_from`` rows or more: the dialect's bulk path orders those
    on the server (or ``in_key_order`` sorts them if it declines).
    """
    prepared.keep, prepared.bulk_from, prepared.lean = keep, bulk_from, False
    prepared.duplicate_of.clear()
    if _bulk_whole(prepared, bulk_from):
        return
    row_keys = prepared.row_keys = _row_keys(prepared)
    winner = _winners(prepared, row_keys, keep)
    groups = _shapes(prepared, row_keys, winner)
    for group in groups:
        if bulk_from is None or len(group.indexes) < bulk_from:
            in_key_order(prepared, group)
        else:  # already in key order (a sorted export, say)? then nobody sorts it
            group.in_key_order = _sorted(row_keys, group.indexes)
    prepared.groups = groups


def _bulk_whole(prepared: PreparedInsert, bulk_from: int | None) -> bool:
    """A large call for the dialect's bulk path whose rows are of one shape,
    keyed by plain columns (no bind processing or fold, every value of the
    column's type) and repeat no key: one group of every row in input order,
    found from the key values as they are (C-level loops, no per-row key
    tuples; keys in strictly ascending order, a sorted export say, repeat
    none: no set of them is made). The rows' keys are made only if the bulk
    path declines (``in_key_order``)."""
    rows, keyed, types, keys = prepared.rows, prepared.keyed, prepared.types, prepared.keys
    if bulk_from is None or len(rows) < bulk_from or types is None or not keyed:
        return False
    if prepared.server_keys is not None or not _plain_keys(keyed, types, keys):
        return False
    values = list(map(operator.itemgetter(*keyed), rows))
    ascending = _in_order(values, operator.lt)  # (stops at the first key out of order)
    if not ascending:
        distinct = set(values)
        if len(distinct) != len(rows) or None in distinct:  # repeats: the usual plan
            return False
    cols = tuple(sorted(types))
    group = _Group(cols, range(len(rows)), _match_of(keyed, cols), distinct=True)
    group.in_key_order = ascending or _in_order(values)
    prepared.groups, prepared.row_keys = [group], []
    return True


def _plain_keys(keyed: tuple[str, ...], types: Types, keys: Keys) -> bool:
    """Every row carries the key columns, which have no bind processing or
    fold, and every value of them is of its column's type (or None)."""
    for col in keyed:
        pytype = keys.types[col]
        if col not in types or not keys.plain(col) or pytype is None:
            return False
        if not types[col] <= {pytype, type(None)}:
            return False
    return True


def _lean(prepared: PreparedInsert, bulk_from: int | None) -> bool:
    """A large counts-only call for the dialect's bulk path, every row of one
    shape: one group of every row in input order, and keys repeated in the
    call are left to the statement (``DO NOTHING`` skips a repeat as a
    duplicate; the bulk path keeps input order among equal keys, so the first
    row of a key is the one stored, as when repeats are resolved here). No
    per-row key work: nothing is paired. If the server folds keys (a
    collation) or the bulk path declines, the usual plan is made then."""
    rows, target = prepared.rows, prepared.target
    if not prepared.counts_only or bulk_from is None or len(rows) < bulk_from:
        return False
    if evaluated_key(target) is not None or prepared.keyed != target.columns:
        return False  # an expression or partial index: the usual plan
    types = prepared.types
    if types is None:  # rows of several shapes (or not known to be of one)
        return False
    prepared.keep, prepared.bulk_from = "first", bulk_from
    cols = tuple(sorted(types))
    prepared.groups = [_Group(cols, range(len(rows)), _match_of(prepared.keyed, cols))]
    prepared.lean = True
    return True


def _shapes(
    prepared: PreparedInsert,
    row_keys: list[tuple[Any, ...] | None],
    winner: dict[Any, int] | None,
) -> list[_Group]:
    """The rows written, grouped by the columns they carry (in input order);
    the repeats of a key are recorded in ``duplicate_of`` instead."""
    keyed, rows = prepared.keyed, prepared.rows
    unique = winner is None  # every row keyed, no repeats: nothing to skip
    if unique and _one_shape(prepared):
        # the usual large call: one shape, no repeats: one group, in input order
        cols = tuple(sorted(rows[0]))
        match = _match_of(keyed, cols)
        return [_Group(cols, range(len(rows)), match, distinct=match == keyed)]
    members: dict[tuple[str, ...], list[int]] = {}  # shape -> its rows' positions
    for i, row in enumerate(rows):
        key = row_keys[i]
        if key is not None and winner is not None and winner[key] != i:
            prepared.duplicate_of[i] = winner[key]
            continue
        members.setdefault(tuple(sorted(row)), []).append(i)
    return [_Group(cols, indexes, _match_of(keyed, cols)) for cols, indexes in members.items()]


def _one_shape(prepared: PreparedInsert) -> bool:
    """Every row carries the same columns."""
    if prepared.types is not None:
        return True
    first = prepared.rows[0].keys()
    return all(row.keys() == first for row in prepared.rows)


def _row_keys(prepared: PreparedInsert) -> list[tuple[Any, ...] | None]:
    """Each row's key as the database sees it (None: it cannot collide)."""
    if prepared.server_keys is not None:  # an expression index: as the server computed them
        return prepared.server_keys
    keyed = prepared.keyed
    if keyed:
        return prepared.keys.unique_many(prepared.rows, keyed, prepared.types)
    return [None] * len(prepared.rows)


def _winners(
    prepared: PreparedInsert, row_keys: list[tuple[Any, ...] | None], keep: str
) -> dict[Any, int] | None:
    """key -> the position of the row written for it; refuses repeats for
    "error". None when every row has a key and no key repeats (a set says so
    faster than the dict is built: the usual large call)."""
    n = len(row_keys)
    distinct = set(row_keys)
    if len(distinct) == n and None not in distinct:
        return None
    # the last row of a key wins a dict built forwards, the first one built backwards
    if keep == "last":
        winner: dict[Any, int] = dict(zip(row_keys, range(n), strict=True))
    else:
        winner = dict(zip(reversed(row_keys), range(n - 1, -1, -1), strict=True))
    winner.pop(None, None)  # rows without a key never collide
    if keep == "error" and len(winner) != n - row_keys.count(None):
        seen: dict[tuple[Any, ...], int] = {}
        for i, key in enumerate(row_keys):
            if key is not None and seen.setdefault(key, i) != i:
                given = prepared.rows[i]
                names = prepared.keyed or tuple(given)
                shown = ", ".join(f"{c}={given.get(c)!r}" for c in names)
                raise ValueError(
                    f"rows {seen[key]} and {i} have the same key ({shown});"
                    " pass duplicates='first' or 'last' to choose one"
                )
    return winner


def _sorted(row_keys: list[tuple[Any, ...] | None], indexes: Sequence[int]) -> bool:
    return _in_order([row_keys[i] for i in indexes])


def _in_order(keys: list[Any], before: Callable[[Any, Any], bool] = operator.le) -> bool:
    """Each key ``before`` the next (``le``: in order; ``lt``: strictly, so
    no key repeats)."""
    try:
        return all(map(before, keys, itertools.islice(keys, 1, None)))
    except TypeError:  # a row without a key, or keys that do not compare
        return False


def _match_of(keyed: tuple[str, ...], cols: tuple[str, ...]) -> tuple[str, ...]:
    """The columns that identify a returned row of this shape: the key if the
    rows carry it, else all their columns."""
    return keyed if keyed and set(keyed) <= set(cols) else cols


def in_key_order(prepared: PreparedInsert, group: _Group) -> None:
    """Sort a group's rows by key: one lock order for every caller, so fewer
    deadlocks between concurrent batches."""
    keyed = prepared.keyed
    if group.in_key_order or not keyed or group.match != keyed:
        return
    if not prepared.row_keys:  # not made for a group left to the bulk path (_bulk_whole)
        prepared.row_keys = _row_keys(prepared)
    row_keys, keys, rows = prepared.row_keys, prepared.keys, prepared.rows
    indexes = list(group.indexes)
    with suppress(TypeError):  # keys that do not compare: left in input order
        if all(row_keys[i] is not None for i in indexes):
            indexes.sort(key=row_keys.__getitem__)  # type: ignore[arg-type]
        else:
            indexes.sort(key=lambda i: row_keys[i] or keys.of(rows[i], keyed))
    group.indexes = indexes
    group.in_key_order = True


def _collide_elsewhere(prepared: PreparedInsert) -> bool:
    """Whether rows can collide on another unique key than the target, where the
    database's duplicate-only INSERT skips a duplicate of any key (MySQL's
    INSERT IGNORE): the rows it skips are then checked (check_skipped)."""
    wanted = set(prepared.target.columns)
    shapes = {g.columns for g in prepared.groups} or {tuple(prepared.rows[0])}
    return any(
        set(k.columns) != wanted for shape in shapes for k in reachable_keys(prepared.table, shape)
    )


def _row_bytes(row: Row) -> int:
    return sum(len(v) if isinstance(v, str | bytes) else 16 for v in row.values()) + 8


def execute_insert_ignore(conn: Connection, prepared: PreparedInsert, owned: bool) -> InsertResult:
    """Run a prepared call on a synchronous connection. The only I/O of insert_ignore."""
    support = _bind(prepared, conn.dialect)
    with support.scope(conn, owned):
        folded = server_identity(conn, prepared, support, len(prepared.rows) > 1)
        if folded or (prepared.lean and not prepared.counting):
            _group(prepared, prepared.keep, prepared.bulk_from)  # repeats as the server sees them
        atomic = not owned and prepared.statements() > 1
        with support.atomic(conn) if atomic else nullcontext():
            if prepared.counting:  # counts only: no row is read back
                inserted = _count_native(conn, prepared, support)
                return InsertResult.counted(inserted, len(prepared.given) - inserted)
            whole = _write_whole(conn, prepared, support) if prepared.native else None
            if whole is not None:  # one bulk statement for every row
                return whole
            if prepared.native:
                stored = _write_native(conn, prepared, support)
            else:
                stored = _write_classify(conn, prepared, support)
    with paused(len(prepared.given)):
        return insert_result(prepared, stored)


def server_identity(
    conn: Connection, prepared: PreparedInsert, support: DialectSupport, compares: bool
) -> bool:
    """Learn the keys as the server sees them where Python cannot tell from the
    input alone: a collation (the dialect's part), or an expression index, whose
    expressions the server evaluates for every row. True: find repeats again.
    ``compares``: the call compares keys beyond pairing returned rows (several
    rows, or an upsert's read of the existing keys)."""
    changed = False
    if compares and prepared.keyed:
        keyed = prepared.keyed
        changed = support.key_identity(conn, prepared.table, prepared.keys, keyed)
    key = evaluated_key(prepared.target)
    if key is not None and prepared.rows:
        prepared.server_keys = evaluate_keys(conn, prepared.table, key, prepared.rows)
        changed = True
    return changed


def insert_result(prepared: PreparedInsert, stored: dict[int, Row]) -> InsertResult:
    """The result, from the stored rows by input position (built complete: the
    result is frozen); counts only for ``returning=False``."""
    if prepared.counts_only:
        return InsertResult.counted(len(stored), len(prepared.given) - len(stored))
    inserted: list[Mapping[str, Any]] = []
    existing: list[Mapping[str, Any]] = []
    out, wanted = prepared.outmap, prepared.wanted
    renamed = any(k != v for k, v in out.items())  # an ORM class with other attribute names
    for i, given in enumerate(prepared.given):
        if i in stored:
            row = stored[i]
            if wanted is not None:  # only the columns asked for (that the row has)
                row = {k: row[k] for k in wanted if k in row}
            inserted.append({out.get(k, k): v for k, v in row.items()} if renamed else row)
        else:
            existing.append(given)
    return InsertResult(inserted, existing)


def _write_whole(
    conn: Connection, prepared: PreparedInsert, support: DialectSupport
) -> InsertResult | None:
    """A call whose one group is every row in input order, taken by the
    dialect's bulk path (PostgreSQL's COPY): the result straight from what it
    returned, or None where the path does not apply. Returned records
    (``RecordRows``) are paired with the input rows by key here, inside the
    call (a row that pairs with none raises OutcomeMismatchError, and the
    call's work is rolled back), as positions: the result's dicts are built
    from the records when ``inserted`` is first read (``_paired_records``)."""
    group = _whole_group(prepared)
    if group is None:
        return None
    returned = support.write_bulk(
        conn,
        prepared.table,
        prepared.target,
        group.columns,
        prepared.rows,
        group.in_key_order,
        prepared.types,
    )
    if returned is None:
        return None
    match, rows = group.match, prepared.rows
    if isinstance(returned, RecordRows) and all(map(prepared.keys.plain, match)):
        lazy = _paired_records(prepared, group, returned)
        if lazy is not None:
            return lazy
    with paused(len(rows)):  # keys Python cannot pair as they are: the general pairing
        found = list(returned)
        known = prepared.known_keys(group, group.indexes)
        aligned = align(prepared.keys, prepared.table, rows, found, match, known)
        return insert_result(prepared, {i: r for i, r in enumerate(aligned) if r is not None})


def _paired_records(
    prepared: PreparedInsert, group: _Group, returned: RecordRows
) -> InsertResult | None:
    """``_write_whole``'s pairing of the records the COPY path returned, which
    took every value in its column's type: keys as they are. Input keys known
    distinct: every row new and returned in input order (rows in key order)
    is one list comparison; else a mask of the input keys returned (set
    lookups), and which record is whose is found when the rows are read.
    Otherwise ``pair_positions``; None where keys repeat (the general pairing)."""
    match, n = group.match, len(prepared.rows)
    wanted = list(map(operator.itemgetter(*match), prepared.rows))
    found = returned.values(match)
    if group.distinct and found == wanted:
        return _lazy_result(prepared, returned, [True] * n, lambda: range(n))
    mask = returned_mask(wanted, found) if group.distinct else None
    if mask is not None:
        keys = list(itertools.compress(wanted, mask))
        return _lazy_result(
            prepared, returned, mask, lambda: positions_of(keys, returned.values(match))
        )
    positions = pair_positions(wanted, found)
    if positions is None:
        return None
    done = list(map(operator.is_not, positions, itertools.repeat(None)))
    return _lazy_result(
        prepared,
        returned,
        done,
        lambda: itertools.compress(positions, done),  # type: ignore[arg-type]
    )


def _whole_group(prepared: PreparedInsert) -> _Group | None:
    """The one group, when it is every input row in input order and large
    enough for the bulk path."""
    if not prepared.returning or len(prepared.groups) != 1 or prepared.server_keys is not None:
        return None
    group = prepared.groups[0]
    if len(group.indexes) <= prepared.max_rows[group.columns]:
        return None
    return group if _batch(prepared, group) is prepared.rows else None


def _lazy_result(
    prepared: PreparedInsert,
    returned: RecordRows,
    mask: list[bool],
    order: Callable[[], Iterable[int]],
) -> InsertResult:
    """The result of ``_write_whole``: ``mask[i]`` says whether input row i
    was inserted (else it existed); ``order()``, the returned records of the
    inserted rows, in input order. ``existing`` is built now (the given
    rows); ``inserted`` when first read."""
    existing = list(itertools.compress(prepared.given, map(operator.not_, mask)))
    out, wanted = prepared.outmap, prepared.wanted
    names = returned.names
    cols = names if wanted is None else [k for k in wanted if k in names]
    pairs = [(k, out.get(k, k)) for k in cols]
    count = len(returned)

    def build() -> list[Mapping[str, Any]]:
        with paused(count):
            return list(returned.build(list(order()), pairs))

    return InsertResult.lazy(LazyRows(count, build), existing)


def _write_native(
    conn: Connection, prepared: PreparedInsert, support: DialectSupport
) -> dict[int, Row]:
    """Each group with the dialect's duplicate-only statement: the stored rows
    by input position (a row absent was a duplicate)."""
    stored: dict[int, Row] = {}
    for group in prepared.groups:
        for i, one in _write_group(conn, prepared, support, group):
            if one is not None:
                stored[i] = one
    if prepared.elsewhere and len(stored) < len(prepared.rows):
        skipped = [row for i, row in enumerate(prepared.rows) if i not in stored]
        support.check_skipped(conn, prepared.table, prepared.target, prepared.keys, skipped)
    return stored


def _count_native(conn: Connection, prepared: PreparedInsert, support: DialectSupport) -> int:
    """Counts only: each group with the dialect's counting statement (no rows
    read back), or its bulk path for a large group; how many rows were inserted."""
    stmt, rows = prepared.statement, prepared.rows
    assert stmt is not None
    if prepared.lean:  # every row, one group: the bulk path, or the usual plan after all
        bulk = _count_bulk(conn, prepared, support, prepared.groups[0])
        if bulk is not None:
            return bulk
        _group(prepared, prepared.keep, prepared.bulk_from)
        budgets(prepared, support, conn.dialect)
    inserted = 0
    for group in prepared.groups:
        if len(group.indexes) > prepared.max_rows[group.columns]:
            bulk = _count_bulk(conn, prepared, support, group)
            if bulk is not None:
                inserted += bulk
                continue
            in_key_order(prepared, group)  # the statements take the rows in key order
        for chunk in prepared.chunks(group):
            inserted += support.write_count(conn, stmt, [rows[i] for i in chunk])
    return inserted


def _count_bulk(
    conn: Connection, prepared: PreparedInsert, support: DialectSupport, group: _Group
) -> int | None:
    batch = prepared.rows if prepared.lean else _batch(prepared, group)
    return support.count_bulk(
        conn,
        prepared.table,
        prepared.target,
        group.columns,
        batch,
        group.in_key_order,
        prepared.types,
    )


def _write_group(
    conn: Connection, prepared: PreparedInsert, support: DialectSupport, group: _Group
) -> Iterable[tuple[int, Row | None]]:
    """(input position, stored row or None) for each row of the group."""
    stmt, rows = prepared.statement, prepared.rows
    assert stmt is not None
    if not prepared.returning:  # a row at a time: the driver tells each outcome
        return [(i, support.write_one(conn, stmt, rows[i])) for i in group.indexes]
    if len(group.indexes) > prepared.max_rows[group.columns]:
        # a large group: the dialect may have a faster way in
        bulk = _write_bulk(conn, prepared, support, group)
        if bulk is not None:
            return bulk
        in_key_order(prepared, group)  # the statements take the rows in key order
    return _write_chunks(conn, prepared, support, group)


def _write_bulk(
    conn: Connection, prepared: PreparedInsert, support: DialectSupport, group: _Group
) -> Iterable[tuple[int, Row | None]] | None:
    """The dialect's bulk path (PostgreSQL's COPY, say), or None if it declines."""
    batch = _batch(prepared, group)
    returned = support.write_bulk(
        conn,
        prepared.table,
        prepared.target,
        group.columns,
        batch,
        group.in_key_order,
        prepared.types,
    )
    if returned is None:
        return None
    known = prepared.known_keys(group, group.indexes)
    with paused(len(batch)):
        found = list(returned)  # records made dicts: paired as dicts here
        aligned = align(prepared.keys, prepared.table, batch, found, group.match, known)
    return zip(group.indexes, aligned, strict=True)


def _batch(prepared: PreparedInsert, group: _Group) -> list[Row]:
    """A group's rows; the input rows themselves (with their column types, for
    the bulk path's checks) when the group is every row in input order."""
    rows, indexes = prepared.rows, group.indexes
    whole = range(len(rows))
    if indexes == whole or (len(indexes) == len(rows) and list(indexes) == list(whole)):
        return rows
    return [rows[i] for i in indexes]


def _write_chunks(
    conn: Connection, prepared: PreparedInsert, support: DialectSupport, group: _Group
) -> Iterator[tuple[int, Row | None]]:
    """One multi-row statement per chunk within the driver's budgets."""
    stmt, rows = prepared.statement, prepared.rows
    assert stmt is not None
    for chunk in prepared.chunks(group):
        batch = [rows[i] for i in chunk]
        returned = support.write_many(conn, stmt, batch)
        yield from zip(chunk, _align(prepared, group, chunk, batch, returned), strict=True)


def _align(
    prepared: PreparedInsert,
    group: _Group,
    chunk: Sequence[int],
    batch: list[Row],
    returned: list[Row],
) -> list[Row | None]:
    """Pair returned rows with the chunk's rows, by the key as the server sees it."""
    if prepared.server_keys is not None and expression_key(prepared.target):
        wanted = [prepared.server_keys[i] for i in chunk]
        return align_evaluated(wanted, returned, prepared.table)
    known = prepared.known_keys(group, chunk)
    return align(prepared.keys, prepared.table, batch, returned, group.match, known)


def _write_classify(
    conn: Connection, prepared: PreparedInsert, support: DialectSupport
) -> dict[int, Row]:
    """Each row in a SAVEPOINT with a plain INSERT; a duplicate of the target
    means ``existing``, any other error is raised unchanged."""
    stmt, rows = prepared.statement, prepared.rows
    assert stmt is not None
    stored: dict[int, Row] = {}
    for group in prepared.groups:
        for i in group.indexes:
            try:
                with support.savepoint(conn):
                    result = execute_row(conn, stmt, rows[i])
                    one = _stored_row(result, rows[i], prepared)
            except sa.exc.DBAPIError as exc:
                if support.duplicate_of_target(exc, prepared.table, prepared.target):
                    continue
                logger.info(
                    "insert into %s failed: not a duplicate", prepared.table.name, exc_info=True
                )
                raise
            stored[i] = one
    return stored


def _stored_row(result: sa.CursorResult[Any], row: Row, prepared: PreparedInsert) -> Row:
    if prepared.returning:
        return dict(result.mappings().one())
    return with_primary_key(prepared.table, row, result)
