"""The layering ARCHITECTURE.md states, checked on the code's own imports: a module imports only from
its own tier or the tiers below it, and no modules import each other in a circle.

Imports are read from the source (``ast``), at any depth (a function-level import is still a
dependency); those under ``if TYPE_CHECKING:`` are left out (annotations only, never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "engine"

#: Bottom to top, as ARCHITECTURE.md lists them: a module name belongs to the first tier with a
#: prefix of it (``engine.models.fetch`` before ``engine.models``).
TIERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("engine.errors", "engine._files", "engine._lazy", "engine._native", "engine._core", "engine._memory",
              "engine.text", "engine.shutdown", "engine.hardware", "engine._version")),
    ("model files", ("engine.models.registry", "engine.models.cache", "engine.models.gguf_check")),
    ("compute", ("engine.generation", "engine.embedding")),
    ("provisioning", ("engine.models",)),
    ("retrieval", ("engine.kb",)),
    ("answering", ("engine.answer",)),
    ("question set", ("engine.questions",)),
    ("facade", ("engine.facade",)),
    ("training", ("engine.finetune",)),
    ("bake-off", ("engine.bakeoff",)),
    ("services", ("engine.serve", "engine.robustness")),
    ("entry points", ("engine.cli", "engine.pytest_plugin", "engine.__main__", "engine")),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def tier_of(name: str) -> int:
    for index, (_, prefixes) in enumerate(TIERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{name} is in no tier: add it to ARCHITECTURE.md and TIERS")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str) -> set[str]:
    """The engine modules ``name`` imports when it runs (packages resolved to the submodule named)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "engine")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] == "engine":
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in MODULES or sub == "engine._core" else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(name)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def test_every_module_has_a_tier():
    for name in MODULES:
        tier_of(name)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_module_imports_only_its_own_tier_and_those_below(name):
    mine = tier_of(name)
    above = {dep: TIERS[tier_of(dep)][0] for dep in GRAPH[name] if tier_of(dep) > mine}
    assert not above, f"{name} ({TIERS[mine][0]}) imports from higher tiers: {above}"


def test_no_import_circle():
    # Tarjan's strongly connected components: any component of more than one module is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            if w not in GRAPH:
                continue
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            connect(v)
    assert not circles, f"modules that import each other in a circle: {circles}"


def test_the_checker_sees_a_violation():
    # The rules cannot pass by reading nothing: the facade does import generation and the kb.
    assert "engine.generation.generator" in GRAPH["engine.facade"]
    assert tier_of("engine.facade") > tier_of("engine.kb.knowledge_base") > tier_of("engine.generation.generator")
