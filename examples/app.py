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

# webhook deliveries recorded once (examples/fastapi_app.py), and what handling one does
deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("delivery_id", sa.String(100), primary_key=True),
    sa.Column("event", sa.String(50), nullable=False),
)

audit = sa.Table(
    "audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("delivery_id", sa.String(100), nullable=False),
    sa.Column("event", sa.String(50), nullable=False),
)
