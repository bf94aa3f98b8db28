"""What insert_ignore and upsert return: ``InsertResult`` and ``UpsertResult``.

Both are frozen and built complete by the call, from lists filled beforehand.
(get_or_create_many's ``GetOrCreateResult`` lives with its call, in
``_get_or_create_many``; seed's ``SeedReport`` in ``_seed``.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from onconflict.exceptions import NotReturnedError


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
