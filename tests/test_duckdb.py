"""DuckDB: what it does differently, measured on the real thing (docs/dialects.md).

The generic tests run on DuckDB as the ``duckdb`` backend (tests/backends.py);
these pin the facts behind its support class, the refusals, the classifier on
DuckDB's own errors, and what the async front does without an async driver.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Engine

import onconflict
import onconflict.sync
from onconflict.cli import main
from onconflict.dialects import support_for
from onconflict.exceptions import NotSupportedError
from tests.conftest import missing

pytestmark = pytest.mark.duckdb

md = sa.MetaData()
items = sa.Table(
    "oc_dk_items",
    md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("k", sa.String(10), nullable=False, unique=True),
    sa.Column("v", sa.String(10), nullable=True),
    sa.Column("n", sa.Integer, sa.CheckConstraint("n > 0"), nullable=True),
)
pairs = sa.Table(
    "oc_dk_pairs",
    md,
    sa.Column("a", sa.Integer, primary_key=True),
    sa.Column("b", sa.String(10), primary_key=True),
    sa.Column("v", sa.String(10), nullable=True),
)
exts = sa.Table(
    "oc_dk_exts",
    md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("ext", sa.String(10), nullable=False),
)
lower_ext = sa.Index("ix_oc_dk_lower_ext", sa.func.lower(exts.c.ext), unique=True)
partial_md = sa.MetaData()  # DuckDB cannot create it: the metadata is enough for the refusal
subs = sa.Table(
    "oc_dk_subs",
    partial_md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("email", sa.String(20), nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
)
active_email = sa.Index(
    "ix_oc_dk_active", subs.c.email, unique=True, postgresql_where=subs.c.active
)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    if importlib.util.find_spec("duckdb_engine") is None:
        missing("duckdb and duckdb-engine are not installed (pip install onconflict[duckdb])")
    made = sa.create_engine(f"duckdb:///{tmp_path / 'facts.duckdb'}")
    md.create_all(made)
    yield made
    made.dispose()


def statements(engine: Engine) -> list[str]:
    sent: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: sent.append(a[2]))
    return sent


def raw_error(engine: Engine, sql: str) -> BaseException:
    """The duckdb exception a statement raises (no SQLAlchemy around it)."""
    with engine.connect() as conn:
        duck: Any = conn.connection.driver_connection
        try:
            duck.execute(sql)
        except Exception as exc:
            return exc
    raise AssertionError(f"{sql!r} did not raise")


# -- the facts -------------------------------------------------------------------------


def test_serial_is_rejected_use_a_sequence_or_explicit_keys(engine: Engine) -> None:
    exc = raw_error(engine, "CREATE TABLE oc_dk_serial (id SERIAL PRIMARY KEY)")
    assert "serial" in str(exc).lower()
    seq = sa.Sequence("oc_dk_seq_id_seq")
    numbered = sa.Table(
        "oc_dk_seq", sa.MetaData(), sa.Column("id", sa.Integer, seq, primary_key=True),
        sa.Column("k", sa.String(10), unique=True),
    )  # fmt: skip
    numbered.metadata.create_all(engine)
    done = onconflict.sync.insert_ignore(engine, numbered, [{"k": "a"}, {"k": "b"}], on="k")
    assert sorted(r["id"] for r in done.inserted) == [1, 2]


def test_returning_order_is_not_input_order_results_are(engine: Engine) -> None:
    rows = [{"id": i, "k": f"k{i:02d}"} for i in range(40)]
    with engine.begin() as conn:
        stmt = pg.insert(items).on_conflict_do_nothing(index_elements=["id"]).returning(items.c.id)
        returned = [r.id for r in conn.execute(stmt, rows)]
    assert sorted(returned) == list(range(40))
    assert returned != list(range(40))  # DuckDB 2.0: in no particular order
    mixed = [{"id": i, "k": f"k{i:02d}"} for i in range(60, 30, -1)]
    done = onconflict.sync.insert_ignore(engine, items, mixed, on="id")
    assert [r["id"] for r in done.inserted] == list(range(60, 39, -1))  # input order
    assert [r["id"] for r in done.existing] == list(range(39, 30, -1))


def test_do_update_of_a_key_twice_in_one_statement_keeps_the_first(engine: Engine) -> None:
    """DuckDB applies the first row of a key and drops the others silently
    (PostgreSQL raises): onconflict sends each key once, as ``duplicates`` says."""
    with engine.begin() as conn:
        stmt = pg.insert(items).values(
            [{"id": 1, "k": "a", "v": "first"}, {"id": 1, "k": "a", "v": "second"}]
        )
        stmt = stmt.on_conflict_do_update(index_elements=["id"], set_={"v": stmt.excluded.v})
        conn.execute(stmt)
        assert conn.execute(sa.select(items.c.v)).scalar_one() == "first"
    twice = [{"id": 2, "k": "b", "v": "first"}, {"id": 2, "k": "b", "v": "last"}]
    onconflict.sync.upsert(engine, items, twice, on="id")
    with engine.connect() as conn:
        assert conn.execute(sa.select(items.c.v).where(items.c.id == 2)).scalar_one() == "last"
    with pytest.raises(ValueError, match="same key"):
        onconflict.sync.upsert(engine, items, twice, on="id", duplicates="error")


def test_other_violations_raise_and_store_nothing(engine: Engine) -> None:
    onconflict.sync.insert_ignore(engine, items, [{"id": 1, "k": "a"}])
    for bad, code in [
        ({"id": 2, "k": None}, "not null"),
        ({"id": 2, "k": "b", "n": 0}, "check"),
        ({"id": 2, "k": "a"}, "duplicate key"),  # of another unique key than the target
    ]:
        with pytest.raises(sa.exc.DBAPIError) as info:
            onconflict.sync.insert_ignore(engine, items, [{"id": 3, "k": "c"}, bad], on="id")
        assert onconflict.classify.error_code(info.value) == code
        assert not onconflict.is_transient(info.value)
    with engine.connect() as conn:
        assert conn.execute(sa.select(items.c.id)).scalars().all() == [1]


# -- refusals, before any SQL ----------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda e: onconflict.sync.insert_ignore(e, items, [{"id": 1, "k": "a"}],
                                                 strategy="classify"), "SAVEPOINT"),
        (lambda e: onconflict.sync.insert_ignore(e, subs, [{"id": 1, "email": "a", "active": True}],
                                                 on=active_email), "partial"),
        (lambda e: onconflict.sync.upsert(e, subs, [{"id": 1, "email": "a", "active": True}],
                                          on=active_email), "partial"),
        (lambda e: onconflict.sync.insert_ignore(e, exts, [{"id": 1, "ext": "TXT"}], on=lower_ext),
         "expression"),
        (lambda e: onconflict.sync.get_or_create(e, exts, {"ext": "TXT"}, {"id": 1}, on=lower_ext),
         "expression"),
        (lambda e: onconflict.sync.seed(e, {exts: [{"id": 1, "ext": "TXT"}]}, on=lower_ext),
         "expression"),
    ],
    ids=["classify", "partial-insert", "partial-upsert", "expression-insert",
         "expression-get", "expression-seed"],
)  # fmt: skip
def test_refused_before_any_sql(engine: Engine, call: Any, match: str) -> None:
    sent = statements(engine)
    with pytest.raises(NotSupportedError, match=match):
        call(engine)
    assert sent == []


def test_an_expression_index_exists_but_on_conflict_cannot_name_it(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(exts.insert().values(id=1, ext="TXT"))
    exc = raw_error(engine, "INSERT INTO oc_dk_exts VALUES (2, 'txt') ON CONFLICT DO NOTHING")
    assert onconflict.is_unique_violation(exc)  # not skipped even without a target
    exc = raw_error(engine, "INSERT INTO oc_dk_exts VALUES (2, 'txt') ON CONFLICT (lower(ext))")
    assert "syntax error" in str(exc).lower()


def test_no_savepoints_no_locking_reads_no_partial_indexes(engine: Engine) -> None:
    for sql, what in [
        ("SAVEPOINT oc_sp", "syntax error"),
        ("SELECT * FROM oc_dk_items FOR UPDATE", "syntax error"),
        ("CREATE UNIQUE INDEX oc_dk_p ON oc_dk_items (v) WHERE n > 1", "partial indexes"),
    ]:
        assert what in str(raw_error(engine, sql)).lower()


# -- the classifier on DuckDB's errors ---------------------------------------------------


def test_unique_violations_from_real_errors(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(items.insert().values(id=1, k="a"))
        conn.execute(pairs.insert().values(a=1, b="x"))
    dup = "INSERT INTO oc_dk_items VALUES ({}, '{}', NULL, NULL)"
    pk = onconflict.unique_violation(raw_error(engine, dup.format(1, "b")))
    assert pk is not None
    assert (pk.family, pk.driver, pk.code) == ("duckdb", "duckdb", "duplicate key")
    assert pk.columns == ("id",)
    assert "primary key" in pk.message
    uq = onconflict.unique_violation(raw_error(engine, dup.format(2, "a")))
    assert uq is not None
    assert uq.columns == ("k",)
    assert "unique" in uq.message
    both = onconflict.unique_violation(
        raw_error(engine, "INSERT INTO oc_dk_pairs VALUES (1, 'x', NULL)")
    )
    assert both is not None
    assert both.columns == ("a", "b")
    with engine.connect() as conn, pytest.raises(sa.exc.IntegrityError) as info:
        conn.execute(items.insert().values(id=1, k="z"))
    assert onconflict.is_unique_violation(info.value)  # through SQLAlchemy's wrapper
    for sql in [
        "INSERT INTO oc_dk_items VALUES (3, NULL, NULL, NULL)",
        "INSERT INTO oc_dk_items VALUES (3, 'c', NULL, 0)",
    ]:
        exc = raw_error(engine, sql)
        assert not onconflict.is_unique_violation(exc)
        assert not onconflict.is_transient(exc)


def test_transaction_conflicts_are_transient(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(items.insert().values(id=1, k="a"))
    # two transactions update one row: the second fails at once
    with engine.connect() as one, engine.connect() as two:
        one.execute(items.update().values(v="one"))
        with pytest.raises(sa.exc.DBAPIError) as info:
            two.execute(items.update().values(v="two"))
        assert onconflict.is_transient(info.value)
        assert onconflict.classify.error_code(info.value) == "write conflict"
    # two transactions insert one key: both statements pass, the second COMMIT fails
    ins = pg.insert(items).on_conflict_do_nothing(index_elements=["id"])
    with engine.connect() as one, engine.connect() as two:
        one.execute(ins, {"id": 2, "k": "b"})
        two.execute(ins, {"id": 2, "k": "b"})
        one.commit()
        with pytest.raises(sa.exc.DBAPIError) as info:
            two.commit()
        assert onconflict.is_transient(info.value)
        assert not onconflict.is_unique_violation(info.value)
        assert onconflict.classify.error_code(info.value) == "commit conflict"


def test_a_key_committed_after_the_snapshot_is_a_transient_conflict(engine: Engine) -> None:
    """DuckDB's ON CONFLICT raises a duplicate for a row another transaction
    committed after this one began: onconflict raises it as the transaction
    conflict it is, and retrying() runs the work again, which finds the row."""
    with engine.connect() as mine:
        mine.execute(sa.select(items)).all()  # the snapshot
        onconflict.sync.insert_ignore(engine, items, [{"id": 1, "k": "a"}])
        with pytest.raises(sa.exc.OperationalError) as info:
            onconflict.sync.insert_ignore(mine, items, [{"id": 1, "k": "a"}])
        assert onconflict.is_transient(info.value)
        assert not onconflict.is_unique_violation(info.value)
        assert onconflict.is_unique_violation(info.value.__cause__)  # what DuckDB said
    runs: list[int] = []

    def work(conn: sa.Connection) -> onconflict.InsertResult:
        runs.append(1)
        conn.execute(sa.select(items)).all()
        if len(runs) == 1:
            onconflict.sync.insert_ignore(engine, items, [{"id": 2, "k": "b"}])
        return onconflict.sync.insert_ignore(conn, items, [{"id": 2, "k": "b"}])

    done = onconflict.sync.retrying(engine, work, retry=onconflict.Retry(delay=0))
    assert (len(runs), done.existing) == (2, [{"id": 2, "k": "b"}])


def test_a_duplicate_of_another_key_stays_an_integrity_error(engine: Engine) -> None:
    with engine.connect() as mine:
        mine.execute(sa.select(items)).all()
        onconflict.sync.insert_ignore(engine, items, [{"id": 1, "k": "a"}])
        with pytest.raises(sa.exc.IntegrityError) as info:
            onconflict.sync.insert_ignore(mine, items, [{"id": 2, "k": "a"}], on="id")
        assert onconflict.is_unique_violation(info.value)
        assert not onconflict.is_transient(info.value)


def test_threads_racing_on_one_key(engine: Engine) -> None:
    """8 threads, one engine (DuckDB allows one writing process): every caller
    gets the same row, exactly one created it; conflicts were retried."""
    barrier = threading.Barrier(8)
    got: list[tuple[dict[str, Any], bool]] = []

    def caller(i: int) -> None:
        barrier.wait()
        got.append(onconflict.sync.get_or_create(engine, items, {"k": "same"}, {"id": i}))

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8
    assert sum(created for _, created in got) == 1
    assert len({row["id"] for row, _ in got}) == 1
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(items)).scalar_one() == 1


# -- the async front ---------------------------------------------------------------------


async def test_the_async_front_needs_an_async_driver_use_sync_in_a_thread(
    engine: Engine, tmp_path: Path
) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    with pytest.raises(sa.exc.InvalidRequestError, match="async"):
        create_async_engine(f"duckdb:///{tmp_path / 'a.duckdb'}")
    with pytest.raises(TypeError, match="AsyncEngine"):
        await onconflict.insert_ignore(engine, items, [{"id": 1, "k": "a"}])  # type: ignore[arg-type]
    call = functools.partial(onconflict.sync.insert_ignore, engine, items, [{"id": 1, "k": "a"}])
    done = await anyio.to_thread.run_sync(call)
    assert len(done.inserted) == 1


def test_tables_by_name_are_read_from_duckdbs_catalog(engine: Engine, tmp_path: Path) -> None:
    """duckdb-engine's reflection runs PostgreSQL catalog queries DuckDB lacks;
    seeding by name (and the CLI) reads DuckDB's own catalog instead: columns,
    types, nullability, server defaults, primary, unique and foreign keys, and
    the tables those refer to."""
    with engine.begin() as conn:
        for statement in (
            "CREATE SEQUENCE oc_dk_seq",
            "CREATE TABLE oc_dk_roles (name VARCHAR(20) PRIMARY KEY, since DATE)",
            "CREATE TABLE oc_dk_staff (id INTEGER DEFAULT nextval('oc_dk_seq') PRIMARY KEY,"
            " email VARCHAR NOT NULL UNIQUE, role VARCHAR REFERENCES oc_dk_roles (name),"
            " pay DECIMAL(10, 2), badge VARCHAR, odd INTERVAL)",
            "CREATE UNIQUE INDEX oc_dk_badge ON oc_dk_staff (badge)",
            "CREATE UNIQUE INDEX oc_dk_lower_email ON oc_dk_staff (lower(email))",
        ):
            conn.execute(sa.text(statement))
    found = sa.MetaData()
    with engine.connect() as conn:
        support_for(conn.dialect).reflect(conn, found, ["oc_dk_staff"])
    assert set(found.tables) == {"oc_dk_staff", "oc_dk_roles"}  # the foreign key's table too
    staff = found.tables["oc_dk_staff"]
    assert [c.name for c in staff.primary_key] == ["id"]
    assert staff.c.id.server_default is not None  # the server numbers it
    assert not staff.c.email.nullable
    assert staff.c.badge.nullable
    assert isinstance(staff.c.pay.type, sa.Numeric)
    assert staff.c.pay.type.scale == 2
    assert isinstance(staff.c.odd.type, sa.Interval)
    uniques = {
        tuple(c.columns.keys()) for c in staff.constraints if isinstance(c, sa.UniqueConstraint)
    }
    assert uniques == {("email",)}
    assert {tuple(i.columns.keys()) for i in staff.indexes} == {("badge",)}  # not lower(email)
    assert [fk.target_fullname for fk in staff.c.role.foreign_keys] == ["oc_dk_roles.name"]

    data = tmp_path / "staff.json"
    data.write_text(
        '{"oc_dk_staff": [{"email": "a@x", "role": "dev", "pay": "1.50"}],'
        ' "oc_dk_roles": [{"name": "dev", "since": "2026-01-02"}]}'
    )
    url = engine.url.render_as_string(hide_password=False)
    for _ in range(2):  # the CLI, twice: parents first, then nothing new
        done = CliRunner().invoke(main, ["seed", "--url", url, str(data)])
        assert done.exit_code == 0, done.output
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT email, role, pay FROM oc_dk_staff")).all() == [
            ("a@x", "dev", Decimal("1.50"))
        ]
