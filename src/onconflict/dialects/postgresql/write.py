"""PostgreSQL's writers and catalog reads: the upsert whose RETURNING says
inserted or updated, the exact upsert of a partitioned table (no xmax there),
and the collations that fold keys."""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from onconflict._excluded import excluded_names
from onconflict._keys import align, fold_text
from onconflict.dialects.common import align_rows, collation_folds, execute_rows
from onconflict.dialects.plans import INSERTED, Outcome, Row, UpsertPlan
from onconflict.dialects.postgresql.build import lock_keys_statement, update_statement
from onconflict.exceptions import NotSupportedError, OnConflictError

LOCK_ATTEMPTS = 5  # partitioned upsert: rows committed by others between the read and the insert


def upsert_flagged(conn: Connection, plan: UpsertPlan, rows: list[Row]) -> list[Outcome]:
    """Upsert rows sharing one key set as ONE statement whose RETURNING carries
    an "inserted" flag (``xmax = 0``): the outcome of each row, in order."""
    returned = [dict(m) for m in execute_rows(conn, plan.statement, rows).mappings()]
    out: list[Outcome] = []
    for stored in align_rows(conn, plan, rows, returned):
        if stored is None:
            out.append(("unchanged", None))
        else:
            out.append(("inserted" if stored.pop(INSERTED) else "updated", stored))
    return out


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


COLLATIONS = "onconflict.pg_collations"  # conn.info: (schema, table) -> column key -> fold
# the nondeterministic collations of a table's columns; the whole pg_collation
# row as JSON, since its locale column is named differently across versions
_READ_COLLATIONS = sa.text(
    "SELECT a.attname, row_to_json(c) FROM pg_catalog.pg_attribute a"
    " JOIN pg_catalog.pg_collation c ON c.oid = a.attcollation"
    " WHERE a.attrelid = to_regclass(:name) AND a.attnum > 0 AND NOT c.collisdeterministic"
)


def nondeterministic_folds(conn: Connection, table: sa.Table) -> dict[str, Any]:
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
