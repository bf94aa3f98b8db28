"""What insert_ignore and upsert return: ``InsertResult`` and ``UpsertResult``.

Both are frozen. ``InsertResult``'s rows are :class:`ResultRows`, read-only
list-like sequences; a large call on the PostgreSQL COPY path fills
``inserted`` from the driver's records when it is first read (every outcome
is settled, and checked, inside the call; only the dicts are built later).
(get_or_create_many's ``GetOrCreateResult`` lives with its call, in
``_get_or_create_many``; seed's ``SeedReport`` in ``_seed``.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from onconflict.exceptions import NotReturnedError

_Rows = list[Mapping[str, Any]]


class ResultRows(Sequence[Mapping[str, Any]]):
    """The rows of a result: a read-only sequence that reads like a list
    (``len``, indexing and slices, iteration, ``in``, ``==`` with a list or
    another ``ResultRows``, ``+`` gives a list, ``repr`` as a list's, pickled
    as its rows). ``list(rows)`` gives a plain list.

    Its rows may be built when first read (from records the driver returned,
    held in memory: reading them needs no connection); what each row is was
    settled inside the call.
    """

    __slots__ = ("_len", "_make", "_rows")

    def __init__(self, rows: Sequence[Mapping[str, Any]] = ()) -> None:
        self._rows: _Rows | None = list(rows)
        self._len = len(self._rows)
        self._make: Callable[[], _Rows] | None = None

    @classmethod
    def lazy(cls, length: int, make: Callable[[], _Rows]) -> ResultRows:
        """``length`` rows, ``make()`` called once, when they are first read."""
        self = cls.__new__(cls)
        self._rows, self._len, self._make = None, length, make
        return self

    def _list(self) -> _Rows:
        rows = self._rows
        if rows is None:
            make = self._make
            assert make is not None
            rows = self._rows = make()
            self._make = None
        return rows

    def __len__(self) -> int:
        return self._len

    @overload
    def __getitem__(self, index: int) -> Mapping[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> _Rows: ...

    def __getitem__(self, index: int | slice) -> Mapping[str, Any] | _Rows:
        return self._list()[index]

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        return iter(self._list())

    def __reversed__(self) -> Iterator[Mapping[str, Any]]:
        return reversed(self._list())

    def __contains__(self, row: object) -> bool:
        return row in self._list()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ResultRows):
            return self._len == other._len and self._list() == other._list()
        if isinstance(other, list):
            return self._list() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __add__(self, other: Sequence[Mapping[str, Any]]) -> _Rows:
        return self._list() + list(other)

    def __radd__(self, other: Sequence[Mapping[str, Any]]) -> _Rows:
        return list(other) + self._list()

    def __repr__(self) -> str:
        return repr(self._list())

    def __reduce__(self) -> tuple[Any, ...]:
        return (ResultRows, (self._list(),))


def _as_rows(rows: Sequence[Mapping[str, Any]]) -> ResultRows:
    return rows if isinstance(rows, ResultRows) else ResultRows(rows)


@dataclass(frozen=True)
class InsertResult:
    """What an ``insert_ignore`` call did with each input row.

    Every input row appears exactly once, in ``inserted`` or in ``existing``, and
    each list keeps input order.

    A call made with ``returning=False`` returns counts only: ``inserted_count``
    and ``existing_count`` are exact, and reading ``inserted`` or ``existing``
    raises :class:`~onconflict.exceptions.NotReturnedError`.
    """

    inserted: Sequence[Mapping[str, Any]] = field(default_factory=ResultRows)
    """The rows this call inserted, as stored: server-generated values included
    (only the columns named by ``returning=``, when it names some). A
    :class:`ResultRows` (list-like, read-only)."""

    existing: Sequence[Mapping[str, Any]] = field(default_factory=ResultRows)
    """The input rows skipped because their key already existed (or came earlier
    in the same call), as given (with column keys). A :class:`ResultRows`."""

    counts: tuple[int, int] | None = field(default=None, kw_only=True, repr=False)
    """(inserted, existing) of a counts-only call (``returning=False``); None
    when the call returned its rows."""

    def __post_init__(self) -> None:
        get = object.__getattribute__
        for name in _ROWS:  # lists given (a test's expected result, say) read alike
            object.__setattr__(self, name, _as_rows(get(self, name)))

    def __getattribute__(self, name: str) -> Any:
        if name in _ROWS and object.__getattribute__(self, "counts") is not None:
            raise NotReturnedError(
                f"InsertResult.{name}: the call passed returning=False (counts only);"
                " read inserted_count / existing_count, or pass returning=True (or the"
                " columns you want) to get the rows"
            )
        return object.__getattribute__(self, name)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InsertResult):
            return NotImplemented
        mine, theirs = self._fields(), other._fields()
        return mine == theirs

    def _fields(self) -> tuple[Any, ...]:
        get = object.__getattribute__
        return tuple(get(self, name) for name in ("inserted", "existing", "counts"))

    @classmethod
    def counted(cls, inserted: int, existing: int) -> InsertResult:
        """A counts-only result (``returning=False``)."""
        return cls(counts=(inserted, existing))

    @property
    def inserted_count(self) -> int:
        if self.counts is not None:
            return self.counts[0]
        return len(self.inserted)

    @property
    def existing_count(self) -> int:
        if self.counts is not None:
            return self.counts[1]
        return len(self.existing)

    def __repr__(self) -> str:
        counts = f"inserted_count={self.inserted_count}, existing_count={self.existing_count}"
        return f"InsertResult({counts})"


_ROWS = frozenset(("inserted", "existing"))


@dataclass(frozen=True)
class UpsertResult:
    """What an ``upsert`` call did with each input row.

    Every input row appears exactly once, in ``inserted``, ``updated`` or
    ``unchanged``, and each list keeps input order.
    """

    inserted: list[Mapping[str, Any]] = field(default_factory=list)
    """Rows this call inserted, as stored (server-generated values included)."""

    updated: list[Mapping[str, Any]] = field(default_factory=list)
    """Rows this call updated, as stored after the update."""

    unchanged: list[Mapping[str, Any]] = field(default_factory=list)
    """Input rows (as given) that changed nothing: ``where`` was false, the
    stored row already held the values (``skip_unchanged``), or a later row in
    the same call had the same key (``duplicates="last"``; an earlier one with
    ``"first"``)."""

    @property
    def inserted_count(self) -> int:
        return len(self.inserted)

    @property
    def updated_count(self) -> int:
        return len(self.updated)

    @property
    def unchanged_count(self) -> int:
        return len(self.unchanged)

    def __repr__(self) -> str:
        return (
            f"UpsertResult(inserted_count={self.inserted_count},"
            f" updated_count={self.updated_count}, unchanged_count={self.unchanged_count})"
        )
