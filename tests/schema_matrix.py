"""The schema features of the matrix in tests/test_schema_matrix.py.

Each feature is one declarative entry: the table (or mapped class) it needs,
one row, the columns of its key, a change, and the values expected in the
database. Adding a feature is adding one ``Feature(...)`` to ``FEATURES``.

No ``from __future__ import annotations`` here: SQLModel reads the annotations
of its table classes at class creation.
"""

import datetime as dt
import decimal
import enum
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlmodel import Field, SQLModel

from tests.backends import Backend, ci_collated, has, run_setup

metadata = sa.MetaData()


class Base(DeclarativeBase):
    metadata = metadata


@dataclass
class Feature:
    """One schema feature and what every operation must do with it.

    Names in ``row``, ``key``, ``again`` and ``change`` are the ones callers
    pass (ORM attribute names for a mapped class); ``stored`` and ``updated``
    use the names results use (the same). ``stored``: the values the first
    write must store; ``updated``: the values an update with ``change`` must
    store (default: ``stored`` with ``change``).
    """

    name: str
    target: Any  # a Table or a mapped class, passed to every call
    row: dict[str, Any]
    key: tuple[str, ...]  # the lookup of get_or_create / update_or_create
    change: dict[str, Any]  # a non-key change, for the updating calls
    stored: dict[str, Any]
    updated: dict[str, Any] | None = None
    again: dict[str, Any] = field(default_factory=dict)  # key values of the repeat calls
    on: Any = None  # the conflict target passed to every call (None: chosen by onconflict)
    needs: tuple[str, ...] = ()  # facts of tests/backends.py the table needs to exist
    why_not: str = ""  # why the feature does not exist on the other backends
    refused: Mapping[str, str] = field(default_factory=dict)  # missing fact -> why refused
    tables: tuple[sa.Table, ...] = ()  # what to create (default: the target's table)
    instance_of: type | None = None  # the session front must return instances of this class

    @property
    def table(self) -> sa.Table:
        if isinstance(self.target, sa.Table):
            return self.target
        local = sa.inspect(self.target).local_table
        assert isinstance(local, sa.Table)
        return local

    def all_tables(self) -> tuple[sa.Table, ...]:
        return self.tables or (self.table,)

    def applies_to(self, backend: Backend) -> bool:
        return all(getattr(backend, fact) for fact in self.needs)

    def refusal(self, backend: Backend) -> str:
        """Why this backend must refuse the feature ("" if it must not)."""
        return next((why for fact, why in self.refused.items() if not getattr(backend, fact)), "")

    def out_names(self) -> dict[str, str]:
        """Column key -> the name results use."""
        out = {c.key: c.key for c in self.table.c}
        if not isinstance(self.target, sa.Table):
            for attr, col in sa.inspect(self.target).columns.items():
                if isinstance(col, sa.Column) and col.table is self.table:
                    out[col.key] = attr
        return out

    def column(self, name: str) -> sa.Column[Any]:
        """The column for a name callers pass (attribute name or column key)."""
        if not isinstance(self.target, sa.Table):
            cols = sa.inspect(self.target).columns
            if name in cols:
                col = cols[name]
                assert isinstance(col, sa.Column)
                return col
        return self.table.c[name]

    def repeat(self, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The row of a repeat call: ``again``'s key values, then ``values``."""
        return {**self.row, **self.again, **(values or {})}

    def lookup(self, repeat: bool) -> dict[str, Any]:
        row = self.repeat() if repeat else self.row
        return {k: row[k] for k in self.key}

    def rest(self) -> dict[str, Any]:
        return {k: v for k, v in self.row.items() if k not in self.key}

    def after_update(self) -> dict[str, Any]:
        return self.updated if self.updated is not None else {**self.stored, **self.change}


# column key != column name ---------------------------------------------------
column_key = sa.Table(
    "oc_m_colkey",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("user_email", sa.String(50), key="email", nullable=False, unique=True),
    sa.Column("full_name", sa.String(50), key="name", nullable=True),
)


# ORM attribute names != column names -------------------------------------------
class MItem(Base):
    __tablename__ = "oc_m_item"
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column("item_code", sa.String(20), unique=True)
    title: Mapped[Optional[str]] = mapped_column("item_title", sa.String(40))  # noqa: UP045


# a TypeDecorator that normalises the bound value ---------------------------------
class Lower(sa.types.TypeDecorator[str]):
    impl = sa.String(50)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


normalised = sa.Table(
    "oc_m_lower",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", Lower(), nullable=False, unique=True),
    sa.Column("v", sa.String(20), nullable=True),
)


# Python-side defaults, scalar and callable -----------------------------------------
def _token() -> str:
    return "generated"


python_default = sa.Table(
    "oc_m_pydefault",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("k", sa.String(20), nullable=False, unique=True),
    sa.Column("n", sa.Integer, nullable=False, default=7),
    sa.Column("token", sa.String(20), nullable=False, default=_token),
    sa.Column("v", sa.String(20), nullable=True),
)

# a server default ---------------------------------------------------------------
server_default = sa.Table(
    "oc_m_srvdefault",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("k", sa.String(20), nullable=False, unique=True),
    sa.Column("status", sa.String(20), nullable=False, server_default="new"),
    sa.Column("v", sa.String(20), nullable=True),
)

# onupdate -----------------------------------------------------------------------
on_update = sa.Table(
    "oc_m_onupdate",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("k", sa.String(20), nullable=False, unique=True),
    sa.Column("v", sa.String(20), nullable=True),
    sa.Column("rev", sa.String(20), nullable=False, default="created", onupdate="touched"),
)

# composite primary key ----------------------------------------------------------
composite_pk = sa.Table(
    "oc_m_compk",
    metadata,
    sa.Column("a", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("b", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("v", sa.String(20), nullable=True),
)

# nullable unique column -----------------------------------------------------------
nullable_unique = sa.Table(
    "oc_m_nullable",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("code", sa.String(20), nullable=True, unique=True),
    sa.Column("v", sa.String(20), nullable=True),
)

# autoincrement primary key given as None --------------------------------------------
autoinc = sa.Table(
    "oc_m_autoinc",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("k", sa.String(20), nullable=False, unique=True),
    sa.Column("v", sa.String(20), nullable=True),
)

# a NOT NULL column without default that an update does not give ---------------------
required = sa.Table(
    "oc_m_required",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("k", sa.String(20), nullable=False, unique=True),
    sa.Column("label", sa.String(20), nullable=False),
    sa.Column("v", sa.String(20), nullable=True),
)

# partial unique index (PostgreSQL, SQLite) ------------------------------------------
partial = sa.Table(
    "oc_m_partial",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.String(50), nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("v", sa.String(20), nullable=True),
)
sa.Index(
    "uq_m_partial_active_email",
    partial.c.email,
    unique=True,
    postgresql_where=partial.c.active,
    sqlite_where=partial.c.active,
)

# expression unique index lower(email) (MariaDB 10.11 has none: not created there) -----
expression = sa.Table(
    "oc_m_expr",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.String(50), nullable=False),
    sa.Column("v", sa.String(20), nullable=True),
)
sa.Index("uq_m_expr_lower_email", sa.func.lower(expression.c.email), unique=True).ddl_if(
    callable_=has("expression_indexes")
)

# case-insensitive collation (Backend.ci_collation): MariaDB's default; SQLite
# NOCASE; PostgreSQL a nondeterministic ICU collation --------------------------------
collated = sa.Table(
    "oc_m_collate",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("code", ci_collated(), nullable=False, unique=True),
    sa.Column("v", sa.String(20), nullable=True),
)
sa.event.listen(collated, "before_create", run_setup("ci_collation_setup"))

# partitioned table (PostgreSQL) -------------------------------------------------------
partitioned = sa.Table(
    "oc_m_part",
    metadata,
    sa.Column("region", sa.String(10), primary_key=True),
    sa.Column("k", sa.String(20), primary_key=True),
    sa.Column("v", sa.String(20), nullable=True),
    postgresql_partition_by="LIST (region)",
)
sa.event.listen(
    partitioned,
    "after_create",
    sa.DDL("CREATE TABLE oc_m_part_eu PARTITION OF oc_m_part FOR VALUES IN ('eu')").execute_if(
        dialect="postgresql"
    ),
)


# JSON and Enum columns (bind processing outside the key) ------------------------------
class Colour(enum.Enum):
    red = "red"
    blue = "blue"


json_enum = sa.Table(
    "oc_m_json",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("k", sa.String(20), nullable=False, unique=True),
    sa.Column("doc", sa.JSON, nullable=True),
    sa.Column("colour", sa.Enum(Colour), nullable=True),
)

# a generated (computed) column: never written, always read ----------------------------
computed = sa.Table(
    "oc_m_computed",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("k", sa.String(20), nullable=False, unique=True),
    sa.Column("n", sa.Integer, nullable=True),
    sa.Column("twice", sa.Integer, sa.Computed("n * 2")),  # STORED on PostgreSQL, else VIRTUAL
)

# an identity primary key (GENERATED BY DEFAULT AS IDENTITY; AUTO_INCREMENT on MariaDB,
# the rowid on SQLite) ---------------------------------------------------------------
identity = sa.Table(
    "oc_m_identity",
    metadata,
    sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
    sa.Column("k", sa.String(20), nullable=False, unique=True),
    sa.Column("v", sa.String(20), nullable=True),
)

# names that need quoting: reserved words, capitals, spaces ------------------------------
quoted = sa.Table(
    "Order Line",
    metadata,
    sa.Column("Id", sa.Integer, primary_key=True),
    sa.Column("select", sa.String(20), nullable=False, unique=True),
    sa.Column("Key Name", sa.String(20), nullable=True),
)

# a table in another schema (PostgreSQL, DuckDB: a schema; MariaDB: another database,
# one per test worker since databases are the server's) ---------------------------------
OTHER_SCHEMA = "oc_m_other" + os.environ.get("PYTEST_XDIST_WORKER", "")
in_schema = sa.Table(
    "oc_m_schema",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("k", sa.String(20), nullable=False, unique=True),
    sa.Column("v", sa.String(20), nullable=True),
    schema=OTHER_SCHEMA,
)
sa.event.listen(
    in_schema,
    "before_create",
    lambda _t, conn, **_kw: conn.execute(sa.schema.CreateSchema(OTHER_SCHEMA, if_not_exists=True)),
)


# keys of other types than strings and integers: values as the database stores
# them (SQLite keeps dates as text, NUMERIC(p, s) rounds to s places) ---------------
def _typed_key(name: str, kind: Any) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("k", kind, nullable=False, unique=True),
        sa.Column("v", sa.String(20), nullable=True),
    )


# a primary key filled by a Python default (SQLModel's `Field(default_factory=uuid4,
# primary_key=True)`): within reach of MySQL's INSERT IGNORE, never given ----------
uuid_pk = sa.Table(
    "oc_m_uuid_pk",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True, default=uuid.uuid4),
    sa.Column("k", sa.String(20), nullable=False, unique=True),
    sa.Column("v", sa.String(20), nullable=True),
)

# a natural text primary key in a table SQLite keeps WITHOUT ROWID and STRICT (values
# checked against the declared types; the other databases ignore the options) --------
_text = sa.String(20).with_variant(sa.Text(), "sqlite")  # (STRICT takes no VARCHAR)
strict_natural = sa.Table(
    "oc_m_strict",
    metadata,
    sa.Column("code", _text, primary_key=True),
    sa.Column("n", sa.Integer, nullable=True),
    sa.Column("v", _text, nullable=True),
    sqlite_with_rowid=False,
    sqlite_strict=True,
)

bigint_key = _typed_key("oc_m_bigint_key", sa.BigInteger)
date_key = _typed_key("oc_m_date_key", sa.Date)
datetime_key = _typed_key("oc_m_datetime_key", sa.DateTime)
numeric_key = _typed_key("oc_m_numeric_key", sa.Numeric(10, 2))
uuid_key = _typed_key("oc_m_uuid_key", sa.Uuid)
enum_key = _typed_key("oc_m_enum_key", sa.Enum(Colour, name="oc_m_key_colour"))


# single-table inheritance ------------------------------------------------------------
class MAnimal(Base):
    __tablename__ = "oc_m_animal"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(20), unique=True)
    kind: Mapped[str] = mapped_column(sa.String(10))
    v: Mapped[Optional[str]] = mapped_column(sa.String(20))  # noqa: UP045
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "animal"}  # noqa: RUF012


class MDog(MAnimal):
    __mapper_args__ = {"polymorphic_identity": "dog"}  # noqa: RUF012


# SQLModel table class ------------------------------------------------------------------
class MHero(SQLModel, table=True):
    __tablename__ = "oc_m_hero"
    id: Optional[int] = Field(default=None, primary_key=True)  # noqa: UP045
    name: str = Field(max_length=20, unique=True)
    v: Optional[str] = Field(default=None, max_length=20)  # noqa: UP045


FEATURES = [
    Feature(
        "column_key",
        column_key,
        row={"email": "a@x", "name": "A"},
        key=("email",),
        change={"name": "B"},
        stored={"email": "a@x", "name": "A"},
    ),
    Feature(
        "orm_attribute",
        MItem,
        row={"code": "c1", "title": "first"},
        key=("code",),
        change={"title": "second"},
        stored={"code": "c1", "title": "first"},
        instance_of=MItem,
    ),
    Feature(
        "typedecorator",
        normalised,
        row={"email": "a@x", "v": "x"},
        again={"email": "A@X"},
        key=("email",),
        change={"v": "y"},
        stored={"email": "a@x", "v": "x"},
    ),
    Feature(
        "python_default",
        python_default,
        row={"k": "a", "v": "x"},
        key=("k",),
        change={"v": "y"},
        stored={"k": "a", "n": 7, "token": "generated", "v": "x"},
    ),
    Feature(
        "server_default",
        server_default,
        row={"k": "a", "v": "x"},
        key=("k",),
        change={"v": "y"},
        stored={"k": "a", "status": "new", "v": "x"},
    ),
    Feature(
        "onupdate",
        on_update,
        row={"k": "a", "v": "x"},
        key=("k",),
        change={"v": "y"},
        stored={"k": "a", "v": "x", "rev": "created"},
        updated={"k": "a", "v": "y", "rev": "touched"},
    ),
    Feature(
        "composite_pk",
        composite_pk,
        row={"a": 1, "b": 2, "v": "x"},
        key=("a", "b"),
        change={"v": "y"},
        stored={"a": 1, "b": 2, "v": "x"},
    ),
    Feature(
        "nullable_unique",
        nullable_unique,
        row={"code": "c1", "v": "x"},
        key=("code",),
        change={"v": "y"},
        stored={"code": "c1", "v": "x"},
    ),
    Feature(
        "autoincrement_none",
        autoinc,
        row={"id": None, "k": "a", "v": "x"},
        key=("k",),
        change={"v": "y"},
        stored={"k": "a", "v": "x"},
    ),
    Feature(
        "not_null_not_given",
        required,
        row={"k": "a", "label": "L", "v": "x"},
        key=("k",),
        change={"v": "y"},  # label (NOT NULL, no default) is not given by the update
        stored={"k": "a", "label": "L", "v": "x"},
    ),
    Feature(
        "partial_index",
        partial,
        row={"email": "a@x", "active": True, "v": "x"},
        key=("email", "active"),
        on="email",
        change={"v": "y"},
        stored={"email": "a@x", "active": True, "v": "x"},
        needs=("partial_indexes",),
        why_not="MariaDB and DuckDB have no partial indexes",
    ),
    Feature(
        "expression_index",
        expression,
        row={"email": "a@x", "v": "x"},
        again={"email": "A@X"},
        key=("email",),
        on="uq_m_expr_lower_email",
        change={"v": "y"},
        stored={"email": "a@x", "v": "x"},
        updated={"v": "y"},  # whether upsert rewrites email to 'A@X' is not decided
        refused={
            "expression_indexes": "no expression index targets (MariaDB 10.11 has no"
            " functional indexes; DuckDB's ON CONFLICT names columns only)"
        },
    ),
    Feature(
        "collation",
        collated,
        row={"code": "abc", "v": "x"},
        again={"code": "ABC"},
        key=("code",),
        change={"v": "y"},
        stored={"code": "abc", "v": "x"},
        needs=("case_insensitive_keys",),
        why_not="DuckDB's unique indexes compare bytes, whatever the column's collation",
    ),
    Feature(
        "partitioned",
        partitioned,
        row={"region": "eu", "k": "a", "v": "x"},
        key=("region", "k"),
        change={"v": "y"},
        stored={"region": "eu", "k": "a", "v": "x"},
        needs=("partitioned_tables",),
        why_not="partitioned tables are a PostgreSQL feature",
    ),
    Feature(
        "json_enum",
        json_enum,
        row={"k": "a", "doc": {"a": [1, "x"]}, "colour": Colour.red},
        key=("k",),
        change={"colour": Colour.blue, "doc": {"b": None}},  # (upsert's where= compares the
        # first: PostgreSQL's json has no equality operator)
        stored={"k": "a", "doc": {"a": [1, "x"]}, "colour": Colour.red},
    ),
    Feature(
        "computed",
        computed,
        row={"k": "a", "n": 2},
        key=("k",),
        change={"n": 5},
        stored={"k": "a", "n": 2, "twice": 4},
        updated={"k": "a", "n": 5, "twice": 10},
    ),
    Feature(
        "identity",
        identity,
        row={"k": "a", "v": "x"},
        key=("k",),
        change={"v": "y"},
        stored={"k": "a", "v": "x"},
        needs=("identity_columns",),
        why_not="DuckDB has no identity columns",
    ),
    Feature(
        "quoted_names",
        quoted,
        row={"select": "a", "Key Name": "x"},
        key=("select",),
        change={"Key Name": "y"},
        stored={"select": "a", "Key Name": "x"},
    ),
    Feature(
        "other_schema",
        in_schema,
        row={"k": "a", "v": "x"},
        key=("k",),
        change={"v": "y"},
        stored={"k": "a", "v": "x"},
        needs=("schemas",),
        why_not="SQLite's schemas are attached files (ATTACH on every connection)",
    ),
    Feature(
        "uuid_pk_default",
        uuid_pk,
        row={"k": "a", "v": "x"},
        key=("k",),
        change={"v": "y"},
        stored={"k": "a", "v": "x"},
    ),
    Feature(
        "natural_pk_strict",
        strict_natural,
        row={"code": "a", "n": 1, "v": "x"},
        key=("code",),
        change={"v": "y"},
        stored={"code": "a", "n": 1, "v": "x"},
    ),
    Feature(
        "bigint_key",
        bigint_key,
        row={"k": 2**40 + 1, "v": "x"},
        key=("k",),
        change={"v": "y"},
        stored={"k": 2**40 + 1, "v": "x"},
    ),
    Feature(
        "date_key",
        date_key,
        row={"k": dt.date(2026, 1, 2), "v": "x"},
        key=("k",),
        change={"v": "y"},
        stored={"k": dt.date(2026, 1, 2), "v": "x"},
    ),
    Feature(
        "datetime_key",
        datetime_key,
        row={"k": dt.datetime(2026, 1, 2, 3, 4, 5), "v": "x"},
        key=("k",),
        change={"v": "y"},
        stored={"k": dt.datetime(2026, 1, 2, 3, 4, 5), "v": "x"},
    ),
    Feature(
        "numeric_key",
        numeric_key,
        row={"k": 1.1, "v": "x"},  # a float for NUMERIC(10, 2): stored as 1.10
        again={"k": decimal.Decimal("1.10")},
        key=("k",),
        change={"v": "y"},
        stored={"k": decimal.Decimal("1.10"), "v": "x"},
    ),
    Feature(
        "uuid_key",
        uuid_key,
        row={"k": uuid.UUID(int=5), "v": "x"},
        key=("k",),
        change={"v": "y"},
        stored={"k": uuid.UUID(int=5), "v": "x"},
    ),
    Feature(
        "enum_key",
        enum_key,
        row={"k": Colour.red, "v": "x"},
        key=("k",),
        change={"v": "y"},
        stored={"k": Colour.red, "v": "x"},
    ),
    Feature(
        "single_table_inheritance",
        MDog,
        row={"name": "rex", "v": "x"},
        key=("name",),
        change={"v": "y"},
        stored={"name": "rex", "kind": "dog", "v": "x"},
        instance_of=MDog,
    ),
    Feature(
        "sqlmodel",
        MHero,
        row={"name": "a", "v": "x"},
        key=("name",),
        change={"v": "y"},
        stored={"name": "a", "v": "x"},
        instance_of=MHero,
    ),
]
BY_NAME = {f.name: f for f in FEATURES}
