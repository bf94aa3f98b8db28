"""PostgreSQL (and PostgreSQL-wire engines): ``INSERT ... ON CONFLICT DO NOTHING``.

The statement skips rows that conflict on the arbiter index and nothing else:
NOT NULL (23502), CHECK (23514), foreign key (23503) and too-long values
(22001) raise as for a plain INSERT.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.sql.dml import Insert

from onconflict._target import ConflictTarget
from onconflict.dialects.base import NativeDialect, do_nothing


class PostgreSQL(NativeDialect):
    name = "postgresql"

    def insert_ignore(self, table: sa.Table, target: ConflictTarget, returning: bool) -> Insert:
        return do_nothing(pg.insert(table), table, target, returning)
