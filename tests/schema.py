"""Tables the tests write to (created fresh for each test)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

metadata = sa.MetaData()

parent = sa.Table(
    "oc_parent", metadata, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False)
)

# One existing-row scenario exercises every constraint kind.
users = sa.Table(
    "oc_users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.String(50), nullable=False),
    sa.Column("name", sa.String(5), nullable=False),
    sa.Column("pid", sa.Integer, sa.ForeignKey("oc_parent.id"), nullable=True),
    sa.Column("note", sa.String(20), nullable=False, server_default="none"),
    sa.UniqueConstraint("email", name="uq_users_email"),
    sa.CheckConstraint("length(name) > 0", name="ck_users_name"),
)

# Natural primary key, no other unique key.
tags = sa.Table(
    "oc_tags",
    metadata,
    sa.Column("slug", sa.String(40), primary_key=True),
    sa.Column("label", sa.String(40), nullable=True),
)

# Composite unique key beside a surrogate primary key.
pairs = sa.Table(
    "oc_pairs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("a", sa.Integer, nullable=False),
    sa.Column("b", sa.Integer, nullable=False),
    sa.Column("v", sa.String(10), nullable=True),
    sa.UniqueConstraint("a", "b", name="uq_pairs_ab"),
)

# Two unique keys a row can hit.
accounts = sa.Table(
    "oc_accounts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.String(50), nullable=False, unique=True),
    sa.Column("handle", sa.String(20), nullable=False, unique=True),
)

# Partial unique index: PostgreSQL and SQLite only (created there only).
partial_metadata = sa.MetaData()
subscriptions = sa.Table(
    "oc_subscriptions",
    partial_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.String(50), nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
)
active_email = sa.Index(
    "uq_subscriptions_active_email",
    subscriptions.c.email,
    unique=True,
    postgresql_where=subscriptions.c.active,
    sqlite_where=subscriptions.c.active,
)


class Base(DeclarativeBase):
    metadata = metadata


class Item(Base):
    """Attribute names differ from column names."""

    __tablename__ = "oc_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column("item_code", sa.String(20), unique=True)
    title: Mapped[str | None] = mapped_column("item_title", sa.String(40))


# Hot keys for the process storm and the property tests.
storm = sa.Table(
    "oc_storm",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("k", sa.String(40), nullable=False, unique=True),
    sa.Column("v", sa.String(40), nullable=True),
)


# Inheritance: single-table (one table, a discriminator) and joined-table (rows
# span two tables). Own metadata: created by the tests that use them.
inheritance_metadata = sa.MetaData()


class InheritanceBase(DeclarativeBase):
    metadata = inheritance_metadata


class Employee(InheritanceBase):
    __tablename__ = "oc_employees"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(50), unique=True)
    name: Mapped[str] = mapped_column(sa.String(20))
    kind: Mapped[str] = mapped_column(sa.String(20))
    __mapper_args__ = {  # noqa: RUF012
        "polymorphic_on": "kind",
        "polymorphic_identity": "employee",
    }


class Manager(Employee):
    budget: Mapped[int | None] = mapped_column(nullable=True)
    __mapper_args__ = {"polymorphic_identity": "manager"}  # noqa: RUF012


class Engineer(Employee):
    language: Mapped[str | None] = mapped_column(sa.String(20), nullable=True)
    __mapper_args__ = {"polymorphic_identity": "engineer"}  # noqa: RUF012


class Vehicle(InheritanceBase):
    __tablename__ = "oc_vehicles"
    id: Mapped[int] = mapped_column(primary_key=True)
    plate: Mapped[str] = mapped_column(sa.String(20), unique=True)
    kind: Mapped[str] = mapped_column(sa.String(20))
    __mapper_args__ = {  # noqa: RUF012
        "polymorphic_on": "kind",
        "polymorphic_identity": "vehicle",
    }


class Car(Vehicle):
    __tablename__ = "oc_cars"
    id: Mapped[int] = mapped_column(sa.ForeignKey("oc_vehicles.id"), primary_key=True)
    seats: Mapped[int] = mapped_column()
    __mapper_args__ = {"polymorphic_identity": "car"}  # noqa: RUF012
