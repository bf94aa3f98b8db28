"""The INSERT IGNORE guard on the real MariaDB server.

These drive the guard into its rare paths: more warnings than the server keeps,
a non-strict sql_mode, and the one-row-per-statement path that MySQL 8 and
MariaDB < 10.5 take (forced here by turning RETURNING off on a real server).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

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
    """An engine-owned one-row insert_ignore: a plain INSERT, then COMMIT; no
    SAVEPOINT, no warning query (the count comes in the reply), and for a
    duplicate nothing but the INSERT whose error 1062 says so."""
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
    assert sent == ["INSERT", "INSERT"]


# -- one row: a plain INSERT, its error 1062 read exactly -----------------------

BAD_ROWS = [
    pytest.param({"email": "n@x", "name": None}, 1048, id="not-null"),
    pytest.param({"email": "l@x", "name": "toolongname"}, 1406, id="too-long"),
    pytest.param({"email": "f@x", "name": "f", "pid": 99}, 1452, id="foreign-key"),
    pytest.param({"email": "c@x", "name": ""}, 4025, id="check"),
]


async def own_statements(conn: AsyncConnection, call: Awaitable[Any]) -> dict[str, int]:
    """The statements the caller's own session sends during ``call``, by the
    server's counters (Com_*), less the SHOW STATUS that reads them."""

    async def counters() -> Counter[str]:
        shown = await conn.execute(sa.text("SHOW SESSION STATUS LIKE 'Com\\_%'"))
        return Counter({k.lower(): int(v) for k, v in shown if k.lower() != "com_show_status"})

    before = await counters()
    await call
    done = await counters() - before
    return {k.removeprefix("com_"): v for k, v in done.items() if v}


async def test_one_row_in_the_callers_transaction_is_one_insert(aengine: AsyncEngine) -> None:
    """Inside the caller's transaction a one-row insert_ignore sends one INSERT,
    new row or duplicate (no SAVEPOINT, no RELEASE, no SHOW WARNINGS); every
    bad row raises the server's own error with nothing stored, and the
    caller's transaction goes on with its earlier work."""
    async with aengine.connect() as conn:
        await conn.execute(tags.insert(), [{"slug": "mine"}])
        new = onconflict.insert_ignore(conn, users, [{"email": "a@x", "name": "a"}])
        assert await own_statements(conn, new) == {"insert": 1}
        dup = onconflict.insert_ignore(conn, users, [{"email": "a@x", "name": "b"}])
        assert await own_statements(conn, dup) == {"insert": 1}
        again = await onconflict.insert_ignore(conn, users, [{"email": "a@x", "name": "c"}])
        assert again.existing == [{"email": "a@x", "name": "c"}]
        for param in BAD_ROWS:
            bad, errno = param.values
            with pytest.raises(sa.exc.DBAPIError) as info:
                await onconflict.insert_ignore(conn, users, [bad])
            assert info.value.orig.args[0] == errno  # type: ignore[union-attr]
        made = await onconflict.insert_ignore(conn, users, [{"email": "b@x", "name": "b"}])
        assert made.inserted_count == 1
        await conn.commit()
    assert await count(aengine, tags) == 1
    async with aengine.connect() as conn:
        stored = (await conn.execute(sa.select(users.c.email, users.c.name))).all()
    assert sorted(stored) == [("a@x", "a"), ("b@x", "b")]


async def test_one_row_in_a_session_keeps_the_session_usable(aengine: AsyncEngine) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    async with AsyncSession(aengine) as session:
        await session.execute(tags.insert(), [{"slug": "mine"}])
        await onconflict.insert_ignore(session, users, [{"email": "a@x", "name": "a"}])
        dup = await onconflict.insert_ignore(session, users, [{"email": "a@x", "name": "b"}])
        assert dup.existing_count == 1
        with pytest.raises(sa.exc.IntegrityError):
            await onconflict.insert_ignore(session, users, [{"email": "n@x", "name": None}])
        await session.commit()
    assert await count(aengine, tags) == 1
    assert await count(aengine, users) == 1


@pytest.mark.parametrize("owner", ["engine", "connection", "sync"])
async def test_a_row_stored_with_a_note_is_undone(
    aengine: AsyncEngine, backend: Backend, owner: str
) -> None:
    """A plain INSERT stores some values with a note even in strict mode
    (trailing spaces beyond the length trimmed): that is not a duplicate, so
    the call raises UnsafeInsertError and nothing is stored, as the guarded
    INSERT IGNORE did; the caller's earlier work stays."""
    row = {"email": "s@x", "name": "ab      "}
    if owner == "engine":
        with pytest.raises(onconflict.UnsafeInsertError, match="1265"):
            await onconflict.insert_ignore(aengine, users, [row])
    elif owner == "connection":
        async with aengine.connect() as conn:
            await conn.execute(tags.insert(), [{"slug": "mine"}])
            with pytest.raises(onconflict.UnsafeInsertError, match="1265") as info:
                await onconflict.insert_ignore(conn, users, [row])
            assert info.value.warnings[0][:2] == ("Note", 1265)
            await conn.commit()
        assert await count(aengine, tags) == 1
    else:
        engine = backend.sync_engine()
        try:
            with engine.connect() as conn:
                with pytest.raises(onconflict.UnsafeInsertError, match="1265"):
                    onconflict.sync.insert_ignore(conn, users, [row])
                conn.commit()
        finally:
            engine.dispose()
    assert await count(aengine, users) == 0


# A unique key the database fills from a default the metadata does not know:
# a row the metadata says cannot reach it collides on it all the same.
codes_db_metadata = sa.MetaData()
sa.Table(
    "oc_codes",
    codes_db_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("code", sa.String(20), nullable=False, server_default="x"),
    sa.Column("k", sa.String(20), nullable=False),
    sa.UniqueConstraint("code", name="uq_codes_code"),  # checked first: declared first
    sa.UniqueConstraint("k", name="uq_codes_k"),
)
codes = sa.Table(
    "oc_codes",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("code", sa.String(20), nullable=False),
    sa.Column("k", sa.String(20), nullable=False),
    sa.UniqueConstraint("code", name="uq_codes_code"),
    sa.UniqueConstraint("k", name="uq_codes_k"),
)


@pytest.fixture
async def codes_table(aengine: AsyncEngine) -> AsyncIterator[None]:
    async with aengine.begin() as conn:
        await conn.run_sync(codes_db_metadata.drop_all)
        await conn.run_sync(codes_db_metadata.create_all)
    yield
    async with aengine.begin() as conn:
        await conn.run_sync(codes_db_metadata.drop_all)


@pytest.mark.usefixtures("codes_table")
@pytest.mark.parametrize("owner", ["engine", "connection"])
async def test_duplicate_of_another_key_is_raised(aengine: AsyncEngine, owner: str) -> None:
    """on="k", and the row collides on another unique key (code, filled by a
    server default the metadata does not declare): error 1062 names that key
    and no row has k: raised, not reported existing (INSERT IGNORE skipped it).
    A row that collides on both keys is existing, whichever the error names."""

    async def call(rows: list[dict[str, Any]]) -> onconflict.InsertResult:
        if owner == "engine":
            return await onconflict.insert_ignore(aengine, codes, rows, on="k")
        async with aengine.connect() as conn:
            done = await onconflict.insert_ignore(conn, codes, rows, on="k")
            await conn.commit()
            return done

    assert (await call([{"k": "a"}])).inserted_count == 1  # code 'x'
    with pytest.raises(sa.exc.IntegrityError) as info:
        await call([{"k": "b"}])  # code 'x' again: a duplicate of uq_codes_code
    assert info.value.orig.args[0] == 1062  # type: ignore[union-attr]
    assert "uq_codes_code" in str(info.value.orig)
    again = await call([{"k": "a"}])  # both keys: the error names uq_codes_code
    assert again.existing == [{"k": "a"}]
    assert await count(aengine, codes) == 1


async def test_handle_error_listeners_see_no_duplicate(backend: Backend) -> None:
    """An engine with handle_error listeners keeps the guarded INSERT IGNORE
    for one row: a duplicate is no error they should see."""
    engine = backend.async_engine()
    seen: list[Any] = []
    sa.event.listen(engine.sync_engine, "handle_error", seen.append)
    try:
        async with engine.connect() as conn:
            await onconflict.insert_ignore(conn, tags, [{"slug": "a"}])
            dup = await onconflict.insert_ignore(conn, tags, [{"slug": "a"}])
            await conn.commit()
        assert dup.existing_count == 1
        assert (await onconflict.insert_ignore(engine, tags, [{"slug": "a"}])).existing_count == 1
    finally:
        await engine.dispose()
    assert seen == []


async def test_driver_warnings_are_quiet_only_inside_a_call(aengine: AsyncEngine) -> None:
    """aiomysql turns each server warning into a Python warning (SQLAlchemy 2.1's
    cursor already drops them; older 2.0 releases do not). onconflict quiets
    them for its own calls only, on the call's connection: importing it
    installs no process-wide filter, and the connection is as before after."""
    import warnings

    import onconflict.dialects.mysql

    assert not any("Duplicate entry" in str(f[1]) for f in warnings.filters)
    rows = [{"slug": "a"}, {"slug": "b"}]
    async with aengine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        await onconflict.insert_ignore(conn, tags, rows)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            again = await onconflict.insert_ignore(conn, tags, [*rows, {"slug": "c"}])
        assert again.existing_count == 2
        assert not [w for w in seen if "Duplicate entry" in str(w.message)]
        assert "show_warnings" not in vars(driver)  # put back: aiomysql's own again
        await conn.commit()


async def test_statement_events_see_the_one_row_insert(backend: Backend) -> None:
    """In the caller's transaction a one-row call runs on the driver's cursor
    only where nothing can tell: with a statement listener it runs through
    SQLAlchemy, and the listener sees the INSERT (new row and duplicate)."""
    engine = backend.async_engine()
    sent: list[str] = []

    @sa.event.listens_for(engine.sync_engine, "before_cursor_execute")
    def record(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        sent.append(statement.split()[0].upper())

    try:
        async with engine.connect() as conn:
            await conn.execute(tags.insert(), [{"slug": "mine"}])
            sent.clear()
            await onconflict.insert_ignore(conn, tags, [{"slug": "a"}])
            dup = await onconflict.insert_ignore(conn, tags, [{"slug": "a"}])
            await conn.commit()
    finally:
        await engine.dispose()
    assert dup.existing_count == 1
    assert sent == ["INSERT", "INSERT"]


async def test_deadlock_in_the_callers_transaction_is_raised(aengine: AsyncEngine) -> None:
    """Two callers' transactions each insert one row, then the other's: InnoDB
    picks a victim (1213) and rolls its whole transaction back. The victim's
    call raises it and is not run again (that would run in a new transaction:
    the caller's earlier work silently gone, the row stored alone)."""
    import asyncio

    async with aengine.connect() as a, aengine.connect() as b:
        await a.begin()
        await b.begin()
        await onconflict.insert_ignore(a, tags, [{"slug": "k1"}])
        await onconflict.insert_ignore(b, tags, [{"slug": "k2"}])
        first = asyncio.create_task(onconflict.insert_ignore(a, tags, [{"slug": "k2"}]))
        await asyncio.sleep(0.5)  # a now waits for b's k2
        second = onconflict.insert_ignore(b, tags, [{"slug": "k1"}])
        done = await asyncio.wait_for(
            asyncio.gather(first, second, return_exceptions=True), timeout=30
        )
        errors = [r for r in done if isinstance(r, BaseException)]
        assert len(errors) == 1, done
        assert isinstance(errors[0], sa.exc.DBAPIError)
        assert errors[0].orig.args[0] == 1213  # type: ignore[union-attr]
        await a.commit()
        await b.commit()
    assert await count(aengine, tags) == 2  # the winner's two rows, nothing of the victim


async def in_transaction_path(conn: AsyncConnection, table: sa.Table, row: dict[str, Any]) -> Any:
    """What the aiomysql caller's-transaction path itself answers for one row
    (None: it declined, the ordinary path would run)."""
    from onconflict._insert_ignore import prepare_insert_ignore
    from onconflict.dialects import driver_path

    prepared = prepare_insert_ignore(conn.dialect, table, [row], None)
    return await driver_path(conn.dialect).insert_ignore_in(conn, prepared)


async def test_callers_transaction_path_runs_on_the_driver(aengine: AsyncEngine) -> None:
    """Inside the caller's transaction a one-row call goes on the aiomysql
    connection itself: a new row comes back stored (server default included),
    a duplicate of the target is {}; a NOT NULL error, a foreign key error and
    a duplicate of another unique key are declined (None), having stored
    nothing and left the caller's transaction usable, and then raised by the
    call as the server's own error."""
    async with aengine.connect() as conn:
        await conn.execute(tags.insert(), [{"slug": "mine"}])
        new = await in_transaction_path(conn, users, {"email": "a@x", "name": "a"})
        assert new is not None
        assert (new[0]["email"], new[0]["note"]) == ("a@x", "none")
        assert await in_transaction_path(conn, users, {"email": "a@x", "name": "b"}) == {}
        assert await in_transaction_path(conn, users, {"email": "n@x", "name": None}) is None
        bad = {"email": "f@x", "name": "f", "pid": 99}
        assert await in_transaction_path(conn, users, bad) is None
        with pytest.raises(sa.exc.IntegrityError) as info:
            await onconflict.insert_ignore(conn, users, [{"email": "n@x", "name": None}])
        assert info.value.orig.args[0] == 1048  # type: ignore[union-attr]
        await conn.commit()
    assert await count(aengine, tags) == 1
    assert await count(aengine, users) == 1


@pytest.mark.usefixtures("codes_table")
async def test_callers_transaction_path_declines_another_keys_duplicate(
    aengine: AsyncEngine,
) -> None:
    """1062 naming a key other than the target's: not reported existing by
    the driver path (declined: the ordinary path then raises it, or finds the
    target's row with a locking read, as before)."""
    from onconflict._insert_ignore import prepare_insert_ignore
    from onconflict.dialects import driver_path

    async with aengine.connect() as conn:
        await conn.begin()
        path = driver_path(conn.dialect)
        made = prepare_insert_ignore(conn.dialect, codes, [{"k": "a"}], "k")
        assert await path.insert_ignore_in(conn, made) is not None  # code 'x'
        other = prepare_insert_ignore(conn.dialect, codes, [{"k": "b"}], "k")
        assert await path.insert_ignore_in(conn, other) is None  # code 'x' again
        with pytest.raises(sa.exc.IntegrityError, match="uq_codes_code"):
            await onconflict.insert_ignore(conn, codes, [{"k": "b"}], on="k")
        # both keys, the error names uq_codes_code: declined, then existing
        again = prepare_insert_ignore(conn.dialect, codes, [{"k": "a"}], "k")
        assert await path.insert_ignore_in(conn, again) is None
        done = await onconflict.insert_ignore(conn, codes, [{"k": "a"}], on="k")
        assert done.existing == [{"k": "a"}]
        await conn.commit()
    assert await count(aengine, codes) == 1


async def test_callers_transaction_path_honours_events_and_options(backend: Backend) -> None:
    """The driver path declines a connection with execution options, statement
    listeners or handle_error listeners (they must see the statement), and
    one in AUTOCOMMIT or outside a transaction."""
    engine = backend.async_engine()
    try:
        async with engine.connect() as conn:
            assert await in_transaction_path(conn, tags, {"slug": "a"}) is None  # not begun
            await conn.begin()
            assert await in_transaction_path(conn, tags, {"slug": "a"}) is not None
            tagged = await conn.execution_options(logging_token="x")
            assert await in_transaction_path(tagged, tags, {"slug": "b"}) is None
            await conn.rollback()
        seen: list[Any] = []

        def record(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
            seen.append(statement)

        def failed(context: Any) -> None:
            seen.append(context)

        sa.event.listen(engine.sync_engine, "before_cursor_execute", record)
        async with engine.begin() as conn:
            assert await in_transaction_path(conn, tags, {"slug": "c"}) is None
        sa.event.remove(engine.sync_engine, "before_cursor_execute", record)
        sa.event.listen(engine.sync_engine, "handle_error", failed)
        async with engine.begin() as conn:
            assert await in_transaction_path(conn, tags, {"slug": "d"}) is None
        sa.event.remove(engine.sync_engine, "handle_error", failed)
        sa.event.listen(engine.sync_engine, "before_execute", record)
        async with engine.begin() as conn:
            assert await in_transaction_path(conn, tags, {"slug": "f"}) is None
        sa.event.remove(engine.sync_engine, "before_execute", record)
        async with engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await auto.begin()
            assert await in_transaction_path(auto, tags, {"slug": "e"}) is None
            await auto.rollback()
        assert await count(engine, tags) == 0
    finally:
        await engine.dispose()


async def test_engine_path_gives_the_connection_back_clean(backend: Backend) -> None:
    """The engine-owned one-row path returns its connection to the pool with
    its transaction ended (no reset ROLLBACK needed): a new row and a duplicate
    leave no open transaction or lock behind, with a pool of one connection."""
    engine = backend.async_engine(pool_size=1, max_overflow=0)
    try:
        for _ in range(3):
            assert (
                await onconflict.insert_ignore(engine, tags, [{"slug": "p"}])
            ).inserted_count in (
                0,
                1,
            )
        async with engine.connect() as conn:
            trx = await conn.execute(sa.text("SELECT @@in_transaction"))
            assert trx.scalar_one() == 0
        # another session can take the row's lock at once (nothing was held)
        async with engine.begin() as conn:
            await conn.execute(sa.text("SET SESSION innodb_lock_wait_timeout = 1"))
            locked = sa.select(tags.c.slug).where(tags.c.slug == "p").with_for_update()
            assert (await conn.execute(locked)).scalar_one() == "p"
    finally:
        await engine.dispose()


async def test_engine_path_cancelled_calls_leave_the_pool_usable(backend: Backend) -> None:
    """Calls cancelled at any point of the engine path (a timeout around
    them) give their connection back or drop it: with a pool of one
    connection every later call still gets one at once, and finds no
    transaction or lock left behind."""
    import asyncio

    engine = backend.async_engine(pool_size=1, max_overflow=0, pool_timeout=5)
    try:
        await onconflict.insert_ignore(engine, tags, [{"slug": "warm"}])
        for i in range(40):
            call = onconflict.insert_ignore(engine, tags, [{"slug": f"c{i % 4}"}])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(call, timeout=0.0002 * (i % 8))
        for i in range(4):
            done = await onconflict.insert_ignore(engine, tags, [{"slug": f"c{i}"}])
            assert done.inserted_count + done.existing_count == 1
        async with engine.connect() as conn:
            trx = await conn.execute(sa.text("SELECT @@in_transaction"))
            assert trx.scalar_one() == 0
    finally:
        await engine.dispose()


@pytest.mark.parametrize("kind", ["invalidated", "pre_ping", "recycle"])
async def test_engine_path_checkout_reconnects_when_it_must(backend: Backend, kind: str) -> None:
    """The engine path takes an idle pooled connection without SQLAlchemy's
    greenlet bridge only where no I/O can be needed; a connection invalidated
    meanwhile (it must reconnect), and engines with pre-ping or recycling,
    go through the bridge: every call still stores or finds its row."""
    options: dict[str, Any] = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 5}
    if kind == "pre_ping":
        options["pool_pre_ping"] = True
    elif kind == "recycle":
        options["pool_recycle"] = 3600
    engine = backend.async_engine(**options)
    try:
        await onconflict.insert_ignore(engine, tags, [{"slug": "a"}])
        raw = await engine.raw_connection()
        raw.invalidate()  # the pooled record now has no connection: a reconnect is due
        done = await onconflict.insert_ignore(engine, tags, [{"slug": "b"}])
        assert done.inserted_count == 1
        again = await onconflict.insert_ignore(engine, tags, [{"slug": "a"}])
        assert again.existing_count == 1
        async with engine.connect() as conn:
            assert (await conn.execute(sa.text("SELECT @@in_transaction"))).scalar_one() == 0
        assert await count(engine, tags) == 2
    finally:
        await engine.dispose()
