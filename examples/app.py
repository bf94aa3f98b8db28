"""The example application's tables (in a real app: your models / migrations)."""

import sqlalchemy as sa

metadata = sa.MetaData()

roles = sa.Table(
    "roles",
    metadata,
    sa.Column("name", sa.String(20), primary_key=True),
    sa.Column("description", sa.String(200), nullable=False),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.String(200), nullable=False, unique=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("role", sa.String(20), sa.ForeignKey("roles.name"), nullable=False),
)
