"""MySQL's and MariaDB's errors (also TiDB's): errno codes, read from the
PyMySQL family (PyMySQL, aiomysql, asyncmy, mysqlclient) and MariaDB
Connector/Python, and the key a duplicate-key message names."""

from __future__ import annotations

import re

from onconflict.dialects.errors import Described, DriverError, ErrorTable, message_of


def _mysql_args(exc: BaseException, driver: str) -> DriverError | None:
    # PyMySQL, aiomysql (raises PyMySQL's classes), asyncmy, mysqlclient: (errno, message)
    args = exc.args
    if len(args) >= 2 and isinstance(args[0], int) and not isinstance(args[0], bool):
        return DriverError("mysql", driver, args[0], str(args[1]), exception=exc)
    return None


def _mysql_errno(exc: BaseException, driver: str) -> DriverError | None:
    # MariaDB Connector/Python: args[0] is only the message; the number is .errno
    errno = getattr(exc, "errno", None)
    if isinstance(errno, int) and errno > 0:
        return DriverError("mysql", driver, errno, message_of(exc), exception=exc)
    return None


_MYSQL_KEY = re.compile(r"for key '(?:(?P<table>[^'.]+)\.)?(?P<name>[^']+)'")
_MYSQL_TABLE = re.compile(r"table '(?P<table>[^']+)'")


def _mysql_key(err: DriverError) -> Described:
    if m := _MYSQL_KEY.search(err.message):
        return m.group("name"), m.group("table") or err.table, ()
    if m := _MYSQL_TABLE.search(err.message):
        return err.constraint, m.group("table"), ()
    return err.constraint, err.table, ()


ERRORS = ErrorTable(
    family="mysql",
    # ER_DUP_ENTRY, ER_DUP_ENTRY_WITH_KEY_NAME, ER_DUP_KEY, ER_DUP_UNIQUE
    unique=frozenset({1062, 1586, 1022, 1169}),
    # deadlock (and Galera certification failure), lock wait timeout,
    # "record has changed since last read" (MariaDB snapshot isolation);
    # TiDB: SELECT FOR UPDATE commit conflict, write conflict (stale start
    # timestamp), TiKV write conflict - each documented as "retry the transaction"
    transient=frozenset({1213, 1205, 1020, 8002, 8005, 9007}),
    readers={
        "pymysql": _mysql_args,
        "asyncmy": _mysql_args,
        "MySQLdb": _mysql_args,
        "mariadb": _mysql_errno,
    },
    key=_mysql_key,
)
