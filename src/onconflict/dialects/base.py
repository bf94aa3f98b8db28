"""What onconflict knows of a database.

A dialect module builds its statements (pure, no I/O) and says what the
database supports; the shared core in ``onconflict._insert_ignore`` does the rest.
Adding a database is one module with a subclass of :class:`DialectSupport` and
one line in ``onconflict.dialects.REGISTRY``. A database without a module gets
this base class: no native form, so ``strategy="auto"`` uses ``classify``.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect, NestedTransaction
from sqlalchemy.sql import visitors
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import ColumnElement

from onconflict._excluded import has_expressions, rows_statement, substitute
from onconflict._keys import (
    Keys,
    align,
    align_evaluated,
    by_key,
    evaluated_key,
    expression_key,
    returning_columns,
    strip_keys,
)
from onconflict._target import ConflictTarget, UniqueKey
from onconflict.exceptions import NotSupportedError

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


def lookup_condition(plan: FetchPlan) -> ColumnElement[bool]:
    """The lookup as the database sees the key: an expression target (an index
    on ``lower(ext)``) is compared by its expressions, evaluated on the stored
    row and on the bound lookup values alike; the key's columns by ``=`` (never
    NULL: such a lookup is refused); the other lookup columns NULL-safe."""
    t = plan.table
    key = plan.target.key
    in_expr: set[str] = set()
    conds: list[ColumnElement[bool]] = []
    if key is not None and not key.columns:
        for element in key.elements:
            used = {c.key for c in _columns_in(element, t)}
            in_expr |= used
            conds.append(element == with_values(element, t, _lookup_param))
    keyed = set(plan.target.columns)

    def match(k: str) -> ColumnElement[bool]:
        value = sa.bindparam(f"oc_{k}", type_=t.c[k].type)
        return t.c[k] == value if k in keyed else t.c[k].is_not_distinct_from(value)

    conds += [match(k) for k in plan.lookup if k not in in_expr]
    return sa.and_(*conds)


def _lookup_param(col: sa.Column[Any]) -> Any:
    return sa.bindparam(f"oc_{col.key}", type_=col.type)


def _columns_in(expr: Any, table: sa.Table) -> list[sa.Column[Any]]:
    return [e for e in visitors.iterate(expr) if isinstance(e, sa.Column) and e.table is table]


def with_values(expr: Any, table: sa.Table, value: Callable[[sa.Column[Any]], Any]) -> Any:
    """``expr`` (an index expression) with each column of ``table`` replaced by
    ``value(column)``: a bound parameter of the column's type, say."""

    def replace(element: Any) -> Any:
        if isinstance(element, sa.Column) and element.table is table:
            return value(element)
        return None

    return visitors.replacement_traverse(expr, {}, replace)  # type: ignore[call-overload]


EVALUATE_ROWS = 400  # rows whose key expressions one SELECT evaluates


def evaluate_keys(
    conn: Connection, table: sa.Table, key: UniqueKey, rows: list[Row]
) -> list[tuple[Any, ...] | None]:
    """Each row's key as the database computes it for an expression index
    (``lower(ext)``) or a partial one: the index expressions (and its WHERE)
    evaluated on the server with the row's values bound through their column
    types; None for a row with a NULL (NULLs never collide) or outside the
    partial index's WHERE (it cannot conflict)."""
    out: list[tuple[Any, ...] | None] = []
    parts = list(key.elements)
    if key.where is not None:
        parts.append(sa.case((key.where, 1), else_=None))
    width = len(parts)
    for start in range(0, len(rows), EVALUATE_ROWS):
        chunk = rows[start : start + EVALUATE_ROWS]
        exprs = []
        for i, row in enumerate(chunk):
            for j, part in enumerate(parts):
                bound = with_values(part, table, functools.partial(_row_param, row))
                exprs.append(sa.type_coerce(bound, part.type).label(f"k{i}_{j}"))
        values = list(conn.execute(sa.select(*exprs)).one())
        for i in range(len(chunk)):
            one = tuple(values[i * width : i * width + len(key.elements)])
            out.append(None if None in values[i * width : (i + 1) * width] else one)
    return out


def _row_param(row: Row, col: sa.Column[Any]) -> Any:
    return sa.bindparam(None, row.get(col.key), type_=col.type)


def existing_keys(
    conn: Connection,
    table: sa.Table,
    key: UniqueKey,
    wanted: list[tuple[Any, ...] | None],
    for_update: bool = False,
) -> set[tuple[Any, ...]]:
    """The expression-index keys among ``wanted`` that stored rows have."""
    keys = sorted({k for k in wanted if k is not None}, key=repr)
    found: set[tuple[Any, ...]] = set()
    elements = list(key.elements)
    for start in range(0, len(keys), EVALUATE_ROWS):
        chunk = keys[start : start + EVALUATE_ROWS]
        if len(elements) == 1:
            where = elements[0].in_([k[0] for k in chunk])
        else:
            where = sa.tuple_(*elements).in_(chunk)
        read = sa.select(*(e.label(f"k{j}") for j, e in enumerate(elements))).where(where)
        if key.where is not None:
            read = read.where(key.where)
        if for_update:
            read = read.with_for_update()
        found.update(tuple(r) for r in conn.execute(read))
    return found


class DialectSupport:
    """Duplicate-only insert for one database family."""

    name: ClassVar[str] = "generic"
    native: ClassVar[bool] = False
    """True where the database has a duplicate-only INSERT form."""
    targets_conflicts: ClassVar[bool] = True
    """False where the statement cannot name its conflict target (MySQL)."""

    page_size: ClassVar[int] = 1000
    """Most rows sent in one statement."""

    def __init__(self) -> None:
        # one-row statements of the driver-level paths, by (dialect, table, target, columns)
        self._one_row_inserts: dict[Any, DriverStatement] = {}

    def check(self, dialect: Dialect) -> None:
        """Raise NotSupportedError when this server/driver lacks the native form."""

    def returning(self, dialect: Dialect) -> bool:
        return bool(dialect.insert_returning)

    def max_params(self, dialect: Dialect) -> int:
        return int(dialect.insertmanyvalues_max_parameters)

    def max_statement_bytes(self, dialect: Dialect) -> int | None:
        """A size budget for one statement's values, where the protocol has one."""
        return None

    def insert_ignore(self, table: sa.Table, target: ConflictTarget, returning: bool) -> Insert:
        """The statement that inserts rows and skips duplicates of ``target``."""
        raise NotSupportedError(f"no native duplicate-only insert for {self.name}")

    def atomic(self, conn: Connection) -> AbstractContextManager[Any]:
        """Make a multi-statement call all-or-nothing inside the caller's transaction.

        PostgreSQL overrides this with nothing: an error aborts its whole
        transaction anyway.
        """
        return self.savepoint(conn)

    def savepoint(self, conn: Connection) -> AbstractContextManager[NestedTransaction]:
        """A SAVEPOINT, released on success and rolled back on error."""
        return _savepoint(conn, self.transaction_lost)

    def transaction_lost(self, exc: BaseException) -> bool:
        """True when the server has already rolled the whole transaction back
        (rolling back to a savepoint would then fail and hide ``exc``)."""
        return False

    def prepare_upsert(self, plan: UpsertPlan, dialect: Dialect) -> None:
        """Build ``plan.statement`` (and any ``plan.extra``): pure."""
        raise NotSupportedError(f"upsert has no native form for {self.name}")

    def write_upsert(self, conn: Connection, plan: UpsertPlan, rows: list[Row]) -> list[Outcome]:
        """Upsert rows sharing one key set as ONE statement; the outcome of each
        row, in order. Default: RETURNING carries an "inserted" flag (PostgreSQL)."""
        returned = [dict(m) for m in execute_rows(conn, plan.statement, rows).mappings()]
        out: list[Outcome] = []
        for stored in align_rows(conn, plan, rows, returned):
            if stored is None:
                out.append(("unchanged", None))
            else:
                out.append(("inserted" if stored.pop(INSERTED) else "updated", stored))
        return out

    # -- get_or_create -------------------------------------------------------------
    fetch_in_one_statement: ClassVar[bool] = False
    """True where get_or_create is one statement (then an engine-owned call runs
    it in autocommit: no BEGIN/COMMIT round trips)."""

    def prepare_fetch(self, plan: FetchPlan) -> None:
        """Build the statements of a get_or_create shape: pure, cached by shape."""
        t = plan.table
        select = sa.select(*by_key(t)).where(lookup_condition(plan))
        plan.statements["select"] = select
        # a locking read sees rows committed after the transaction's snapshot
        plan.statements["select_locked"] = select.with_for_update(read=True)
        plan.statements["insert"] = self.insert_ignore(t, plan.target, False)
        plan.statements["insert_returning"] = self.insert_ignore(t, plan.target, True)

    def get_or_create_once(self, conn: Connection, plan: FetchPlan) -> tuple[Row, bool] | None:
        """Read the row, or create it: (row, created), or None after a lost race
        whose row could not be read (the caller tries again)."""
        found = conn.execute(plan.statements["select"], plan.bound(plan.lookup)).mappings().first()
        if found is not None:
            return dict(found), False
        made = self.create_row(conn, plan)
        if made is not None:
            return made, True
        locked = plan.statements["select_locked"]
        found = conn.execute(locked, plan.bound(plan.lookup)).mappings().first()
        return (dict(found), False) if found is not None else None

    def create_row(self, conn: Connection, plan: FetchPlan) -> Row | None:
        """The duplicate-only insert of get_or_create's row: the stored row, or
        None when it was skipped (a duplicate)."""
        values = {k: plan.params[k] for k in plan.values}
        if self.returning(conn.dialect):
            made = self.write_many(conn, plan.statements["insert_returning"], [values])
            return strip_keys(made[0]) if made else None
        return self.write_one(conn, plan.statements["insert"], values)

    def check_target(self, table: sa.Table, target: ConflictTarget) -> None:
        """Refuse, before any SQL, a conflict target this database cannot honour."""

    def key_identity(
        self, conn: Connection, table: sa.Table, keys: Keys, columns: tuple[str, ...]
    ) -> bool:
        """Teach ``keys`` how the server compares the values of ``columns`` (key
        columns) where Python equality differs (collations): True when it
        installed something. Generic: nothing to add."""
        return False

    def conflict_elsewhere(self, conn: Connection, plan: FetchPlan) -> None:
        """After an attempt whose insert was skipped but whose row could not be
        read: raise the database's error if the duplicate was of another unique
        key than the target (possible only where the insert cannot name its
        target: MySQL). Generic: the target is named, nothing to do."""

    def lock_for_update_or_create(self, conn: Connection) -> None:
        """Before update_or_create's read: take what keeps a concurrent writer from
        coming between the read and the UPDATE, where row locks do not (SQLite)."""

    def begin_owned(self, conn: Connection, restartable: bool) -> None:
        """First thing in a transaction onconflict owns for an upsert or an
        update_or_create (an engine was passed), before any statement: set how
        that transaction runs. ``restartable``: the call may still raise
        ``retry.Restart`` to run again at once. Generic: as the engine says."""

    def seed_lock(self, conn: Connection, name: str, timeout: float) -> AbstractContextManager[Any]:
        """Hold the database-wide lock ``name`` for the rest of the transaction, so
        that replicas seeding at once take turns. Generic: no lock."""
        return nullcontext()

    async def insert_ignore_fast(self, engine: Any, prepared: Any) -> dict[int, Row] | None:
        """An optional faster path for an engine-owned insert_ignore; None: the usual one."""
        return None

    def one_row_statement(self, table: sa.Table, target: ConflictTarget) -> Insert:
        """The statement a driver-level path runs for one row: the native
        insert_ignore with RETURNING (MySQL: a plain INSERT, whose duplicate
        error it reads)."""
        return self.insert_ignore(table, target, True)

    def one_row_insert(
        self, engine: Any, prepared: Any
    ) -> tuple[DriverStatement, int, list[Any]] | None:
        """For a driver-level path: the native one-row ``insert_ignore`` statement
        with RETURNING, compiled for the engine's dialect (once per shape), the
        row's input position and its driver arguments; None when the call is not
        one native row."""
        if not prepared.native or len(prepared.groups) != 1 or expression_key(prepared.target):
            return None
        (group,) = prepared.groups
        if len(group.indexes) != 1 or has_expressions([prepared.rows[group.indexes[0]]]):
            return None  # (a SQL expression as a value goes in the statement: the usual path)
        table, target, dialect = prepared.table, prepared.target, engine.dialect
        cache = self._one_row_inserts
        shape = (dialect, table, target, group.columns)
        fast = cache.get(shape)
        if fast is None:
            values = {c: sa.bindparam(f"oc_{c}", type_=table.c[c].type) for c in group.columns}
            stmt = self.one_row_statement(table, target).values(values)
            fast = cache[shape] = DriverStatement(stmt, dialect, table.c)
            if len(cache) > 512:
                cache.pop(next(iter(cache)))
        if fast.needs_context:
            return None
        (index,) = group.indexes
        return fast, index, fast.arguments(prepared.rows[index])

    async def get_or_create_fast(
        self, engine: Any, plan: FetchPlan, attempts: int
    ) -> tuple[Row, bool] | None:
        """An optional faster path for an engine-owned call; None: take the usual one."""
        return None

    def get_or_create_many_once(
        self, conn: Connection, table: sa.Table, target: ConflictTarget, rows: list[Row]
    ) -> list[Row] | None:
        """get_or_create_many as ONE statement for rows of one shape (distinct keys):
        the stored rows it read or inserted, each with an ``onconflict_created_``
        flag; rows committed by others after its snapshot may be missing. None:
        no such form here (a SELECT and the duplicate-only insert run instead)."""
        return None

    def scope(self, conn: Connection, owned: bool = False) -> AbstractContextManager[Any]:
        """Wraps a whole call: puts back any session setting the call changed.
        ``owned``: the call owns its transaction (any error it raises rolls back
        everything it did), so per-statement savepoints may be skipped."""
        return nullcontext()

    # -- I/O: the only places that talk to the database -----------------------

    def write_many(self, conn: Connection, stmt: Insert, rows: list[Row]) -> list[Row]:
        """Execute ``stmt`` (with RETURNING) for rows sharing one key set, as ONE
        statement; return the rows the database reports as inserted."""
        return [dict(m) for m in execute_rows(conn, stmt, rows).mappings()]

    def bulk_rows(self, dialect: Dialect) -> int | None:
        """The group size from which ``write_bulk`` takes a group (and puts its
        rows in key order itself), or None: no bulk path."""
        return None

    def write_bulk(
        self,
        conn: Connection,
        table: sa.Table,
        target: ConflictTarget,
        columns: tuple[str, ...],
        rows: list[Row],
        in_key_order: bool = False,
    ) -> list[Row] | None:
        """A faster path for a large insert_ignore group, or None (the usual
        statements then run). Returns the inserted rows, like write_many.
        ``in_key_order``: the rows already are in key order (the lock order);
        otherwise this path puts them in it."""
        return None

    def write_one(self, conn: Connection, stmt: Insert, row: Row) -> Row | None:
        """Without RETURNING: insert one row, the stored row or None if it was a duplicate."""
        result = execute_row(conn, stmt, row)
        if result.rowcount != 1:
            return None
        return with_primary_key(stmt.table, row, result)  # type: ignore[arg-type]


def execute_rows(conn: Connection, stmt: Any, rows: list[Row]) -> sa.CursorResult[Any]:
    """Run ``stmt`` for rows of one shape: bound parameters, or, where a row
    gives a SQL expression, a multi-row VALUES list that carries it."""
    stmt, params = rows_statement(stmt, rows)
    return conn.execute(stmt, params)


def execute_row(conn: Connection, stmt: Any, row: Row) -> sa.CursorResult[Any]:
    """Run ``stmt`` for one row (SQL expressions in the row's VALUES)."""
    if has_expressions([row]):
        return conn.execute(stmt.values(row))
    return conn.execute(stmt, row)


def is_string(col: sa.Column[Any]) -> bool:
    """A column whose values are strings (a collation may fold them)."""
    try:
        return col.type.python_type is str
    except NotImplementedError:
        return False


def collation_folds(
    conn: Connection,
    table: sa.Table,
    slot: str,
    read: Callable[[], Iterable[tuple[str, Callable[[str], str] | None]]],
) -> dict[str, Callable[[str], str]]:
    """Column key -> fold for the table's columns whose collation folds strings,
    from ``read()`` (database column name, fold or None), cached per connection
    (in ``conn.info[slot]``) and table: a dialect reads its catalog once."""
    cache: dict[tuple[str | None, str], dict[str, Any]] = conn.info.setdefault(slot, {})
    where = (table.schema, table.name)
    folds = cache.get(where)
    if folds is None:
        keys = {c.name: c.key for c in table.c}
        folds = {keys[name]: fold for name, fold in read() if fold is not None and name in keys}
        cache[where] = folds
    return folds


def in_autocommit(conn: Connection) -> bool:
    """Whether SQLAlchemy runs this connection in AUTOCOMMIT: asked by the
    connection's or engine's execution options, or by create_engine's
    ``isolation_level`` (kept on the dialect; no SQL is run)."""
    level = conn.get_execution_options().get("isolation_level")
    if level is None:
        level = getattr(conn.dialect, "_on_connect_isolation_level", None)
    return level == "AUTOCOMMIT"


def plain_engine(engine: Any, driver: str) -> bool:
    """Driver-level paths only for an engine on ``driver`` as created: no
    execution options (an isolation level, say), no statement listeners, no
    echo, since their statements bypass SQLAlchemy's execution and its events."""
    sync = engine.sync_engine
    return bool(
        engine.dialect.driver == driver
        and not engine.get_execution_options()
        and not sync.echo
        and not sync.dispatch.before_cursor_execute
        and not sync.dispatch.after_cursor_execute
    )


def checkout(engine: Any) -> Any | None:
    """A pooled driver connection for a driver-level path, or None when none can
    be had but by a new connection that failed (a server going down, say): the
    ordinary path then connects and raises SQLAlchemy's own error. Nothing was
    sent. A pool timeout is raised as it is (waiting again would double it)."""
    try:
        return engine.raw_connection()
    except sa.exc.TimeoutError:
        raise
    except Exception:
        return None


def connection_lost(
    raw: Any, fast: DriverStatement, args: list[Any], exc: BaseException
) -> sa.exc.DBAPIError:
    """The error of a driver-level path whose connection failed after the
    statement (or its COMMIT) was sent: the outcome is unknown, so it is raised,
    never run again; the connection is invalidated and the error is not transient."""
    raw.invalidate()
    return sa.exc.OperationalError(fast.sql, args, exc, connection_invalidated=True)


class DriverStatement:
    """A statement compiled for a driver-level path: its SQL text, parameter
    order with SQLAlchemy's bind processing, and its result columns with their
    result processing, so that driver rows read as SQLAlchemy's would."""

    def __init__(self, stmt: Any, dialect: Dialect, columns: Any = None) -> None:
        compiled = stmt.compile(dialect=dialect)
        self.sql = str(compiled)
        names = compiled.positiontup or []
        binds = compiled.binds
        self.params = [
            (name.removeprefix("oc_"), binds[name].type.bind_processor(dialect)) for name in names
        ]
        # columns the statement fills from their Python-side default (SQLAlchemy
        # names their parameters by column key), which this path computes itself
        prefetch = {c.key: c for c in getattr(compiled, "insert_prefetch", ())}
        made = [python_default(prefetch[n]) for n in names if n in prefetch]
        self.needs_context = None in made
        """A default needs SQLAlchemy's execution context (a callable taking one,
        a sequence): the driver-level path must not run; the ordinary one does."""
        self.defaults = [
            (key, make)
            for key, make in zip((n for n in names if n in prefetch), made, strict=True)
            if make is not None
        ]
        cols = stmt.selected_columns if columns is None else columns
        self.columns = [(col.key, col.type.result_processor(dialect, None)) for col in cols]
        self.names = [key for key, _ in self.columns]
        self.plain = not any(proc for _, proc in self.columns)

    def arguments(self, values: dict[str, Any]) -> list[Any]:
        if self.defaults:  # a new value per call, as SQLAlchemy's execution computes it
            values = {**{k: make() for k, make in self.defaults if k not in values}, **values}
        return [proc(values[k]) if proc else values[k] for k, proc in self.params]

    def rows(self, records: list[Any]) -> list[Row]:
        if self.plain:  # C-level: dict(zip(names, record)) for each record
            return list(map(dict, map(zip, itertools.repeat(self.names), records)))
        return list(map(self.row, records))

    def row(self, record: Any) -> Row:
        if self.plain:
            return dict(zip(self.names, record, strict=True))
        return {
            key: proc(value) if proc else value
            for (key, proc), value in zip(self.columns, record, strict=True)
        }


def python_default(column: sa.Column[Any]) -> Callable[[], Any] | None:
    """How to compute a column's Python-side INSERT default without SQLAlchemy's
    execution context: a scalar, or a callable taking no argument. None for a
    callable that takes the context (or anything else): only SQLAlchemy can run it."""
    default: Any = column.default
    if default is None:
        return None
    if default.is_scalar:
        value = default.arg
        return lambda: value
    original = getattr(default, "_fn", None)  # what the column was given
    if default.is_callable and original is not None and default.arg is not original:
        # SQLAlchemy wrapped it: a callable that takes no context
        return original  # type: ignore[no-any-return]
    return None


def python_defaults(table: sa.Table, given: tuple[str, ...]) -> bool:
    """Whether a row made from the ``given`` columns gets a Python-side default
    (a scalar or a callable), which SQLAlchemy computes per row as it executes."""
    return any(
        c.default is not None and (c.default.is_scalar or c.default.is_callable)
        for c in table.c
        if c.key not in given
    )


def needs_context(table: sa.Table, given: tuple[str, ...]) -> bool:
    """Whether a row made from the ``given`` columns needs a Python-side default
    that takes SQLAlchemy's execution context: only a plain INSERT executed by
    SQLAlchemy gives it a usable one (``get_current_parameters()``)."""
    return any(
        c.default is not None and c.default.is_callable and python_default(c) is None
        for c in table.c
        if c.key not in given
    )


def with_primary_key(table: sa.Table, row: Row, result: sa.CursorResult[Any]) -> Row:
    """The row as inserted, with the primary key the database generated for it."""
    stored = dict(row)
    pk = result.inserted_primary_key
    if pk is not None:
        for col, value in zip(table.primary_key.columns, pk, strict=True):
            if value is not None:
                stored[col.key] = value
    return stored


@contextmanager
def _savepoint(
    conn: Connection, lost: Callable[[BaseException], bool]
) -> Iterator[NestedTransaction]:
    sp = conn.begin_nested()
    try:
        yield sp
    except BaseException as exc:
        # not after the server rolled everything back, nor on a dead connection:
        # rolling back to the savepoint would fail and hide the real error
        if sp.is_active and not conn.invalidated and not _disconnect(exc) and not lost(exc):
            sp.rollback()
        raise
    if sp.is_active:
        sp.commit()


def _disconnect(exc: BaseException) -> bool:
    return bool(getattr(exc, "connection_invalidated", False))


def do_update(stmt: Any, plan: UpsertPlan) -> Any:
    """``ON CONFLICT (target) DO UPDATE SET ... WHERE ...`` (PostgreSQL, SQLite)."""
    key = plan.target.key
    assert key is not None
    incoming = stmt.excluded
    set_ = {
        col: substitute(v, plan.table, lambda c: incoming[c.key]) for col, v in plan.set_.items()
    }
    where = substitute(plan.where, plan.table, lambda c: incoming[c.key])
    return stmt.on_conflict_do_update(
        index_elements=list(key.elements), index_where=key.where, set_=set_, where=where
    )


def select_by_keys(plan: UpsertPlan, rows: list[Row], key_only: bool = False) -> sa.Select[Any]:
    """SELECT the stored rows (or only their keys) with the keys of ``rows``."""
    cols = [plan.table.c[c] for c in plan.match]
    # bound through the column's type: the database applies its own key identity
    wanted = [tuple([plan.keys.typed(c, r[c]) for c in plan.match]) for r in rows]
    keys = cols[0] if len(cols) == 1 else sa.tuple_(*cols)
    where = keys.in_([k[0] for k in wanted] if len(cols) == 1 else wanted)
    shown = [c if c.key == c.name else c.label(c.key) for c in cols] if key_only else None
    return (sa.select(*shown) if shown else sa.select(*by_key(plan.table))).where(where)


def align_rows(
    conn: Connection,
    plan: UpsertPlan,
    rows: list[Row],
    returned: list[Row],
    wanted: list[tuple[Any, ...] | None] | None = None,
) -> list[Row | None]:
    """Pair returned rows with input rows by the key as the database sees it:
    the match columns (Keys), or for an expression index its expressions, which
    the server evaluates for the input rows (``wanted``: already evaluated)."""
    key = expression_key(plan.target)
    if key is None:
        return align(plan.keys, plan.table, rows, returned, plan.match)
    if wanted is None:
        wanted = evaluate_keys(conn, plan.table, key, rows)
    return align_evaluated(wanted, returned, plan.table)


def upsert_reading_keys_first(
    conn: Connection, plan: UpsertPlan, rows: list[Row], *, for_update: bool = False
) -> list[Outcome]:
    """Upsert where RETURNING cannot say whether its row was inserted or updated
    (SQLite; CockroachDB and YugabyteDB, which have no ``xmax``): the keys that
    exist are read first, then the upsert runs. Exact only if no other writer can
    insert one of the keys in between: the caller holds the write lock (SQLite)
    or the transaction is serializable, reading with ``for_update``."""
    existed, wanted = _existed(conn, plan, rows, for_update)
    returned = [dict(m) for m in execute_rows(conn, plan.statement, rows).mappings()]
    aligned = align_rows(conn, plan, rows, returned, wanted)
    out: list[Outcome] = []
    for there, stored in zip(existed, aligned, strict=True):
        if stored is None:
            out.append(("unchanged", None))
        else:
            out.append(("updated" if there else "inserted", stored))
    return out


def _existed(
    conn: Connection, plan: UpsertPlan, rows: list[Row], for_update: bool
) -> tuple[list[bool], list[tuple[Any, ...] | None] | None]:
    """Whether a row with each row's key is stored, as the database compares keys:
    by the target's columns (bound through their types, collated), or, for an
    expression or partial index, by its expressions and WHERE evaluated on the
    server (then also those evaluated keys)."""
    key = evaluated_key(plan.target)
    if key is not None:
        wanted = evaluate_keys(conn, plan.table, key, rows)
        stored = existing_keys(conn, plan.table, key, wanted, for_update)
        return [k is not None and k in stored for k in wanted], wanted
    if not (plan.target.columns and plan.match == plan.target.columns):
        return [False] * len(rows), None
    read = select_by_keys(plan, rows, key_only=True)
    found = conn.execute(read.with_for_update() if for_update else read).mappings()
    before = {plan.keys.of(r, plan.match) for r in found}
    return [plan.keys.of(row, plan.match) in before for row in rows], None


def do_nothing(stmt: Any, table: sa.Table, target: ConflictTarget, returning: bool) -> Insert:
    """``ON CONFLICT (target) DO NOTHING [RETURNING *]`` on a PostgreSQL or SQLite insert.

    The target is given as columns (and the partial index's WHERE) rather than a
    constraint name: the database infers the arbiter index from them, whatever
    the constraint is called on the server. No target means any unique key.
    """
    key: UniqueKey | None = target.key
    if key is None:
        stmt = stmt.on_conflict_do_nothing()
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(key.elements), index_where=key.where)
    return stmt.returning(*returning_columns(table, target)) if returning else stmt  # type: ignore[no-any-return]
