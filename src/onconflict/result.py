"""Result types."""

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
