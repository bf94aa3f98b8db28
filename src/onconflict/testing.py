"""A race-test kit for your own code: run it from many callers at the same
instant against a real database, and check that each key was written once.

The bugs that onconflict exists to prevent (a duplicate taken for success, a
NOT NULL error taken for a duplicate, two creators of one row) hide behind tests
that mock the database or call the code once. Test them as they happen::

    from onconflict.testing import race, assert_exactly_once

    outcome = await race(lambda i: handle_webhook("evt_1"), callers=64)
    outcome.raise_errors()                 # nothing else was raised
    assert outcome.results.count(True) == 1  # exactly one caller acted

``race`` releases N coroutines at once; ``race_processes`` does the same in M
processes (each with N coroutines), for code whose guard must hold across
workers and replicas. The pytest plugin (``onconflict.pytest_plugin``, loaded
automatically once onconflict is installed) gives real databases per test.
"""

from __future__ import annotations

import importlib
import multiprocessing
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import anyio

T = TypeVar("T")

__all__ = [
    "RaceOutcome",
    "assert_exactly_once",
    "assert_one_row_per_key",
    "race",
    "race_processes",
]


@dataclass
class RaceOutcome(Generic[T]):
    """What the callers of a race returned and raised, by caller number."""

    results: list[T] = field(default_factory=list)
    """The return values of the callers that returned, in caller order."""
    errors: list[tuple[int, BaseException]] = field(default_factory=list)
    """(caller number, exception) for the callers that raised."""
    returned_by: list[int] = field(default_factory=list)
    """The caller number of each entry of ``results``."""

    @property
    def calls(self) -> int:
        return len(self.results) + len(self.errors)

    def raise_errors(self) -> None:
        """Raise an AssertionError listing what the callers raised (with the
        first one chained), if any did."""
        if not self.errors:
            return
        kinds = Counter(type(exc).__name__ for _, exc in self.errors)
        listing = ", ".join(f"{n} x {name}" for name, n in kinds.most_common())
        first = self.errors[0][1]
        raise AssertionError(
            f"{len(self.errors)} of {self.calls} callers raised ({listing});"
            f" the first, by caller {self.errors[0][0]}: {first!r}"
        ) from first


async def race(
    fn: Callable[[int], Awaitable[T]],
    *,
    callers: int = 32,
    time_limit: float | None = 60.0,
) -> RaceOutcome[T]:
    """Run ``fn(i)`` for ``i`` in ``range(callers)``, all released at the same
    instant (each waits until every caller has started), and collect what each
    returned or raised. Exceptions are collected, not raised: see
    :meth:`RaceOutcome.raise_errors`. ``time_limit``: seconds for the whole race
    (``TimeoutError`` after it), ``None`` for no limit."""
    if callers < 1:
        raise ValueError(f"callers must be at least 1, not {callers}")
    ready = 0
    go = anyio.Event()
    done: dict[int, tuple[bool, Any]] = {}

    async def one(i: int) -> None:
        nonlocal ready
        ready += 1
        if ready == callers:
            go.set()
        await go.wait()
        try:
            done[i] = (True, await fn(i))
        except Exception as exc:
            done[i] = (False, exc)

    with anyio.fail_after(time_limit):
        async with anyio.create_task_group() as tg:
            for i in range(callers):
                tg.start_soon(one, i)
    outcome: RaceOutcome[T] = RaceOutcome()
    for i in range(callers):
        ok, value = done[i]
        if ok:
            outcome.results.append(value)
            outcome.returned_by.append(i)
        else:
            outcome.errors.append((i, value))
    return outcome


def race_processes(
    target: str,
    *,
    processes: int = 4,
    callers: int = 8,
    args: tuple[Any, ...] = (),
    start_delay: float = 3.0,
    timeout: float = 120.0,
) -> RaceOutcome[Any]:
    """Run the async function ``target`` ("package.module:function", importable
    in a fresh process) from ``callers`` coroutines in each of ``processes``
    processes, all released at the same instant. It is called as
    ``fn(i, *args)`` with ``i`` numbering every caller across processes; its
    results and exceptions must be picklable. ``start_delay``: seconds given to
    the processes to start (and import) before the common start."""
    if processes < 1:
        raise ValueError(f"processes must be at least 1, not {processes}")
    _resolve(target)  # an unknown target fails here, not in every process
    start_at = time.time() + start_delay
    context = multiprocessing.get_context("spawn")  # no fork of a running event loop
    with context.Pool(processes) as pool:
        jobs = [
            pool.apply_async(_process_main, (target, p, callers, args, start_at))
            for p in range(processes)
        ]
        parts = [job.get(timeout=timeout) for job in jobs]
    outcome: RaceOutcome[Any] = RaceOutcome()
    for part in parts:
        outcome.results.extend(part.results)
        outcome.returned_by.extend(part.returned_by)
        outcome.errors.extend(part.errors)
    return outcome


def _resolve(target: str) -> Callable[..., Awaitable[Any]]:
    module, _, name = target.partition(":")
    if not module or not name:
        raise ValueError(f"target must be 'package.module:function', not {target!r}")
    fn = getattr(importlib.import_module(module), name)
    if not callable(fn):
        raise TypeError(f"{target} is not callable")
    return fn  # type: ignore[no-any-return]


def _process_main(
    target: str, number: int, callers: int, args: tuple[Any, ...], start_at: float
) -> RaceOutcome[Any]:
    fn = _resolve(target)

    async def main() -> RaceOutcome[Any]:
        await anyio.sleep(max(0.0, start_at - time.time()))
        return await race(lambda i: fn(number * callers + i, *args), callers=callers)

    outcome = anyio.run(main)
    outcome.returned_by = [number * callers + i for i in outcome.returned_by]
    outcome.errors = [(number * callers + i, exc) for i, exc in outcome.errors]
    return outcome


def assert_exactly_once(
    outcome: RaceOutcome[Any],
    *,
    key: Callable[[Any], Hashable],
    created: Callable[[Any], bool],
    keys: Iterable[Hashable] | None = None,
) -> None:
    """Every caller returned (nothing raised), and each key was created by
    exactly one caller. ``key(result)`` and ``created(result)`` read a
    result, e.g. for ``get_or_create``'s ``(row, created)``:
    ``key=lambda r: r[0]["email"], created=lambda r: r[1]``. ``keys``: the keys
    the race asked for (each must have its one creator)."""
    outcome.raise_errors()
    creators = Counter(key(r) for r in outcome.results if created(r))
    twice = {k: n for k, n in creators.items() if n > 1}
    if twice:
        raise AssertionError(f"keys created by more than one caller: {twice}")
    seen = {key(r) for r in outcome.results}
    expected = set(keys) if keys is not None else seen
    missing = expected - set(creators)
    if missing:
        raise AssertionError(f"keys that no caller created: {sorted(map(repr, missing))}")
    unexpected = seen - expected
    if unexpected:
        raise AssertionError(f"keys the race did not ask for: {sorted(map(repr, unexpected))}")


def assert_one_row_per_key(rows: Iterable[Any], key: Callable[[Any], Hashable]) -> None:
    """The stored rows (as read back) hold each key once: rows == distinct keys."""
    counts = Counter(key(r) for r in rows)
    repeated = {k: n for k, n in counts.items() if n > 1}
    if repeated:
        raise AssertionError(f"keys stored more than once: {repeated}")
