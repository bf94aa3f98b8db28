"""seed: write reference data idempotently, all or nothing, one replica at a time.

The core runs on a synchronous connection (the async front goes through
``run_sync``). Order of work, inside one transaction:

1. take the database lock (PostgreSQL advisory transaction lock, MySQL
   ``GET_LOCK``, SQLite ``BEGIN IMMEDIATE``), with a timeout;
2. create the missing tables of ``create`` (a MetaData), if given: replicas
   starting at once on a fresh database take turns here too;
3. resolve the tables (objects, or names reflected from the database) and
   check every row against them: an unknown table or column raises before
   anything is written;
4. write (or, for ``verify`` and ``dry_run``, only read) the tables in
   foreign-key order, parents first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from onconflict._insert_ignore import execute_insert_ignore, prepare_insert_ignore
from onconflict._keys import Keys
from onconflict._target import (
    ConflictTarget,
    OnTarget,
    fixed_values,
    normalize_rows,
    resolve_table,
    resolve_target,
)
from onconflict._upsert import execute_upsert, prepare_upsert
from onconflict.dialects import support_for
from onconflict.dialects.common import select_by_keys
from onconflict.dialects.plans import UpsertPlan

Mode = Literal["insert", "upsert", "verify"]
MODES = ("insert", "upsert", "verify")
DEFAULT_LOCK = "onconflict.seed"
STEP = 5_000  # rows per write, so that progress can be reported
READ_STEP = 500  # keys per read of verify and dry runs
Progress = Callable[[str, int, int], None]  # table, rows done, rows in the table


@dataclass
class TableReport:
    """What seed did, or found, for one table. Rows are as given, except
    ``inserted`` and ``updated`` (as stored) and ``differing`` (pairs)."""

    table: str
    inserted: list[Mapping[str, Any]] = field(default_factory=list)
    updated: list[Mapping[str, Any]] = field(default_factory=list)
    existing: list[Mapping[str, Any]] = field(default_factory=list)
    """Rows already there (with the given values, for upsert and verify)."""
    missing: list[Mapping[str, Any]] = field(default_factory=list)
    """verify and dry runs: rows that are not there (would be inserted)."""
    differing: list[tuple[Mapping[str, Any], Mapping[str, Any]]] = field(default_factory=list)
    """verify and dry runs of upsert: (given row, stored row) pairs that differ."""

    def counts(self) -> dict[str, int]:
        return {
            "inserted": len(self.inserted),
            "updated": len(self.updated),
            "existing": len(self.existing),
            "missing": len(self.missing),
            "differing": len(self.differing),
        }


@dataclass
class SeedReport:
    mode: str
    dry_run: bool
    tables: list[TableReport] = field(default_factory=list)

    def total(self, what: str) -> int:
        return sum(t.counts()[what] for t in self.tables)

    @property
    def drift(self) -> bool:
        """Rows missing or differing (verify, dry runs)."""
        return any(t.missing or t.differing for t in self.tables)

    @property
    def changed(self) -> bool:
        """The seed wrote something."""
        return any(t.inserted or t.updated for t in self.tables)

    def __repr__(self) -> str:
        totals = ", ".join(f"{k}={self.total(k)}" for k in TableReport("").counts())
        return f"SeedReport(mode={self.mode!r}, dry_run={self.dry_run}, {totals})"


@dataclass
class SeedPlan:
    data: list[tuple[Any, list[Mapping[str, Any]]]]  # (table object or name, rows)
    mode: str
    dry_run: bool
    on: OnTarget | Mapping[str, OnTarget]
    lock: str | None
    lock_timeout: float
    progress: Progress | None
    create: sa.MetaData | None = None


def prepare_seed(
    data: Mapping[Any, Iterable[Mapping[str, Any]]],
    *,
    mode: str,
    dry_run: bool,
    on: OnTarget | Mapping[str, OnTarget],
    lock: str | None,
    lock_timeout: float,
    progress: Progress | None,
    create: sa.MetaData | None = None,
) -> SeedPlan:
    """Check the arguments. Pure: tables given by name are resolved later."""
    if create is not None and not isinstance(create, sa.MetaData):
        raise TypeError(f"create must be a sqlalchemy.MetaData, not {type(create).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if not isinstance(data, Mapping):
        raise TypeError(f"data must map tables to rows, not {type(data).__name__}")
    if lock_timeout <= 0:
        raise ValueError("lock_timeout must be positive")
    items = []
    for table, rows in data.items():
        if not isinstance(table, str | sa.Table) and not hasattr(table, "__table__"):
            raise TypeError(f"data keys must be tables, mapped classes or names, not {table!r}")
        if isinstance(rows, Mapping) or not isinstance(rows, Iterable):
            raise TypeError(f"rows for {_name(table)!r} must be a list of mappings")
        items.append((table, list(rows)))
    return SeedPlan(items, mode, dry_run, on, lock, lock_timeout, progress, create)


def _name(table: Any) -> str:
    if isinstance(table, str):
        return table
    if isinstance(table, sa.Table):
        return table.name
    return str(table.__table__.name)


def execute_seed(conn: Connection, plan: SeedPlan, owned: bool) -> SeedReport:
    """Run a seed on a synchronous connection, in its transaction."""
    support = support_for(conn.dialect)
    report = SeedReport(plan.mode, plan.dry_run)
    reads_only = plan.mode == "verify" or plan.dry_run
    lock = support.seed_lock(conn, plan.lock, plan.lock_timeout) if plan.lock else nullcontext()
    with lock:
        if plan.create is not None:  # even for dry runs: the schema is not seed data
            plan.create.create_all(conn, checkfirst=True)
        tables = _resolve(conn, plan)
        atomic = nullcontext() if owned or reads_only else support.atomic(conn)
        with atomic:
            _run_tables(conn, plan, tables, report, reads_only)
    return report


def _run_tables(
    conn: Connection,
    plan: SeedPlan,
    tables: list[tuple[Any, list[Mapping[str, Any]], Any]],
    report: SeedReport,
    reads_only: bool,
) -> None:
    for table, rows, key in tables:
        part = TableReport(_name(table))
        report.tables.append(part)
        if reads_only:
            _compare(conn, table, rows, key, plan.mode, part)
        else:
            _write(conn, table, rows, key, plan, part)


def _resolve(conn: Connection, plan: SeedPlan) -> list[tuple[Any, list[Mapping[str, Any]], Any]]:
    """(table, rows, conflict target) in foreign-key order; raises for unknown
    tables and columns before anything is written."""
    reflected = reflect_by_name(conn, [t for t, _ in plan.data if isinstance(t, str)])
    # by table and polymorphic identity: the classes of a single-table hierarchy share a table
    resolved: dict[tuple[sa.Table, Any], tuple[Any, list[Mapping[str, Any]], Any]] = {}
    for given, rows in plan.data:
        source = reflected.tables[given] if isinstance(given, str) else given
        key, on = _check(conn, source, rows, plan)
        if _given_twice(resolved, key):
            raise ValueError(f"table {key[0].name!r} is given twice")
        resolved[key] = (source, rows, on)
    order = sa.schema.sort_tables(list({t: None for t, _ in resolved}))
    return [entry for t in order for (k, _), entry in resolved.items() if k is t]


def reflect_by_name(conn: Connection, names: list[str], source: str = "") -> sa.MetaData:
    """The tables given by name, reflected; ValueError for unknown names (its
    message starts with ``source``: where the names came from)."""
    reflected = sa.MetaData()
    if names:
        inspector = sa.inspect(conn)
        missing = [n for n in names if not inspector.has_table(n)]
        if missing:
            raise ValueError(f"{source}unknown table(s): {', '.join(map(repr, missing))}")
        support_for(conn.dialect).reflect(conn, reflected, names)
    return reflected


def _check(
    conn: Connection, source: Any, rows: list[Mapping[str, Any]], plan: SeedPlan
) -> tuple[Any, Any]:
    """The (table, polymorphic identity) key and conflict target of one entry;
    unknown columns and targets that cannot be resolved raise here, not midway."""
    table, keymap, _ = resolve_table(source)
    fixed = fixed_values(source)
    checked = normalize_rows(table, keymap, rows, fixed)
    on = plan.on.get(table.name) if isinstance(plan.on, Mapping) else plan.on
    if checked:
        target = resolve_target(table, on, set(checked[0]).intersection(*checked[1:]))
        support_for(conn.dialect).check_target(table, target)
    return (table, tuple(sorted(fixed.items()))), on


def _given_twice(resolved: Mapping[tuple[sa.Table, Any], Any], key: tuple[Any, Any]) -> bool:
    """The same table again, unless both are classes with their own polymorphic identity."""
    table, identity = key
    same = [k for k in resolved if k[0] is table]
    return bool(same) and (not identity or key in resolved or any(not i for _, i in same))


def _write(
    conn: Connection,
    table: Any,
    rows: list[Mapping[str, Any]],
    on: Any,
    plan: SeedPlan,
    part: TableReport,
) -> None:
    for start in range(0, len(rows), STEP):
        step = rows[start : start + STEP]
        if plan.mode == "insert":
            prepared = prepare_insert_ignore(conn.dialect, table, step, on)
            if not prepared.empty:
                done = execute_insert_ignore(conn, prepared, True)
                part.inserted.extend(done.inserted)
                part.existing.extend(done.existing)
        else:
            upsert = prepare_upsert(
                conn.dialect,
                table,
                step,
                on=on,
                update=None,
                where=None,
                skip_unchanged=True,
                duplicates="last",
            )
            if not upsert.empty:
                result = execute_upsert(conn, upsert, True)
                part.inserted.extend(result.inserted)
                part.updated.extend(result.updated)
                part.existing.extend(result.unchanged)
        if plan.progress is not None:
            plan.progress(part.table, min(start + STEP, len(rows)), len(rows))
    if not rows and plan.progress is not None:
        plan.progress(part.table, 0, 0)


def _compare(
    conn: Connection,
    table: Any,
    rows: list[Mapping[str, Any]],
    on: Any,
    mode: str,
    part: TableReport,
) -> None:
    """verify and dry runs: read the stored rows by key and compare."""
    tbl, keymap, outmap = resolve_table(table)
    data = normalize_rows(tbl, keymap, rows, fixed_values(table))
    if not data:
        return
    cols = _compared_key(tbl, on, data)
    keys = Keys(tbl, conn.dialect)
    support_for(conn.dialect).key_identity(conn, tbl, keys, cols)
    stored = _stored_by_key(conn, tbl, keys, cols, data)
    for given, row in zip(rows, data, strict=True):
        now = stored.get(keys.of(row, cols))
        if now is None:
            part.missing.append(given)
        elif mode != "insert" and _differs(keys, row, now):
            part.differing.append((given, {outmap.get(k, k): v for k, v in now.items()}))
        else:
            part.existing.append(given)


def _compared_key(tbl: sa.Table, on: Any, data: list[dict[str, Any]]) -> tuple[str, ...]:
    """The columns rows are compared by: the conflict target's, which every row
    must carry."""
    cols = resolve_target(tbl, on, set(data[0]).intersection(*data[1:])).columns
    if not cols or not all(set(cols) <= set(r) for r in data):
        raise ValueError(
            f"{tbl.name!r}: every row must carry its key ({', '.join(cols)}) to be compared"
        )
    return cols


def _stored_by_key(
    conn: Connection, tbl: sa.Table, keys: Keys, cols: tuple[str, ...], data: list[dict[str, Any]]
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The stored rows with the keys of ``data``, by key as the database sees it
    (read as the upsert paths read them: :func:`select_by_keys`)."""
    plan = UpsertPlan(tbl, ConflictTarget(None), keys, cols, set_={}, where=None)
    stored: dict[tuple[Any, ...], dict[str, Any]] = {}
    for start in range(0, len(data), READ_STEP):
        read = select_by_keys(plan, data[start : start + READ_STEP])
        for found in conn.execute(read).mappings():
            stored[keys.of(found, cols)] = dict(found)
    return stored


def _differs(keys: Keys, row: Mapping[str, Any], now: Mapping[str, Any]) -> bool:
    """Whether a stored row holds other values than the given one, compared as
    the keys are (bound through the column types, collation folded)."""
    return any(keys.norm(c, v) != keys.norm(c, now.get(c)) for c, v in row.items())
