"""Alembic environment of the example migrations (docs/migrations.md).

Run with a Config whose ``sqlalchemy.url`` names the database, e.g.
``alembic -c examples/migrations/alembic.ini upgrade head`` with
``ONCONFLICT_URL`` set, or from Python (tests/test_alembic.py).
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import context

config = context.config
url = config.get_main_option("sqlalchemy.url") or os.environ.get(
    "ONCONFLICT_URL", "sqlite:///onconflict.db"
)
engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
