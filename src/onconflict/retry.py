"""Retrying a whole unit of work after a transient error.

Serialization failures and deadlocks (see :func:`onconflict.is_transient`) are
resolved by running the whole transaction again. onconflict does that itself
when it owns the transaction (an engine was passed); when you own it, the error
reaches you and :func:`onconflict.retrying` re-runs your function in a fresh
transaction. Backoff is jittered exponential (tenacity's ``wait_random_exponential``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import tenacity

from onconflict.errors import is_transient

logger = logging.getLogger("onconflict")


@dataclass(frozen=True)
class Retry:
    """How often and how patiently to retry after a transient error."""

    attempts: int = 5
    """Runs in all, the first one included (1 = no retry)."""
    delay: float = 0.02
    """Scale of the backoff in seconds: a wait is drawn from [0, delay * 2**n]."""
    max_delay: float = 1.0
    """Longest single wait in seconds."""

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"Retry.attempts must be an integer >= 1, not {self.attempts!r}")
        if self.delay < 0 or self.max_delay < 0:
            raise ValueError("Retry delays must not be negative")

    def tenacity_args(self) -> dict[str, Any]:
        return {
            "stop": tenacity.stop_after_attempt(self.attempts),
            "wait": tenacity.wait_random_exponential(multiplier=self.delay, max=self.max_delay),
            "retry": tenacity.retry_if_exception(is_transient),
            "reraise": True,
            "before_sleep": _log_retry,
        }


NO_RETRY = Retry(attempts=1)
DEFAULT_RETRY = Retry()


def _log_retry(state: tenacity.RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    logger.info("transient error, retrying (attempt %d): %s", state.attempt_number, exc)
