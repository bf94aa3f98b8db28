"""DuckDB's errors. DuckDB has no error codes: the kind is read from the
message (else the exception's class name), and a duplicate-key message names
the key's columns and values but no constraint or table."""

from __future__ import annotations

import re

from onconflict.dialects.errors import Described, DriverError, ErrorTable, message_of

_DUCKDB_MESSAGES = (
    (re.compile(r'^Constraint Error: Duplicate key "'), "duplicate key"),
    (re.compile(r"^Constraint Error: NOT NULL constraint failed"), "not null"),
    (re.compile(r"^Constraint Error: CHECK constraint failed"), "check"),
    (re.compile(r"^Constraint Error: Violates foreign key constraint"), "foreign key"),
    (
        re.compile(r"^TransactionContext Error: (Catalog write-write conflict|Conflict on)"),
        "write conflict",
    ),
    (
        re.compile(r"^TransactionContext Error: Failed to commit: .*constraint violation"),
        "commit conflict",
    ),
)


def _duckdb(exc: BaseException, driver: str) -> DriverError | None:
    # no error codes: the kind from the message, else the exception's class name
    # (ConstraintException, TransactionException, ...)
    message = message_of(exc)
    code = next((c for pattern, c in _DUCKDB_MESSAGES if pattern.search(message)), None)
    return DriverError("duckdb", "duckdb", code or type(exc).__name__, message, exception=exc)


_DUCKDB_KEY = re.compile(
    r'^Constraint Error: Duplicate key "(?P<key>.*)" violates (?P<kind>.+?) constraint'
)
_DUCKDB_COLUMN = re.compile(r"(?:^|, )(?P<col>[\w$]+): ")


def _duckdb_key(err: DriverError) -> Described:
    # 'Duplicate key "a: 1, b: x" violates unique constraint.': no constraint or table name
    if m := _DUCKDB_KEY.search(err.message):
        return err.constraint, err.table, tuple(_DUCKDB_COLUMN.findall(m.group("key")))
    return err.constraint, err.table, ()


ERRORS = ErrorTable(
    family="duckdb",
    unique=frozenset({"duplicate key"}),
    # optimistic concurrency: a write-write conflict, a COMMIT meeting a key another
    # transaction committed first
    transient=frozenset({"write conflict", "commit conflict"}),
    readers={
        "_duckdb": _duckdb,  # duckdb's C extension module
        "duckdb": _duckdb,
        # a DuckDB duplicate that is a transaction conflict (onconflict.dialects.duckdb)
        "onconflict.dialects.duckdb": _duckdb,
    },
    key=_duckdb_key,
)
