"""The classifier's machinery: what a driver's error says, read the way that
driver says it, and the tables that say which codes are duplicates and which
are worth retrying.

Each database family declares an :class:`ErrorTable` in its own package
(``dialects/postgresql/errors.py``, ...; databases without a native writer in a
small module, ``dialects/oracle.py``), named in its registry entry;
:func:`tables` gathers them. ``onconflict.classify`` is the public face.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from onconflict.dialects import REGISTRY, load

Code = str | int
Described = tuple[str | None, str | None, tuple[str, ...]]  # constraint, table, columns


@dataclass(frozen=True)
class DriverError:
    """What a driver said, read the way that driver says it."""

    family: str  # postgresql, mysql, sqlite, oracle, mssql
    driver: str  # the driver's top-level module: asyncpg, psycopg, pymysql, ...
    code: Code | None
    message: str
    constraint: str | None = None
    table: str | None = None
    detail: str | None = None
    exception: BaseException | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class UniqueViolation:
    """A duplicate-key error: what the driver or the message tells of it."""

    code: Code
    driver: str
    family: str
    constraint: str | None
    table: str | None
    columns: tuple[str, ...]
    message: str


Reader = Callable[[BaseException, str], DriverError | None]
KeyReader = Callable[[DriverError], Described]


@dataclass(frozen=True)
class ErrorTable:
    """What onconflict knows of one database family's errors."""

    family: str
    unique: frozenset[Code]
    """The codes of a duplicate key."""
    transient: frozenset[Code]
    """The codes a retry of the whole transaction may resolve."""
    readers: Mapping[str, Reader]
    """Module of a driver's exception classes -> how to read them."""
    key: KeyReader
    """How the duplicate-key message names the key."""


def message_of(exc: BaseException) -> str:
    """The text of a driver's exception."""
    args = exc.args
    if args and isinstance(args[-1], str):
        return args[-1]
    if args and isinstance(args[0], bytes):
        return args[0].decode("utf-8", "replace")
    return str(exc)


_IDENT = re.compile(r'^"?[\w$]+"?$')


def column_list(text: str | None) -> tuple[str, ...]:
    """Plain column names from a comma-separated list (none for expressions)."""
    if not text:
        return ()
    cols = tuple(c.strip() for c in text.split(","))
    if all(_IDENT.match(c) for c in cols):
        return tuple(c.strip('"') for c in cols)
    return ()  # expressions: no plain column names to give


def no_key(err: DriverError) -> Described:
    """A family whose messages name no key: what the driver's fields say."""
    return err.constraint, err.table, ()


# the tables, gathered once from the registry (see tables())
UNIQUE_CODES: dict[str, frozenset[Code]] = {}
TRANSIENT_CODES: dict[str, frozenset[Code]] = {}
READERS: dict[str, Reader] = {}
KEY_READERS: dict[str, KeyReader] = {}


_gathered: list[bool] = []


def tables() -> None:
    """Fill the lookup tables from every registered family's ErrorTable (once)."""
    if _gathered:
        return
    for entry in REGISTRY.values():
        if entry.errors is None:
            continue
        table: ErrorTable = load(entry.errors)
        UNIQUE_CODES.setdefault(table.family, table.unique)
        TRANSIENT_CODES.setdefault(table.family, table.transient)
        KEY_READERS.setdefault(table.family, table.key)
        for module, reader in table.readers.items():
            READERS.setdefault(module, reader)
    _gathered.append(True)


def _reader(
    exc: BaseException,
) -> tuple[str, Reader] | None:
    module = type(exc).__module__ or ""
    while module:
        reader = READERS.get(module)
        if reader is not None:
            return module.split(".")[0], reader
        module = module.rpartition(".")[0]
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, what SQLAlchemy wrapped (``.orig``) and explicit causes
    (``raise ... from``). Never ``__context__``: an exception raised while
    another was being handled (a ``ValueError`` in an ``except IntegrityError``
    block, a ``KeyError`` while handling "database is locked") is not that error."""
    seen: set[int] = set()
    queue: list[BaseException] = [exc]
    while queue:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for nxt in (getattr(current, "orig", None), current.__cause__):
            if isinstance(nxt, BaseException):
                queue.append(nxt)


def driver_error(exc: BaseException) -> DriverError | None:
    """The first exception in the chain that a known driver raised, read.

    Details the first one lacks (asyncpg's constraint name behind SQLAlchemy's
    adapter) are taken from later ones of the same family.
    """
    tables()
    found: DriverError | None = None
    for candidate in _chain(exc):
        known = _reader(candidate)
        if known is None:
            continue
        read = known[1](candidate, known[0])
        if read is None:
            continue
        if found is None:
            found = read
        elif read.family == found.family and read.code == found.code:
            found = DriverError(
                found.family,
                found.driver if found.driver != "sqlalchemy" else read.driver,
                found.code,
                found.message,
                found.constraint or read.constraint,
                found.table or read.table,
                found.detail or read.detail,
                found.exception,
            )
    return found


def error_code(exc: BaseException) -> Code | None:
    """The driver's error code (SQLSTATE, errno, ...) anywhere in the chain."""
    err = driver_error(exc)
    return None if err is None else err.code
