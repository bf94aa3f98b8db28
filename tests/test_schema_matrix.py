"""The schema-feature matrix: feature x operation x front x backend.

Every cell writes through one front (AsyncEngine, AsyncConnection in a
transaction the test commits, AsyncSession, or onconflict.sync on an Engine)
to real servers and asserts the reported outcome, the returned rows (keyed by
column key, ORM attribute name for a mapped class) and the stored rows; or,
where the database cannot do the feature, a refusal before any SQL is sent.

The features are declared in tests/schema_matrix.py. Tables are created once
per backend for the module; each test deletes the rows of its feature first.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session
from sqlmodel import SQLModel

import onconflict
import onconflict.sync
from tests.conftest import Backend, backend_at, backend_params
from tests.handles import Handle
from tests.schema_matrix import FEATURES, Feature, metadata, nullable_unique, on_update

pytestmark = pytest.mark.asyncio(loop_scope="module")

OPS = ["insert_ignore", "upsert", "get_or_create", "update_or_create", "seed", "app_row"]
FRONTS = ["async-engine", "async-connection", "async-session", "sync-engine"]
MISSING = "<missing>"


@dataclass
class Db:
    backend: Backend
    aengine: AsyncEngine
    sengine: Engine
    sql: list[str] = field(default_factory=list)  # statements sent, for refusals

    @property
    def name(self) -> str:
        return self.backend.name


def _tables(backend: Backend) -> list[sa.Table]:
    return [t for f in FEATURES if f.applies_to(backend) for t in f.all_tables()]


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=backend_params())
async def db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Db]:
    backend = backend_at(request.param, tmp_path_factory.mktemp("matrix"))
    aengine = backend.async_engine(pool_size=5, max_overflow=5)
    sengine = backend.sync_engine()
    tables = _tables(backend)
    with sengine.begin() as conn, warnings.catch_warnings():
        # PostgreSQL before 18 has STORED generated columns only: SQLAlchemy says so
        warnings.filterwarnings("ignore", "Computed column .* STORED", sa.exc.SAWarning)
        for md in (metadata, SQLModel.metadata):
            mine = [t for t in tables if t.metadata is md]
            md.drop_all(conn, tables=mine)
            md.create_all(conn, tables=mine)
    # (no event listener stays on the engines: a listener turns the driver-level
    # paths off, and the cells must run the paths a plain engine takes)
    yield Db(backend, aengine, sengine)
    await aengine.dispose()
    with sengine.begin() as conn:
        for md in (metadata, SQLModel.metadata):
            md.drop_all(conn, tables=[t for t in tables if t.metadata is md])
    sengine.dispose()


# the fronts ----------------------------------------------------------------------------


def _plain(result: Any, feature: Feature, kinds: list[type]) -> Any:
    """A (row, created) pair whose row is an ORM instance becomes (dict, created);
    the instance's class is appended to ``kinds``."""
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], bool)):
        return result
    row, created = result
    if isinstance(row, Mapping):
        return dict(row), created
    kinds.append(type(row))
    return {name: getattr(row, name) for name in feature.out_names().values()}, created


@dataclass
class Front:
    kind: str
    db: Db
    feature: Feature
    instances: list[type] = field(default_factory=list)  # classes the session returned

    async def raw(self, op: str, *args: Any, **kw: Any) -> Any:
        """``onconflict.<op>`` (or ``onconflict.sync.<op>``) through this front."""
        handle = Handle(self.kind, self.db.aengine, self.db.sengine)
        if handle.on != "session":
            return await handle.run(op, args, kw)
        return await handle.run(op, args, kw, lambda got: _plain(got, self.feature, self.instances))

    async def step(self, what: str, op: str, *args: Any, **kw: Any) -> Any:
        """The call, an error it raises turned into a failure naming the step."""
        try:
            return await self.raw(op, *args, **kw)
        except Exception as exc:
            stored = stored_rows(self.db, self.feature)
            raise AssertionError(
                f"{what}: raised {type(exc).__name__}: {_first_line(exc)} (stored: {stored})"
            ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


# what is stored and what came back ------------------------------------------------------


def stored_rows(db: Db, feature: Feature) -> list[dict[str, Any]]:
    names = feature.out_names()
    with db.sengine.connect() as conn:
        rows = conn.execute(sa.select(feature.table)).mappings().all()
    # by Column object: a SELECT's own keys are database names (user_email)
    return [{names[c.key]: r[c] for c in feature.table.c} for r in rows]


def mismatches(got: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    return [
        f"{k}: expected {v!r}, got {got.get(k, MISSING)!r}"
        for k, v in expected.items()
        if got.get(k, MISSING) != v
    ]


def check_row(what: str, got: Mapping[str, Any], expected: Mapping[str, Any], f: Feature) -> None:
    """A returned row: the expected values, keyed by the names results use, with
    a value for every primary-key column."""
    names = set(f.out_names().values())
    foreign = sorted(set(got) - names)
    assert not foreign, (
        f"{what}: returned row keyed by {foreign}, not by column key / attribute name"
        f" (expected keys among {sorted(names)}); row {dict(got)}"
    )
    pk = [f.out_names()[c.key] for c in f.table.primary_key.columns]
    no_pk = [k for k in pk if got.get(k) is None]
    assert not no_pk, f"{what}: returned row has no value for primary key {no_pk}: {dict(got)}"
    wrong = mismatches(got, expected)
    assert not wrong, f"{what}: returned row {dict(got)}: " + "; ".join(wrong)


def check_given(what: str, got: Mapping[str, Any], f: Feature) -> None:
    """A row reported as given (existing, unchanged): keyed by the names callers use."""
    names = set(f.out_names().values())
    foreign = sorted(set(got) - names)
    assert not foreign, (
        f"{what}: reported row keyed by {foreign}, not by column key / attribute name"
        f" (expected keys among {sorted(names)}); row {dict(got)}"
    )


def check_stored(db: Db, f: Feature, expected: Mapping[str, Any], after: str) -> dict[str, Any]:
    rows = stored_rows(db, f)
    assert len(rows) == 1, f"after {after}: expected 1 stored row {dict(expected)}, got {rows}"
    wrong = mismatches(rows[0], expected)
    assert not wrong, f"after {after}: stored row {rows[0]}: " + "; ".join(wrong)
    return rows[0]


def counts(result: Any) -> dict[str, int]:
    names = ("inserted", "updated", "unchanged", "existing")
    return {n: len(getattr(result, n)) for n in names if hasattr(result, n)}


def check_counts(db: Db, f: Feature, what: str, result: Any, **expected: int) -> None:
    got = counts(result)
    want = {k: expected.get(k, 0) for k in got}
    assert got == want, f"{what}: expected outcome {want}, got {got} (stored: {stored_rows(db, f)})"


def pk_of(f: Feature, row: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(row.get(f.out_names()[c.key]) for c in f.table.primary_key.columns)


# the operations --------------------------------------------------------------------------


async def op_insert_ignore(front: Front, db: Db, f: Feature) -> None:
    what = f"insert_ignore({f.row}) on an empty table"
    first = await front.step(what, "insert_ignore", f.target, [f.row], on=f.on)
    check_counts(db, f, what, first, inserted=1)
    check_row(f"{what}, inserted", first.inserted[0], f.stored, f)
    check_stored(db, f, f.stored, what)
    what = f"insert_ignore({f.repeat()}) with the row stored"
    again = await front.step(what, "insert_ignore", f.target, [f.repeat()], on=f.on)
    check_counts(db, f, what, again, existing=1)
    check_given(f"{what}, existing", again.existing[0], f)
    check_stored(db, f, f.stored, what)


async def op_upsert(front: Front, db: Db, f: Feature) -> None:
    what = f"upsert({f.row}) on an empty table"
    first = await front.step(what, "upsert", f.target, [f.row], on=f.on)
    check_counts(db, f, what, first, inserted=1)
    check_row(f"{what}, inserted", first.inserted[0], f.stored, f)
    check_stored(db, f, f.stored, what)
    row = f.repeat(f.change)
    what = f"upsert({row}) with the row stored"
    second = await front.step(what, "upsert", f.target, [row], on=f.on)
    check_counts(db, f, what, second, updated=1)
    check_row(f"{what}, updated", second.updated[0], f.after_update(), f)
    check_stored(db, f, f.after_update(), what)
    name = next(iter(f.change))
    col = f.column(name)
    where = col != onconflict.excluded(col.key)  # false: the row holds the value already
    what = f"upsert({row}, where=stored {name} != incoming) with the same values stored"
    third = await front.step(what, "upsert", f.target, [row], on=f.on, where=where)
    check_counts(db, f, what, third, unchanged=1)
    check_given(f"{what}, unchanged", third.unchanged[0], f)
    check_stored(db, f, f.after_update(), what)


async def op_get_or_create(front: Front, db: Db, f: Feature) -> None:
    look, rest = f.lookup(False), f.rest()
    what = f"get_or_create({look}, {rest}) on an empty table"
    row, created = await front.step(what, "get_or_create", f.target, look, rest, on=f.on)
    assert created is True, f"{what}: expected created=True, got {created!r}"
    check_row(f"{what}, created", row, f.stored, f)
    check_stored(db, f, f.stored, what)
    look2 = f.lookup(True)
    what = f"get_or_create({look2}, {rest}) with the row stored"
    row2, created2 = await front.step(what, "get_or_create", f.target, look2, rest, on=f.on)
    assert created2 is False, f"{what}: expected created=False, got {created2!r}"
    check_row(f"{what}, found", row2, f.stored, f)
    assert pk_of(f, row2) == pk_of(f, row), (
        f"{what}: expected the created row's primary key {pk_of(f, row)}, got {pk_of(f, row2)}"
    )
    check_stored(db, f, f.stored, what)


async def op_update_or_create(front: Front, db: Db, f: Feature) -> None:
    look, rest = f.lookup(False), f.rest()
    what = f"update_or_create({look}, {rest}) on an empty table"
    row, created = await front.step(what, "update_or_create", f.target, look, rest, on=f.on)
    assert created is True, f"{what}: expected created=True, got {created!r}"
    check_row(f"{what}, created", row, f.stored, f)
    check_stored(db, f, f.stored, what)
    look2 = f.lookup(True)
    what = f"update_or_create({look2}, {f.change}) with the row stored"
    row2, created2 = await front.step(what, "update_or_create", f.target, look2, f.change, on=f.on)
    assert created2 is False, f"{what}: expected created=False, got {created2!r}"
    check_row(f"{what}, updated", row2, f.after_update(), f)
    assert pk_of(f, row2) == pk_of(f, row), (
        f"{what}: expected the created row's primary key {pk_of(f, row)}, got {pk_of(f, row2)}"
    )
    check_stored(db, f, f.after_update(), what)


def _report(report: onconflict.SeedReport, f: Feature) -> dict[str, int]:
    mine = [t for t in report.tables if t.table == f.table.name] or report.tables
    assert len(mine) == 1, f"seed report has no single table {f.table.name!r}: {report.tables}"
    return {k: v for k, v in mine[0].counts().items() if v}


async def op_seed(front: Front, db: Db, f: Feature) -> None:
    steps: list[tuple[str, dict[str, Any], str, dict[str, Any], dict[str, Any]]] = [
        ("on an empty table", f.row, "insert", {"inserted": 1}, f.stored),
        ("with the row stored", f.repeat(), "insert", {"existing": 1}, f.stored),
        ("with the row stored", f.repeat(f.change), "upsert", {"updated": 1}, f.after_update()),
    ]
    for situation, row, mode, expected, values in steps:
        what = f"seed({{{f.table.name}: [{row}]}}, mode={mode!r}) {situation}"
        report = await front.step(what, "seed", {f.target: [row]}, mode=mode, on=f.on)
        got = _report(report, f)
        assert got == expected, (
            f"{what}: expected report {expected}, got {got} (stored: {stored_rows(db, f)})"
        )
        check_stored(db, f, values, what)


def app_writes(db: Db, f: Feature) -> None:
    """The row as the application writes it without onconflict: SQLAlchemy Core
    for a Table, the ORM for a mapped class (bind processing, Python defaults,
    a discriminator: what the application's own code does)."""
    row = {k: v for k, v in f.row.items() if v is not None}  # (the ORM leaves a None key out)
    if isinstance(f.target, sa.Table):
        with db.sengine.begin() as conn:
            conn.execute(sa.insert(f.target), [row])
        return
    with Session(db.sengine) as session, session.begin():
        session.add(f.target(**row))


async def op_app_row(front: Front, db: Db, f: Feature) -> None:
    """A row the application wrote (not onconflict): every call must find it
    under the same key, however the database keeps the values (SQLite keeps a
    datetime as text, in SQLAlchemy's format), and must not store a second."""
    app_writes(db, f)
    check_stored(db, f, f.stored, "the application's INSERT")
    what = f"insert_ignore({f.repeat()}) with the application's row stored"
    again = await front.step(what, "insert_ignore", f.target, [f.repeat()], on=f.on)
    check_counts(db, f, what, again, existing=1)
    check_stored(db, f, f.stored, what)
    look, rest = f.lookup(True), f.rest()
    what = f"get_or_create({look}, {rest}) with the application's row stored"
    row, created = await front.step(what, "get_or_create", f.target, look, rest, on=f.on)
    assert created is False, f"{what}: expected created=False, got {created!r}"
    check_row(f"{what}, found", row, f.stored, f)
    changed = f.repeat(f.change)
    what = f"upsert({changed}) with the application's row stored"
    updated = await front.step(what, "upsert", f.target, [changed], on=f.on)
    check_counts(db, f, what, updated, updated=1)
    check_stored(db, f, f.after_update(), what)


OPERATIONS = {
    "app_row": op_app_row,
    "insert_ignore": op_insert_ignore,
    "upsert": op_upsert,
    "get_or_create": op_get_or_create,
    "update_or_create": op_update_or_create,
    "seed": op_seed,
}


async def refused(front: Front, db: Db, f: Feature, op: str, why: str) -> None:
    """The call raises NotSupportedError, before any SQL is sent."""
    args: tuple[Any, ...]
    if op == "app_row":  # (its first call is an insert_ignore)
        op = "insert_ignore"
    if op in ("insert_ignore", "upsert"):
        args, shown = (f.target, [f.row]), f"[{f.row}]"
    elif op == "seed":
        args, shown = ({f.target: [f.row]},), f"{{{f.table.name}: [{f.row}]}}"
    else:
        args, shown = (f.target, f.lookup(False), f.rest()), f"{f.lookup(False)}, {f.rest()}"
    what = f"{op}({shown}, on={f.on!r}) on {db.name} ({why})"
    await expect_refusal(front, db, f, what, onconflict.NotSupportedError, op, *args, on=f.on)


async def expect_refusal(
    front: Front,
    db: Db,
    f: Feature,
    what: str,
    error: type[Exception],
    op: str,
    *args: Any,
    **kw: Any,
) -> None:
    """``op`` raises ``error`` before any SQL touches the feature's table."""
    db.sql.clear()
    with recording(db):
        try:
            result = await front.raw(op, *args, **kw)
        except error as exc:
            raised: Exception = exc
        except Exception as exc:
            raise AssertionError(
                f"{what}: expected {error.__name__} before any SQL, got {type(exc).__name__}:"
                f" {_first_line(exc)}"
            ) from exc
        else:
            shown = counts(result) or result
            raise AssertionError(
                f"{what}: expected {error.__name__} before any SQL, the call returned {shown}"
                f" (stored: {stored_rows(db, f)})"
            )
    sent = [s for s in db.sql if f.table.name in s]
    assert not sent, f"{what}: raised {raised!r} as expected, but only after sending {sent}"
    assert not stored_rows(db, f), f"{what}: refused but stored {stored_rows(db, f)}"


@contextmanager
def recording(db: Db) -> Iterator[None]:
    """The statements sent meanwhile go to ``db.sql`` (only then: a listener
    turns the driver-level paths off)."""

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        db.sql.append(statement)

    engines = (db.aengine.sync_engine, db.sengine)
    for engine in engines:
        sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield
    finally:
        for engine in engines:
            sa.event.remove(engine, "before_cursor_execute", record)


def clear(db: Db, f: Feature) -> None:
    with db.sengine.begin() as conn:
        for table in f.all_tables():
            conn.execute(table.delete())


def applicable(db: Db, f: Feature) -> None:
    if not f.applies_to(db.backend):
        pytest.skip(f"not applicable: {f.why_not}")


@pytest.mark.parametrize("front_kind", FRONTS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("feature", FEATURES, ids=[f.name for f in FEATURES])
async def test_cell(db: Db, feature: Feature, op: str, front_kind: str) -> None:
    applicable(db, feature)
    clear(db, feature)
    front = Front(front_kind, db, feature)
    why = feature.refusal(db.backend)
    if why:
        await refused(front, db, feature, op, why)
        return
    await OPERATIONS[op](front, db, feature)
    fetching = op in ("get_or_create", "update_or_create")
    if front_kind == "async-session" and feature.instance_of and fetching:
        kinds = {c.__name__ for c in front.instances}
        assert kinds == {feature.instance_of.__name__}, (
            f"{op} in an AsyncSession: expected {feature.instance_of.__name__} instances,"
            f" got {sorted(kinds) or 'mappings'}"
        )


# the cells that need more than one row or an extra argument ------------------------------


@pytest.mark.parametrize("front_kind", FRONTS)
@pytest.mark.parametrize("op", ["get_or_create", "update_or_create"])
async def test_null_lookup_refused(db: Db, op: str, front_kind: str) -> None:
    """A NULL in the lookup key never equals a stored NULL: ValueError before SQL."""
    f = next(f for f in FEATURES if f.target is nullable_unique)
    clear(db, f)
    front = Front(front_kind, db, f)
    what = f"{op}({{'code': None}}, {{'v': 'x'}}) (code: nullable unique)"
    await expect_refusal(front, db, f, what, ValueError, op, f.target, {"code": None}, {"v": "x"})


@pytest.mark.parametrize("front_kind", FRONTS)
async def test_null_unique_is_no_duplicate(db: Db, front_kind: str) -> None:
    """Two rows whose nullable unique column is NULL are both inserted."""
    f = next(f for f in FEATURES if f.target is nullable_unique)
    clear(db, f)
    front = Front(front_kind, db, f)
    for n in (1, 2):
        row = {"code": None, "v": str(n)}
        what = f"insert_ignore({row}), call {n} (a NULL is no duplicate)"
        result = await front.step(what, "insert_ignore", f.target, [row])
        check_counts(db, f, what, result, inserted=1)
    got = sorted(r["v"] for r in stored_rows(db, f))
    assert got == ["1", "2"], f"two rows with code NULL: expected v ['1', '2'] stored, got {got}"


@pytest.mark.parametrize("front_kind", FRONTS)
@pytest.mark.parametrize(
    ("update", "rev"),
    [
        (["v"], "touched"),
        ({"v": onconflict.excluded("v"), "rev": "manual"}, "manual"),
    ],
    ids=["update-omits-onupdate-column", "update-names-onupdate-column"],
)
async def test_onupdate_and_update_argument(db: Db, update: Any, rev: str, front_kind: str) -> None:
    """onupdate applies to every update unless update= names its column."""
    f = next(f for f in FEATURES if f.target is on_update)
    clear(db, f)
    front = Front(front_kind, db, f)
    await front.step(f"upsert({f.row}) on an empty table", "upsert", f.target, [f.row])
    row = {**f.row, "v": "y"}
    what = f"upsert({row}, update={update!r}) with the row stored"
    result = await front.step(what, "upsert", f.target, [row], update=update)
    check_counts(db, f, what, result, updated=1)
    check_row(f"{what}, updated", result.updated[0], {"rev": rev}, f)
    check_stored(db, f, {"v": "y", "rev": rev}, what)


ORM_FEATURES = [f for f in FEATURES if f.instance_of is not None]


@pytest.mark.parametrize("session_kind", ["async", "sync"])
@pytest.mark.parametrize("op", ["get_or_create", "update_or_create"])
@pytest.mark.parametrize("feature", ORM_FEATURES, ids=[f.name for f in ORM_FEATURES])
async def test_session_already_holds_the_row(
    db: Db, feature: Feature, op: str, session_kind: str
) -> None:
    """A session holding the row (added and flushed, not committed): the call
    finds it (created=False) and returns that very instance, with the values
    stored after the call."""
    f = feature
    clear(db, f)
    assert f.instance_of is not None
    values = f.after_update() if op == "update_or_create" else f.stored
    defaults = f.change if op == "update_or_create" else f.rest()
    look = f.lookup(True)
    what = f"{op}({look}, {defaults}) in a {session_kind} Session holding the row (flushed)"

    def check(found: Any, created: bool, held: Any, names: list[str]) -> None:
        assert created is False, f"{what}: expected created=False, got {created!r}"
        assert found is held, f"{what}: expected the held instance {held!r}, got {found!r}"
        got = {n: getattr(found, n) for n in names}
        wrong = mismatches(got, values)
        assert not wrong, f"{what}: returned instance {got}: " + "; ".join(wrong)

    names = list(f.out_names().values())
    if session_kind == "sync":
        with sa.orm.Session(db.sengine) as session:
            held = f.instance_of(**f.row)
            session.add(held)
            session.flush()
            try:
                found, created = getattr(onconflict.sync, op)(session, f.target, look, defaults)
            except Exception as exc:
                raise AssertionError(
                    f"{what}: raised {type(exc).__name__}: {_first_line(exc)}"
                ) from exc
            check(found, created, held, names)
            session.commit()
    else:
        async with AsyncSession(db.aengine) as asession:
            held = f.instance_of(**f.row)
            asession.add(held)
            await asession.flush()
            try:
                found, created = await getattr(onconflict, op)(asession, f.target, look, defaults)
            except Exception as exc:
                raise AssertionError(
                    f"{what}: raised {type(exc).__name__}: {_first_line(exc)}"
                ) from exc
            check(found, created, held, names)
            await asession.commit()
    check_stored(db, f, values, what)


async def test_every_feature_is_declared_once() -> None:
    names = [f.name for f in FEATURES]
    assert len(names) == len(set(names))
    for f in FEATURES:
        assert set(f.key) <= set(f.row), f.name
        assert set(f.change).isdisjoint(f.key), f.name
