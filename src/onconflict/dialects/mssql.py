"""SQL Server: no native writer in onconflict (``strategy="classify"``),
only the classifier's codes: error numbers read from pyodbc / aioodbc (inside
the message) and pymssql, and the key a duplicate-key message names."""

from __future__ import annotations

import re

from onconflict.dialects.errors import Described, DriverError, ErrorTable, message_of

_ODBC_NUMBER = re.compile(r"\((\d+)\)(?: \(SQL\w+\))?\s*$")


def _odbc(exc: BaseException, driver: str) -> DriverError | None:
    # pyodbc / aioodbc: ('23000', '[23000] [Microsoft]...[SQL Server]text (2627) (SQLExecDirectW)')
    message = message_of(exc)
    found = _ODBC_NUMBER.search(message)
    if found is None:
        return None
    return DriverError("mssql", driver, int(found.group(1)), message, exception=exc)


def _pymssql(exc: BaseException, driver: str) -> DriverError | None:
    args = exc.args
    if args and isinstance(args[0], int):
        text = (
            args[1].decode("utf-8", "replace")
            if len(args) > 1 and isinstance(args[1], bytes)
            else str(args[-1])
        )
        return DriverError("mssql", driver, args[0], text, exception=exc)
    return None


_MSSQL_CONSTRAINT = re.compile(r"constraint '(?P<name>[^']+)'")
_MSSQL_INDEX = re.compile(r"unique index '(?P<name>[^']+)'")
_MSSQL_OBJECT = re.compile(r"object '(?P<table>[^']+)'")


def _mssql_key(err: DriverError) -> Described:
    m = _MSSQL_CONSTRAINT.search(err.message) or _MSSQL_INDEX.search(err.message)
    found = _MSSQL_OBJECT.search(err.message)
    return (m.group("name") if m else None), (found.group("table") if found else err.table), ()


ERRORS = ErrorTable(
    family="mssql",
    unique=frozenset({2627, 2601}),  # constraint, unique index
    transient=frozenset({1205, 3960}),  # deadlock victim, snapshot update conflict
    readers={"pyodbc": _odbc, "aioodbc": _odbc, "pymssql": _pymssql},
    key=_mssql_key,
)
