"""Oracle: no native writer in onconflict (``strategy="classify"``), only
the classifier's codes: ORA- numbers read from python-oracledb and cx_Oracle,
and the key a duplicate-key message names."""

from __future__ import annotations

import re

from onconflict.dialects.errors import Described, DriverError, ErrorTable, column_list


def _oracle(exc: BaseException, driver: str) -> DriverError | None:
    error = exc.args[0] if exc.args else None
    code = getattr(error, "code", None)
    if not isinstance(code, int):
        return None
    return DriverError("oracle", driver, code, str(getattr(error, "message", error)), exception=exc)


_ORACLE = re.compile(
    r"unique constraint \((?:[^.)]+\.)?(?P<name>[^)]+)\) violated"
    r"(?: on table (?:[^.\s]+\.)?(?P<table>\S+) columns \((?P<cols>[^)]*)\))?"
)


def _oracle_key(err: DriverError) -> Described:
    if m := _ORACLE.search(err.message):
        return m.group("name"), m.group("table"), column_list(m.group("cols"))
    return err.constraint, err.table, ()


ERRORS = ErrorTable(
    family="oracle",
    unique=frozenset({1}),  # ORA-00001
    transient=frozenset({60, 8177}),  # deadlock, can't serialize access
    readers={"oracledb": _oracle, "cx_Oracle": _oracle},
    key=_oracle_key,
)
