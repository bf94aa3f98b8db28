"""PostgreSQL (and PostgreSQL-wire engines): ``INSERT ... ON CONFLICT DO NOTHING``.

The statement skips rows that conflict on the arbiter index and nothing else:
NOT NULL (23502), CHECK (23514), foreign key (23503) and too-long values
(22001) raise as for a plain INSERT.
"""

from __future__ import annotations

import functools
import operator
import unicodedata
import uuid
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.dml import Insert
from sqlalchemy.util import await_only, greenlet_spawn

from onconflict._excluded import excluded_names, has_expressions, substitute
from onconflict._gc import paused
from onconflict._keys import Keys, align, by_key, expression_key, fold_text, returning_columns
from onconflict._target import ConflictTarget
from onconflict.classify import error_code
from onconflict.dialects.base import (
    INSERTED,
    DialectSupport,
    DriverStatement,
    FetchPlan,
    Outcome,
    Row,
    UpsertPlan,
    checkout,
    collation_folds,
    connection_lost,
    do_nothing,
    do_update,
    is_string,
    lookup_condition,
    needs_context,
    plain_engine,
    python_defaults,
    select_by_keys,
    upsert_reading_keys_first,
)
from onconflict.exceptions import NotSupportedError, OnConflictError, SeedLockTimeout

CREATED = "onconflict_created_"
LOCK_ATTEMPTS = 5  # partitioned upsert: rows committed by others between the read and the insert
COPY_THRESHOLD = 20_000  # rows in one call's group; measured: benchmarks/bulk.py


def _copyable(cols: list[sa.Column[Any]], rows: list[Row], dialect: Dialect) -> list[Any] | None:
    """The rows as COPY records, if every value is None or of its column's plain
    Python type and no column needs bind processing; else None."""
    kinds = []
    for col in cols:
        if col.type.bind_processor(dialect) is not None:
            return None
        try:
            pytype = col.type.python_type
        except NotImplementedError:
            return None
        if pytype not in (int, str, float, bool, bytes):
            return None
        kinds.append(pytype)
    # every row of a group has the same columns: one C-level getter for all
    get = operator.itemgetter(*(c.key for c in cols))
    records = list(map(get, rows))
    columns = [records] if len(cols) == 1 else list(zip(*records, strict=True))
    for values, pytype in zip(columns, kinds, strict=True):
        if not set(map(type, values)) <= {pytype, type(None)}:
            return None
    return [(r,) for r in records] if len(cols) == 1 else records


class PostgreSQL(DialectSupport):
    name = "postgresql"
    native = True
    fetch_in_one_statement = True

    def atomic(self, conn: Connection) -> AbstractContextManager[Any]:
        return nullcontext()  # any error aborts the whole transaction: nothing to undo

    def insert_ignore(self, table: sa.Table, target: ConflictTarget, returning: bool) -> Insert:
        return do_nothing(pg.insert(table), table, target, returning)

    def __init__(self) -> None:
        super().__init__()
        # per engine: quoted table name -> partitioned (pg_class.relkind = 'p')
        self._partitioned: weakref.WeakKeyDictionary[Engine, dict[str, bool]] = (
            weakref.WeakKeyDictionary()
        )

    def prepare_upsert(self, plan: UpsertPlan, dialect: Dialect) -> None:
        # xmax is 0 on a row version this statement inserted, and set (to the
        # locking transaction) on one it updated: the per-row outcome, exactly.
        was_inserted = (sa.literal_column("xmax") == sa.literal_column("0")).label(INSERTED)
        plan.statement = do_update(pg.insert(plan.table), plan).returning(
            *returning_columns(plan.table, plan.target), was_inserted
        )
        # a partitioned table has no xmax to return: there, the duplicate-only insert
        plan.extra["insert_new"] = do_nothing(pg.insert(plan.table), plan.table, plan.target, True)

    def write_upsert(self, conn: Connection, plan: UpsertPlan, rows: list[Row]) -> list[Outcome]:
        if self.partitioned(conn, plan.table):
            return upsert_partitioned(conn, plan, rows)
        return super().write_upsert(conn, plan, rows)

    def partitioned(self, conn: Connection, table: sa.Table) -> bool:
        """Whether ``table`` is a partitioned table: declared so in the metadata
        (``postgresql_partition_by``), or else as the catalog says, read once
        per engine and table (a table reflected or created by migrations)."""
        if table.dialect_options["postgresql"].get("partition_by"):
            return True
        known = self._partitioned.setdefault(conn.engine, {})
        name = conn.dialect.identifier_preparer.format_table(table)
        if name not in known:
            known[name] = conn.execute(_relkind(name)).scalar() == "p"
        return known[name]

    def key_identity(
        self, conn: Connection, table: sa.Table, keys: Keys, columns: tuple[str, ...]
    ) -> bool:
        """``citext`` key columns compare case-insensitively (known from the
        metadata), and so do columns with a nondeterministic ICU collation
        (``CREATE COLLATION ... (provider = icu, locale = 'und-u-ks-level2',
        deterministic = false)``), read from the catalog once per connection and
        table, and only for keys with a string column."""
        folds: dict[str, Any] = {
            c: str.lower for c in columns if isinstance(table.c[c].type, pg.CITEXT)
        }
        if any(is_string(table.c[c]) for c in columns if c not in folds):
            found = _collation_folds(conn, table)
            folds.update({c: found[c] for c in columns if c in found and c not in folds})
        keys.set_folds(folds)
        return bool(folds)

    def bulk_rows(self, dialect: Dialect) -> int | None:
        return COPY_THRESHOLD if dialect.driver == "asyncpg" else None

    def write_bulk(
        self,
        conn: Connection,
        table: sa.Table,
        target: ConflictTarget,
        columns: tuple[str, ...],
        rows: list[Row],
        in_key_order: bool = False,
    ) -> list[Row] | None:
        """COPY into a temporary table, then one INSERT ... SELECT ... [ORDER BY key]
        ON CONFLICT DO NOTHING RETURNING: for large calls on asyncpg. Rows not
        already in key order (the lock order) are sorted by the server, not Python.

        Used only when every value already has its column's Python type and no
        column needs SQLAlchemy's own value processing, so that COPY cannot fail
        half way on a conversion; otherwise (or below the threshold) None.
        """
        if conn.dialect.driver != "asyncpg" or len(rows) < COPY_THRESHOLD:
            return None
        if expression_key(target) is not None:  # rows are paired by evaluated keys
            return None
        if python_defaults(table, columns):  # computed per row by SQLAlchemy's path
            return None
        cols = [table.c[c] for c in columns]
        with paused(len(rows)):
            records = _copyable(cols, rows, conn.dialect)
        if records is None:
            return None
        scratch = sa.Table(
            f"oc_copy_{uuid.uuid4().hex[:16]}",
            sa.MetaData(),
            *(sa.Column(c.name, c.type) for c in cols),
            prefixes=["TEMPORARY"],
            postgresql_on_commit="DROP",
        )
        scratch.create(conn)  # through SQLAlchemy: the transaction is begun
        driver: Any = conn.connection.driver_connection
        await_only(
            driver.copy_records_to_table(
                scratch.name, records=records, columns=[c.name for c in cols]
            )
        )
        source = sa.select(*(scratch.c[c.name] for c in cols))
        if not in_key_order and target.columns and set(target.columns) <= set(columns):
            source = source.order_by(*(scratch.c[table.c[k].name] for k in target.columns))
        stmt = do_nothing(
            pg.insert(table).from_select([c.name for c in cols], source), table, target, True
        )
        # the returned rows come straight from asyncpg, with SQLAlchemy's result
        # processing where a type has one: for a million rows that is seconds saved
        fast = DriverStatement(stmt, conn.dialect, table.c)
        fetched = await_only(driver.fetch(fast.sql))
        with paused(len(fetched)):
            returned = fast.rows(fetched)
        scratch.drop(conn)
        return returned

    @contextmanager
    def seed_lock(self, conn: Connection, name: str, timeout: float) -> Iterator[None]:
        """A transaction-level advisory lock, waited for at most ``timeout``."""
        setting = sa.func.set_config("lock_timeout", sa.bindparam("t"), True)
        previous = conn.execute(sa.select(sa.func.current_setting("lock_timeout"))).scalar_one()
        conn.execute(sa.select(setting), {"t": f"{max(1, int(timeout * 1000))}ms"})
        try:
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(name))))
        except sa.exc.DBAPIError as exc:
            if error_code(exc) == "55P03":  # lock_not_available
                raise SeedLockTimeout(
                    f"could not take the seed lock {name!r} within {timeout:g}s:"
                    " another seed is still running"
                ) from exc
            raise
        conn.execute(sa.select(setting), {"t": previous})
        yield  # released when the transaction ends

    def prepare_fetch(self, plan: FetchPlan) -> None:
        """get_or_create as ONE statement:

        WITH found AS (SELECT * FROM t WHERE lookup),
             made AS (INSERT INTO t (...) SELECT $values WHERE NOT EXISTS (SELECT FROM found)
                      ON CONFLICT (key) DO NOTHING RETURNING *)
        SELECT *, false FROM found UNION ALL SELECT *, true FROM made

        A row that exists is read without an INSERT (no sequence value burnt). When
        another transaction commits the row after this statement's snapshot, the
        INSERT meets the conflict and neither part returns a row: no row means
        "try again" (under READ COMMITTED the next statement sees it).

        A table with a column default that takes SQLAlchemy's execution context
        (and is not given) gets the generic statements instead: SELECT, then a
        plain INSERT ... ON CONFLICT DO NOTHING, whose context the default can use.
        """
        super().prepare_fetch(plan)  # the statement-by-statement form, for SQL expressions
        t = plan.table
        if needs_context(t, plan.values):
            return
        found = sa.select(*by_key(t)).where(lookup_condition(plan)).cte("oc_found")
        values = [sa.bindparam(f"oc_{k}", type_=t.c[k].type) for k in plan.values]
        source = sa.select(*values).where(~sa.exists().select_from(found))
        key = plan.target.key
        assert key is not None
        made = (
            pg.insert(t)
            .from_select(list(plan.values), source)
            .on_conflict_do_nothing(index_elements=list(key.elements), index_where=key.where)
            .returning(*by_key(t))
            .cte("oc_made")
        )
        plan.statements["one"] = sa.union_all(
            sa.select(*found.c, sa.false().label(CREATED)),
            sa.select(*made.c, sa.true().label(CREATED)),
        )

    def get_or_create_once(self, conn: Connection, plan: FetchPlan) -> tuple[Row, bool] | None:
        if "one" not in plan.statements or has_expressions([plan.params]):
            # a default needing SQLAlchemy's context, or a SQL expression as a value
            # (it cannot be a bound parameter of the CTE): SELECT, then INSERT ...
            # ON CONFLICT DO NOTHING
            return super().get_or_create_once(conn, plan)
        got = conn.execute(plan.statements["one"], plan.bound(plan.values)).mappings().first()
        if got is None:
            return None
        row = dict(got)
        return row, bool(row.pop(CREATED))

    def get_or_create_many_once(
        self, conn: Connection, table: sa.Table, target: ConflictTarget, rows: list[Row]
    ) -> list[Row] | None:
        """One statement (see ``get_or_create_many_statement``); None for a table
        with Python-side defaults for columns the rows leave out (SQLAlchemy
        computes those per row only for a plain INSERT)."""
        columns = tuple(sorted(rows[0]))
        if python_defaults(table, columns) or needs_context(table, columns):
            return None
        stmt = get_or_create_many_statement(table, target, columns, rows)
        return [dict(m) for m in conn.execute(stmt).mappings()]

    async def insert_ignore_fast(self, engine: AsyncEngine, prepared: Any) -> dict[int, Row] | None:
        """A one-row insert_ignore that owns its work, on asyncpg: the statement
        compiled once per shape, run in autocommit on the pooled connection (no
        BEGIN/COMMIT round trips). None whenever it does not apply or anything
        goes wrong: the usual path then runs and reports errors as SQLAlchemy does.
        """
        one = self.one_row_insert(engine, prepared) if plain_engine(engine, "asyncpg") else None
        if one is None:
            return None
        fast, index, args = one
        got = await greenlet_spawn(_fetch_fast, engine.sync_engine, fast, args, 1, False)
        if got is None:
            return None
        row, _ = got
        return {index: row} if row else {}

    async def get_or_create_fast(
        self, engine: AsyncEngine, plan: FetchPlan, attempts: int
    ) -> tuple[Row, bool] | None:
        """The same statement, run on the asyncpg connection itself.

        For a call that owns its work (an engine) on asyncpg: a pooled connection,
        the statement compiled once per shape (asyncpg keeps it prepared), no
        transaction. Returns None whenever it cannot answer (another driver, an
        error, a row that cannot be read): the caller then runs the ordinary path,
        which reports any error exactly as SQLAlchemy does. The statement is a
        single autocommitted one, so a failed attempt has written nothing.
        """
        if (
            not plain_engine(engine, "asyncpg")
            or "one" not in plan.statements
            or has_expressions([plan.params])
        ):
            return None
        # compiled per dialect: two engines may process the same types differently
        # (json_serializer, say), and the plan's statements are shared by both
        by_dialect: dict[Any, DriverStatement] = plan.statements.setdefault("asyncpg", {})
        fast = by_dialect.get(engine.dialect)
        if fast is None:
            fast = by_dialect[engine.dialect] = DriverStatement(
                plan.statements["one"], engine.dialect
            )
        if fast.needs_context:
            return None
        args = fast.arguments(plan.params)
        # one trip into SQLAlchemy's greenlet bridge for checkout, query and return
        return await greenlet_spawn(_fetch_fast, engine.sync_engine, fast, args, attempts)


def get_or_create_many_statement(
    table: sa.Table, target: ConflictTarget, columns: tuple[str, ...], rows: list[Row]
) -> sa.CompoundSelect[Any]:
    """get_or_create_many for rows of one shape as ONE statement. Pure::

        WITH oc_input AS (VALUES ($1, ...), ...),
             oc_found AS (SELECT t.* FROM t JOIN oc_input ON t.key = oc_input.key),
             oc_made AS (INSERT INTO t (...) SELECT ... FROM oc_input
                         WHERE NOT EXISTS (SELECT FROM t WHERE t.key = oc_input.key)
                         ORDER BY key ON CONFLICT (key) DO NOTHING RETURNING *)
        SELECT *, false FROM oc_found UNION ALL SELECT *, true FROM oc_made

    Existing keys are read, not inserted (no sequence value burnt for them); the
    new ones are inserted in key order (one lock order for concurrent callers).
    A key committed by another transaction after the statement's snapshot is in
    neither part (READ COMMITTED), or raises 40001 (REPEATABLE READ and up).
    """
    key = target.key
    assert key is not None
    values = sa.values(*(sa.column(c, table.c[c].type) for c in columns), name="oc_values")
    data = values.data([tuple(r[c] for c in columns) for r in rows])
    given = sa.select(*data.c).cte("oc_input")

    same_key = sa.and_(*(table.c[c] == given.c[c] for c in key.columns))
    found = sa.select(*by_key(table)).select_from(table.join(given, same_key)).cte("oc_found")
    new = (
        sa.select(*(given.c[c] for c in columns))
        .where(~sa.exists().where(same_key))
        .order_by(*(given.c[c] for c in key.columns))
    )
    made = (
        pg.insert(table)
        .from_select([table.c[c] for c in columns], new)
        .on_conflict_do_nothing(index_elements=list(key.elements), index_where=key.where)
        .returning(*by_key(table))
        .cte("oc_made")
    )
    return sa.union_all(
        sa.select(*found.c, sa.false().label(CREATED)),
        sa.select(*made.c, sa.true().label(CREATED)),
    )


def _relkind(name: str) -> sa.Select[Any]:
    """The kind of relation named ``name`` (quoted, as SQL would name it)."""
    pg_class = sa.table("pg_class", sa.column("oid"), sa.column("relkind"))
    regclass = sa.func.to_regclass(sa.bindparam("oc_name", name, type_=sa.Text))
    return sa.select(sa.cast(pg_class.c.relkind, sa.Text)).where(pg_class.c.oid == regclass)


def upsert_partitioned(conn: Connection, plan: UpsertPlan, rows: list[Row]) -> list[Outcome]:
    """upsert where RETURNING cannot tell inserted from updated rows (a
    partitioned table has no xmax), exact under concurrency:

    1. the stored rows with the rows' keys are read FOR UPDATE (in key order):
       they exist, and stay, until the transaction ends;
    2. the others are inserted with ON CONFLICT DO NOTHING RETURNING: what comes
       back is inserted. A row it skips was committed meanwhile by another
       transaction: back to 1 for those (now visible, and locked there);
    3. the existing rows are updated in one UPDATE ... FROM (VALUES ...) with the
       call's SET and WHERE: what comes back is updated, the rest unchanged.
    """
    check_partitioned(plan, rows)
    inserted, existing = _insert_or_lock(conn, plan, rows)
    done = _update_existing(conn, plan, [rows[i] for i in existing])
    updated = dict(zip(existing, done, strict=True))
    out: list[Outcome] = []
    for i in range(len(rows)):
        if i in inserted:
            out.append(("inserted", inserted[i]))
        elif updated.get(i) is not None:
            out.append(("updated", updated[i]))
        else:
            out.append(("unchanged", None))
    return out


def _insert_or_lock(
    conn: Connection, plan: UpsertPlan, rows: list[Row]
) -> tuple[dict[int, Row], list[int]]:
    """Steps 1 and 2: the rows inserted (by position) and the positions of the
    rows that exist, locked."""
    keys = [plan.keys.of(r, plan.match) for r in rows]
    inserted: dict[int, Row] = {}
    existing: list[int] = []
    pending = list(range(len(rows)))
    for _ in range(LOCK_ATTEMPTS):
        found = _locked_keys(conn, plan, [rows[i] for i in pending])
        existing += [i for i in pending if keys[i] in found]
        new = [i for i in pending if keys[i] not in found]
        inserted.update(_insert_new(conn, plan, rows, new))
        pending = [i for i in new if i not in inserted]
        if not pending:
            return inserted, existing
    raise OnConflictError(
        f"upsert into {plan.table.name!r}: rows kept conflicting on insert but could not"
        f" be read {LOCK_ATTEMPTS} times in a row (deleted as fast as they are created?)"
    )


def check_partitioned(plan: UpsertPlan, rows: list[Row]) -> None:
    """What the partitioned path needs, refused before it writes anything."""
    carried = set(rows[0]) if rows else set()
    if not plan.target.columns or plan.match != plan.target.columns:
        raise NotSupportedError(
            f"upsert into the partitioned table {plan.table.name!r} needs rows that carry"
            " every column of the conflict target (pass on=... naming a unique key the rows"
            " carry)"
        )
    missing = sorted(n for v in (*plan.set_.values(), plan.where) for n in excluded_names(v))
    missing = [n for n in missing if n not in carried]
    if missing:
        raise NotSupportedError(
            f"upsert into the partitioned table {plan.table.name!r}: excluded({missing[0]!r})"
            " names a column the rows do not carry; give it in every row, or use"
            f" {plan.table.name}.c.{missing[0]} (the stored value)"
        )


def _insert_new(
    conn: Connection, plan: UpsertPlan, rows: list[Row], new: list[int]
) -> list[tuple[int, Row]]:
    """Insert the rows at positions ``new``, skipping duplicates: (position, stored row)."""
    if not new:
        return []
    batch = [rows[i] for i in new]
    returned = [dict(m) for m in conn.execute(plan.extra["insert_new"], batch).mappings()]
    aligned = align(plan.keys, plan.table, batch, returned, plan.match)
    return [(i, r) for i, r in zip(new, aligned, strict=True) if r is not None]


def _locked_keys(conn: Connection, plan: UpsertPlan, rows: list[Row]) -> set[tuple[Any, ...]]:
    found = conn.execute(lock_keys_statement(plan, rows)).mappings()
    return {plan.keys.of(dict(r), plan.match) for r in found}


def _update_existing(conn: Connection, plan: UpsertPlan, rows: list[Row]) -> list[Row | None]:
    """The existing rows brought to the call's SET (where its WHERE holds): the
    stored rows, or None where the WHERE left a row alone."""
    if not rows or not plan.set_:
        return [None] * len(rows)
    returned = [dict(m) for m in conn.execute(update_statement(plan, rows)).mappings()]
    return align(plan.keys, plan.table, rows, returned, plan.match)


def lock_keys_statement(plan: UpsertPlan, rows: list[Row]) -> sa.Select[Any]:
    """SELECT the keys of ``rows`` that are stored, in key order, FOR UPDATE. Pure."""
    key = plan.target.key
    assert key is not None
    read = select_by_keys(plan, rows, key_only=True)
    if key.where is not None:
        read = read.where(key.where)
    return read.order_by(*(plan.table.c[c] for c in plan.match)).with_for_update()


def update_statement(plan: UpsertPlan, rows: list[Row]) -> sa.Update:
    """UPDATE t SET ... FROM (VALUES rows) AS oc_incoming WHERE the key matches AND
    the call's WHERE RETURNING *: ``excluded(col)`` is ``oc_incoming.col``. Pure."""
    t, key = plan.table, plan.target.key
    assert key is not None
    cols = sorted(rows[0])
    incoming = sa.values(*(sa.column(c, t.c[c].type) for c in cols), name="oc_incoming").data(
        [tuple(r[c] for c in cols) for r in rows]
    )

    def value(c: sa.Column[Any]) -> Any:
        return incoming.c[c.key]

    cond = sa.and_(*(t.c[c] == incoming.c[c] for c in plan.match))
    if key.where is not None:
        cond = sa.and_(cond, key.where)
    if plan.where is not None:
        cond = sa.and_(cond, substitute(plan.where, t, value))
    set_ = {c: substitute(v, t, value) for c, v in plan.set_.items()}
    return sa.update(t).values(set_).where(cond).returning(*t.c)


class DistributedPostgreSQL(PostgreSQL):
    """CockroachDB and YugabyteDB: the PostgreSQL wire protocol and ``ON CONFLICT``,
    but no ``xmax`` system column, no dependable advisory locks and no ordinary
    temporary tables. Not run here (no server on this machine): the statements
    are compile-tested on PostgreSQL dialects named ``cockroachdb`` and
    ``yugabytedb``, as sqlalchemy-cockroachdb's and sqlalchemy-yugabytedb's are.

    - upsert reads the existing keys ``FOR UPDATE`` first, then runs
      ``ON CONFLICT DO UPDATE``: exact under SERIALIZABLE (CockroachDB's default)
      and under snapshot isolation, where a concurrent insert of the same key
      aborts one side with 40001 instead of slipping between read and write;
    - seed takes no lock: concurrent seeds conflict, one gets 40001 and is re-run
      (the call owns its transaction), and then finds the rows there;
    - no COPY path and no driver-level fast paths: SQLAlchemy's ordinary path.
    """

    name = "cockroachdb"

    def prepare_upsert(self, plan: UpsertPlan, dialect: Dialect) -> None:
        plan.statement = do_update(pg.insert(plan.table), plan).returning(
            *returning_columns(plan.table, plan.target)
        )

    def write_upsert(self, conn: Connection, plan: UpsertPlan, rows: list[Row]) -> list[Outcome]:
        return upsert_reading_keys_first(conn, plan, rows, for_update=True)

    # the generic (base) behaviour: no COPY path, no lock, no driver-level paths
    bulk_rows = DialectSupport.bulk_rows
    write_bulk = DialectSupport.write_bulk
    seed_lock = DialectSupport.seed_lock  # type: ignore[assignment]
    insert_ignore_fast = DialectSupport.insert_ignore_fast
    get_or_create_fast = DialectSupport.get_or_create_fast


def _fetch_fast(
    engine: Engine, fast: DriverStatement, args: list[Any], attempts: int, flagged: bool = True
) -> tuple[Row, bool] | None:
    """Run a compiled statement on the pooled driver connection (inside SQLAlchemy's
    greenlet bridge). flagged: the last column is get_or_create's "created" flag
    and no row means "try again"; otherwise no row is an answer: ({}, False).

    None (the ordinary path then runs) only when nothing can have been stored:
    the server refused the statement, or the connection was closed before it
    was sent. A connection lost after sending is raised: the autocommitted
    statement may have committed, and running it again would report the row as
    existing instead of inserted.
    """
    from asyncpg import exceptions as pg_errors  # type: ignore[import-untyped]

    raw = checkout(engine)
    if raw is None:
        return None
    try:
        driver: Any = raw.driver_connection
        if driver.is_closed():  # dropped while idle in the pool: nothing sent
            raw.invalidate()
            return None
        for _ in range(attempts):
            try:
                record = await_only(driver.fetchrow(fast.sql, *args))
            except pg_errors.PostgresConnectionError as exc:
                raise connection_lost(raw, fast, args, exc) from exc
            except (pg_errors.PostgresError, pg_errors.InterfaceError):
                # refused by the server, or by the driver before sending (an
                # argument it cannot encode): nothing stored
                return None
            except Exception as exc:  # the connection failed mid-statement
                raise connection_lost(raw, fast, args, exc) from exc
            if record is None and not flagged:
                return {}, False
            if record is not None:
                row = fast.row(record)
                return (row, bool(row.pop(CREATED))) if flagged else (row, True)
    finally:
        raw.close()
    return None


COLLATIONS = "onconflict.pg_collations"  # conn.info: (schema, table) -> column key -> fold
# the nondeterministic collations of a table's columns; the whole pg_collation
# row as JSON, since its locale column is named differently across versions
_READ_COLLATIONS = sa.text(
    "SELECT a.attname, row_to_json(c) FROM pg_catalog.pg_attribute a"
    " JOIN pg_catalog.pg_collation c ON c.oid = a.attcollation"
    " WHERE a.attrelid = to_regclass(:name) AND a.attnum > 0 AND NOT c.collisdeterministic"
)


def _collation_folds(conn: Connection, table: sa.Table) -> dict[str, Any]:
    """Column key -> fold for the table's columns whose collation is
    nondeterministic (read once per connection and table)."""

    def read() -> Iterator[tuple[str, Any]]:
        name = conn.dialect.identifier_preparer.format_table(table)
        found = conn.execute(_READ_COLLATIONS, {"name": name})
        return ((column, icu_fold(row)) for column, row in found)

    return collation_folds(conn, table, COLLATIONS, read)


def icu_fold(collation: dict[str, Any]) -> Any:
    """How a nondeterministic ICU collation compares strings, as a Python fold:
    strength level 1 (``ks-level1``) ignores case and accents, level 2 case;
    other nondeterministic collations (canonical equivalence only) compare
    the NFC forms."""
    locale = str(collation.get("colliculocale") or collation.get("colllocale") or "").lower()
    if "ks-level1" in locale:
        return functools.partial(fold_text, ci=True, ai=True)
    if "ks-level2" in locale:
        return functools.partial(fold_text, ci=True)
    return functools.partial(unicodedata.normalize, "NFC")
