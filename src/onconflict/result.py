"""What insert_ignore and upsert return: ``InsertResult`` and ``UpsertResult``.

Both are frozen, and their rows are plain lists. A large call on the
PostgreSQL COPY path builds the dicts of ``InsertResult.inserted`` from the
driver's records when that attribute is first read (every outcome is
settled, and checked, inside the call; only the dicts are built later).
(get_or_create_many's ``GetOrCreateResult`` lives with its call, in
``_get_or_create_many``; seed's ``SeedReport`` in ``_seed``.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from onconflict.exceptions import NotReturnedError

_Rows = list[Mapping[str, Any]]


class LazyRows:
    """``length`` rows that ``make()`` builds once, when they are first read
    (from records the driver returned, held in memory: no connection needed)."""

    __slots__ = ("length", "make")

    def __init__(self, length: int, make: Callable[[], _Rows]) -> None:
        self.length, self.make = length, make

    def __len__(self) -> int:
        return self.length


@dataclass(frozen=True)
class InsertResult:
    """What an ``insert_ignore`` call did with each input row.

    Every input row appears exactly once, in ``inserted`` or in ``existing``, and
    each list keeps input order.

    A call made with ``returning=False`` returns counts only: ``inserted_count``
    and ``existing_count`` are exact, and reading ``inserted`` or ``existing``
    raises :class:`~onconflict.exceptions.NotReturnedError`.
    """

    inserted: list[Mapping[str, Any]] = field(default_factory=list)
    """The rows this call inserted, as stored: server-generated values included
    (only the columns named by ``returning=``, when it names some)."""

    existing: list[Mapping[str, Any]] = field(default_factory=list)
    """The input rows skipped because their key already existed (or came earlier
    in the same call), as given (with column keys)."""

    counts: tuple[int, int] | None = field(default=None, kw_only=True, repr=False)
    """(inserted, existing) of a counts-only call (``returning=False``); None
    when the call returned its rows."""

    @classmethod
    def lazy(cls, inserted: LazyRows, existing: _Rows) -> InsertResult:
        """A result whose ``inserted`` list is built when first read."""
        made = cls([], existing)
        object.__setattr__(made, "inserted", inserted)
        return made

    def __getattribute__(self, name: str) -> Any:
        if name in _ROWS:
            get = object.__getattribute__
            if get(self, "counts") is not None:
                raise NotReturnedError(
                    f"InsertResult.{name}: the call passed returning=False (counts only);"
                    " read inserted_count / existing_count, or pass returning=True (or the"
                    " columns you want) to get the rows"
                )
            rows = get(self, name)
            if isinstance(rows, LazyRows):  # built now, once
                rows = rows.make()
                object.__setattr__(self, name, rows)
            return rows
        return object.__getattribute__(self, name)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InsertResult):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]

    def _fields(self) -> tuple[Any, ...]:
        if self.counts is not None:
            return (None, None, self.counts)
        return (self.inserted, self.existing, None)

    def __getstate__(self) -> dict[str, Any]:
        inserted, existing, counts = self._fields()
        return {"inserted": inserted or [], "existing": existing or [], "counts": counts}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)

    @classmethod
    def counted(cls, inserted: int, existing: int) -> InsertResult:
        """A counts-only result (``returning=False``)."""
        return cls(counts=(inserted, existing))

    @property
    def inserted_count(self) -> int:
        return self._count(0, "inserted")

    @property
    def existing_count(self) -> int:
        return self._count(1, "existing")

    def _count(self, index: int, name: str) -> int:
        """A count, without building lazy rows."""
        counts = self.counts
        if counts is not None:
            return counts[index]
        return len(object.__getattribute__(self, name))

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
