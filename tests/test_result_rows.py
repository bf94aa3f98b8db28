"""InsertResult's rows: plain lists everywhere; ``inserted`` built lazily
from the driver's records on PostgreSQL's COPY path, with the same values as
the eager rows of every other path, exact outcomes settled (and a row that
pairs with no input row raised) inside the call."""

from __future__ import annotations

import json
import pickle
import random
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

import onconflict
import onconflict._insert_ignore as core
from onconflict import InsertResult
from onconflict._keys import pair_positions, positions_of, returned_mask
from onconflict.result import LazyRows
from tests.backends import Backend
from tests.schema import Item, pairs

N = 2_500  # above the COPY threshold the tests set (1,500)


# -- InsertResult's lazy rows ----------------------------------------------------------


def test_lazy_rows_are_a_list_built_once_when_first_read() -> None:
    calls: list[int] = []

    def make() -> list[Any]:
        calls.append(1)
        return [{"a": 1}, {"a": 2}]

    got = InsertResult.lazy(LazyRows(2, make), [{"a": 3}])
    assert (got.inserted_count, got.existing_count) == (2, 1)
    assert repr(got) == "InsertResult(inserted_count=2, existing_count=1)"
    assert calls == []  # counts and repr build nothing
    assert got.inserted == [{"a": 1}, {"a": 2}]
    assert type(got.inserted) is list
    assert got.inserted is got.inserted  # built once, kept
    assert calls == [1]
    assert json.dumps(got.inserted) == '[{"a": 1}, {"a": 2}]'


def test_insert_results_compare_and_pickle_with_lazy_rows() -> None:
    made = InsertResult([{"a": 1}], [{"a": 2}])
    lazy = InsertResult.lazy(LazyRows(1, lambda: [{"a": 1}]), [{"a": 2}])
    assert pickle.loads(pickle.dumps(InsertResult.lazy(LazyRows(1, lambda: [{"a": 1}]), []))) == (
        InsertResult([{"a": 1}], [])
    )
    assert made == lazy
    assert pickle.loads(pickle.dumps(lazy)) == made
    assert InsertResult() == InsertResult([], [])
    assert InsertResult().inserted == []
    counted = InsertResult.counted(3, 4)
    assert pickle.loads(pickle.dumps(counted)) == counted
    assert counted != InsertResult.counted(3, 5)
    with pytest.raises(onconflict.NotReturnedError):
        counted.inserted  # noqa: B018


def test_returned_keys_pair_with_distinct_input_keys_as_a_mask() -> None:
    """Distinct input keys: which were returned, by set lookups; None when a
    returned key repeats or pairs with no input key (the count says so)."""
    wanted = ["d", "a", "c", "b"]
    assert returned_mask(wanted, ["a", "b", "d"]) == [True, True, False, True]
    assert positions_of(["d", "a", "b"], ["a", "b", "d"]) == [2, 0, 1]
    assert returned_mask(wanted, []) == [False] * 4
    assert returned_mask(wanted, ["a", "x"]) is None  # x pairs with no input key
    assert returned_mask(wanted, ["a", "a"]) is None  # a repeated returned key
    assert returned_mask([(1, 0), (2, 0)], [(2, 0)]) == [False, True]
    # repeated input keys are pair_positions' (the first row of a key takes it)
    assert pair_positions(["a", "b", "a"], ["a"]) == [0, None, None]


# -- on the databases --------------------------------------------------------------


@pytest.fixture
def copy_threshold(monkeypatch: pytest.MonkeyPatch) -> int:
    """The COPY path from 1,500 rows, so that a test of it stays small."""
    from onconflict.dialects.postgresql import copy

    monkeypatch.setattr(copy, "COPY_THRESHOLD", 1_500)
    return 1_500


async def _stored(engine: AsyncEngine, table: sa.Table) -> dict[tuple[Any, ...], dict[str, Any]]:
    async with engine.connect() as conn:
        found = await conn.execute(sa.select(table))
        return {(r["a"], r["b"]): dict(r) for r in found.mappings()}


async def _load(
    engine: AsyncEngine, **kw: Any
) -> tuple[InsertResult, list[dict[str, Any]], dict[tuple[Any, ...], dict[str, Any]]]:
    """Every third key stored first, then N rows of which those exist."""
    await onconflict.insert_ignore(engine, pairs, [{"a": i, "b": 0} for i in range(0, N, 3)])
    rows = [{"a": i, "b": 0, "v": f"v{i}"} for i in range(N)]
    result = await onconflict.insert_ignore(engine, pairs, rows, **kw)
    return result, rows, await _stored(engine, pairs)


async def _reset(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(sa.delete(pairs))


@pytest.mark.databases("postgresql")  # the asyncpg COPY path keeps the records
@pytest.mark.usefixtures("tables", "copy_threshold")
async def test_the_copy_path_builds_inserted_when_first_read(aengine: AsyncEngine) -> None:
    """Nothing of ``inserted`` is built by the call: the counts and repr read
    the records' number; the list is made on the first read, once."""
    got, rows, stored = await _load(aengine)
    assert isinstance(object.__getattribute__(got, "inserted"), LazyRows)
    assert got.inserted_count == len([r for r in rows if r["a"] % 3])
    assert isinstance(object.__getattribute__(got, "inserted"), LazyRows)
    assert got.inserted == [stored[(r["a"], r["b"])] for r in rows if r["a"] % 3]
    assert got.inserted is got.inserted


@pytest.mark.usefixtures("tables", "copy_threshold")
async def test_results_are_the_stored_rows_lazy_or_not(
    backend: Backend, aengine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every database: ``inserted`` is the stored rows of the new keys in
    input order, ``existing`` the given rows of the others, as lists.
    PostgreSQL (asyncpg) builds ``inserted`` lazily on the COPY path; the same
    call with the eager pairing of the bulk path gives equal values."""
    lazy, rows, stored = await _load(aengine)
    new = [r for r in rows if r["a"] % 3]
    assert type(lazy.inserted) is list
    assert type(lazy.existing) is list
    assert lazy.existing == [r for r in rows if r["a"] % 3 == 0]
    assert lazy.inserted == [stored[(r["a"], r["b"])] for r in new]
    assert lazy.inserted_count == len(new)
    assert lazy.existing_count == N - len(new)
    await _reset(aengine)
    monkeypatch.setattr(core, "_write_whole", lambda *_: None)  # the eager pairing
    eager, _, stored = await _load(aengine)
    assert eager.inserted == [stored[(r["a"], r["b"])] for r in new]
    assert eager.existing == lazy.existing
    assert [{k: v for k, v in r.items() if k != "id"} for r in eager.inserted] == [
        {k: v for k, v in r.items() if k != "id"} for r in lazy.inserted
    ]


@pytest.mark.usefixtures("tables", "copy_threshold")
async def test_lazy_results_with_named_columns_and_attribute_names(
    backend: Backend, aengine: AsyncEngine
) -> None:
    """``returning=`` names (in the order given) and a mapped class's attribute
    names, on the lazy path as on the others."""
    got, rows, _ = await _load(aengine, returning=["v", "a"])
    new = [r for r in rows if r["a"] % 3]
    assert got.inserted == [{"v": r["v"], "a": r["a"]} for r in new]
    assert [list(r) for r in got.inserted[:1]] == [["v", "a"]]
    one, _ = await _load_one_column(aengine)
    assert one.inserted == [{"b": 0}] * len(new)
    items = [{"code": f"c{i}", "title": f"t{i}"} for i in range(N)]
    first = await onconflict.insert_ignore(aengine, Item, items)
    assert [(r["code"], r["title"]) for r in first.inserted] == [
        (r["code"], r["title"]) for r in items
    ]
    assert sorted(first.inserted[0]) == ["code", "id", "title"]
    again = await onconflict.insert_ignore(aengine, Item, [*items[:10], {"code": "new"}])
    assert again.existing == items[:10]
    assert [r["code"] for r in again.inserted] == ["new"]


async def _load_one_column(engine: AsyncEngine) -> tuple[InsertResult, None]:
    async with engine.begin() as conn:
        await conn.execute(sa.delete(pairs))
    await onconflict.insert_ignore(engine, pairs, [{"a": i, "b": 0} for i in range(0, N, 3)])
    rows = [{"a": i, "b": 0, "v": f"v{i}"} for i in range(N)]
    return await onconflict.insert_ignore(engine, pairs, rows, returning=["b"]), None


@pytest.mark.usefixtures("tables", "copy_threshold")
async def test_lazy_results_read_after_the_engine_is_disposed(
    backend: Backend, aengine: AsyncEngine
) -> None:
    """The rows are held in memory: reading them needs no connection."""
    got, rows, stored = await _load(aengine)
    await aengine.dispose()
    assert got.inserted == [stored[(r["a"], r["b"])] for r in rows if r["a"] % 3]
    assert pickle.loads(pickle.dumps(got)) == got


@pytest.mark.databases("postgresql")  # the COPY path is PostgreSQL's (asyncpg)
@pytest.mark.usefixtures("tables", "copy_threshold")
async def test_a_returned_row_pairing_with_no_input_row_raises_inside_the_call(
    backend: Backend, aengine: AsyncEngine
) -> None:
    """A trigger changes the key of what is stored: the returned rows pair
    with no input row. The lazy path pairs inside the call, so the call raises
    OutcomeMismatchError and its transaction is rolled back (nothing stored)."""
    async with aengine.begin() as conn:
        await conn.execute(
            sa.text(
                "CREATE OR REPLACE FUNCTION oc_shift_a() RETURNS trigger AS"
                " $$ BEGIN NEW.a := NEW.a + 1000000; RETURN NEW; END $$ LANGUAGE plpgsql"
            )
        )
        await conn.execute(
            sa.text(
                "CREATE TRIGGER oc_shift BEFORE INSERT ON oc_pairs"
                " FOR EACH ROW EXECUTE FUNCTION oc_shift_a()"
            )
        )
    rows = [{"a": i, "b": 0, "v": "v"} for i in range(N)]
    with pytest.raises(onconflict.OutcomeMismatchError):
        await onconflict.insert_ignore(aengine, pairs, rows)
    assert await _stored(aengine, pairs) == {}
    got = await onconflict.insert_ignore(aengine, pairs, rows, returning=False)
    assert got.inserted_count == N  # counts only pairs nothing: exact from the server


@pytest.mark.databases("postgresql")  # the COPY path is PostgreSQL's (asyncpg)
@pytest.mark.usefixtures("tables", "copy_threshold")
@pytest.mark.parametrize("returning", [True, False])
async def test_a_large_call_the_copy_path_declines_is_exact(
    backend: Backend, aengine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, returning: bool
) -> None:
    """A large call planned for the bulk path (one shape, no repeats: no
    per-row keys made) that the COPY path then declines: the usual statements,
    in key order, with the same exact outcomes."""
    from onconflict.dialects.postgresql import copy

    monkeypatch.setattr(copy, "_copyable", lambda *_: None)
    await onconflict.insert_ignore(aengine, pairs, [{"a": i, "b": 0} for i in range(0, N, 3)])
    rows = [{"a": N - 1 - i, "b": 0, "v": f"v{i}"} for i in range(N)]  # not in key order
    got = await onconflict.insert_ignore(aengine, pairs, rows, returning=returning)
    stored = await _stored(aengine, pairs)
    new = [r for r in rows if r["a"] % 3]
    assert (got.inserted_count, got.existing_count) == (len(new), N - len(new))
    assert len(stored) == N
    if returning:
        assert got.inserted == [stored[(r["a"], r["b"])] for r in new]
        assert got.existing == [r for r in rows if r["a"] % 3 == 0]


@pytest.mark.databases("postgresql")  # the COPY path is PostgreSQL's (asyncpg)
@pytest.mark.usefixtures("tables", "copy_threshold")
async def test_the_copy_path_pairs_rows_given_out_of_key_order(
    backend: Backend, aengine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows in no particular order (the server inserts them in key order):
    ``inserted`` is the stored rows in input order, ``existing`` the given
    rows, for plain dicts and for a mapped class's attribute names, both
    paired by the distinct keys' mask."""
    masks: list[int] = []

    def spy(wanted: list[Any], found: list[Any]) -> list[bool] | None:
        got = returned_mask(wanted, found)
        masks.append(-1 if got is None else len(got))
        return got

    monkeypatch.setattr(core, "returned_mask", spy)
    await onconflict.insert_ignore(aengine, pairs, [{"a": i, "b": 0} for i in range(0, N, 3)])
    rows = [{"a": i, "b": 0, "v": f"v{i}"} for i in range(N)]
    random.Random(14).shuffle(rows)
    got = await onconflict.insert_ignore(aengine, pairs, rows)
    stored = await _stored(aengine, pairs)
    assert got.existing == [r for r in rows if r["a"] % 3 == 0]
    assert got.inserted == [stored[(r["a"], r["b"])] for r in rows if r["a"] % 3]
    items = [{"code": f"c{i}", "title": f"t{i}"} for i in range(N)]
    random.Random(15).shuffle(items)
    await onconflict.insert_ignore(aengine, Item, items[::2])
    again = await onconflict.insert_ignore(aengine, Item, items)
    assert again.existing == items[::2]
    assert [(r["code"], r["title"]) for r in again.inserted] == [
        (r["code"], r["title"]) for r in items[1::2]
    ]
    assert masks == [N, N]  # (the preloads are below the threshold)


@pytest.mark.databases("postgresql")  # the COPY path is PostgreSQL's (asyncpg)
@pytest.mark.usefixtures("tables", "copy_threshold")
async def test_one_returned_row_of_many_pairing_with_no_input_row_raises(
    backend: Backend, aengine: AsyncEngine
) -> None:
    """A trigger changes the key of one stored row only: every other returned
    row pairs, that one does not: OutcomeMismatchError inside the call, its
    work rolled back."""
    async with aengine.begin() as conn:
        await conn.execute(
            sa.text(
                "CREATE OR REPLACE FUNCTION oc_shift_one() RETURNS trigger AS $$ BEGIN"
                " IF NEW.a = 7 THEN NEW.a := 1000007; END IF; RETURN NEW; END $$"
                " LANGUAGE plpgsql"
            )
        )
        await conn.execute(
            sa.text(
                "CREATE TRIGGER oc_shift BEFORE INSERT ON oc_pairs"
                " FOR EACH ROW EXECUTE FUNCTION oc_shift_one()"
            )
        )
    rows = [{"a": i, "b": 0, "v": "v"} for i in range(N)]
    random.Random(16).shuffle(rows)
    with pytest.raises(onconflict.OutcomeMismatchError):
        await onconflict.insert_ignore(aengine, pairs, rows)
    assert await _stored(aengine, pairs) == {}


@pytest.mark.databases("postgresql")  # the COPY path is PostgreSQL's (asyncpg)
@pytest.mark.usefixtures("tables", "copy_threshold")
async def test_rows_in_key_order_with_a_key_repeated_on_the_copy_path(
    backend: Backend, aengine: AsyncEngine
) -> None:
    """Keys in ascending order repeat none, so no set of them is made; a key
    given twice in a row (in order, not strictly) is found: the first row of
    it is stored, the second is existing."""
    rows = [{"a": i, "b": 0, "v": f"v{i}"} for i in range(N)]
    rows.insert(8, {"a": 7, "b": 0, "v": "again"})
    got = await onconflict.insert_ignore(aengine, pairs, rows)
    stored = await _stored(aengine, pairs)
    assert got.existing == [{"a": 7, "b": 0, "v": "again"}]
    assert stored[(7, 0)]["v"] == "v7"
    assert got.inserted == [stored[(i, 0)] for i in range(N)]


@pytest.mark.databases("postgresql")  # the COPY path is PostgreSQL's (asyncpg)
@pytest.mark.usefixtures("tables", "copy_threshold")
async def test_every_row_new_in_key_order_on_the_copy_path(
    backend: Backend, aengine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows in key order, none stored yet: the returned keys are the input
    keys in input order, paired by one comparison (no mask); the result is
    the stored rows, and reading ``inserted`` after the caller has changed
    its list changes nothing."""
    monkeypatch.setattr(core, "returned_mask", lambda *_: pytest.fail("no mask needed"))
    rows = [{"a": i, "b": 0, "v": f"v{i}"} for i in range(N)]
    got = await onconflict.insert_ignore(aengine, pairs, rows)
    given = list(rows)
    rows.clear()
    stored = await _stored(aengine, pairs)
    assert got.existing == []
    assert got.inserted == [stored[(r["a"], r["b"])] for r in given]
