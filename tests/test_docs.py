"""Every ```python block of the docs and the README runs, so the docs cannot drift.

The blocks of one page run in order in one namespace, in a fresh working
directory (their SQLite files land there), with top-level ``await`` allowed.
``--8<-- "path"`` lines (included files) are expanded as MkDocs does. Blocks
that are signatures or SQL are written as ```text / ```sql and not run.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)
SNIPPET = re.compile(r'^--8<-- "([^"]+)"$', re.M)


def blocks(page: Path) -> list[str]:
    text = page.read_text()
    found = []
    for block in FENCE.findall(text):
        found.append(SNIPPET.sub(lambda m: (ROOT / m.group(1)).read_text(), block))
    return found


def test_every_page_is_checked() -> None:
    assert sum(bool(blocks(p)) for p in PAGES) >= 8


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)], ids=lambda p: p.name)
def test_page_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))
    module = types.ModuleType(f"docs_{page.stem}")  # a real module: ORM annotations resolve
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace: dict[str, Any] = module.__dict__
    loop = asyncio.new_event_loop()
    try:
        for i, source in enumerate(blocks(page)):
            code = compile(
                source, f"{page.name}[{i}]", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
            )
            if code.co_flags & inspect.CO_COROUTINE:
                loop.run_until_complete(eval(code, namespace))
            else:
                exec(code, namespace)
        # engines the examples left open
        for value in list(namespace.values()):
            dispose = getattr(value, "dispose", None)
            if callable(dispose) and type(value).__name__ == "AsyncEngine":
                loop.run_until_complete(dispose())
            elif callable(dispose) and type(value).__name__ == "Engine":
                dispose()
    finally:
        loop.close()
        sys.modules.pop("examples.fastapi_app", None)
