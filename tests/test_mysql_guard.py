"""The INSERT IGNORE guard on the real MariaDB server.

These drive the guard into its rare paths: more warnings than the server keeps,
a non-strict sql_mode, and the one-row-per-statement path that MySQL 8 and
MariaDB < 10.5 take (forced here by turning RETURNING off on a real server).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

import onconflict
from tests.conftest import Backend
from tests.schema import parent, tags, users

# MariaDB's own mechanism: the INSERT IGNORE warning guard
pytestmark = [
    pytest.mark.mariadb,
    pytest.mark.databases("mariadb"),
    pytest.mark.usefixtures("tables"),
]


@pytest.fixture
async def no_returning(backend: Backend) -> AsyncIterator[AsyncEngine]:
    """A MariaDB engine that behaves as MySQL 8 does: no INSERT ... RETURNING."""
    engine = backend.async_engine()
    async with engine.connect():
        pass  # the dialect learns the server version on first connect
    engine.dialect.insert_returning = False
    yield engine
    await engine.dispose()


async def count(engine: AsyncEngine, table: sa.Table) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())


async def test_more_duplicates_than_max_error_count(aengine: AsyncEngine) -> None:
    # 200 duplicates in one statement: more warnings than the server keeps (64)
    first = await onconflict.insert_ignore(
        aengine, tags, [{"slug": f"k{i:03d}"} for i in range(200)]
    )
    assert first.inserted_count == 200
    rows = [{"slug": f"k{i:03d}"} for i in range(250)]
    result = await onconflict.insert_ignore(aengine, tags, rows)
    assert result.existing == rows[:200]
    assert [r["slug"] for r in result.inserted] == [f"k{i:03d}" for i in range(200, 250)]
    assert await count(aengine, tags) == 250


async def test_session_warning_limit_is_put_back(aengine: AsyncEngine) -> None:
    async with aengine.connect() as conn:
        before = (await conn.execute(sa.text("SELECT @@max_error_count"))).scalar_one()
        await onconflict.insert_ignore(conn, tags, [{"slug": f"k{i}"} for i in range(200)])
        result = await onconflict.insert_ignore(conn, tags, [{"slug": f"k{i}"} for i in range(200)])
        assert result.existing_count == 200
        after = (await conn.execute(sa.text("SELECT @@max_error_count"))).scalar_one()
        assert after == before


async def test_bad_row_hidden_behind_many_duplicates(aengine: AsyncEngine) -> None:
    # The foreign-key failure is the 101st warning: beyond what SHOW WARNINGS keeps.
    existing = [{"email": f"u{i:03d}@x", "name": "u"} for i in range(100)]
    await onconflict.insert_ignore(aengine, users, existing)
    batch = [*existing, {"email": "new@x", "name": "n", "pid": 99}, {"email": "ok@x", "name": "ok"}]
    with pytest.raises(sa.exc.IntegrityError) as info:
        await onconflict.insert_ignore(aengine, users, [{**r, "pid": r.get("pid")} for r in batch])
    assert info.value.orig.args[0] == 1452  # type: ignore[union-attr]
    assert await count(aengine, users) == 100


async def test_non_strict_mode_raises_unsafe_and_stores_nothing(backend: Backend) -> None:
    engine = backend.async_engine()
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text("SET SESSION sql_mode = ''"))
            with pytest.raises(onconflict.UnsafeInsertError, match="1265") as info:
                await onconflict.insert_ignore(
                    conn,
                    users,
                    [{"email": "a@x", "name": "toolongname"}, {"email": "b@x", "name": "b"}],
                )
            assert info.value.warnings[0][1] == 1265  # data truncated
            await conn.commit()
        assert await count(engine, users) == 0
    finally:
        await engine.dispose()


async def test_caller_transaction_keeps_earlier_work_after_error(aengine: AsyncEngine) -> None:
    async with aengine.connect() as conn:
        await conn.execute(tags.insert(), [{"slug": "mine"}])
        big = [{"email": f"u{i:04d}@x", "name": "u"} for i in range(1500)]  # two statements
        big.append({"email": "bad@x", "name": None})
        with pytest.raises(sa.exc.IntegrityError):
            await onconflict.insert_ignore(conn, users, big)
        await conn.commit()  # the caller may go on: the failed call left nothing behind
    assert await count(aengine, tags) == 1
    assert await count(aengine, users) == 0


# -- one row per statement (MySQL 8, MariaDB < 10.5) --------------------------


async def test_without_returning_outcomes_are_exact(no_returning: AsyncEngine) -> None:
    await onconflict.insert_ignore(no_returning, users, [{"email": "a@x", "name": "alice"}])
    result = await onconflict.insert_ignore(
        no_returning,
        users,
        [
            {"email": "b@x", "name": "bob"},
            {"email": "a@x", "name": "dup"},
            {"email": "b@x", "name": "rep"},
        ],
    )
    assert result.existing == [{"email": "a@x", "name": "dup"}, {"email": "b@x", "name": "rep"}]
    assert len(result.inserted) == 1
    inserted = result.inserted[0]
    assert inserted["email"] == "b@x"
    assert isinstance(inserted["id"], int)
    assert await count(no_returning, users) == 2


@pytest.mark.parametrize(
    ("bad", "errno"),
    [
        ({"email": "n@x", "name": None}, 1048),
        ({"email": "n@x", "name": ""}, 4025),
        ({"email": "n@x", "name": "fk", "pid": 99}, 1452),
        ({"email": "n@x", "name": "toolongname"}, 1406),
    ],
)
async def test_without_returning_only_duplicates_are_skipped(
    no_returning: AsyncEngine, bad: dict[str, Any], errno: int
) -> None:
    await onconflict.insert_ignore(no_returning, users, [{"email": "a@x", "name": "alice"}])
    with pytest.raises(sa.exc.DBAPIError) as info:
        await onconflict.insert_ignore(
            no_returning,
            users,
            [{"email": "a@x", "name": "x"}, {"email": "ok@x", "name": "ok"}, bad],
        )
    assert info.value.orig.args[0] == errno  # type: ignore[union-attr]
    assert await count(no_returning, users) == 1
    async with no_returning.connect() as conn:
        assert (
            await conn.execute(sa.select(parent.c.id).order_by(parent.c.id))
        ).scalars().all() == [1, 2]


# -- round trips of the guard ---------------------------------------------------


@pytest.mark.parametrize(
    "driver",
    [
        "pymysql",
        "aiomysql",
        "asyncmy",
        pytest.param("mysqldb", marks=pytest.mark.compiled_driver),
        pytest.param("mariadbconnector", marks=pytest.mark.compiled_driver),
    ],
)
async def test_warning_count_read_from_the_packet_matches_the_server(
    backend: Backend, driver: str
) -> None:
    """Each driver's reader gives what SELECT @@warning_count gives, for 0, 1
    and 2 warnings, with and without a result set (RETURNING)."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from onconflict.dialects.mysql import WARNING_COUNT_READERS, packet_warning_count
    from tests.test_errors import need

    assert driver in WARNING_COUNT_READERS
    need({"mysqldb": "MySQLdb", "mariadbconnector": "mariadb"}.get(driver, driver))
    family = "mariadb+" if driver == "mariadbconnector" else "mysql+"
    url = sa.engine.make_url(backend.url).set(drivername=family + driver)

    def check(conn: sa.Connection) -> list[tuple[int | None, int]]:
        conn.execute(tags.insert(), [{"slug": "a"}, {"slug": "b"}])
        seen = []
        for rows in ([{"slug": "c"}], [{"slug": "a"}], [{"slug": "a"}, {"slug": "b"}]):
            for returning in (True, False):
                stmt = sa.dialects.mysql.insert(tags).prefix_with("IGNORE")
                result = conn.execute(stmt.returning(tags.c.slug) if returning else stmt, rows)
                if returning:
                    result.all()
                read = packet_warning_count(conn, result)
                server = conn.execute(sa.text("SELECT @@warning_count")).scalar_one()
                seen.append((read, int(server)))
        conn.rollback()
        return seen

    if driver in ("aiomysql", "asyncmy"):
        async_engine = create_async_engine(url)
        try:
            async with async_engine.connect() as aconn:
                seen = await aconn.run_sync(check)
        finally:
            await async_engine.dispose()
    else:
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                seen = check(conn)
        finally:
            engine.dispose()
    assert all(read == server for read, server in seen), seen
    assert [server for _, server in seen] == [0, 1, 1, 1, 2, 2]  # "c" is there after the first


async def test_one_row_owned_call_sends_no_savepoint(backend: Backend) -> None:
    """An engine-owned one-row insert_ignore: the INSERT, SHOW WARNINGS only when
    the server counted a warning, then COMMIT; no SAVEPOINT, no warning query."""
    engine = backend.async_engine()
    sent: list[str] = []

    @sa.event.listens_for(engine.sync_engine, "before_cursor_execute")
    def record(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        sent.append(statement.split()[0].upper() + (" WARNINGS" if "WARNINGS" in statement else ""))

    try:
        first = await onconflict.insert_ignore(engine, tags, [{"slug": "x"}])
        again = await onconflict.insert_ignore(engine, tags, [{"slug": "x"}])
    finally:
        await engine.dispose()
    assert first.inserted_count == 1
    assert again.existing_count == 1
    assert sent == ["INSERT", "INSERT", "SHOW WARNINGS"]
