"""Driver-level paths: statements run on the driver's own connection, past
SQLAlchemy's per-call execution, for calls that own their work on an engine.

A database's fast paths for one driver are a :class:`DriverPath` subclass in
the driver's module (``dialects/postgresql/asyncpg.py``, say), named in the
registry entry's ``drivers``; :func:`onconflict.dialects.driver_path` finds it
by the engine's dialect and driver name. Every method may answer None: the
ordinary path then runs, and reports errors as SQLAlchemy does.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.pool.base import reset_commit
from sqlalchemy.util import greenlet_spawn

from onconflict._excluded import has_expressions
from onconflict._keys import expression_key
from onconflict._target import ConflictTarget
from onconflict.dialects.plans import FetchPlan, Row
from onconflict.result import InsertResult

if TYPE_CHECKING:
    from onconflict.dialects.base import DialectSupport


def plain_engine(engine: Any, driver: str) -> bool:
    """Driver-level paths only for an engine on ``driver`` as created: no
    execution options (an isolation level, say), no echo, and no listeners of
    SQLAlchemy's connection or dialect events (statements, begin/commit/rollback,
    savepoints, engine_connect, do_execute, handle_error), since the path's
    statements and transactions bypass SQLAlchemy's execution and its events."""
    sync = engine.sync_engine
    return bool(
        engine.dialect.driver == driver
        and not engine.get_execution_options()
        and not sync.echo
        and not has_listeners(sync)
    )


# execution options that set how a transaction begins, not what its statements say
TRANSACTION_OPTIONS = frozenset({"isolation_level", "postgresql_readonly", "postgresql_deferrable"})


def plain_connection(conn: Any) -> bool:
    """Whether work of a call may go on the driver's own connection inside a
    SQLAlchemy Connection (the COPY path, say): no echo, no listeners (see
    :func:`has_listeners`), and no execution options but those of how its
    transaction began. Others may change the statements themselves
    (``schema_translate_map``: the driver would write to another schema) or ask
    for SQLAlchemy's own execution."""
    return bool(
        not conn.engine.echo
        and not has_listeners(conn)
        and TRANSACTION_OPTIONS.issuperset(conn.get_execution_options())
    )


def has_listeners(bind: Any) -> bool:
    """Whether an Engine or Connection (or its engine), or its dialect, has ever
    had a listener of SQLAlchemy's ConnectionEvents or DialectEvents
    (``_has_events``, which SQLAlchemy sets when one is added, on the class or
    the instance, and checks as here at each event point; taken as yes where it
    is missing)."""
    return any(getattr(obj, "_has_events", True) for obj in (bind, bind.engine, bind.dialect))


def in_caller_transaction(conn: Connection, driver: str) -> bool:
    """Whether a statement of the caller's transaction may go on the driver's
    own connection, past SQLAlchemy's execution: ``driver``'s, a transaction
    SQLAlchemy already began (the connection not invalidated), and
    :func:`plain_connection` (no echo, no listeners of SQLAlchemy's events, no
    execution options but the isolation level). Shared by the drivers'
    in-transaction paths."""
    if not (conn.dialect.driver == driver and conn.in_transaction() and not conn.invalidated):
        return False
    return plain_connection(conn)


async def driver_handle(handle: Any) -> Any | None:
    """What a driver-level path of the async front may run on: an
    ``AsyncEngine`` or ``AsyncConnection`` as given; an ``AsyncSession``'s
    connection in its transaction, after the session is flushed when it
    autoflushes (as the ordinary path flushes it first); None otherwise."""
    if isinstance(handle, AsyncEngine | AsyncConnection):
        return handle
    if isinstance(handle, AsyncSession):
        if handle.sync_session.autoflush:
            await handle.flush()
        return await handle.connection()
    return None


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


async def checkout_async(engine: Any) -> Any | None:
    """:func:`checkout` for an ``AsyncEngine``: in SQLAlchemy's greenlet bridge,
    except when the pool has an idle connection to hand over as it is (an
    asyncio queue pool, no pre-ping, recycling or checkout listeners): then
    directly, as no I/O is needed. Should it be after all (the connection was
    invalidated meanwhile and must reconnect), SQLAlchemy raises
    MissingGreenlet before any I/O, puts the record back, and the bridge is
    taken."""
    sync = getattr(engine, "sync_engine", engine)  # (an AsyncEngine, or its Engine)
    pool = sync.pool
    if _idle_at_hand(pool):
        try:
            return sync.raw_connection()
        except sa.exc.MissingGreenlet:
            pass
        except sa.exc.TimeoutError:
            raise
        except Exception:
            return None
    return await greenlet_spawn(checkout, sync)


def _idle_at_hand(pool: Any) -> bool:
    """Whether the pool's next checkout hands over an idle connection as it is
    (no I/O): an asyncio queue pool without pre-ping, recycling or checkout
    listeners, whose next idle record has its connection, not invalidated
    since it was made. Read from the pool's internals, each with a default
    that takes the bridge; a wrong answer only costs the MissingGreenlet
    round above (and the driver's warning for the connect it closed)."""
    if not isinstance(pool, AsyncAdaptedQueuePool) or pool.checkedin() == 0:
        return False
    if pool.dispatch.checkout or getattr(pool, "_pre_ping", True) is not False:
        return False
    if getattr(pool, "_recycle", 0) >= 0:
        return False
    idle = getattr(getattr(getattr(pool, "_pool", None), "_queue", None), "_queue", None)
    if not idle:
        return False
    record = idle[-1] if getattr(pool._pool, "use_lifo", False) else idle[0]
    made = getattr(record, "starttime", None)
    if getattr(record, "dbapi_connection", None) is None or made is None:
        return False
    dropped = max(getattr(pool, "_invalidate_time", 1e300), record._soft_invalidate_time)
    return bool(dropped <= made)


def quiet_return(pool: Any) -> bool:
    """Whether a pooled connection whose transaction has ended can be given
    back (``_close_special(transaction_reset=True)``) outside SQLAlchemy's
    greenlet bridge: no I/O on the way back, as for an asyncio queue pool with
    room for it, no reset or checkin listeners, and a rollback (skipped: the
    transaction ended) or nothing as its reset on return."""
    return bool(
        isinstance(pool, AsyncAdaptedQueuePool)
        and pool.checkedin() < pool.size()
        and not pool.dispatch.reset
        and not pool.dispatch.checkin
        and pool._reset_on_return is not reset_commit
    )


def connection_lost(
    raw: Any, fast: DriverStatement, args: list[Any], exc: BaseException
) -> sa.exc.DBAPIError:
    """The error of a driver-level path whose connection failed after the
    statement (or its COMMIT) was sent: the outcome is unknown, so it is raised,
    never run again; the connection is invalidated and the error is not transient."""
    raw.invalidate()
    return sa.exc.OperationalError(fast.sql, args, exc, connection_invalidated=True)


def statement_error(
    sync: Connection, sql: str, args: Any, exc: BaseException, lost: bool | None = None
) -> BaseException:
    """The error of a statement a driver-level path ran in a SQLAlchemy
    Connection, as SQLAlchemy's execution raises it: the driver's error wrapped
    in SQLAlchemy's class for it (``DBAPIError.instance``), the connection
    invalidated when it was lost (``lost``; by default, as the dialect's
    ``is_disconnect`` says). An error not of the driver's is as it is."""
    dialect = sync.dialect
    dbapi = dialect.loaded_dbapi
    if not isinstance(exc, dbapi.Error):
        return exc
    if lost is None:
        lost = bool(dialect.is_disconnect(exc, sync.connection.dbapi_connection, None))
    if lost:
        sync.invalidate(exc)
    return sa.exc.DBAPIError.instance(
        sql, args, exc, dbapi.Error, connection_invalidated=lost, dialect=dialect
    )


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
            (name.removeprefix("oc_"), bind_processor(binds[name].type, dialect)) for name in names
        ]
        made = _prefetched(compiled, names)
        self.needs_context = None in made.values()
        """A default needs SQLAlchemy's execution context (a callable taking one,
        a sequence): the driver-level path must not run; the ordinary one does."""
        self.defaults = [(key, make) for key, make in made.items() if make is not None]
        cols = stmt.selected_columns if columns is None else columns
        self.columns = [(col.key, result_processor(col.type, dialect)) for col in cols]
        self.names = [key for key, _ in self.columns]
        self.plain = not any(proc for _, proc in self.columns)

    def arguments(self, values: dict[str, Any]) -> list[Any]:
        if self.defaults:  # a new value per call, as SQLAlchemy's execution computes it
            values = {**{k: make() for k, make in self.defaults if k not in values}, **values}
        return [proc(values[k]) if proc else values[k] for k, proc in self.params]

    def rows(self, records: list[Any]) -> list[Row]:
        if self.plain:  # (a map chain measured no faster: 0.52-0.94 s vs 0.57-0.89 s, 10^6)
            names = self.names
            return [dict(zip(names, record, strict=True)) for record in records]
        return [self.row(record) for record in records]

    def row(self, record: Any) -> Row:
        if self.plain:
            return dict(zip(self.names, record, strict=True))
        return {
            key: proc(value) if proc else value
            for (key, proc), value in zip(self.columns, record, strict=True)
        }


def bind_processor(kind: Any, dialect: Dialect) -> Callable[[Any], Any] | None:
    """What SQLAlchemy's execution does to a value bound as ``kind`` on this
    dialect: the dialect's own type (SQLite's DATETIME formats a datetime as
    SQLAlchemy stores it; the generic DateTime has no processing), as SQLAlchemy
    caches it."""
    return kind._cached_bind_processor(dialect)  # type: ignore[no-any-return]


def result_processor(kind: Any, dialect: Dialect) -> Callable[[Any], Any] | None:
    """What SQLAlchemy's result does to a value of type ``kind`` read on this
    dialect (its own type's processing; see :func:`bind_processor`). A dialect
    type whose processing depends on the driver's type code of the column
    (asyncpg's numeric types) cannot say without one: the driver's own
    conversion stands there, with the generic type's processing."""
    try:
        return kind._cached_result_processor(dialect, None)  # type: ignore[no-any-return]
    except TypeError:
        return kind.result_processor(dialect, None)  # type: ignore[no-any-return]


def _prefetched(compiled: Any, names: list[str]) -> dict[str, Callable[[], Any] | None]:
    """The parameters the statement fills from a column's Python-side default
    (SQLAlchemy names them by column key), which a driver-level path computes
    itself: parameter -> how (None: only SQLAlchemy's execution can)."""
    prefetch = {c.key: c for c in getattr(compiled, "insert_prefetch", ())}
    return {n: python_default(prefetch[n]) for n in names if n in prefetch}


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


class Ordinary(enum.Enum):
    """A driver-level path's answer for a call it ran and saw refused: only
    the ordinary path is to run it again (another driver-level attempt would
    meet the same refusal)."""

    ORDINARY = "ordinary"


ORDINARY = Ordinary.ORDINARY

_UNCACHED: Any = object()


def _shape_of(value: Any) -> Any:
    """``on`` or ``returning`` as part of a cache key: None, a bool, a name,
    ANY_KEY or a sequence of names; _UNCACHED for anything else (a
    constraint or Index object, whose ``==`` is SQL: the usual path)."""
    if value is None or isinstance(value, bool | str | enum.Enum):
        return (type(value), value)
    if isinstance(value, list | tuple) and all(type(v) is str for v in value):
        return (tuple, tuple(value))
    return _UNCACHED


@dataclass(frozen=True)
class OneRowPlan:
    """What a one-row insert_ignore of one call shape needs, planned once
    (DriverPath.one_row_plan): the table, the resolved conflict target, the
    statement compiled for the driver, and how the result is given."""

    table: sa.Table
    target: ConflictTarget
    statement: DriverStatement
    counts_only: bool
    wanted: tuple[str, ...] | None
    numbered: str | None  # the autoincrement column's key

    def takes(self, row: Row) -> bool:
        """The checks of the shape's rows that depend on their values: no SQL
        expression, and not the autoincrement key given as None (left out for
        the database to number: the call is then planned as it is)."""
        numbered = self.numbered
        if numbered is not None and numbered in row and row[numbered] is None:
            return False
        return not has_expressions([row])

    def result(self, row: Row, stored: Row | None) -> InsertResult:
        """The call's result, as ``insert_result`` gives it for one row of a
        Table (column keys are result keys)."""
        if self.counts_only:
            return InsertResult.counted(int(stored is not None), int(stored is None))
        if stored is None:
            return InsertResult([], [row])
        if self.wanted is not None:
            stored = {k: stored[k] for k in self.wanted if k in stored}
        return InsertResult([stored], [])


def _one_dict(table: Any, rows: Any) -> Row | None:
    """The row of a call of one plain dict (non-empty) into a Table, else None."""
    if type(rows) is not list or len(rows) != 1 or not isinstance(table, sa.Table):
        return None
    row = rows[0]
    return row if type(row) is dict and row else None


class _On:
    """Something with a ``dialect``, as ``one_row_insert`` reads an engine's."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect


class DriverPath:
    """The driver-level fast paths of one driver: none here (every call answers
    None, the ordinary path runs). A subclass lives in its driver's module and
    overrides what that driver can do faster."""

    driver: ClassVar[str] = ""
    """The SQLAlchemy driver name this path is for (``dialect.driver``)."""

    def __init__(self, support: DialectSupport) -> None:
        self.support = support
        # one-row statements, by (dialect, table, target, columns)
        self._one_row_inserts: dict[Any, DriverStatement] = {}
        # one-row insert_ignore calls planned once, by call shape (see one_row_plan)
        self._one_row_plans: dict[Any, OneRowPlan | None] = {}

    def applies(self, engine: Any) -> bool:
        """Whether this engine may take the path (see :func:`plain_engine`)."""
        return plain_engine(engine, self.driver)

    async def insert_ignore(self, engine: Any, prepared: Any) -> dict[int, Row] | None:
        """A faster path for an engine-owned insert_ignore: the inserted rows by
        input position ({} when the row was a duplicate); None: the usual one."""
        return None

    async def insert_ignore_in(self, conn: Any, prepared: Any) -> dict[int, Row] | None:
        """A faster path for an insert_ignore inside the caller's transaction (an
        ``AsyncConnection``): the inserted rows by input position ({} when the
        row was a duplicate); None: the usual one, which must then find the
        connection and its transaction as they were."""
        return None

    async def insert_one(
        self, conn: Any, table: Any, rows: Any, on: Any, strategy: str, returning: Any
    ) -> InsertResult | Ordinary | None:
        """A faster path for a one-row insert_ignore on an ``AsyncEngine`` or
        ``AsyncConnection``, taken before the call is planned (see
        :meth:`one_row_plan`); None: the usual one; ``ORDINARY``: the row was
        run here and refused (nothing stored): the ordinary path alone runs
        it again, and raises as SQLAlchemy does."""
        return None

    async def one_row_in(
        self, sync: Connection, table: Any, rows: Any, on: Any, strategy: str, returning: Any
    ) -> InsertResult | Ordinary | None:
        """A one-row call in the caller's transaction (``sync``, a Connection
        :func:`in_caller_transaction` accepted), planned once per shape
        (:meth:`one_row_plan`) and run by the driver's :meth:`in_transaction`;
        ``ORDINARY`` when that answers None (refused, or not sent): the
        ordinary path alone runs the row then."""
        planned = self.one_row_plan(sync.dialect, table, rows, on, strategy, returning)
        if planned is None:
            return None
        plan, row = planned
        fast = plan.statement
        try:
            args = fast.arguments(row)
        except Exception:  # a bind processor's error: the ordinary path raises it
            return None
        stored = await self.in_transaction(sync, fast, args)
        if stored is None:
            return ORDINARY
        return plan.result(row, stored or None)

    async def planned_in(self, sync: Connection, prepared: Any) -> dict[int, Row] | None:
        """A one-row call in the caller's transaction already planned (one that
        :meth:`one_row_in` did not plan: ``on`` given as a constraint, say), run
        by :meth:`in_transaction`: the stored row by input position, {} for a
        duplicate; None: the ordinary path runs it."""
        try:
            one = self.one_row_insert(sync, prepared)
        except Exception:  # a bind processor's error: the ordinary path raises it
            return None
        if one is None:
            return None
        fast, index, args = one
        stored = await self.in_transaction(sync, fast, args)
        if stored is None:
            return None
        return {index: stored} if stored else {}

    async def in_transaction(
        self, sync: Connection, fast: DriverStatement, args: list[Any]
    ) -> Row | None:
        """A planned one-row INSERT run in the caller's transaction on the
        driver's connection: the stored row, {} for a duplicate; None when it
        was refused with the transaction as it was, or not sent (the ordinary
        path runs it); an error that ended the transaction is raised."""
        return None

    def one_row_plan(
        self, dialect: Dialect, table: Any, rows: Any, on: Any, strategy: str, returning: Any
    ) -> tuple[OneRowPlan, Row] | None:
        """A one-row insert_ignore call planned once per shape (dialect, table,
        the row's keys in order, ``on``, ``strategy``, ``returning``) by
        ``prepare_insert_ignore`` itself, which validates it as it validates
        every call (and raises as it raises); later calls of the shape reuse
        the plan, after the checks that depend on the row's values: a plain
        dict, no SQL expression, no autoincrement key given as None. None
        where the call is not such a row (the usual path plans it)."""
        row = _one_dict(table, rows)
        if row is None:
            return None
        on_key, returning_key = _shape_of(on), _shape_of(returning)
        if on_key is _UNCACHED or returning_key is _UNCACHED:
            return None
        shape = (dialect, table, tuple(row), on_key, strategy, returning_key)
        plans = self._one_row_plans
        plan = plans.get(shape, _UNCACHED)
        if plan is _UNCACHED:
            if has_expressions([row]):
                return None  # (refused or planned by value: the usual path)
            plan = plans[shape] = self._plan_one_row(dialect, table, row, on, strategy, returning)
            if len(plans) > 512:
                plans.pop(next(iter(plans)))
        if plan is None or not plan.takes(row):
            return None
        return plan, row

    def _plan_one_row(
        self, dialect: Dialect, table: sa.Table, row: Row, on: Any, strategy: str, returning: Any
    ) -> OneRowPlan | None:
        from onconflict._insert_ignore import prepare_insert_ignore

        prepared = prepare_insert_ignore(dialect, table, [row], on, strategy, returning)  # type: ignore[arg-type]
        if prepared.empty or prepared.support is None or prepared.rows[0] is not row:
            return None  # (a row copied or changed on the way in: planned per call)
        one = self.one_row_insert(_On(dialect), prepared)
        if one is None or one[1] != 0:
            return None
        auto = table.autoincrement_column
        return OneRowPlan(
            table,
            prepared.target,
            one[0],
            prepared.counts_only,
            prepared.wanted,
            None if auto is None else auto.key,
        )

    async def get_or_create(
        self, engine: Any, plan: FetchPlan, attempts: int
    ) -> tuple[Row, bool] | None:
        """A faster path for an engine-owned get_or_create; None: the usual one."""
        return None

    async def get_or_create_in(self, conn: Any, plan: FetchPlan) -> tuple[Row, bool] | None:
        """A faster path for a get_or_create inside the caller's transaction
        (an ``AsyncConnection``); None: the usual one, which must then find the
        connection and its transaction as they were."""
        return None

    def one_row_insert(
        self, engine: Any, prepared: Any
    ) -> tuple[DriverStatement, int, list[Any]] | None:
        """The native one-row ``insert_ignore`` statement with RETURNING,
        compiled for the engine's dialect (once per shape), the row's input
        position and its driver arguments; None when the call is not one
        native row."""
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
            stmt = self.support.one_row_statement(table, target).values(values)
            fast = cache[shape] = DriverStatement(stmt, dialect, table.c)
            if len(cache) > 512:
                cache.pop(next(iter(cache)))
        if fast.needs_context:
            return None
        (index,) = group.indexes
        return fast, index, fast.arguments(prepared.rows[index])
