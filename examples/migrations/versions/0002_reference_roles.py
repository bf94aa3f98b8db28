"""Reference data: the roles every installation has.

Revision ID: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import onconflict.sync

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ROLES = [
    {"name": "admin", "description": "Can do everything"},
    {"name": "member", "description": "Can read and write their own things"},
]


def upgrade() -> None:
    # inside the migration's transaction: all or nothing, and a second run
    # (re-applied after a stamp, or rows already loaded by hand) inserts nothing
    onconflict.sync.seed(op.get_bind(), {"roles": ROLES})


def downgrade() -> None:
    # only the rows this migration owns: roles added since stay
    roles = sa.table("roles", sa.column("name"))
    op.execute(roles.delete().where(roles.c.name.in_([r["name"] for r in ROLES])))
