"""Property tests: random sequences of calls against a simple in-memory model.

Hypothesis drives insert_ignore (both strategies), upsert (every duplicates
policy, with and without skip_unchanged), get_or_create and update_or_create
with random batches over a few hot keys, repeated keys included. After every
call the outcome lists must partition the input exactly as the model says, and
the table must equal the model.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy.engine import Engine

import onconflict.sync
from tests.conftest import Backend
from tests.schema import storm

pytestmark = pytest.mark.usefixtures("tables")

KEYS = st.sampled_from([f"k{i}" for i in range(6)])
VALUES = st.sampled_from(["a", "b", "c"])
ROWS = st.lists(st.fixed_dictionaries({"k": KEYS, "v": VALUES}), min_size=1, max_size=8)


class Calls(RuleBasedStateMachine):
    engine: Engine

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[str, str] = {}

    @initialize()
    def empty(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(storm.delete())

    @rule(rows=ROWS, strategy=st.sampled_from(["native", "classify"]))
    def insert_ignore(self, rows: list[dict[str, Any]], strategy: Any) -> None:
        result = onconflict.sync.insert_ignore(self.engine, storm, rows, strategy=strategy)
        expect_new = []
        for row in rows:
            if row["k"] not in self.model:
                self.model[row["k"]] = row["v"]
                expect_new.append(row)
        assert [(r["k"], r["v"]) for r in result.inserted] == [(r["k"], r["v"]) for r in expect_new]
        assert all(isinstance(r["id"], int) for r in result.inserted)
        assert result.existing == [r for r in rows if not any(r is n for n in expect_new)]

    @rule(rows=ROWS, policy=st.sampled_from(["last", "first"]), skip=st.booleans())
    def upsert(self, rows: list[dict[str, Any]], policy: Any, skip: bool) -> None:
        result = onconflict.sync.upsert(
            self.engine, storm, rows, duplicates=policy, skip_unchanged=skip
        )
        order = rows if policy == "first" else list(reversed(rows))
        winners: dict[str, int] = {}
        for row in order:
            winners.setdefault(row["k"], id(row))
        inserted, updated, unchanged = [], [], []
        for row in rows:
            if winners[row["k"]] != id(row):
                unchanged.append(row)
            elif row["k"] not in self.model:
                inserted.append(row)
            elif skip and self.model[row["k"]] == row["v"]:
                unchanged.append(row)
            else:
                updated.append(row)
        for row in inserted + updated:
            self.model[row["k"]] = row["v"]
        assert [(r["k"], r["v"]) for r in result.inserted] == [(r["k"], r["v"]) for r in inserted]
        assert [(r["k"], r["v"]) for r in result.updated] == [(r["k"], r["v"]) for r in updated]
        assert result.unchanged == unchanged

    @rule(key=KEYS, value=VALUES)
    def get_or_create(self, key: str, value: str) -> None:
        row, created = onconflict.sync.get_or_create(self.engine, storm, {"k": key}, {"v": value})
        assert created is (key not in self.model)
        self.model.setdefault(key, value)
        assert row["v"] == self.model[key]

    @rule(key=KEYS, value=VALUES)
    def update_or_create(self, key: str, value: str) -> None:
        row, created = onconflict.sync.update_or_create(
            self.engine, storm, {"k": key}, {"v": value}
        )
        assert created is (key not in self.model)
        self.model[key] = value
        assert row["v"] == value

    @invariant()
    def table_equals_model(self) -> None:
        with self.engine.connect() as conn:
            stored = dict(conn.execute(sa.select(storm.c.k, storm.c.v)).all())
        assert stored == self.model


@pytest.mark.needs("savepoints")  # the calls include strategy="classify"
def test_calls_against_the_model(backend: Backend) -> None:
    engine = backend.sync_engine()
    Calls.engine = engine
    try:
        run_state_machine_as_test(
            Calls,
            settings=settings(
                max_examples=backend.property_examples,
                stateful_step_count=12,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
                database=None,
            ),
        )
    finally:
        engine.dispose()
