"""Generate the synchronous front (src/onconflict/sync.py) from the async one
(src/onconflict/_async.py), so that each public signature, overload and
docstring is written once.

    python scripts/gen_sync.py           rewrite sync.py (formatted with ruff)
    python scripts/gen_sync.py --check   exit 1 if sync.py is not what _async.py gives

tests/test_statements.py fails when the committed sync.py differs from what
this script makes of _async.py (compared as syntax trees, so formatting and
comments do not count). The transformation, as in psycopg's async_to_sync:

- ``async def`` / ``async with`` / ``async for`` become their plain forms and
  ``await x`` becomes ``x``; ``await h.run_sync(f, *args)`` becomes ``f(h, *args)``;
- ``x.sync_engine`` / ``x.sync_connection`` / ``x.sync_session`` become ``x``,
  ``Awaitable[T]`` becomes ``T``;
- names are renamed by ``NAMES`` (``AsyncEngine`` -> ``Engine``, ``anyio`` ->
  ``time``, ...), imports by ``IMPORTS``; the same names are renamed in docstrings;
- ``if True:  # ASYNC`` keeps its ``else:`` branch (or nothing) in the sync
  front: the way to write what only one front does;
- imports the sync front does not use are dropped; the module docstring is
  ``SYNC_DOCSTRING``.
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src" / "onconflict" / "_async.py"
TARGET = ROOT / "src" / "onconflict" / "sync.py"

SYNC_DOCSTRING = """The synchronous front: the same names and signatures as ``onconflict``.

Pass a ``Connection`` or ``Session`` to work inside your transaction (you
commit), or an ``Engine`` to let the call open and commit its own.

Generated from ``_async.py`` by ``scripts/gen_sync.py``: edit that file and run
the script (a test fails when this file is not what the script makes).
"""

NAMES = {
    "AsyncConnection": "Connection",
    "AsyncEngine": "Engine",
    "AsyncSession": "Session",
    "AsyncHandle": "SyncHandle",
    "ASYNC_EXPECTED": "SYNC_EXPECTED",
    "anyio": "time",
}
# (module, name) in the async front -> (module, name) in the sync one; None: dropped
IMPORTS: dict[tuple[str, str], tuple[str, str] | None] = {
    ("sqlalchemy.ext.asyncio", "AsyncConnection"): ("sqlalchemy.engine", "Connection"),
    ("sqlalchemy.ext.asyncio", "AsyncEngine"): ("sqlalchemy.engine", "Engine"),
    ("sqlalchemy.ext.asyncio", "AsyncSession"): ("sqlalchemy.orm", "Session"),
    ("collections.abc", "Awaitable"): None,
    ("onconflict._handles", "ASYNC_EXPECTED"): ("onconflict._handles", "SYNC_EXPECTED"),
}
UNWRAPPED_ATTRIBUTES = {"sync_engine", "sync_connection", "sync_session"}
DOC_WORDS = [
    (re.compile(r"\bAsync(Connection|Session|Engine)\b"), r"\1"),
    (re.compile(r"\ban(\s+)(``)?(Connection|Session)\b"), r"a\1\2\3"),
]
MARKER = "# ASYNC"


class _ToSync(ast.NodeTransformer):
    """The statement-level rewrites; imports are handled by :func:`_imports`."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AST:
        self.generic_visit(node)
        plain = ast.FunctionDef(**{f: getattr(node, f) for f in node._fields})
        return ast.copy_location(plain, node)

    def visit_AsyncWith(self, node: ast.AsyncWith) -> ast.AST:
        self.generic_visit(node)
        return ast.copy_location(ast.With(items=node.items, body=node.body), node)

    def visit_AsyncFor(self, node: ast.AsyncFor) -> ast.AST:
        self.generic_visit(node)
        plain = ast.For(**{f: getattr(node, f) for f in node._fields})
        return ast.copy_location(plain, node)

    def visit_Await(self, node: ast.Await) -> ast.AST:
        value = self.visit(node.value)
        if (
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Attribute)
            and value.func.attr == "run_sync"
        ):  # await handle.run_sync(fn, *args) -> fn(handle, *args)
            fn, *args = value.args
            return ast.copy_location(
                ast.Call(func=fn, args=[value.func.value, *args], keywords=value.keywords), node
            )
        return value  # type: ignore[no-any-return]

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        return node.value if node.attr in UNWRAPPED_ATTRIBUTES else node

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.value, ast.Name) and node.value.id == "Awaitable":
            return node.slice
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        node.id = NAMES.get(node.id, node.id)
        return node

    def visit_If(self, node: ast.If) -> ast.AST | list[ast.stmt]:
        if isinstance(node.test, ast.Constant) and node.test.value is True:
            if MARKER not in self.lines[node.lineno - 1]:
                raise SystemExit(f"_async.py:{node.lineno}: `if True:` without `{MARKER}`")
            return [self.visit(stmt) for stmt in node.orelse]
        self.generic_visit(node)
        return node

    def visit_Expr(self, node: ast.Expr) -> ast.AST:  # docstrings
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            node.value.value = _doc(node.value.value)
            return node
        self.generic_visit(node)
        return node


def _doc(text: str) -> str:
    for pattern, replacement in DOC_WORDS:
        text = pattern.sub(replacement, text)
    return text


def _used_names(tree: ast.Module) -> set[str]:
    """Names the module refers to, and the names it exports in ``__all__``."""
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            used |= {
                e.value
                for e in ast.walk(node.value)
                if isinstance(e, ast.Constant) and isinstance(e.value, str)
            }
    return used


def _imports(tree: ast.Module) -> None:
    """Rename, regroup and prune the module's imports in place (keeping the
    order in which modules first appear; ruff sorts them afterwards)."""
    modules: dict[str | None, dict[tuple[str, str | None], None]] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                mapped = IMPORTS.get((node.module or "", alias.name), (node.module, alias.name))
                if mapped is not None:
                    modules.setdefault(mapped[0], {})[mapped[1], alias.asname] = None
        elif isinstance(node, ast.Import):
            for alias in node.names:
                name = NAMES.get(alias.name, alias.name)
                modules.setdefault(None, {})[name, alias.asname] = None
    used = _used_names(tree) | {"annotations"}
    new: list[ast.stmt] = []
    for module, names in modules.items():
        kept = [
            ast.alias(name=name, asname=asname)
            for name, asname in names
            if (asname or name.split(".")[0]) in used
        ]
        if module is None:
            new += [ast.Import(names=[a]) for a in kept]
        elif kept:
            new.append(ast.ImportFrom(module=module, names=kept, level=0))
    rest = [n for n in tree.body if not isinstance(n, ast.Import | ast.ImportFrom)]
    docstring, body = rest[0], rest[1:]
    tree.body = [docstring, *new, *body]


def sync_tree() -> ast.Module:
    """The sync front's syntax tree, made from ``_async.py``."""
    source = SOURCE.read_text()
    tree = ast.parse(source)
    _ToSync(source.splitlines()).visit(tree)  # the module node itself stays
    first = tree.body[0]
    assert isinstance(first, ast.Expr)
    assert isinstance(first.value, ast.Constant)
    first.value.value = SYNC_DOCSTRING
    _imports(tree)
    return ast.fix_missing_locations(tree)


def canonical(tree: ast.Module) -> tuple[frozenset[tuple[str | None, str]], list[str]]:
    """What must agree between two versions of the module: the set of imported
    names (ruff decides their order) and every other statement, in order."""
    imports: set[tuple[str | None, str]] = set()
    body: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            imports |= {(node.module, a.name) for a in node.names}
        elif isinstance(node, ast.Import):
            imports |= {(None, a.name) for a in node.names}
        else:
            body.append(ast.dump(node))
    return frozenset(imports), body


def is_current() -> bool:
    """Whether the committed sync.py is what this script makes of _async.py."""
    return canonical(ast.parse(TARGET.read_text())) == canonical(sync_tree())


def _ruff(*args: str, text: str) -> str:
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    done = subprocess.run(
        [ruff, *args, "--stdin-filename", str(TARGET), "-"],
        input=text,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return done.stdout


def render() -> str:
    """sync.py's text: the tree unparsed, imports sorted and formatted by ruff."""
    text = ast.unparse(sync_tree()) + "\n"
    text = _ruff("check", "--select", "I", "--fix", "--quiet", text=text)
    return _ruff("format", "--quiet", text=text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check sync.py is current")
    if parser.parse_args().check:
        if is_current():
            return 0
        print("src/onconflict/sync.py is stale: run python scripts/gen_sync.py", file=sys.stderr)
        return 1
    TARGET.write_text(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
