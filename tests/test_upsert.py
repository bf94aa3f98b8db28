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
from tests.conftest import Backend
from tests.schema import Item, metadata, parent

pytestmark = pytest.mark.usefixtures("tables")

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


class Front:
    def __init__(self, kind: str, aengine: AsyncEngine, sengine: Engine) -> None:
        self.kind, self.aengine, self.sengine = kind, aengine, sengine

    async def upsert(self, rows: Any, **kw: Any) -> onconflict.UpsertResult:
        if self.kind == "async":
            return await onconflict.upsert(self.aengine, docs, rows, **kw)
        return onconflict.sync.upsert(self.sengine, docs, rows, **kw)


@pytest.fixture(params=["async", "sync"])
def front(request: pytest.FixtureRequest, aengine: AsyncEngine, sengine: Engine) -> Front:
    return Front(request.param, aengine, sengine)


async def stored(engine: AsyncEngine) -> dict[str, dict[str, Any]]:
    async with engine.connect() as conn:
        return {r["slug"]: dict(r) for r in (await conn.execute(sa.select(docs))).mappings()}


def row(slug: str, title: str = "t", version: int = 1, **kw: Any) -> dict[str, Any]:
    return {"slug": slug, "title": title, "version": version, **kw}


async def test_outcome_table(front: Front, aengine: AsyncEngine) -> None:
    await front.upsert([row("same"), row("change"), row("older", version=5)])
    result = await front.upsert(
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


async def test_without_skip_unchanged_an_equal_row_is_updated(front: Front) -> None:
    await front.upsert([row("a")])
    result = await front.upsert([row("a")])
    assert (result.updated_count, result.unchanged_count) == (1, 0)


async def test_update_columns_and_expressions(front: Front, aengine: AsyncEngine) -> None:
    await front.upsert([row("a", title="first", hits=1)])
    # only the listed columns change
    only = await front.upsert([row("a", title="second", version=9)], update=["title"])
    assert only.updated[0]["title"] == "second"
    assert only.updated[0]["version"] == 1
    # expressions: stored + incoming, a literal, the incoming value
    counted = await front.upsert(
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
    front: Front, aengine: AsyncEngine, policy: Any, title: str
) -> None:
    rows = [row("a", title="first"), row("b"), row("a", title="second"), row("a", title="third")]
    result = await front.upsert(rows, duplicates=policy)
    assert [r["slug"] for r in result.inserted] == (["a", "b"] if policy == "first" else ["b", "a"])
    assert (await stored(aengine))["a"]["title"] == title
    losers = [r for r in rows if r["slug"] == "a" and r["title"] != title]
    assert result.unchanged == losers


async def test_repeated_keys_can_be_refused(front: Front, aengine: AsyncEngine) -> None:
    with pytest.raises(ValueError, match=r"rows 0 and 2 have the same key \(slug='a'\)"):
        await front.upsert([row("a"), row("b"), row("a")], duplicates="error")
    assert await stored(aengine) == {}


BAD_UPDATE = {
    "not_null": ({"title": None}, {"postgresql": "23502", "mariadb": 1048, "sqlite": 1299}),
    "check": ({"title": ""}, {"postgresql": "23514", "mariadb": 4025, "sqlite": 275}),
    "foreign_key": ({"pid": 99}, {"postgresql": "23503", "mariadb": 1452, "sqlite": 787}),
    "too_long": (
        {"title": "much too long"},
        {"postgresql": "22001", "mariadb": 1406, "sqlite": None},
    ),
}


def code_of(exc: BaseException) -> Any:
    orig = getattr(exc, "orig", None)
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0]
    return getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorcode", None)


@pytest.mark.parametrize("violation", list(BAD_UPDATE))
@pytest.mark.parametrize("existing", [True, False], ids=["update", "insert"])
async def test_only_key_conflicts_become_updates(
    front: Front, aengine: AsyncEngine, backend: Backend, violation: str, existing: bool
) -> None:
    await front.upsert([row("a", title="keep"), row("b", title="keep")])
    change, codes = BAD_UPDATE[violation]
    bad = {**row("a" if existing else "new"), **change}
    if codes[backend.name] is None:  # SQLite stores long text as given
        result = await front.upsert([bad])
        assert (result.updated or result.inserted)[0]["title"] == "much too long"
        return
    with pytest.raises(sa.exc.DBAPIError) as info:
        await front.upsert([row("b", title="changed"), row("c"), bad])
    assert code_of(info.value) == codes[backend.name]
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


async def test_rows_carrying_only_the_key(front: Front, aengine: AsyncEngine) -> None:
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


async def test_postgresql_skip_unchanged_writes_no_row_version(
    aengine: AsyncEngine, backend: Backend
) -> None:
    if backend.name != "postgresql":
        pytest.skip("xmin is PostgreSQL's")
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


async def test_mysql_without_returning(backend: Backend) -> None:
    if backend.name != "mariadb":
        pytest.skip("the one-row-per-statement path of MySQL 8")
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
    front: Front, aengine: AsyncEngine
) -> None:
    """The database numbers the row, on every database; the row is matched by
    the other unique key (slug)."""
    first = await front.upsert([row("a", id=None), row("b", id=None)])
    assert [r["slug"] for r in first.inserted] == ["a", "b"]
    assert all(isinstance(r["id"], int) for r in first.inserted)
    again = await front.upsert([row("a", "new", id=None), row("c", id=None)])
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
    if backend.name != "postgresql":
        pytest.skip("partitioned tables are PostgreSQL's")
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
@pytest.mark.parametrize("table", [parts, undeclared], ids=["declared", "undeclared"])
@pytest.mark.parametrize("handle", ["engine", "connection", "session", "sync"])
async def test_partitioned_table_outcomes(
    aengine: AsyncEngine, sengine: Engine, table: sa.Table, handle: str
) -> None:
    async def call(rows: Any, **kw: Any) -> onconflict.UpsertResult:
        if handle == "engine":
            return await onconflict.upsert(aengine, table, rows, **kw)
        if handle == "connection":
            async with aengine.begin() as conn:
                return await onconflict.upsert(conn, table, rows, **kw)
        if handle == "session":
            async with AsyncSession(aengine) as session:
                got = await onconflict.upsert(session, table, rows, **kw)
                await session.commit()
                return got
        return onconflict.sync.upsert(sengine, table, rows, **kw)

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


@pytest.mark.postgresql
@pytest.mark.usefixtures("partitioned")
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
async def test_partitioned_table_refuses_excluded_of_a_column_not_carried(
    aengine: AsyncEngine,
) -> None:
    rows = [{"k": "a", "region": "eu", "title": "t"}]
    await onconflict.upsert(aengine, parts, rows)
    with pytest.raises(onconflict.NotSupportedError, match=r"excluded\('version'\)"):
        await onconflict.upsert(
            aengine, parts, rows, update={"version": onconflict.excluded("version")}
        )
