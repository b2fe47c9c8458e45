"""The import graph of ``llvq/``: no circles, and no import from a lower layer to a higher one.

Every ``import`` counts, at module level and inside functions (a function-level import hides
a circle, it does not remove it); only imports under ``if TYPE_CHECKING:`` are exempt. The
graph is read with ``ast``, nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "llvq"

# Layers, lowest first. A module may import modules of its own layer or of lower layers; the
# longest matching prefix decides a module's layer, and every module must match one.
#   0  neutral helpers, importing nothing of llvq but each other
#   1  pure lattice math (no Lightning)
#   2  the quantizer contract and every registered bottleneck
#   3  libraries built on quantizers: networks, data, federated, LLM, the code export format,
#      safe checkpoint reading, the contract checks for plugin authors
#   4  Lightning callbacks and modules (the jobs)
#   5  entry points: the runner, console scripts, the package facade (`llvq.run`)
LAYERS: dict[str, int] = {
    "llvq.registry": 0, "llvq.plugins": 0, "llvq.hashing": 0, "llvq.code_stats": 0,
    "llvq.progress": 0, "llvq.quiet": 0,
    "llvq.lattices": 1,
    "llvq.quantizers": 2,
    "llvq.nn": 3, "llvq.data": 3, "llvq.federated": 3, "llvq.llm": 3,
    "llvq.kvcache": 3, "llvq.qat": 3, "llvq.federated.flower.job": 4,
    "llvq.codes_format": 3, "llvq.checkpoints": 3, "llvq.testing": 3,
    "llvq.callbacks": 4, "llvq.modules": 4,
    "llvq.runner": 5, "llvq.cli": 5, "llvq.export": 5, "llvq.sample": 5, "llvq": 5,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool):
    """``(target module, line, function-level)`` for every llvq import outside TYPE_CHECKING."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child, in_function)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((alias.name, node.lineno, in_function))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in MODULES else base, node.lineno, in_function))
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                 ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return [(t, line, fn) for t, line, fn in found if t == "llvq" or t.startswith("llvq.")]


def _graph() -> dict[str, list[tuple[str, int, bool]]]:
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges = []
        for target, line, fn in _imports(tree, name, path.name == "__init__.py"):
            while target not in MODULES and "." in target:  # `import llvq.x.attr`-like paths
                target = target.rpartition(".")[0]
            if target != name:
                edges.append((target, line, fn))
        graph[name] = edges
    return graph


def _layer(module: str) -> int | None:
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        layer = LAYERS.get(".".join(parts[:i]))
        if layer is not None:
            return layer
    return None


def _describe(src: str, target: str, line: int, fn: bool) -> str:
    where = "function-level" if fn else "module-level"
    return f"{src} -> {target} ({MODULES[src].relative_to(ROOT)}:{line}, {where})"


def _cycles(graph: dict[str, list[tuple[str, int, bool]]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root, edges in graph.items():
        if root in index:
            continue
        work = [(root, iter(sorted({t for t, _, _ in edges})))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted({t for t, _, _ in graph[child]}))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in MODULES if _layer(m) is None)
    assert not missing, f"add these modules to LAYERS in {Path(__file__).name}: {missing}"


def test_no_import_cycles() -> None:
    graph = _graph()
    report = []
    for component in _cycles(graph):
        members = set(component)
        edges = sorted({_describe(src, t, line, fn) for src in component
                        for t, line, fn in graph[src] if t in members})
        report.append(" / ".join(component) + "\n      " + "\n      ".join(edges))
    assert not report, "import cycles (the edges inside each):\n  " + "\n  ".join(report)


def test_no_upward_imports() -> None:
    graph = _graph()
    bad = [f"{_describe(src, t, line, fn)}: layer {_layer(src)} -> {_layer(t)}"
           for src, edges in graph.items() for t, line, fn in edges
           if _layer(src) is not None and _layer(t) is not None and _layer(t) > _layer(src)]
    assert not bad, "imports from a lower layer to a higher one:\n  " + "\n  ".join(bad)


def test_the_walker_sees_function_level_and_relative_imports() -> None:
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import llvq.runner\n"
              "from . import base\nfrom .registry import build\n"
              "def f():\n    from llvq.export import main\n")
    found = _imports(ast.parse(source), "llvq.quantizers.vq", False)
    assert found == [("llvq.quantizers.base", 4, False), ("llvq.quantizers.registry", 5, False),
                     ("llvq.export", 7, True)]
