"""Static checks of the public types: mypy --strict runs this file (tox -e type).

Nothing here runs against a database; the functions are only type-checked.
"""

from __future__ import annotations

from typing import Any, assert_type

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

import onconflict
import onconflict.sync
from tests.schema import Item, users


async def async_fronts(engine: AsyncEngine, session: AsyncSession) -> None:
    assert_type(await onconflict.insert_ignore(engine, users, []), onconflict.InsertResult)
    assert_type(await onconflict.upsert(engine, users, []), onconflict.UpsertResult)
    assert_type(await onconflict.seed(engine, {}), onconflict.SeedReport)
    assert_type(
        await onconflict.get_or_create_many(session, Item, [{"code": "x"}]),
        onconflict.GetOrCreateResult,
    )
    assert_type(await onconflict.get_or_create(session, Item, {"code": "x"}), tuple[Item, bool])
    assert_type(
        await onconflict.get_or_create(engine, users, {"email": "x"}), tuple[dict[str, Any], bool]
    )
    assert_type(
        await onconflict.update_or_create(session, Item, {"code": "x"}, {"title": "t"}),
        tuple[Item, bool],
    )
    assert_type(
        await onconflict.update_or_create(
            engine, users, {"email": "x"}, {"name": "n"}, create_defaults={"name": "c"}
        ),
        tuple[dict[str, Any], bool],
    )


def sync_fronts(engine: Engine, session: Session) -> None:
    assert_type(onconflict.sync.insert_ignore(engine, users, []), onconflict.InsertResult)
    assert_type(
        onconflict.sync.get_or_create_many(engine, users, [{"email": "x"}]),
        onconflict.GetOrCreateResult,
    )
    assert_type(onconflict.sync.get_or_create(session, Item, {"code": "x"}), tuple[Item, bool])
    assert_type(
        onconflict.sync.get_or_create(engine, users, {"email": "x"}), tuple[dict[str, Any], bool]
    )
    assert_type(onconflict.sync.upsert(engine, users, []), onconflict.UpsertResult)
    assert_type(
        onconflict.sync.update_or_create(
            session, Item, {"code": "x"}, {"title": "t"}, create_defaults={"title": "c"}
        ),
        tuple[Item, bool],
    )


def classifier(exc: Exception) -> None:
    assert_type(onconflict.unique_violation(exc), onconflict.UniqueViolation | None)
    assert_type(onconflict.is_transient(exc), bool)
    assert_type(onconflict.excluded("a"), Any)
