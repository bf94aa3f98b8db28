"""PostgreSQL's errors (also CockroachDB's and YugabyteDB's): SQLSTATE codes,
read from asyncpg, psycopg 3, psycopg2 and pg8000, and the key a
duplicate-key message names."""

from __future__ import annotations

import re
from collections.abc import Callable

from onconflict.dialects.errors import Described, DriverError, ErrorTable, column_list, message_of


def _pg_attrs(family: str) -> Callable[[BaseException, str], DriverError | None]:
    def read(exc: BaseException, driver: str) -> DriverError | None:
        code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
        if not isinstance(code, str):
            return None
        diag = getattr(exc, "diag", None)  # psycopg 3, psycopg2
        constraint = getattr(exc, "constraint_name", None) or getattr(diag, "constraint_name", None)
        table = getattr(exc, "table_name", None) or getattr(diag, "table_name", None)
        detail = getattr(exc, "detail", None) or getattr(diag, "message_detail", None)
        return DriverError(family, driver, code, message_of(exc), constraint, table, detail, exc)

    return read


def _pg8000(exc: BaseException, driver: str) -> DriverError | None:
    fields = exc.args[0] if exc.args else None
    if not isinstance(fields, dict) or not isinstance(fields.get("C"), str):
        return None
    return DriverError(
        "postgresql",
        driver,
        fields["C"],
        str(fields.get("M", "")),
        fields.get("n"),
        fields.get("t"),
        fields.get("D"),
        exc,
    )


_PG_KEY = re.compile(r"Key \((?P<cols>.+?)\)=\(")
_PG_CONSTRAINT = re.compile(r'unique constraint "(?P<name>[^"]+)"')


def _pg_key(err: DriverError) -> Described:
    key = _PG_KEY.search(err.detail or "") or _PG_KEY.search(err.message)
    columns = column_list(key.group("cols")) if key else ()
    constraint = err.constraint
    if constraint is None and (m := _PG_CONSTRAINT.search(err.message)):
        constraint = m.group("name")
    return constraint, err.table, columns


ERRORS = ErrorTable(
    family="postgresql",
    unique=frozenset({"23505"}),  # unique_violation (also CockroachDB, YugabyteDB)
    transient=frozenset({"40001", "40P01"}),  # serialization failure, deadlock
    readers={
        "asyncpg": _pg_attrs("postgresql"),
        "psycopg": _pg_attrs("postgresql"),
        "psycopg2": _pg_attrs("postgresql"),
        "pg8000": _pg8000,
        # SQLAlchemy's asyncpg adapter re-raises asyncpg errors as its own classes,
        # carrying .sqlstate; the asyncpg error is their __cause__.
        "sqlalchemy.dialects.postgresql": _pg_attrs("postgresql"),
    },
    key=_pg_key,
)
