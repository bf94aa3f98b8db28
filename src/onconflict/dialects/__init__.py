"""Native statement builders, one module per database family.

``REGISTRY`` maps SQLAlchemy dialect names to the class that knows the
database's duplicate-only insert. Adding a database is one module and one line.
"""

from __future__ import annotations

from importlib import import_module

from sqlalchemy.engine import Dialect

from onconflict.dialects.base import DialectSupport
from onconflict.exceptions import NotSupportedError

REGISTRY: dict[str, str] = {
    "postgresql": "onconflict.dialects.postgresql:PostgreSQL",
    # PostgreSQL wire without xmax / advisory locks (sqlalchemy-cockroachdb,
    # sqlalchemy-yugabytedb); YugabyteDB through the plain postgresql dialect
    # would get PostgreSQL's upsert, which needs xmax
    "cockroachdb": "onconflict.dialects.postgresql:DistributedPostgreSQL",
    "yugabytedb": "onconflict.dialects.postgresql:DistributedPostgreSQL",
    "sqlite": "onconflict.dialects.sqlite:SQLite",
    "mysql": "onconflict.dialects.mysql:MySQL",
    "mariadb": "onconflict.dialects.mysql:MySQL",
    "duckdb": "onconflict.dialects.duckdb:DuckDB",
}

_loaded: dict[str, DialectSupport] = {}


def support_for(dialect: Dialect) -> DialectSupport:
    """What onconflict knows of a SQLAlchemy dialect: its module's class, or the
    generic base (no native form) for a database without one."""
    support = _loaded.get(dialect.name)
    if support is None:
        path = REGISTRY.get(dialect.name)
        if path is None:
            support = DialectSupport()
        else:
            module, _, cls = path.partition(":")
            support = getattr(import_module(module), cls)()
        _loaded[dialect.name] = support
    return support


def native_support(dialect: Dialect) -> DialectSupport:
    """The native form for this dialect; NotSupportedError if it has none."""
    support = support_for(dialect)
    if not support.native:
        raise NotSupportedError(
            f"no native duplicate-only insert for the {dialect.name!r} dialect"
            f" (native: {', '.join(sorted(REGISTRY))}); use strategy='classify' or 'auto'"
        )
    support.check(dialect)
    return support


__all__ = ["REGISTRY", "DialectSupport", "native_support", "support_for"]
