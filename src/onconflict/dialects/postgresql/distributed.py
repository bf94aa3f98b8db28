"""CockroachDB and YugabyteDB: the PostgreSQL wire protocol and ``ON CONFLICT``,
but no ``xmax`` system column, no dependable advisory locks and no ordinary
temporary tables."""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy.engine import Connection, Dialect

from onconflict.dialects.common import upsert_reading_keys_first
from onconflict.dialects.plans import Outcome, Row, UpsertPlan
from onconflict.dialects.postgresql import CAPABILITIES, PostgresWire, build

DISTRIBUTED = replace(CAPABILITIES, name="cockroachdb", title="CockroachDB and YugabyteDB")


class DistributedPostgreSQL(PostgresWire):
    """CockroachDB and YugabyteDB: the PostgreSQL wire protocol and ``ON CONFLICT``,
    but no ``xmax`` system column, no dependable advisory locks and no ordinary
    temporary tables. Not run here (no server on this machine): the statements
    are compile-tested on PostgreSQL dialects named ``cockroachdb`` and
    ``yugabytedb``, as sqlalchemy-cockroachdb's and sqlalchemy-yugabytedb's are.

    - upsert reads the existing keys ``FOR UPDATE`` first, then runs
      ``ON CONFLICT DO UPDATE``: exact under SERIALIZABLE (CockroachDB's default)
      and under snapshot isolation, where a concurrent insert of the same key
      aborts one side with 40001 instead of slipping between read and write;
    - seed takes no lock: concurrent seeds conflict, one gets 40001 and is re-run
      (the call owns its transaction), and then finds the rows there;
    - no COPY path and no driver-level fast paths: SQLAlchemy's ordinary path.
    """

    capabilities = DISTRIBUTED

    def prepare_upsert(self, plan: UpsertPlan, dialect: Dialect) -> None:
        plan.statement = build.upsert(plan)

    def write_upsert(self, conn: Connection, plan: UpsertPlan, rows: list[Row]) -> list[Outcome]:
        return upsert_reading_keys_first(conn, plan, rows, for_update=True)
