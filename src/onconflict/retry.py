"""Retrying a whole unit of work after a transient error.

Serialization failures and deadlocks (see :func:`onconflict.is_transient`) are
resolved by running the whole transaction again. onconflict does that itself
when it owns the transaction (an engine was passed); when you own it, the error
reaches you and :func:`onconflict.retrying` re-runs your function in a fresh
transaction.

The loop, shared by both fronts (:class:`Attempts`):

* backoff with full jitter: the n-th wait is drawn from
  ``[0, min(max_delay, delay * 2**n)]``, so callers that failed together do not
  come back together;
* a budget that scales with contention: ``attempts`` runs, plus two for every
  doubling of the calls in flight on the same engine (32 callers: +10), since
  that many callers need that many more doublings of the wait to spread out
  (one per doubling was measured too few for 128 SQLite writers);
* a call that lost a creation race on MySQL/MariaDB (:class:`Restart`) runs
  again at once, in a new transaction, without waiting and without spending
  the budget of transient errors (up to ``attempts - 1`` such restarts): rolling
  back frees the shared lock the lost race left, and the next run takes the
  row's exclusive lock first, instead of deadlocking on the upgrade;
* what was spent is counted (:func:`retry_stats`) and logged on the
  ``onconflict.retry`` logger: INFO for each retry, WARNING when a call gives up.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import weakref
from dataclasses import dataclass, fields
from typing import Any

from onconflict.classify import error_code, is_transient

logger = logging.getLogger("onconflict.retry")

__all__ = ["DEFAULT_RETRY", "NO_RETRY", "Attempts", "Restart", "Retry", "RetryStats", "retry_stats"]


@dataclass(frozen=True)
class Retry:
    """How often and how patiently to retry after a transient error."""

    attempts: int = 5
    """Runs in all, the first one included (1 = no retry), before the
    contention bonus: two more runs per doubling of the calls in flight on the
    same engine (``scale``)."""
    delay: float = 0.02
    """Scale of the backoff in seconds: the n-th wait is drawn from [0, delay * 2**n]."""
    max_delay: float = 1.0
    """Longest single wait in seconds."""
    scale: bool = True
    """Add two runs per doubling of the calls in flight on the engine."""

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"Retry.attempts must be an integer >= 1, not {self.attempts!r}")
        if self.delay < 0 or self.max_delay < 0:
            raise ValueError("Retry delays must not be negative")


NO_RETRY = Retry(attempts=1, scale=False)
DEFAULT_RETRY = Retry()


class Restart(Exception):
    """Raised inside a call that owns its transaction to have it rolled back and
    run again at once (a lost creation race on MySQL/MariaDB: see the module
    docstring). Never reaches the caller: after ``attempts - 1`` restarts the
    call runs its work without raising it (the caller-owned behaviour)."""


@dataclass
class RetryStats:
    """What the retry loops of this process have spent (``retry_stats()``)."""

    calls: int = 0
    """Calls that ran through a retry loop (engine-owned calls and ``retrying``)."""
    retried_calls: int = 0
    """Of those, calls that ran more than once."""
    retries: int = 0
    """Runs after a transient error (deadlock, serialization failure, busy)."""
    restarts: int = 0
    """Runs after a lost creation race (MySQL/MariaDB; no wait, no error)."""
    gave_up: int = 0
    """Calls that raised a transient error after spending their budget."""

    def __sub__(self, other: RetryStats) -> RetryStats:
        return RetryStats(
            **{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)}
        )


_STATS = RetryStats()
_LOCK = threading.Lock()
_IN_FLIGHT: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def retry_stats() -> RetryStats:
    """A copy of the process-wide retry counters (subtract two copies for a span)."""
    with _LOCK:
        return RetryStats(**{f.name: getattr(_STATS, f.name) for f in fields(_STATS)})


def _count(**by: int) -> None:
    with _LOCK:
        for name, n in by.items():
            setattr(_STATS, name, getattr(_STATS, name) + n)


class Attempts:
    """The state of one call's retry loop. Use as a context manager around the
    loop (it counts the call in flight on ``engine``); after each failed run,
    ``wait(exc)`` gives the seconds to wait before the next run, or None to raise.
    ``restarts_left`` says whether a lost race may still restart the run."""

    def __init__(self, retry: Retry, engine: Any) -> None:
        self.retry, self.engine = retry, engine
        self.runs = 1
        self.transient = 0
        self.restarts = 0
        self.peak = 1

    def __enter__(self) -> Attempts:
        with _LOCK:
            _STATS.calls += 1
            now = _IN_FLIGHT.get(self.engine, 0) + 1
            _IN_FLIGHT[self.engine] = now
        self.peak = now
        return self

    def __exit__(self, *exc: object) -> None:
        with _LOCK:
            left = _IN_FLIGHT.get(self.engine, 1) - 1
            if left:
                _IN_FLIGHT[self.engine] = left
            else:
                _IN_FLIGHT.pop(self.engine, None)
            if self.runs > 1:
                _STATS.retried_calls += 1

    @property
    def budget(self) -> int:
        """Runs allowed for transient errors, with the contention bonus."""
        if not self.retry.scale or self.retry.attempts == 1:
            return self.retry.attempts
        with _LOCK:
            self.peak = max(self.peak, _IN_FLIGHT.get(self.engine, 1))
        return self.retry.attempts + 2 * math.ceil(math.log2(self.peak))

    @property
    def restarts_left(self) -> bool:
        """Whether a lost race may still restart the run (never with
        ``attempts=1``, which asks for one run)."""
        return self.restarts < self.retry.attempts - 1

    def wait(self, exc: BaseException) -> float | None:
        """Seconds to wait before running again after ``exc``; None: raise it."""
        if isinstance(exc, Restart):
            self.restarts += 1
            self.runs += 1
            _count(restarts=1)
            logger.debug("lost a creation race; running again (restart %d)", self.restarts)
            return 0.0
        if not is_transient(exc):
            return None
        self.transient += 1
        budget = self.budget
        if self.transient >= budget:
            _count(gave_up=1)
            logger.warning(
                "transient error %s, giving up after %d runs: %s",
                error_code(exc),
                self.runs,
                exc,
                extra={"onconflict_runs": self.runs, "onconflict_budget": budget},
            )
            return None
        self.runs += 1
        _count(retries=1)
        cap = min(self.retry.max_delay, self.retry.delay * 2**self.transient)
        pause = random.uniform(0, cap)
        logger.info(
            "transient error %s, running again (run %d of at most %d, after %.3fs): %s",
            error_code(exc),
            self.runs,
            budget + self.restarts,
            pause,
            exc,
            extra={"onconflict_runs": self.runs, "onconflict_budget": budget},
        )
        return pause
