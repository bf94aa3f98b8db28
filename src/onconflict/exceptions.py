"""Errors raised by onconflict itself.

Database errors (NOT NULL, CHECK, foreign key, value too long, ...) are never
wrapped: they propagate as SQLAlchemy raised them, with the driver's exception
chained.
"""

from __future__ import annotations

from collections.abc import Sequence


class OnConflictError(Exception):
    """Base class of the errors onconflict raises itself."""


class NotSupportedError(OnConflictError):
    """The database or its version has no duplicate-only form for this operation."""


class NotReturnedError(OnConflictError, AttributeError):
    """An ``InsertResult`` of a counts-only call (``insert_ignore(...,
    returning=False)``) was asked for its rows (``inserted`` / ``existing``):
    the call did not read them. An ``AttributeError`` too, so ``hasattr``
    answers False."""


class UnsafeInsertError(OnConflictError):
    """``INSERT IGNORE`` reported something other than a duplicate key.

    MySQL and MariaDB turn errors into warnings under ``IGNORE``: a NULL becomes
    ``''``, a long value is truncated, a row failing a foreign key is dropped.
    onconflict reads the warnings, undoes the statement (nothing is stored) and
    normally re-raises the database's own error; this exception is raised only
    when the database would not raise one (for example outside strict mode).
    """

    def __init__(self, message: str, warnings: Sequence[tuple[str, int, str]] = ()) -> None:
        super().__init__(message)
        self.warnings = list(warnings)


class OutcomeMismatchError(OnConflictError):
    """Rows returned by the database could not be matched to the input rows.

    Raised (and the call's work undone where the call owns the transaction)
    instead of guessing. It happens when the database stores a key in a form
    that differs from the input value in a way onconflict cannot undo; pass key
    values of the column's Python type.
    """


class LookupMismatchError(OnConflictError):
    """get_or_create / update_or_create: a row with the lookup's key exists but
    differs in the other lookup columns (or is stored as another class of a
    single-table hierarchy)."""


class SeedLockTimeout(OnConflictError):
    """seed could not take its database lock in time: another seed (another
    replica starting, say) still holds it."""
