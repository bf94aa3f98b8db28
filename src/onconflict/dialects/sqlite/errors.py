"""SQLite's errors: extended result codes, read from sqlite3 and aiosqlite
(from the message where no extended code is set), and the key a
duplicate-key message names."""

from __future__ import annotations

import re

from onconflict.dialects.errors import Described, DriverError, ErrorTable, message_of

_SQLITE_MESSAGES = (
    (re.compile(r"^UNIQUE constraint failed: "), 2067),
    (re.compile(r"^PRIMARY KEY must be unique"), 1555),
    (re.compile(r"^columns? .* (is|are) not unique"), 2067),  # SQLite < 3.8.2
    (re.compile(r"^database is locked"), 5),
    (re.compile(r"^database table is locked"), 6),
)


def _sqlite(exc: BaseException, driver: str) -> DriverError | None:
    message = message_of(exc)
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(code, int) or code in (19, 0):  # no extended code: read the message
        for pattern, by_message in _SQLITE_MESSAGES:
            if pattern.search(message):
                code = by_message
                break
    if not isinstance(code, int):
        return None
    return DriverError("sqlite", driver, code, message, exception=exc)


_SQLITE_COLS = re.compile(r"^UNIQUE constraint failed: (?P<cols>.+)$")
_SQLITE_INDEX = re.compile(r"^UNIQUE constraint failed: index '(?P<name>[^']+)'")


def _sqlite_key(err: DriverError) -> Described:
    if m := _SQLITE_INDEX.search(err.message):
        return m.group("name"), err.table, ()
    if m := _SQLITE_COLS.search(err.message):
        qualified = [c.strip() for c in m.group("cols").split(",")]
        table = qualified[0].rpartition(".")[0] or None
        return err.constraint, table, tuple(c.rpartition(".")[2] for c in qualified)
    return err.constraint, err.table, ()


ERRORS = ErrorTable(
    family="sqlite",
    unique=frozenset({2067, 1555}),  # SQLITE_CONSTRAINT_UNIQUE, _PRIMARYKEY
    # SQLITE_BUSY, _BUSY_RECOVERY, _BUSY_SNAPSHOT, SQLITE_LOCKED, _LOCKED_SHAREDCACHE
    transient=frozenset({5, 261, 517, 6, 262}),
    readers={"sqlite3": _sqlite, "aiosqlite": _sqlite},
    key=_sqlite_key,
)
