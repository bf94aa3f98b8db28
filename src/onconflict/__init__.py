"""onconflict: idempotent inserts for SQLAlchemy 2, duplicates skipped and nothing else.

The async API is primary::

    result = await onconflict.insert_ignore(conn, users, rows)

and ``onconflict.sync`` has the same names for ``Connection``, ``Session`` and
``Engine``.
"""

from onconflict.__about__ import __version__
from onconflict._async import (
    get_or_create,
    get_or_create_many,
    insert_ignore,
    retrying,
    seed,
    update_or_create,
    upsert,
)
from onconflict._excluded import excluded
from onconflict._get_or_create_many import GetOrCreateResult
from onconflict._seed import SeedReport, TableReport
from onconflict._target import ANY_KEY
from onconflict.classify import UniqueViolation, is_transient, is_unique_violation, unique_violation
from onconflict.exceptions import (
    LookupMismatchError,
    NotReturnedError,
    NotSupportedError,
    OnConflictError,
    OutcomeMismatchError,
    SeedLockTimeout,
    UnsafeInsertError,
)
from onconflict.result import InsertResult, UpsertResult
from onconflict.retry import Retry, RetryStats, retry_stats

__all__ = [
    "ANY_KEY",
    "GetOrCreateResult",
    "InsertResult",
    "LookupMismatchError",
    "NotReturnedError",
    "NotSupportedError",
    "OnConflictError",
    "OutcomeMismatchError",
    "Retry",
    "RetryStats",
    "SeedLockTimeout",
    "SeedReport",
    "TableReport",
    "UniqueViolation",
    "UnsafeInsertError",
    "UpsertResult",
    "__version__",
    "excluded",
    "get_or_create",
    "get_or_create_many",
    "insert_ignore",
    "is_transient",
    "is_unique_violation",
    "retry_stats",
    "retrying",
    "seed",
    "unique_violation",
    "update_or_create",
    "upsert",
]
