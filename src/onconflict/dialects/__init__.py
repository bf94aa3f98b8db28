"""What onconflict knows of each database, one package (or module) per family.

``REGISTRY`` maps SQLAlchemy dialect names (``dialect.name``) to an
:class:`Entry`: the class that knows the database's duplicate-only insert, its
error table for the classifier, and the driver-level fast paths by driver
name. Adding a database is one package under ``onconflict/dialects/`` and one
entry here (docs/development.md, "Adding a database").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

from sqlalchemy.engine import Dialect

from onconflict.dialects.base import Capabilities, DialectSupport
from onconflict.dialects.driver import DriverPath
from onconflict.exceptions import NotSupportedError


@dataclass(frozen=True)
class Entry:
    """One database in the registry; every name is ``"module:attribute"``,
    imported when first needed."""

    support: str | None
    """Its :class:`DialectSupport` subclass; None: no native form (the generic one)."""
    errors: str | None = None
    """Its :class:`~onconflict.dialects.errors.ErrorTable` (the classifier's codes)."""
    drivers: Mapping[str, str] = field(default_factory=dict)
    """Driver name (``dialect.driver``) -> its :class:`DriverPath` subclass."""


_PG_ERRORS = "onconflict.dialects.postgresql.errors:ERRORS"
_MYSQL_ERRORS = "onconflict.dialects.mysql.errors:ERRORS"

REGISTRY: dict[str, Entry] = {
    "postgresql": Entry(
        "onconflict.dialects.postgresql:PostgreSQL",
        _PG_ERRORS,
        {"asyncpg": "onconflict.dialects.postgresql.asyncpg:AsyncpgPath"},
    ),
    # PostgreSQL wire without xmax / advisory locks (sqlalchemy-cockroachdb,
    # sqlalchemy-yugabytedb); YugabyteDB through the plain postgresql dialect
    # would get PostgreSQL's upsert, which needs xmax
    "cockroachdb": Entry("onconflict.dialects.postgresql.distributed:DistributedPostgreSQL"),
    "yugabytedb": Entry("onconflict.dialects.postgresql.distributed:DistributedPostgreSQL"),
    "sqlite": Entry(
        "onconflict.dialects.sqlite:SQLite",
        "onconflict.dialects.sqlite.errors:ERRORS",
        {"aiosqlite": "onconflict.dialects.sqlite.aiosqlite:AiosqlitePath"},
    ),
    "mysql": Entry(
        "onconflict.dialects.mysql:MySQL",
        _MYSQL_ERRORS,
        {"aiomysql": "onconflict.dialects.mysql.aiomysql:AiomysqlPath"},
    ),
    "mariadb": Entry(
        "onconflict.dialects.mysql:MySQL",
        _MYSQL_ERRORS,
        {"aiomysql": "onconflict.dialects.mysql.aiomysql:AiomysqlPath"},
    ),
    # no native writer: the classifier's codes only
    "oracle": Entry(None, "onconflict.dialects.oracle:ERRORS"),
    "mssql": Entry(None, "onconflict.dialects.mssql:ERRORS"),
    "duckdb": Entry(
        "onconflict.dialects.duckdb:DuckDB", "onconflict.dialects.duckdb.errors:ERRORS"
    ),
}

_supports: dict[str, DialectSupport] = {}
_paths: dict[tuple[str, str], DriverPath] = {}


def load(path: str) -> Any:
    """The attribute named by ``"module:attribute"``."""
    module, _, name = path.partition(":")
    return getattr(import_module(module), name)


def support_named(name: str) -> DialectSupport:
    """What onconflict knows of the database SQLAlchemy calls ``name``: its
    registered class, or the generic base (no native form)."""
    support = _supports.get(name)
    if support is None:
        entry = REGISTRY.get(name)
        support = load(entry.support)() if entry and entry.support else DialectSupport()
        _supports[name] = support
    return support


def support_for(dialect: Dialect) -> DialectSupport:
    """What onconflict knows of a SQLAlchemy dialect (see :func:`support_named`)."""
    return support_named(dialect.name)


def native_support(dialect: Dialect) -> DialectSupport:
    """The native form for this dialect; NotSupportedError if it has none."""
    support = support_for(dialect)
    if not support.native:
        native = sorted(name for name, entry in REGISTRY.items() if entry.support)
        raise NotSupportedError(
            f"no native duplicate-only insert for the {dialect.name!r} dialect"
            f" (native: {', '.join(native)}); use strategy='classify' or 'auto'"
        )
    support.check(dialect)
    return support


def driver_path(dialect: Dialect) -> DriverPath:
    """The driver-level fast paths of the dialect's driver: its registered
    :class:`DriverPath`, or the base one (no fast path: every call answers None)."""
    key = (dialect.name, str(dialect.driver))
    path = _paths.get(key)
    if path is None:
        entry = REGISTRY.get(dialect.name)
        found = entry.drivers.get(key[1]) if entry else None
        support = support_for(dialect)
        path = _paths[key] = load(found)(support) if found else DriverPath(support)
    return path


__all__ = [
    "REGISTRY",
    "Capabilities",
    "DialectSupport",
    "DriverPath",
    "Entry",
    "driver_path",
    "native_support",
    "support_for",
    "support_named",
]
