"""Key identity as the database sees it, on every call.

Outcomes, in-call repeats and the pairing of returned rows with input rows must
follow the key as the database compares it (bound, stored, collated; column
keys, not names), never Python equality of what the caller passed:

- a column whose key differs from its database name (results use the key);
- an ORM attribute whose name differs from its column (results use the attribute);
- a TypeDecorator key that normalises on bind (lower-cases an e-mail address);
- MariaDB's default case-insensitive collation ('ABC' is the key 'abc');
- an expression unique index, lower(ext), on PostgreSQL and SQLite (MariaDB
  refuses it before any SQL is sent).

Each through insert_ignore, upsert, get_or_create, update_or_create and seed,
async and sync, asserting the stored rows and the reported outcome.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import onconflict
import onconflict.sync
from onconflict.exceptions import NotSupportedError
from tests.conftest import Backend
from tests.handles import ENGINES, Handle


class Lower(sa.types.TypeDecorator[str]):
    """Lower-cases on the way in: the database stores (and compares) 'a@x.org'."""

    impl = sa.String(50)
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else value.lower()


md = sa.MetaData()
ranked = sa.Table(
    "oc_ki_ranked",
    md,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("CoDe", sa.String(20), key="code", nullable=False, unique=True),
    sa.Column("rAnK", sa.Integer, key="rank", nullable=True),
)
emails = sa.Table(
    "oc_ki_emails",
    md,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", Lower, nullable=False, unique=True),
    sa.Column("name", sa.String(20), nullable=True),
)
codes = sa.Table(  # the database's default collation (MariaDB: case-insensitive)
    "oc_ki_codes",
    md,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("code", sa.String(20), nullable=False, unique=True),
    sa.Column("n", sa.Integer, nullable=True),
)


class Base(DeclarativeBase):
    metadata = md


class Badge(Base):
    __tablename__ = "oc_ki_badges"
    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column("CoDe", sa.String(20), unique=True)
    level: Mapped[int | None] = mapped_column("lvl", sa.Integer)


expr_md = sa.MetaData()  # PostgreSQL and SQLite only (MariaDB 10.11 has no expression index)
exts = sa.Table(
    "oc_ki_exts",
    expr_md,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("ext", sa.String(20), nullable=False),
    sa.Column("n", sa.Integer, nullable=True),
)
lower_ext = sa.Index("ix_oc_ki_ext_lower", sa.func.lower(exts.c.ext), unique=True)


@pytest.fixture
async def schema(aengine: AsyncEngine, backend: Backend) -> AsyncIterator[None]:
    metas = [md] + ([expr_md] if backend.expression_indexes else [])
    async with aengine.begin() as conn:
        for meta in metas:
            await conn.run_sync(meta.drop_all)
            await conn.run_sync(meta.create_all)
    yield
    async with aengine.begin() as conn:
        for meta in metas:
            await conn.run_sync(meta.drop_all)


# the public calls through the async API or the sync twin, on an engine
pytestmark = [pytest.mark.usefixtures("schema"), pytest.mark.handles(*ENGINES)]


def keys_of(row: Any) -> set[str]:
    return set(row)


# -- a column whose key differs from its name ------------------------------------------


async def test_column_key_differs_from_name(handle: Handle) -> None:
    await handle.add(ranked, {"code": "a", "rank": 1})
    cols = {"id", "code", "rank"}

    done = await handle.call("insert_ignore", ranked, [{"code": "a", "rank": 2}, {"code": "b"}])
    assert [r["code"] for r in done.inserted] == ["b"]
    assert keys_of(done.inserted[0]) == cols
    assert done.existing == [{"code": "a", "rank": 2}]

    up = await handle.call("upsert", ranked, [{"code": "a", "rank": 5}, {"code": "c", "rank": 6}])
    assert [(r["code"], r["rank"]) for r in up.updated] == [("a", 5)]
    assert [(r["code"], r["rank"]) for r in up.inserted] == [("c", 6)]
    assert all(keys_of(r) == cols for r in up.updated + up.inserted)
    same = await handle.call("upsert", ranked, [{"code": "a", "rank": 5}], skip_unchanged=True)
    assert (same.inserted, same.updated, same.unchanged) == ([], [], [{"code": "a", "rank": 5}])

    row, created = await handle.call("get_or_create", ranked, {"code": "a"}, {"rank": 9})
    assert (created, keys_of(row), row["rank"]) == (False, cols, 5)
    row, created = await handle.call("get_or_create", ranked, {"code": "d"}, {"rank": 4})
    assert (created, keys_of(row), row["rank"]) == (True, cols, 4)

    row, created = await handle.call("update_or_create", ranked, {"code": "a"}, {"rank": 7})
    assert (created, keys_of(row), row["rank"]) == (False, cols, 7)
    row, created = await handle.call("update_or_create", ranked, {"code": "e"}, {"rank": 8})
    assert (created, keys_of(row), row["rank"]) == (True, cols, 8)

    seed_rows = [{"code": "a", "rank": 1}, {"code": "f", "rank": 2}]
    report = await handle.call("seed", {ranked: seed_rows}, mode="verify")
    assert report.tables[0].missing == [seed_rows[1]]
    assert [(g, s["rank"]) for g, s in report.tables[0].differing] == [(seed_rows[0], 7)]
    assert keys_of(report.tables[0].differing[0][1]) == cols
    report = await handle.call("seed", {ranked: seed_rows}, mode="upsert")
    assert [(r["code"], r["rank"]) for r in report.tables[0].updated] == [("a", 1)]
    assert [(r["code"], r["rank"]) for r in report.tables[0].inserted] == [("f", 2)]
    report = await handle.call("seed", {ranked: seed_rows}, mode="insert")
    assert report.tables[0].existing == seed_rows

    stored = await handle.rows(ranked, "code")
    assert {k: v["rank"] for k, v in stored.items()} == {
        "a": 1,
        "b": None,
        "c": 6,
        "d": 4,
        "e": 8,
        "f": 2,
    }


# -- an ORM attribute whose name differs from its column ---------------------------------


async def test_orm_attribute_alias(handle: Handle) -> None:
    table = Badge.__table__
    assert isinstance(table, sa.Table)
    await handle.add(table, {"CoDe": "a", "lvl": 1})
    attrs = {"id", "label", "level"}

    done = await handle.call("insert_ignore", Badge, [{"label": "a"}, {"label": "b", "level": 2}])
    assert [(r["label"], r["level"]) for r in done.inserted] == [("b", 2)]
    assert keys_of(done.inserted[0]) == attrs
    assert done.existing == [{"label": "a"}]

    up = await handle.call("upsert", Badge, [{"label": "a", "level": 3}, {"label": "c"}])
    assert [(r["label"], r["level"]) for r in up.updated] == [("a", 3)]
    assert [r["label"] for r in up.inserted] == ["c"]
    assert all(keys_of(r) == attrs for r in up.updated + up.inserted)

    row, created = await handle.call("get_or_create", Badge, {"label": "a"}, {"level": 9})
    assert (created, keys_of(row), row["level"]) == (False, attrs, 3)
    row, created = await handle.call("update_or_create", Badge, {"label": "a"}, {"level": 4})
    assert (created, keys_of(row), row["level"]) == (False, attrs, 4)

    report = await handle.call("seed", {Badge: [{"label": "a", "level": 5}]}, mode="upsert")
    assert [(r["label"], r["level"]) for r in report.tables[0].updated] == [("a", 5)]
    stored = await handle.rows(table, "CoDe")
    assert {k: v["lvl"] for k, v in stored.items()} == {"a": 5, "b": 2, "c": None}


async def test_orm_alias_in_a_session(aengine: AsyncEngine, sengine: Engine) -> None:
    table = Badge.__table__
    assert isinstance(table, sa.Table)
    async with aengine.begin() as conn:
        await conn.execute(table.insert(), [{"CoDe": "a", "lvl": 1}])
    async with AsyncSession(aengine) as session:
        badge, created = await onconflict.get_or_create(session, Badge, {"label": "a"})
        assert (created, badge.label, badge.level) == (False, "a", 1)
    async with AsyncSession(aengine) as session:
        badge, created = await onconflict.update_or_create(
            session, Badge, {"label": "a"}, {"level": 2}
        )
        assert (created, badge.label, badge.level) == (False, "a", 2)
        await session.commit()
    with Session(sengine) as sync_session:
        badge, created = onconflict.sync.get_or_create(
            sync_session, Badge, {"label": "b"}, {"level": 3}
        )
        assert (created, badge.label, badge.level) == (True, "b", 3)
        sync_session.commit()


# -- a TypeDecorator key that normalises on bind -----------------------------------------


async def test_normalising_type_decorator_key(handle: Handle) -> None:
    await handle.add(emails, {"email": "a@x.org", "name": "first"})

    done = await handle.call(
        "insert_ignore", emails, [{"email": "A@X.org", "name": "dup"}, {"email": "B@x.org"}]
    )
    assert [r["email"] for r in done.inserted] == ["b@x.org"]
    assert done.existing == [{"email": "A@X.org", "name": "dup"}]

    # repeats in one call are repeats of the bound key
    rows = [{"email": "C@x.org", "name": "one"}, {"email": "c@X.ORG", "name": "two"}]
    done = await handle.call("insert_ignore", emails, rows)
    assert ([r["name"] for r in done.inserted], done.existing) == (["one"], [rows[1]])
    up = await handle.call("upsert", emails, rows)  # duplicates="last"
    assert [(r["email"], r["name"]) for r in up.updated] == [("c@x.org", "two")]
    assert (up.inserted, up.unchanged) == ([], [rows[0]])

    up = await handle.call(
        "upsert", emails, [{"email": "A@X.ORG", "name": "new"}, {"email": "D@x.org"}]
    )
    assert [(r["email"], r["name"]) for r in up.updated] == [("a@x.org", "new")]
    assert [r["email"] for r in up.inserted] == ["d@x.org"]
    same = await handle.call(
        "upsert", emails, [{"email": "A@x.org", "name": "new"}], skip_unchanged=True
    )
    assert (same.updated, same.inserted) == ([], [])

    row, created = await handle.call("get_or_create", emails, {"email": "A@X.ORG"}, {"name": "n"})
    assert (created, row["email"], row["name"]) == (False, "a@x.org", "new")
    row, created = await handle.call("get_or_create", emails, {"email": "E@x.org"}, {"name": "e"})
    assert (created, row["email"]) == (True, "e@x.org")
    row, created = await handle.call(
        "update_or_create", emails, {"email": "E@X.ORG"}, {"name": "u"}
    )
    assert (created, row["email"], row["name"]) == (False, "e@x.org", "u")

    seed_rows = [{"email": "A@X.org", "name": "seeded"}, {"email": "F@x.org", "name": "f"}]
    report = await handle.call("seed", {emails: seed_rows}, mode="verify")
    part = report.tables[0]
    assert (part.missing, [g for g, _ in part.differing]) == ([seed_rows[1]], [seed_rows[0]])
    report = await handle.call("seed", {emails: seed_rows}, mode="upsert")
    assert [r["name"] for r in report.tables[0].updated] == ["seeded"]
    assert [r["email"] for r in report.tables[0].inserted] == ["f@x.org"]
    report = await handle.call("seed", {emails: seed_rows}, mode="verify")
    assert report.tables[0].existing == seed_rows

    stored = await handle.rows(emails, "email")
    assert {k: v["name"] for k, v in stored.items()} == {
        "a@x.org": "seeded",
        "b@x.org": None,
        "c@x.org": "two",
        "d@x.org": None,
        "e@x.org": "u",
        "f@x.org": "f",
    }


# -- the database's collation ------------------------------------------------------------


async def test_collation_decides_the_key(handle: Handle, backend: Backend) -> None:
    """MariaDB's default utf8mb4 collation is case-insensitive: 'ABC' is the key
    'abc'. PostgreSQL's and SQLite's defaults are binary: two keys."""
    folded = backend.folds_case
    await handle.add(codes, {"code": "abc", "n": 1})

    done = await handle.call("insert_ignore", codes, [{"code": "ABC", "n": 2}])
    assert len(done.existing if folded else done.inserted) == 1

    up = await handle.call("upsert", codes, [{"code": "ABC", "n": 3}])
    # the key column is not updated: MariaDB keeps the stored spelling
    assert ([r["code"] for r in up.updated], up.inserted) == (["abc" if folded else "ABC"], [])
    if folded:
        assert (await handle.rows(codes, "code"))["abc"]["n"] == 3

    pair = [{"code": "XYZ", "n": 1}, {"code": "xyz", "n": 2}]
    done = await handle.call("insert_ignore", codes, pair)
    assert [r["code"] for r in done.inserted] == (["XYZ"] if folded else ["XYZ", "xyz"])
    assert done.existing == ([pair[1]] if folded else [])
    pair = [{"code": "QRS", "n": 1}, {"code": "qrs", "n": 2}]
    up = await handle.call("upsert", codes, pair)  # duplicates="last"
    if folded:
        assert ([r["code"] for r in up.inserted], up.unchanged) == (["qrs"], [pair[0]])
        with pytest.raises(ValueError, match="same key"):
            await handle.call("upsert", codes, pair, duplicates="error")
    else:
        assert [r["code"] for r in up.inserted] == ["QRS", "qrs"]

    row, created = await handle.call("get_or_create", codes, {"code": "AbC"}, {"n": 9})
    assert created is not folded
    row, created = await handle.call("update_or_create", codes, {"code": "aBc"}, {"n": 7})
    assert created is not folded
    if folded:
        assert (row["code"], row["n"]) == ("abc", 7)

    seed_rows = [{"code": "ABC", "n": 7}]
    report = await handle.call("seed", {codes: seed_rows}, mode="verify")
    part = report.tables[0]
    assert (len(part.existing), len(part.differing)) == ((1, 0) if folded else (0, 1))
    report = await handle.call("seed", {codes: [{"code": "ABC", "n": 8}]}, mode="upsert")
    assert len(report.tables[0].updated) == 1
    stored = await handle.rows(codes, "code")
    if folded:
        assert {k: v["n"] for k, v in stored.items()} == {"abc": 8, "XYZ": 1, "qrs": 2}
    else:
        assert (stored["ABC"]["n"], stored["abc"]["n"]) == (8, 1)


# -- an expression unique index ----------------------------------------------------------


async def test_expression_index_target(handle: Handle, backend: Backend) -> None:
    if not backend.expression_indexes:
        for call in (
            handle.call("insert_ignore", exts, [{"ext": "TXT"}], on=lower_ext),
            handle.call("upsert", exts, [{"ext": "TXT"}], on=lower_ext),
            handle.call("get_or_create", exts, {"ext": "TXT"}, on=lower_ext),
            handle.call("update_or_create", exts, {"ext": "TXT"}, {"n": 1}, on=lower_ext),
            handle.call("seed", {exts: [{"ext": "TXT"}]}, on=lower_ext),
        ):
            with pytest.raises(NotSupportedError, match="expression"):
                await call  # the table does not exist: refused before any SQL
        return
    await handle.add(exts, {"ext": "TXT", "n": 1})

    done = await handle.call("insert_ignore", exts, [{"ext": "txt"}, {"ext": "pdf"}], on=lower_ext)
    assert ([r["ext"] for r in done.inserted], done.existing) == (["pdf"], [{"ext": "txt"}])

    up = await handle.call(
        "upsert", exts, [{"ext": "txt", "n": 2}, {"ext": "Doc", "n": 3}], on=lower_ext
    )
    assert [(r["ext"], r["n"]) for r in up.updated] == [("txt", 2)]
    assert [(r["ext"], r["n"]) for r in up.inserted] == [("Doc", 3)]
    pair = [{"ext": "GIF", "n": 1}, {"ext": "gif", "n": 2}]
    up = await handle.call("upsert", exts, pair, on=lower_ext)  # duplicates="last"
    assert ([(r["ext"], r["n"]) for r in up.inserted], up.unchanged) == ([("gif", 2)], [pair[0]])

    row, created = await handle.call("get_or_create", exts, {"ext": "TXT"}, {"n": 9}, on=lower_ext)
    assert (created, row["ext"], row["n"]) == (False, "txt", 2)
    row, created = await handle.call(
        "update_or_create", exts, {"ext": "DOC"}, {"n": 4}, on=lower_ext
    )
    assert (created, row["n"]) == (False, 4)

    report = await handle.call(
        "seed", {exts: [{"ext": "PDF", "n": 5}, {"ext": "png"}]}, mode="upsert", on=lower_ext
    )
    assert [r["n"] for r in report.tables[0].updated] == [5]
    assert [r["ext"] for r in report.tables[0].inserted] == ["png"]
    stored = await handle.rows(exts, "ext")
    assert {k.lower(): v["n"] for k, v in stored.items()} == {
        "txt": 2,
        "pdf": 5,
        "doc": 4,
        "gif": 2,
        "png": None,
    }


# -- a case-insensitive key column, declared in the metadata -----------------------------


def _ci_table(backend: Backend) -> sa.Table:
    """The backend's case-insensitive string (SQLite ``COLLATE NOCASE``,
    PostgreSQL ``citext``, MariaDB's default collation)."""
    return sa.Table(
        "oc_ki_ci",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("code", backend.ci_string(), nullable=False, unique=True),
        sa.Column("n", sa.Integer, nullable=True),
    )


@pytest.mark.needs("case_insensitive_keys")
async def test_case_insensitive_key_column(
    handle: Handle, backend: Backend, aengine: AsyncEngine
) -> None:
    table = _ci_table(backend)
    async with aengine.begin() as conn:
        for statement in backend.ci_setup:
            await conn.execute(sa.text(statement))
        await conn.run_sync(table.metadata.drop_all)
        await conn.run_sync(table.metadata.create_all)
    try:
        await handle.add(table, {"code": "abc", "n": 1})
        rows = [{"code": "ABC"}, {"code": "Q"}, {"code": "q"}]
        done = await handle.call("insert_ignore", table, rows)
        assert ([r["code"] for r in done.inserted], done.existing) == (["Q"], [rows[0], rows[2]])

        up = await handle.call("upsert", table, [{"code": "ABC", "n": 2}])
        assert ([(r["code"], r["n"]) for r in up.updated], up.inserted) == ([("abc", 2)], [])
        pair = [{"code": "XY", "n": 1}, {"code": "xy", "n": 2}]
        up = await handle.call("upsert", table, pair)
        assert ([r["code"] for r in up.inserted], up.unchanged) == (["xy"], [pair[0]])
        with pytest.raises(ValueError, match="same key"):
            await handle.call("upsert", table, pair, duplicates="error")

        row, created = await handle.call("get_or_create", table, {"code": "ABC"}, {"n": 9})
        assert (created, row["code"], row["n"]) == (False, "abc", 2)
        row, created = await handle.call("update_or_create", table, {"code": "aBc"}, {"n": 7})
        assert (created, row["code"], row["n"]) == (False, "abc", 7)

        report = await handle.call("seed", {table: [{"code": "ABC", "n": 8}]}, mode="upsert")
        assert [(r["code"], r["n"]) for r in report.tables[0].updated] == [("abc", 8)]
        report = await handle.call("seed", {table: [{"code": "ABC", "n": 8}]}, mode="verify")
        assert len(report.tables[0].existing) == 1
        stored = await handle.rows(table, "code")
        assert {k: v["n"] for k, v in stored.items()} == {"abc": 8, "Q": None, "xy": 2}
    finally:
        async with aengine.begin() as conn:
            await conn.run_sync(table.metadata.drop_all)


# -- the other handles: connections, and the classify strategy ---------------------------


@pytest.mark.needs("savepoints")
async def test_connections_and_classify(aengine: AsyncEngine, sengine: Engine) -> None:
    async with aengine.begin() as conn:
        await conn.execute(ranked.insert(), [{"code": "a", "rank": 1}])
        done = await onconflict.insert_ignore(
            conn, ranked, [{"code": "a"}, {"code": "b", "rank": 2}], strategy="classify"
        )
        assert [(r["code"], r["rank"]) for r in done.inserted] == [("b", 2)]
        up = await onconflict.upsert(conn, emails, [{"email": "X@Y.org", "name": "x"}])
        assert [r["email"] for r in up.inserted] == ["x@y.org"]
    with sengine.begin() as sconn:
        up = onconflict.sync.upsert(sconn, emails, [{"email": "x@Y.ORG", "name": "z"}])
        assert [(r["email"], r["name"]) for r in up.updated] == [("x@y.org", "z")]
        done = onconflict.sync.insert_ignore(
            sconn, ranked, [{"code": "b"}, {"code": "c", "rank": 3}], strategy="classify"
        )
        assert ([r["rank"] for r in done.inserted], done.existing) == ([3], [{"code": "b"}])


# -- a partial unique index --------------------------------------------------------------

subs = sa.Table(
    "oc_ki_subs",
    expr_md,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.String(50), nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("n", sa.Integer, nullable=True),
)
active_email = sa.Index(
    "ix_oc_ki_active_email",
    subs.c.email,
    unique=True,
    postgresql_where=subs.c.active,
    sqlite_where=subs.c.active,
)


@pytest.mark.needs("partial_indexes")  # MariaDB has no partial indexes
async def test_partial_index_target(handle: Handle, backend: Backend) -> None:
    """Only rows inside the index's WHERE can conflict: outcomes and in-call
    repeats follow it (SQLite reported every upserted row inserted; PostgreSQL
    refused two rows of one key in one call)."""
    await handle.add(subs, {"email": "a@x", "active": True, "n": 1})
    kw: dict[str, Any] = {"on": active_email, "update": ["n"]}

    up = await handle.call("upsert", subs, [{"email": "a@x", "active": True, "n": 2}], **kw)
    assert ([r["n"] for r in up.updated], up.inserted) == ([2], [])
    up = await handle.call("upsert", subs, [{"email": "a@x", "active": False, "n": 3}], **kw)
    assert ([r["n"] for r in up.inserted], up.updated) == ([3], [])
    pair = [{"email": "b@x", "active": True, "n": 1}, {"email": "b@x", "active": True, "n": 2}]
    up = await handle.call("upsert", subs, pair, **kw)
    assert ([r["n"] for r in up.inserted], up.unchanged) == ([2], [pair[0]])

    rows = [{"email": "a@x", "active": True}, {"email": "a@x", "active": False}]
    done = await handle.call("insert_ignore", subs, rows, on=active_email)
    assert ([r["active"] for r in done.inserted], done.existing) == ([False], [rows[0]])

    stored = await handle.rows(subs, "id")
    assert sorted((r["email"], r["active"], r["n"] or 0) for r in stored.values()) == [
        ("a@x", False, 0),
        ("a@x", False, 3),
        ("a@x", True, 2),
        ("b@x", True, 2),
    ]


# -- only duplicates are skipped, with renamed columns too -------------------------------

renamed = sa.Table(
    "oc_ki_renamed",
    md,
    sa.Column("ID", sa.Integer, primary_key=True, autoincrement=False, key="id"),
    sa.Column("Label", sa.String(5), key="label", nullable=False),
)


async def test_renamed_columns_raise_what_is_not_a_duplicate(handle: Handle) -> None:
    """NOT NULL on a table whose primary key's name differs from its key: the
    server's own error, nothing stored (MariaDB's probe statement was built with
    the column name and failed to compile)."""
    await handle.add(renamed, {"id": 1, "label": "a"})
    rows = [{"id": 1, "label": "b"}, {"id": 2, "label": "c"}, {"id": 3, "label": None}]
    with pytest.raises(sa.exc.IntegrityError):
        await handle.call("insert_ignore", renamed, rows)
    done = await handle.call("insert_ignore", renamed, rows[:2])
    assert ([r["id"] for r in done.inserted], done.existing) == ([2], [rows[0]])
    assert {k: v["label"] for k, v in (await handle.rows(renamed, "id")).items()} == {
        1: "a",
        2: "c",
    }


@pytest.mark.databases("mariadb")  # MariaDB's collations
async def test_mariadb_accents_and_trailing_spaces(handle: Handle, backend: Backend) -> None:
    """utf8mb4_general_ci (MariaDB 10.11's default) ignores accents, and PAD SPACE
    ignores trailing spaces: 'Café ' is the stored 'cafe'."""
    await handle.add(codes, {"code": "cafe", "n": 1})
    up = await handle.call("upsert", codes, [{"code": "Café ", "n": 2}, {"code": "tea", "n": 3}])
    assert [(r["code"], r["n"]) for r in up.updated] == [("cafe", 2)]
    assert [r["code"] for r in up.inserted] == ["tea"]
    rows = [{"code": "TEA  "}, {"code": "Thé"}, {"code": "the"}]
    done = await handle.call("insert_ignore", codes, rows)
    assert ([r["code"] for r in done.inserted], done.existing) == (["Thé"], [rows[0], rows[2]])
    report = await handle.call("seed", {codes: [{"code": "CAFÉ", "n": 2}]}, mode="verify")
    assert len(report.tables[0].existing) == 1


@pytest.mark.databases("postgresql")  # PostgreSQL's ICU collations
async def test_postgresql_nondeterministic_icu_collation(handle: Handle, backend: Backend) -> None:
    """A column with a nondeterministic ICU collation (case-insensitive at
    strength level 2): several rows, so that outcomes and in-call repeats
    follow the collation read from the catalog (one row pairs by itself)."""
    icu = sa.MetaData()
    ci = sa.Table(
        "oc_ki_icu",
        icu,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("code", sa.String(20, collation="oc_ki_ci"), nullable=False, unique=True),
        sa.Column("n", sa.Integer, nullable=True),
    )
    async with handle.aengine.begin() as conn:
        await conn.execute(
            sa.DDL(
                "CREATE COLLATION IF NOT EXISTS oc_ki_ci"
                " (provider = icu, locale = 'und-u-ks-level2', deterministic = false)"
            )
        )
        await conn.run_sync(icu.drop_all)
        await conn.run_sync(icu.create_all)
    try:
        await handle.add(ci, {"code": "abc", "n": 1})
        up = await handle.call("upsert", ci, [{"code": "ABC", "n": 2}, {"code": "Def", "n": 3}])
        assert [(r["code"], r["n"]) for r in up.updated] == [("abc", 2)]
        assert [r["code"] for r in up.inserted] == ["Def"]
        rows = [{"code": "GHI"}, {"code": "ghi"}, {"code": "DEF"}]
        done = await handle.call("insert_ignore", ci, rows)
        assert ([r["code"] for r in done.inserted], done.existing) == (["GHI"], rows[1:])
        assert sorted(r["code"] for r in (await handle.rows(ci, "id")).values()) == [
            "Def",
            "GHI",
            "abc",
        ]
    finally:
        async with handle.aengine.begin() as conn:
            await conn.run_sync(icu.drop_all)
