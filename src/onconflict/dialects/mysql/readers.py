"""The warning count of a MySQL/MariaDB statement, read from the server's reply.

The server sends the count in the OK (or EOF) packet of every statement; each
driver keeps it in its own place. A driver not listed in
``WARNING_COUNT_READERS`` is asked with ``SELECT @@warning_count`` (one more
round trip).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

# The warning count of the last statement, as the server sent it in the OK (or
# EOF) packet, read the way each driver keeps it; a driver not listed here is
# asked with SELECT @@warning_count (one more round trip).
WARNING_COUNT_READERS: dict[str, Callable[[Any, Any], Any]] = {
    "pymysql": lambda cursor, _conn: cursor.warning_count,
    # SQLAlchemy's adapter around the asyncio driver's cursor, which keeps the
    # last result (with the packet's count) on ``_result``
    "aiomysql": lambda cursor, _conn: cursor._cursor._result.warning_count,
    "asyncmy": lambda cursor, _conn: cursor._cursor._result.warning_count,
    "mysqldb": lambda _cursor, conn: conn.warning_count(),
    "mariadbconnector": lambda _cursor, conn: conn.warnings,  # (the cursor may be closed)
}


def packet_warning_count(conn: Connection, result: sa.CursorResult[Any]) -> int | None:
    reader = WARNING_COUNT_READERS.get(conn.dialect.driver)
    if reader is None:
        return None
    try:
        count = reader(result.context.cursor, conn.connection.driver_connection)
        return count if isinstance(count, int) else None
    except Exception:  # another version of the driver, a closed cursor: ask the server
        return None
