"""scripts/galera.py's decisions, without starting a server: what ``start``
does when a node fails to start or join."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def galera(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("galera_script", ROOT / "scripts" / "galera.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look it up
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "BASE", tmp_path)  # nothing outside the test's folder
    monkeypatch.setattr(module, "missing_tools", list)
    return module


class Calls:
    def __init__(self, galera: ModuleType, monkeypatch: pytest.MonkeyPatch, *, fail: int) -> None:
        self.brought: list[list[int]] = []
        self.destroyed = 0
        self.fail = fail

        def bring_up(wanted: list[object]) -> None:
            self.brought.append([n.number for n in wanted])  # type: ignore[attr-defined]
            if len(self.brought) <= self.fail:
                raise galera.Failed("node3 exited while waiting for node3 to sync")

        def destroy() -> None:
            self.destroyed += 1

        monkeypatch.setattr(galera, "bring_up", bring_up)
        monkeypatch.setattr(galera, "destroy", destroy)
        monkeypatch.setattr(galera, "wsrep", lambda node: {"wsrep_cluster_size": "3"})


def test_rebuild_only_when_no_node_serves(galera: ModuleType) -> None:
    assert galera.rebuild_after_failure([]) is True
    assert galera.rebuild_after_failure(galera.ALL[:2]) is False
    assert galera.rebuild_after_failure(galera.ALL[:1]) is False


def test_one_node_failing_keeps_the_healthy_cluster(
    galera: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = Calls(galera, monkeypatch, fail=1)
    monkeypatch.setattr(galera, "pid", lambda node: 100 + node.number)  # all running
    monkeypatch.setattr(galera, "healthy", lambda: galera.ALL[:2])
    with pytest.raises(SystemExit) as info:
        galera.start([3])
    assert calls.destroyed == 0
    assert calls.brought == [[3]]
    assert "node3 exited" in str(info.value)
    assert "node1, node2 still running" in str(info.value)


def all_down(galera: ModuleType, monkeypatch: pytest.MonkeyPatch, *, fail: int) -> Calls:
    """No node runs; the first ``fail`` bring-ups fail."""
    calls = Calls(galera, monkeypatch, fail=fail)
    monkeypatch.setattr(galera, "pid", lambda node: None)
    monkeypatch.setattr(galera, "healthy", list)
    return calls


def test_a_failed_start_with_nothing_serving_rebuilds(
    galera: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = all_down(galera, monkeypatch, fail=1)
    galera.start([3])
    assert calls.destroyed == 1
    assert calls.brought == [[3], [1, 2, 3]]


def test_a_second_failure_after_rebuilding_is_reported(
    galera: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = all_down(galera, monkeypatch, fail=2)
    with pytest.raises(SystemExit, match="node3 exited"):
        galera.start([1, 2, 3])
    assert calls.destroyed == 1
