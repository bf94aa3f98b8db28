"""Reference data in Alembic migrations (examples/migrations, docs/migrations.md),
on every database: upgrade twice is a no-op, downgrade leaves other rows alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.conftest import Backend

alembic = pytest.importorskip("alembic")
from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
roles = sa.table("roles", sa.column("name"), sa.column("description"))


@pytest.fixture
def migrated(backend: Backend) -> Iterator[tuple[Config, Engine]]:
    config = Config()
    config.set_main_option("script_location", str(ROOT / "examples" / "migrations"))
    config.set_main_option("sqlalchemy.url", backend.sync_url.replace("%", "%%"))
    engine = sa.create_engine(backend.sync_url)
    _clean(engine)
    yield config, engine
    _clean(engine)
    engine.dispose()


def _clean(engine: Engine) -> None:
    with engine.begin() as conn:
        for name in ("roles", "alembic_version"):
            conn.execute(sa.schema.DropTable(sa.table(name), if_exists=True))


def _roles(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(roles.c.name, roles.c.description)).all())


def test_seeding_migration_upgrade_twice_and_downgrade(migrated: tuple[Config, Engine]) -> None:
    config, engine = migrated
    command.upgrade(config, "head")
    seeded = _roles(engine)
    assert sorted(seeded) == ["admin", "member"]
    # the application adds a role and edits a seeded one
    with engine.begin() as conn:
        conn.execute(roles.insert().values(name="auditor", description="Reads logs"))
        conn.execute(roles.update().where(roles.c.name == "admin").values(description="Root"))
    # the data migration applied again: nothing inserted, nothing overwritten, no error
    command.stamp(config, "0001")
    command.upgrade(config, "head")
    assert _roles(engine) == {**seeded, "auditor": "Reads logs", "admin": "Root"}
    # downgrade removes the rows the migration owns, and only those
    command.downgrade(config, "0001")
    assert _roles(engine) == {"auditor": "Reads logs"}
    command.upgrade(config, "head")
    assert sorted(_roles(engine)) == ["admin", "auditor", "member"]
