"""The roles table.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "roles",
        sa.Column("name", sa.String(20), primary_key=True),
        sa.Column("description", sa.String(200), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("roles")
