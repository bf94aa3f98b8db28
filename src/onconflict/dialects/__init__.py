"""Native statement builders, one module per database family.

``REGISTRY`` maps SQLAlchemy dialect names to the class that knows the
database's duplicate-only insert. Adding a database is one module and one line.
"""

from __future__ import annotations

from importlib import import_module

from sqlalchemy.engine import Dialect

from onconflict.dialects.base import NativeDialect
from onconflict.exceptions import NotSupportedError

REGISTRY: dict[str, str] = {
    "postgresql": "onconflict.dialects.postgresql:PostgreSQL",
    "cockroachdb": "onconflict.dialects.postgresql:PostgreSQL",
    "sqlite": "onconflict.dialects.sqlite:SQLite",
    "mysql": "onconflict.dialects.mysql:MySQL",
    "mariadb": "onconflict.dialects.mysql:MySQL",
}

_loaded: dict[str, NativeDialect] = {}


def native_for(dialect: Dialect) -> NativeDialect:
    """The native dialect for a SQLAlchemy dialect; NotSupportedError if none."""
    native = _loaded.get(dialect.name)
    if native is None:
        path = REGISTRY.get(dialect.name)
        if path is None:
            raise NotSupportedError(
                f"no native duplicate-only insert for the {dialect.name!r} dialect"
                f" (supported: {', '.join(sorted(REGISTRY))})"
            )
        module, _, cls = path.partition(":")
        native = _loaded[dialect.name] = getattr(import_module(module), cls)()
    native.check(dialect)
    return native


__all__ = ["REGISTRY", "NativeDialect", "native_for"]
