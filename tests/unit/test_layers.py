"""The walls between the layers, enforced (docs/architecture.md):

* ``recover.core`` imports nothing of tpm/ peers/ store/ boot/ cli/, nor socket,
  subprocess or ctypes;
* only ``recover.tpm`` imports tpm2_pytss; only ``recover.peers`` imports asyncio;
  only ``recover.cli`` imports argparse.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "recover"


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


MODULES = sorted(PKG.rglob("*.py"))


def _where(path: Path) -> str:
    return ".".join(path.relative_to(PKG.parent).with_suffix("").parts)


@pytest.mark.parametrize("path", MODULES, ids=_where)
def test_import_rules(path: Path) -> None:
    mod = _where(path)
    imports = _imports(path)

    def uses(prefix: str) -> list[str]:
        return sorted(i for i in imports if i == prefix or i.startswith(prefix + "."))

    if mod.startswith("recover.core"):
        for layer in ("tpm", "peers", "store", "boot", "cli"):
            assert not uses(f"recover.{layer}"), f"{mod} (pure core) imports recover.{layer}"
        for io in ("socket", "subprocess", "ctypes"):
            assert not uses(io), f"{mod} (pure core) imports {io}"
    if not mod.startswith("recover.tpm"):
        assert not uses("tpm2_pytss"), f"{mod} imports tpm2_pytss (only recover.tpm may)"
    if not mod.startswith("recover.peers"):
        assert not uses("asyncio"), f"{mod} imports asyncio (only recover.peers may)"
    if not mod.startswith("recover.cli"):
        assert not uses("argparse"), f"{mod} imports argparse (only recover.cli may)"


def test_no_import_cycles_between_modules_at_import_time() -> None:
    """Module-level imports form no cycle (function-level ones run later)."""
    graph: dict[str, set[str]] = {}
    names = {_where(p).removesuffix(".__init__") for p in MODULES}
    for p in MODULES:
        top = set()
        for node in ast.parse(p.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                top |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                top |= {a.name for a in node.names}
        graph[_where(p).removesuffix(".__init__")] = {t for t in top if t in names}
    seen: set[str] = set()
    stack: list[str] = []

    def visit(n: str) -> None:
        if n in stack:
            raise AssertionError("import cycle: " + " → ".join([*stack[stack.index(n) :], n]))
        if n in seen:
            return
        stack.append(n)
        for m in graph.get(n, ()):
            visit(m)
        stack.pop()
        seen.add(n)

    for n in sorted(graph):
        visit(n)
