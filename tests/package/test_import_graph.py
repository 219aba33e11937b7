"""The package's import graph has no cycles, and the library core never imports the study code.

Every ``import`` statement counts, at module level and inside function bodies alike: an import moved into a function
hides a cycle from Python's loader, not from the design (DESIGN.md: a lower layer never imports a higher one).
"""

from __future__ import annotations

import ast
from pathlib import Path

import autosparse_hf

PACKAGE_ROOT = Path(autosparse_hf.__file__).parent
PACKAGE = "autosparse_hf"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_ROOT.rglob("*.py"))}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (``from pkg import name`` counts as importing ``pkg.name`` when
    that is a module, else ``pkg``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node)
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    targets.append(candidate if candidate in modules else base)
            for target in targets:
                if not target.startswith(PACKAGE):
                    continue
                # ``import a.b.c`` executes a, a.b and a.b.c; the deepest existing module is the dependency.
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != module:
                    graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
                result.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return result


def test_graph_sees_function_level_imports():
    # The checker itself: an import inside a function body is an edge like any other.
    source = "def f():\n    from .b import x\n"
    tree = ast.parse(source)
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    assert _resolve("autosparse_hf.a", False, node) == "autosparse_hf.b"
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycles():
    cycles = _cycles(import_graph())
    assert not cycles, "import cycles among the package's modules:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_core_never_imports_study():
    graph = import_graph()
    offenders = {
        m: sorted(t for t in targets if t.startswith(f"{PACKAGE}.study"))
        for m, targets in graph.items()
        if not m.startswith(f"{PACKAGE}.study") and m not in DEPRECATED_SHIMS
    }
    offenders = {m: t for m, t in offenders.items() if t}
    assert not offenders, f"library modules import the study code: {offenders}"


def test_no_module_over_400_lines():
    long = {m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"modules over 400 lines: {long}"


# Old module paths kept for one release; each only warns and forwards to its new home (autosparse_hf._deprecation).
DEPRECATED_SHIMS: set[str] = {
    f"{PACKAGE}.{name}" for name in ("experiments", "benchmark", "pipeline", "plots", "scores", "tickets", "irp.report")
}


def test_deprecated_paths_warn_and_forward():
    import importlib
    import sys
    import warnings

    for module in sorted(DEPRECATED_SHIMS):
        sys.modules.pop(module, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            old = importlib.import_module(module)
        assert any(issubclass(w.category, FutureWarning) and "moved to" in str(w.message) for w in caught), module
        assert old._module.__name__.startswith(PACKAGE) and old._module.__name__ != module
