"""What insert_ignore and upsert return: ``InsertResult`` and ``UpsertResult``.

Both are frozen and built complete by the call, from lists filled beforehand.
(get_or_create_many's ``GetOrCreateResult`` lives with its call, in
``_get_or_create_many``; seed's ``SeedReport`` in ``_seed``.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class InsertResult:
    """What an ``insert_ignore`` call did with each input row.

    Every input row appears exactly once, in ``inserted`` or in ``existing``, and
    each list keeps input order.
    """

    inserted: list[Mapping[str, Any]] = field(default_factory=list)
    """The rows this call inserted, as stored: server-generated values included."""

    existing: list[Mapping[str, Any]] = field(default_factory=list)
    """The input rows skipped because their key already existed (or came earlier
    in the same call), as given (with column keys)."""

    @property
    def inserted_count(self) -> int:
        return len(self.inserted)

    @property
    def existing_count(self) -> int:
        return len(self.existing)

    def __repr__(self) -> str:
        counts = f"inserted_count={self.inserted_count}, existing_count={self.existing_count}"
        return f"InsertResult({counts})"


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
