"""upsert against the real servers: exact per-row outcomes, only key conflicts."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

import onconflict
import onconflict.sync
from onconflict._upsert import prepare_upsert
from onconflict.dialects.mysql import MySQL
from tests.backends import driver_code
from tests.conftest import Backend
from tests.handles import ENGINES, Handle
from tests.schema import Item, metadata, parent, subscriptions, users

# the async API on the async driver, and the sync twin on the sync driver
pytestmark = [pytest.mark.usefixtures("tables"), pytest.mark.handles(*ENGINES)]

docs = sa.Table(
    "oc_docs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("slug", sa.String(20), nullable=False, unique=True),
    sa.Column("title", sa.String(10), nullable=False),
    sa.Column("version", sa.Integer, nullable=False, server_default="0"),
    sa.Column("hits", sa.Integer, nullable=False, server_default="0"),
    sa.Column("pid", sa.Integer, sa.ForeignKey(parent.c.id), nullable=True),
    sa.CheckConstraint("length(title) > 0", name="ck_docs_title"),
)


settings = sa.Table(
    "oc_settings",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(20), nullable=False, unique=True),
    sa.Column("doc", sa.JSON, nullable=True),  # PostgreSQL: json, which has no "="
)


async def stored(engine: AsyncEngine) -> dict[str, dict[str, Any]]:
    async with engine.connect() as conn:
        return {r["slug"]: dict(r) for r in (await conn.execute(sa.select(docs))).mappings()}


def row(slug: str, title: str = "t", version: int = 1, **kw: Any) -> dict[str, Any]:
    return {"slug": slug, "title": title, "version": version, **kw}


async def test_outcome_table(handle: Handle, aengine: AsyncEngine) -> None:
    await handle.call("upsert", docs, [row("same"), row("change"), row("older", version=5)])
    result = await handle.call(
        "upsert",
        docs,
        [
            row("new"),  # inserted
            row("same"),  # holds these values already: unchanged with skip_unchanged
            row("change", title="changed"),  # updated
            row("older", version=2),  # where is false: unchanged
        ],
        where=docs.c.version <= onconflict.excluded("version"),
        skip_unchanged=True,
    )
    assert [r["slug"] for r in result.inserted] == ["new"]
    assert [(r["slug"], r["title"]) for r in result.updated] == [("change", "changed")]
    assert result.unchanged == [row("same"), row("older", version=2)]
    assert (result.inserted_count, result.updated_count, result.unchanged_count) == (1, 1, 2)
    assert isinstance(result.inserted[0]["id"], int)
    assert result.inserted[0]["hits"] == 0
    now = await stored(aengine)
    assert now["older"]["version"] == 5
    assert now["change"]["title"] == "changed"
    assert result.updated[0]["id"] == now["change"]["id"]


async def test_without_skip_unchanged_an_equal_row_is_updated(handle: Handle) -> None:
    await handle.call("upsert", docs, [row("a")])
    result = await handle.call("upsert", docs, [row("a")])
    assert (result.updated_count, result.unchanged_count) == (1, 0)


async def test_skip_unchanged_compares_json_columns(handle: Handle) -> None:
    """PostgreSQL's json type has no equality operator: skip_unchanged compares
    such columns as jsonb (elsewhere JSON is text and compares as stored)."""
    first = [{"name": "a", "doc": {"x": [1, 2]}}, {"name": "b", "doc": {"x": 1}}]
    await handle.call("upsert", settings, first)
    again = [{"name": "a", "doc": {"x": [1, 2]}}, {"name": "b", "doc": {"x": 2}}]
    result = await handle.call("upsert", settings, again, skip_unchanged=True)
    assert result.unchanged == [again[0]]
    assert [(r["name"], r["doc"]) for r in result.updated] == [("b", {"x": 2})]


async def test_update_columns_and_expressions(handle: Handle, aengine: AsyncEngine) -> None:
    await handle.call("upsert", docs, [row("a", title="first", hits=1)])
    # only the listed columns change
    only = await handle.call(
        "upsert", docs, [row("a", title="second", version=9)], update=["title"]
    )
    assert only.updated[0]["title"] == "second"
    assert only.updated[0]["version"] == 1
    # expressions: stored + incoming, a literal, the incoming value
    counted = await handle.call(
        "upsert",
        docs,
        [row("a", title="x", hits=5), row("b", title="new", hits=5)],
        update={
            "hits": docs.c.hits + onconflict.excluded("hits"),
            "version": 42,
            "title": onconflict.excluded("title"),
        },
    )
    assert [r["slug"] for r in counted.inserted] == ["b"]
    (a,) = counted.updated
    assert (a["hits"], a["version"], a["title"]) == (6, 42, "x")
    assert (await stored(aengine))["b"]["hits"] == 5


@pytest.mark.parametrize(("policy", "title"), [("last", "third"), ("first", "first")])
async def test_keys_repeated_in_one_call(
    handle: Handle, aengine: AsyncEngine, policy: Any, title: str
) -> None:
    rows = [row("a", title="first"), row("b"), row("a", title="second"), row("a", title="third")]
    result = await handle.call("upsert", docs, rows, duplicates=policy)
    assert [r["slug"] for r in result.inserted] == (["a", "b"] if policy == "first" else ["b", "a"])
    assert (await stored(aengine))["a"]["title"] == title
    losers = [r for r in rows if r["slug"] == "a" and r["title"] != title]
    assert result.unchanged == losers


async def test_repeated_keys_can_be_refused(handle: Handle, aengine: AsyncEngine) -> None:
    with pytest.raises(ValueError, match=r"rows 0 and 2 have the same key \(slug='a'\)"):
        await handle.call("upsert", docs, [row("a"), row("b"), row("a")], duplicates="error")
    assert await stored(aengine) == {}


# violation: the change that makes a row violate it; the driver code it raises is
# backend.error_codes[violation] (None: the database stores the row as given)
BAD_UPDATE = {
    "not_null": {"title": None},
    "check": {"title": ""},
    "foreign_key": {"pid": 99},
    "too_long": {"title": "much too long"},
}


@pytest.mark.parametrize("violation", list(BAD_UPDATE))
@pytest.mark.parametrize("existing", [True, False], ids=["update", "insert"])
async def test_only_key_conflicts_become_updates(
    handle: Handle, aengine: AsyncEngine, backend: Backend, violation: str, existing: bool
) -> None:
    await handle.call("upsert", docs, [row("a", title="keep"), row("b", title="keep")])
    change = BAD_UPDATE[violation]
    bad = {**row("a" if existing else "new"), **change}
    code = backend.error_codes[violation]
    if code is None:  # SQLite stores long text as given
        result = await handle.call("upsert", docs, [bad])
        assert (result.updated or result.inserted)[0]["title"] == "much too long"
        return
    with pytest.raises(sa.exc.DBAPIError) as info:
        await handle.call("upsert", docs, [row("b", title="changed"), row("c"), bad])
    assert driver_code(info.value) == code
    now = await stored(aengine)
    assert sorted(now) == ["a", "b"]
    assert now["a"]["title"] == now["b"]["title"] == "keep"


async def test_concurrent_versions_keep_the_maximum(aengine: AsyncEngine) -> None:
    keys = [f"k{i}" for i in range(10)]
    errors: list[BaseException] = []

    async def writer(w: int) -> None:
        for version in range(w, 64, 8):  # 32 writers, interleaved increasing versions
            rows = [row(k, title=f"v{version}", version=version) for k in keys]
            try:
                await onconflict.upsert(
                    aengine, docs, rows, where=docs.c.version < onconflict.excluded("version")
                )
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

    async with anyio.create_task_group() as tg:
        for w in range(32):
            tg.start_soon(writer, w % 8)
    assert errors == []
    now = await stored(aengine)
    assert {k: (v["version"], v["title"]) for k, v in now.items()} == {k: (63, "v63") for k in keys}


async def test_orm_class_with_attribute_names(aengine: AsyncEngine) -> None:
    await onconflict.upsert(aengine, Item, [{"code": "a", "title": "one"}])
    result = await onconflict.upsert(
        aengine, Item, [{"code": "a", "title": "two"}], update=["title"]
    )
    assert result.updated[0]["title"] == "two"
    assert result.updated[0]["code"] == "a"


async def test_rows_carrying_only_the_key(handle: Handle, aengine: AsyncEngine) -> None:
    t = sa.Table("oc_tags", metadata, extend_existing=True)
    first = await onconflict.upsert(aengine, t, [{"slug": "x"}])
    again = await onconflict.upsert(aengine, t, [{"slug": "x"}, {"slug": "y"}])
    assert first.inserted_count == 1
    assert (again.inserted_count, again.unchanged_count) == (1, 1)


@pytest.mark.slow
async def test_100k_rows(aengine: AsyncEngine) -> None:
    n = 100_000
    await onconflict.upsert(aengine, docs, (row(f"s{i:06d}") for i in range(0, n, 2)))
    result = await onconflict.upsert(aengine, docs, [row(f"s{i:06d}", version=2) for i in range(n)])
    assert (result.inserted_count, result.updated_count) == (n // 2, n // 2)
    assert result.updated[0]["slug"] == "s000000"
    assert result.inserted[0]["slug"] == "s000001"


@pytest.mark.databases("postgresql")  # xmin is PostgreSQL's
async def test_postgresql_skip_unchanged_writes_no_row_version(
    aengine: AsyncEngine, backend: Backend
) -> None:
    await onconflict.upsert(aengine, docs, [row("a")])

    async def xmin() -> str:
        async with aengine.connect() as conn:
            return str((await conn.execute(sa.text("SELECT xmin FROM oc_docs"))).scalar_one())

    before = await xmin()
    result = await onconflict.upsert(aengine, docs, [row("a")], skip_unchanged=True)
    assert result.unchanged_count == 1
    assert await xmin() == before
    await onconflict.upsert(aengine, docs, [row("a")])
    assert await xmin() != before


@pytest.mark.databases("mariadb")  # the one-row-per-statement path of MySQL 8
async def test_mysql_without_returning(backend: Backend) -> None:
    engine = backend.async_engine()
    try:
        async with engine.connect():
            pass
        engine.dialect.insert_returning = False
        await onconflict.upsert(engine, docs, [row("a"), row("old", version=9)])
        result = await onconflict.upsert(
            engine,
            docs,
            [row("a", title="b"), row("n"), row("old", version=1)],
            where=docs.c.version < onconflict.excluded("version") + 1,
        )
        assert [r["slug"] for r in result.inserted] == ["n"]
        assert [(r["slug"], r["title"]) for r in result.updated] == [("a", "b")]
        assert result.unchanged == [row("old", version=1)]
    finally:
        await engine.dispose()


# -- refused before any SQL ----------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"update": ["nope"]}, "update: 'nope' is not a column"),
        ({"update": {"title": onconflict.excluded("nope")}}, r"excluded\('nope'\) is not a column"),
        ({"where": docs.c.version < onconflict.excluded("nope")}, r"where: excluded\('nope'\)"),
        ({"on": onconflict.ANY_KEY}, "needs a conflict target"),
        ({"duplicates": "both"}, "duplicates must be"),
        ({"update": ["hits"]}, "column 'hits' is not in every row"),
        ({"where": "version < 3"}, "where must be a SQLAlchemy expression"),
    ],
)
async def test_bad_arguments(aengine: AsyncEngine, kw: dict[str, Any], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        await onconflict.upsert(aengine, docs, [row("a")], **kw)


def test_excluded_outside_upsert_is_a_clear_error() -> None:
    with pytest.raises(sa.exc.CompileError, match=r"only be used in onconflict\.upsert"):
        str(sa.select(docs).where(docs.c.version < onconflict.excluded("version")))


def test_mysql_statements_compile() -> None:
    """MariaDB: VALUES(col); MySQL 8.0.20+: the row alias."""
    for version, is_mariadb, expected in (
        ((10, 11, 6), True, "title = VALUES(title)"),
        ((8, 0, 36), False, "title = new.title"),
    ):
        d = mysql.pymysql.dialect(is_mariadb=is_mariadb)
        d.server_version_info = version
        d._set_mariadb(is_mariadb, version)
        # what the dialect's initialize() decides from the server version
        d._requires_alias_for_on_duplicate_key = not is_mariadb and version >= (8, 0, 20)
        prepared = prepare_upsert(
            d,
            docs,
            [row("a")],
            on=None,
            update=None,
            where=None,
            skip_unchanged=False,
            duplicates="last",
        )
        plan = next(iter(prepared.plans.values()))
        MySQL().prepare_upsert(plan, d)
        assert expected in str(plan.extra["update_all"].compile(dialect=d))


async def test_autoincrement_key_given_as_none_is_numbered(
    handle: Handle, aengine: AsyncEngine
) -> None:
    """The database numbers the row, on every database; the row is matched by
    the other unique key (slug)."""
    first = await handle.call("upsert", docs, [row("a", id=None), row("b", id=None)])
    assert [r["slug"] for r in first.inserted] == ["a", "b"]
    assert all(isinstance(r["id"], int) for r in first.inserted)
    again = await handle.call("upsert", docs, [row("a", "new", id=None), row("c", id=None)])
    assert [(r["slug"], r["title"], r["id"]) for r in again.updated] == [
        ("a", "new", first.inserted[0]["id"])
    ]
    assert [r["slug"] for r in again.inserted] == ["c"]
    assert sorted(await stored(aengine)) == ["a", "b", "c"]


@pytest.mark.usefixtures("inheritance_tables")
async def test_single_table_inheritance_sets_the_discriminator(
    aengine: AsyncEngine, sengine: Engine
) -> None:
    from tests.schema import Employee, Manager

    first = await onconflict.upsert(aengine, Manager, [{"email": "m@x", "name": "a", "budget": 1}])
    assert [(r["email"], r["kind"], r["budget"]) for r in first.inserted] == [("m@x", "manager", 1)]
    again = onconflict.sync.upsert(
        sengine, Manager, [{"email": "m@x", "name": "b"}, {"email": "n@x", "name": "n"}]
    )
    assert [(r["email"], r["name"], r["kind"]) for r in again.updated] == [("m@x", "b", "manager")]
    assert [(r["email"], r["kind"]) for r in again.inserted] == [("n@x", "manager")]
    async with aengine.connect() as conn:
        kinds = dict((await conn.execute(sa.select(Employee.email, Employee.kind))).all())
    assert kinds == {"m@x": "manager", "n@x": "manager"}


# -- PostgreSQL: a partitioned table (no xmax to return) ---------------------------

part_metadata = sa.MetaData()
parts = sa.Table(
    "oc_parts",
    part_metadata,
    sa.Column("k", sa.String(20), primary_key=True),
    sa.Column("region", sa.String(10), primary_key=True),
    sa.Column("title", sa.String(10), nullable=False),
    sa.Column("version", sa.Integer, nullable=False, server_default="0"),
    sa.CheckConstraint("length(title) > 0", name="ck_parts_title"),
    postgresql_partition_by="LIST (region)",
)
for _name, _values in (("oc_parts_eu", "FOR VALUES IN ('eu')"), ("oc_parts_rest", "DEFAULT")):
    sa.event.listen(
        parts,
        "after_create",
        sa.DDL(f"CREATE TABLE {_name} PARTITION OF oc_parts {_values}").execute_if(
            dialect="postgresql"
        ),
    )
# the same table as a migration leaves it: nothing in the metadata says "partitioned"
undeclared = sa.Table(
    "oc_parts",
    sa.MetaData(),
    *(sa.Column(c.name, c.type, primary_key=c.primary_key) for c in parts.c),
)


@pytest.fixture
async def partitioned(aengine: AsyncEngine, backend: Backend) -> Any:
    async with aengine.begin() as conn:
        await conn.run_sync(part_metadata.drop_all)
        await conn.run_sync(part_metadata.create_all)
    yield
    async with aengine.begin() as conn:
        await conn.run_sync(part_metadata.drop_all)


def prow(k: str, region: str = "eu", title: str = "t", version: int = 1) -> dict[str, Any]:
    return {"k": k, "region": region, "title": title, "version": version}


@pytest.mark.postgresql
@pytest.mark.usefixtures("partitioned")
@pytest.mark.databases("postgresql")  # partitioned tables are PostgreSQL's
@pytest.mark.parametrize("table", [parts, undeclared], ids=["declared", "undeclared"])
@pytest.mark.handles("async-engine", "async-connection", "async-session", "sync-engine")
async def test_partitioned_table_outcomes(
    aengine: AsyncEngine, table: sa.Table, handle: Handle
) -> None:
    async def call(rows: Any, **kw: Any) -> onconflict.UpsertResult:
        return await handle.call("upsert", table, rows, **kw)

    first = await call([prow("same"), prow("change"), prow("older", version=5), prow("x", "us")])
    assert len(first.inserted) == 4
    result = await call(
        [
            prow("new"),  # inserted
            prow("same"),  # unchanged (skip_unchanged)
            prow("change", title="changed"),  # updated
            prow("older", version=2),  # where is false: unchanged
            prow("x", "us", title="moved"),  # updated, other partition
            prow("x", "eu"),  # the same k in another partition: inserted
        ],
        where=table.c.version <= onconflict.excluded("version"),
        skip_unchanged=True,
    )
    assert [(r["k"], r["region"]) for r in result.inserted] == [("new", "eu"), ("x", "eu")]
    assert [(r["k"], r["title"]) for r in result.updated] == [("change", "changed"), ("x", "moved")]
    assert result.unchanged == [prow("same"), prow("older", version=2)]
    async with aengine.connect() as conn:
        now = {(r.k, r.region): r for r in await conn.execute(sa.select(parts))}
    assert len(now) == 6
    assert now[("older", "eu")].version == 5
    assert now[("change", "eu")].title == "changed"
    # only key conflicts become updates: CHECK raises, nothing stored
    with pytest.raises(sa.exc.IntegrityError):
        await call([prow("bad", title=""), prow("new", title="y")])
    async with aengine.connect() as conn:
        count = (await conn.execute(sa.select(sa.func.count()).select_from(parts))).scalar()
    assert count == 6


@pytest.mark.crowd  # dozens of connections at once
@pytest.mark.postgresql
@pytest.mark.usefixtures("partitioned")
@pytest.mark.databases("postgresql")  # partitioned tables are PostgreSQL's
@pytest.mark.parametrize("table", [parts, undeclared], ids=["declared", "undeclared"])
async def test_partitioned_table_concurrent_outcomes_are_exact(
    aengine: AsyncEngine, table: sa.Table
) -> None:
    """32 callers upsert the same 20 keys at once: each key is inserted exactly
    once over all calls, every other outcome is an update."""
    keys = [f"k{i}" for i in range(20)]
    results: list[onconflict.UpsertResult] = []

    async def writer(w: int) -> None:
        rows = [prow(k, title=f"w{w}") for k in (keys if w % 2 else reversed(keys))]
        results.append(await onconflict.upsert(aengine, table, rows))

    async with anyio.create_task_group() as tg:
        for w in range(32):
            tg.start_soon(writer, w)
    inserted = sorted(r["k"] for res in results for r in res.inserted)
    assert inserted == sorted(keys)
    assert sum(res.updated_count for res in results) == 32 * 20 - 20
    assert sum(res.unchanged_count for res in results) == 0


@pytest.mark.postgresql
@pytest.mark.usefixtures("partitioned")
@pytest.mark.databases("postgresql")  # partitioned tables are PostgreSQL's
@pytest.mark.parametrize("table", [parts, undeclared], ids=["declared", "undeclared"])
async def test_partitioned_table_get_update_or_create_and_seed(
    aengine: AsyncEngine, sengine: Engine, table: sa.Table
) -> None:
    row, created = await onconflict.get_or_create(
        aengine, table, {"k": "g", "region": "eu"}, {"title": "g"}
    )
    assert created
    assert row["title"] == "g"
    _, created = onconflict.sync.get_or_create(sengine, table, {"k": "g", "region": "eu"})
    assert not created
    row, created = await onconflict.update_or_create(
        aengine, table, {"k": "u", "region": "us"}, {"title": "one"}
    )
    assert created
    row, created = await onconflict.update_or_create(
        aengine, table, {"k": "u", "region": "us"}, {"title": "two"}
    )
    assert not created
    assert row["title"] == "two"
    data = {table: [prow("s1"), prow("s2", "us"), prow("g", title="g", version=0)]}
    report = await onconflict.seed(aengine, data, mode="upsert", lock=None)
    assert (report.total("inserted"), report.total("updated"), report.total("existing")) == (
        2,
        0,
        1,
    )
    data = {table: [prow("s1", title="new"), prow("s2", "us")]}
    report = onconflict.sync.seed(sengine, data, mode="upsert", lock=None)
    assert (report.total("inserted"), report.total("updated"), report.total("existing")) == (
        0,
        1,
        1,
    )


@pytest.mark.postgresql
@pytest.mark.usefixtures("partitioned")
@pytest.mark.databases("postgresql")  # partitioned tables are PostgreSQL's
async def test_partitioned_table_refuses_excluded_of_a_column_not_carried(
    aengine: AsyncEngine,
) -> None:
    rows = [{"k": "a", "region": "eu", "title": "t"}]
    await onconflict.upsert(aengine, parts, rows)
    with pytest.raises(onconflict.NotSupportedError, match=r"excluded\('version'\)"):
        await onconflict.upsert(
            aengine, parts, rows, update={"version": onconflict.excluded("version")}
        )


# -- issue items: bound values in update=, key columns, onupdate, two keys ----


def _greatest(backend: Backend) -> Any:
    # SQLite's two-argument max() is its greatest()
    return backend.greatest


@pytest.mark.parametrize("kind", ["scalar", "column_expression", "function"])
async def test_bound_values_in_update_for_many_existing_rows(
    handle: Handle, aengine: AsyncEngine, backend: Backend, kind: str
) -> None:
    """MariaDB ran ON DUPLICATE KEY UPDATE as executemany, whose drivers cannot
    send the UPDATE part's bound values (TypeError with 2 rows or more)."""
    await handle.call("upsert", docs, [row("a", hits=1), row("b", hits=1), row("c", hits=1)])
    update = {
        "scalar": {"version": 7},
        "column_expression": {"hits": docs.c.hits + 1},
        "function": {"version": _greatest(backend)(docs.c.version, 7)},
    }[kind]
    result = await handle.call(
        "upsert", docs, [row("a"), row("b"), row("c"), row("d")], update=update
    )
    assert [r["slug"] for r in result.updated] == ["a", "b", "c"]
    assert [r["slug"] for r in result.inserted] == ["d"]
    now = await stored(aengine)
    if kind == "column_expression":
        assert [now[k]["hits"] for k in "abc"] == [2, 2, 2]
        assert [r["hits"] for r in result.updated] == [2, 2, 2]
    else:
        assert [now[k]["version"] for k in "abc"] == [7, 7, 7]
        assert [r["version"] for r in result.updated] == [7, 7, 7]


async def test_default_update_leaves_the_primary_key_alone(
    handle: Handle, aengine: AsyncEngine
) -> None:
    """on= another unique key: the rows' primary key is not written into an
    existing row (Rails and Django never update primary keys)."""
    first = await handle.call("upsert", docs, [row("a", title="one")])
    kept = first.inserted[0]["id"]
    result = await handle.call(
        "upsert", docs, [{**row("a", title="two"), "id": kept + 100}], on="slug"
    )
    assert result.updated[0]["id"] == kept
    assert result.updated[0]["title"] == "two"
    now = await stored(aengine)
    assert (now["a"]["id"], now["a"]["title"]) == (kept, "two")


stamped = sa.Table(
    "oc_stamped",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("k", sa.String(20), nullable=False, unique=True),
    sa.Column("v", sa.String(20), nullable=True),
    sa.Column("by_scalar", sa.Integer, nullable=True, onupdate=7),
    sa.Column("by_callable", sa.Integer, nullable=True, onupdate=lambda: 8),
    sa.Column("by_expression", sa.Integer, nullable=True, onupdate=sa.func.abs(-9)),
)
STAMPS = ("by_scalar", "by_callable", "by_expression")


async def _upsert_stamped(handle: Handle, rows: Any, **kw: Any) -> Any:
    return await handle.call("upsert", stamped, rows, **kw)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"update": ["v"]},
        {"update": {"v": onconflict.excluded("v")}},
        {"where": stamped.c.v != onconflict.excluded("v")},
        {"skip_unchanged": True},
    ],
    ids=["default", "names", "mapping", "where", "skip_unchanged"],
)
async def test_onupdate_is_applied_to_every_update(
    handle: Handle, aengine: AsyncEngine, sengine: Engine, kw: dict[str, Any]
) -> None:
    await _upsert_stamped(handle, [{"k": "a", "v": "1"}, {"k": "b", "v": "1"}])
    rows = [{"k": "a", "v": "2"}, {"k": "b", "v": "1"}, {"k": "c", "v": "1"}]
    result = await _upsert_stamped(handle, rows, **kw)
    assert [r["k"] for r in result.inserted] == ["c"]
    assert [r[s] for r in result.inserted for s in STAMPS] == [None, None, None]
    changed = ["a"] if "where" in kw or "skip_unchanged" in kw else ["a", "b"]
    assert [r["k"] for r in result.updated] == changed
    assert [[r[s] for s in STAMPS] for r in result.updated] == [[7, 8, 9]] * len(changed)
    async with aengine.connect() as conn:
        now = {r["k"]: r for r in (await conn.execute(sa.select(stamped))).mappings()}
    for k in "abc":
        want = [7, 8, 9] if k in changed else [None, None, None]
        assert [now[k][s] for s in STAMPS] == want, k


async def test_onupdate_yields_to_update_naming_the_column(
    handle: Handle, aengine: AsyncEngine, sengine: Engine
) -> None:
    await _upsert_stamped(handle, [{"k": "a", "v": "1"}])
    result = await _upsert_stamped(
        handle,
        [{"k": "a", "v": "2"}],
        update={"v": onconflict.excluded("v"), "by_scalar": 1, "by_expression": sa.func.abs(-2)},
    )
    (a,) = result.updated
    assert [a[s] for s in STAMPS] == [1, 8, 2]
    carried = await _upsert_stamped(handle, [{"k": "a", "v": "3", "by_callable": 5}])
    (a,) = carried.updated
    assert [a[s] for s in STAMPS] == [7, 5, 9]


async def _upsert_users(handle: Handle, rows: Any, **kw: Any) -> Any:
    return await handle.call("upsert", users, rows, **kw)


async def _users(aengine: AsyncEngine) -> list[tuple[Any, ...]]:
    async with aengine.connect() as conn:
        stmt = sa.select(users.c.id, users.c.email, users.c.name).order_by(users.c.id)
        return [tuple(r) for r in await conn.execute(stmt)]


async def test_rows_that_can_hit_two_unique_keys(handle: Handle, aengine: AsyncEngine) -> None:
    """Primary key and email: the target is the primary key, and a row's email
    may be taken by another row. MariaDB has no conflict target, and used to
    refuse the call; now every database gives the same exact outcomes."""
    await _upsert_users(handle, [{"id": 1, "email": "a@x", "name": "a"}])
    result = await _upsert_users(
        handle,
        [
            {"id": 1, "email": "a@x", "name": "a2"},  # same key: updated
            {"id": 2, "email": "b@x", "name": "b"},  # new: inserted
        ],
    )
    assert [(r["id"], r["name"]) for r in result.updated] == [(1, "a2")]
    assert [(r["id"], r["email"]) for r in result.inserted] == [(2, "b@x")]
    moved = await _upsert_users(handle, [{"id": 1, "email": "c@x", "name": "a3"}])
    assert [(r["id"], r["email"]) for r in moved.updated] == [(1, "c@x")]
    before = [(1, "c@x", "a3"), (2, "b@x", "b")]
    assert await _users(aengine) == before
    # a new key whose email another row has: a duplicate outside the target
    with pytest.raises(sa.exc.IntegrityError):
        await _upsert_users(
            handle, [{"id": 3, "email": "d@x", "name": "d"}, {"id": 4, "email": "b@x", "name": "e"}]
        )
    assert await _users(aengine) == before
    # an existing key updated to an email another row has
    with pytest.raises(sa.exc.IntegrityError):
        await _upsert_users(
            handle, [{"id": 5, "email": "e@x", "name": "e"}, {"id": 1, "email": "b@x", "name": "f"}]
        )
    assert await _users(aengine) == before


async def test_a_target_no_unique_key_covers_is_refused(
    handle: Handle, aengine: AsyncEngine
) -> None:
    """MariaDB stored the first of two rows sharing a non-unique value and
    reported the second as existing; PostgreSQL and SQLite refused the statement
    only once it was sent. Now refused before SQL, on every database."""
    for on in ("title", ["title", "version"], [docs.c.version]):
        with pytest.raises(ValueError, match=r"no primary key, unique constraint or unique index"):
            await handle.call("upsert", docs, [row("a"), row("b")], on=on)
    assert await stored(aengine) == {}


@pytest.mark.needs("partial_indexes")  # MariaDB has no partial indexes
async def test_a_column_with_only_a_partial_unique_index(
    handle: Handle, aengine: AsyncEngine, sengine: Engine, backend: Backend
) -> None:
    """on="email" where the only unique index on email is partial: that index,
    with its WHERE (as naming the index does)."""

    async def call(rows: Any) -> Any:
        return await handle.call("upsert", subscriptions, rows, on="email")

    first = await call([{"email": "a@x", "active": True}, {"email": "b@x", "active": False}])
    assert first.inserted_count == 2
    again = await call([{"email": "a@x", "active": True}, {"email": "b@x", "active": False}])
    # an inactive row is outside the index: never a conflict, always inserted
    assert (again.updated_count, again.inserted_count) == (1, 1)
    assert again.updated[0]["email"] == "a@x"
    # a primary key the rows carry is not written into an existing row, and
    # the rows are still paired with what the database returned
    kept = again.updated[0]["id"]
    with_id = await call(
        [{"id": 99, "email": "a@x", "active": True}, {"id": 98, "email": "c@x", "active": True}]
    )
    assert [(r["id"], r["email"]) for r in with_id.updated] == [(kept, "a@x")]
    assert [(r["id"], r["email"]) for r in with_id.inserted] == [(98, "c@x")]


@pytest.mark.parametrize(
    "kw",
    [{}, {"where": docs.c.version <= onconflict.excluded("version")}],
    ids=["update_all", "where"],
)
async def test_sql_expressions_as_values_of_other_columns(
    handle: Handle, aengine: AsyncEngine, kw: dict[str, Any]
) -> None:
    first = await handle.call("upsert", docs, [row("a", title=sa.func.lower("ONE"))], **kw)
    assert first.inserted[0]["title"] == "one"
    result = await handle.call(
        "upsert",
        docs,
        [row("a", title=sa.func.upper("two")), row("b", title=sa.func.lower("NEW")), row("c")],
        **kw,
    )
    assert [(r["slug"], r["title"]) for r in result.updated] == [("a", "TWO")]
    assert [(r["slug"], r["title"]) for r in result.inserted] == [("b", "new"), ("c", "t")]
    now = await stored(aengine)
    assert {k: v["title"] for k, v in now.items()} == {"a": "TWO", "b": "new", "c": "t"}


async def test_sql_expression_in_the_key_is_refused(handle: Handle, aengine: AsyncEngine) -> None:
    with pytest.raises(ValueError, match=r"key columns .* need plain values"):
        await handle.call("upsert", docs, [row("a"), {**row("b"), "slug": sa.func.lower("B")}])
    assert await stored(aengine) == {}


async def test_concurrent_upserts_of_rows_with_two_unique_keys(aengine: AsyncEngine) -> None:
    """8 coroutines upsert the same rows (primary key and email) 3 times each:
    every key is inserted exactly once, every other write is an update."""
    rows = [{"id": i, "email": f"u{i}@x", "name": "n"} for i in range(1, 11)]
    results: list[onconflict.UpsertResult] = []

    async def writer(w: int) -> None:
        for n in range(3):
            mine = [{**r, "name": f"w{w}r{n}"} for r in rows]
            results.append(await onconflict.upsert(aengine, users, mine))

    async with anyio.create_task_group() as tg:
        for w in range(8):
            tg.start_soon(writer, w)
    inserted = sorted(r["id"] for res in results for r in res.inserted)
    assert inserted == list(range(1, 11))
    assert sum(res.updated_count for res in results) == 8 * 3 * 10 - 10
    async with aengine.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(users))).scalar() == 10


@pytest.mark.databases("mariadb")  # the one-row-per-statement path of MySQL 8
async def test_two_unique_keys_on_mysql_without_returning(backend: Backend) -> None:
    engine = backend.async_engine()
    try:
        async with engine.connect():
            pass
        engine.dialect.insert_returning = False
        await onconflict.upsert(engine, users, [{"id": 1, "email": "a@x", "name": "a"}])
        result = await onconflict.upsert(
            engine,
            users,
            [{"id": 1, "email": "a@x", "name": "a2"}, {"id": 2, "email": "b@x", "name": "b"}],
        )
        assert [(r["id"], r["name"]) for r in result.updated] == [(1, "a2")]
        assert [r["id"] for r in result.inserted] == [2]
        with pytest.raises(sa.exc.IntegrityError):
            await onconflict.upsert(engine, users, [{"id": 3, "email": "b@x", "name": "c"}])
        async with engine.connect() as conn:
            stmt = sa.select(users.c.id, users.c.name).order_by(users.c.id)
            assert [tuple(r) for r in await conn.execute(stmt)] == [(1, "a2"), (2, "b")]
    finally:
        await engine.dispose()


@pytest.mark.parametrize("held", ["async_connection", "async_session", "connection", "session"])
async def test_two_keys_and_bound_updates_in_the_callers_transaction(
    aengine: AsyncEngine, sengine: Engine, held: str
) -> None:
    """The MariaDB paths above (bound values in update=, a second unique key,
    an other-key duplicate raised) inside the caller's transaction, on every
    handle: the caller commits what worked and rolls back what raised."""
    from sqlalchemy.orm import Session

    new = [{"id": 1, "email": "a@x", "name": "a"}, {"id": 2, "email": "b@x", "name": "b"}]
    again = [{"id": 1, "email": "a@x", "name": "x"}, {"id": 2, "email": "b@x", "name": "x"}]
    clash = [{"id": 3, "email": "a@x", "name": "c"}]
    update = {"name": sa.func.upper(users.c.name), "note": "seen"}

    async def run_async(conn: Any) -> None:
        await onconflict.upsert(conn, users, new)
        result = await onconflict.upsert(conn, users, again, update=update)
        assert [(r["name"], r["note"]) for r in result.updated] == [("A", "seen"), ("B", "seen")]
        await conn.commit()
        with pytest.raises(sa.exc.IntegrityError):
            await onconflict.upsert(conn, users, clash)
        await conn.rollback()

    def run_sync(conn: Any) -> None:
        onconflict.sync.upsert(conn, users, new)
        result = onconflict.sync.upsert(conn, users, again, update=update)
        assert [(r["name"], r["note"]) for r in result.updated] == [("A", "seen"), ("B", "seen")]
        conn.commit()
        with pytest.raises(sa.exc.IntegrityError):
            onconflict.sync.upsert(conn, users, clash)
        conn.rollback()

    if held == "async_connection":
        async with aengine.connect() as aconn:
            await run_async(aconn)
    elif held == "async_session":
        async with AsyncSession(aengine) as asession:
            await run_async(asession)
    elif held == "connection":
        with sengine.connect() as conn:
            run_sync(conn)
    else:
        with Session(sengine) as session:
            run_sync(session)
    async with aengine.connect() as conn:
        stmt = sa.select(users.c.id, users.c.name, users.c.note).order_by(users.c.id)
        assert [tuple(r) for r in await conn.execute(stmt)] == [(1, "A", "seen"), (2, "B", "seen")]


async def test_upsert_through_a_subclass_leaves_another_class_row_alone(
    aengine: AsyncEngine, inheritance_tables: None
) -> None:
    """The default update leaves the discriminator alone: an upsert through
    Manager of a key stored as an Engineer updates its columns, not its class."""
    from tests.schema import Employee, Engineer, Manager

    await onconflict.insert_ignore(aengine, Engineer, [{"email": "e@x", "name": "e"}])
    done = await onconflict.upsert(aengine, Manager, [{"email": "e@x", "name": "renamed"}])
    assert [(r["email"], r["name"], r["kind"]) for r in done.updated] == [
        ("e@x", "renamed", "engineer")
    ]
    async with aengine.connect() as conn:
        kinds = dict((await conn.execute(sa.select(Employee.email, Employee.kind))).all())
    assert kinds == {"e@x": "engineer"}


@pytest.mark.databases("mariadb")  # REPEATABLE READ snapshots of InnoDB
async def test_rows_committed_after_the_callers_snapshot_are_read_back(
    aengine: AsyncEngine,
) -> None:
    """In the caller's REPEATABLE READ transaction, a row another caller
    committed after the snapshot, which the upsert's update leaves as it was,
    is invisible to a plain read: the read-back is a locking read and reports
    it updated (it once raised OutcomeMismatchError, or reported it unchanged)."""
    async with aengine.connect() as conn:
        await conn.execution_options(isolation_level="REPEATABLE READ")
        assert await conn.scalar(sa.select(sa.func.count()).select_from(docs)) == 0  # snapshot
        await onconflict.upsert(aengine, docs, [row("a"), row("b")])  # another caller
        result = await onconflict.upsert(conn, docs, [row("a"), row("b", title="new")])
        await conn.commit()
    assert [r["slug"] for r in result.updated] == ["a", "b"]
    assert result.updated[1]["title"] == "new"
    assert {k: v["title"] for k, v in (await stored(aengine)).items()} == {"a": "t", "b": "new"}
