"""The lattice registry: one decorated function per construction, derived tables, plugins,
and no hidden import circles inside llvq.lattices."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from llvq import lattices
from llvq.lattices import (
    BEST_KNOWN,
    LATTICES,
    BestKnown,
    best_known,
    get_lattice,
    list_lattices,
    register_lattice,
)
from llvq.lattices.design import REFERENCE_NSM, SEED_NSM
from llvq.lattices.fast import decode_zn
from llvq.lattices.registry import _resolve
from llvq.quantizers import build

PACKAGE = Path(lattices.__file__).parent


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made in a test are undone afterwards."""
    monkeypatch.setattr(LATTICES, "_entries", dict(LATTICES._entries))
    monkeypatch.setattr(LATTICES, "_info", dict(LATTICES._info))
    _resolve.cache_clear()
    yield LATTICES
    _resolve.cache_clear()


def test_outside_package_registers_a_lattice(scratch_registry) -> None:
    @register_lattice("mytoy", nsm=0.0833, decoder=decode_zn, fast="zn")
    def mytoy() -> torch.Tensor:  # a bare generator: wrapped with the declared decoder
        return 2.0 * torch.eye(2, dtype=torch.float64)

    lat = get_lattice("MyToy")
    assert lat.name == "mytoy" and lat.dim == 2 and lat.volume == pytest.approx(4.0)
    assert lat.fast_name == "zn" and get_lattice("mytoy*").volume == pytest.approx(0.25)
    assert "mytoy" in list_lattices() and LATTICES.info("mytoy")["nsm"] == 0.0833
    q = build("lattice", dim=4, lattice="mytoy")
    z = torch.randn(3, 4)
    assert q(z).z_q.shape == z.shape


def test_a_family_resolves_by_pattern(scratch_registry) -> None:
    @register_lattice("Toy<n>", pattern=r"toy(\d+)")
    def toy(n: int) -> torch.Tensor:
        return torch.eye(n, dtype=torch.float64) * 3

    assert get_lattice("TOY5").dim == 5 and "Toy<n>" in list_lattices("Toy*")
    with pytest.raises(ValueError, match="1..1024"):
        get_lattice("toy0")


def test_a_better_lattice_becomes_the_seed(scratch_registry) -> None:
    @register_lattice("toy2", nsm=0.0799, best_for=2)
    def toy2() -> torch.Tensor:
        return torch.eye(2, dtype=torch.float64)

    assert BEST_KNOWN[2] == "toy2" and SEED_NSM[2] == 0.0799 and REFERENCE_NSM[2] == 0.0799


def test_tables_are_read_from_the_registry() -> None:
    assert dict(BEST_KNOWN) == {r.dim: r.name for r in best_known().values()}
    assert list(BEST_KNOWN) == list(range(1, 25))
    assert BEST_KNOWN[8] == "E8" and BEST_KNOWN[15] == "BW16_A1*"
    assert REFERENCE_NSM[8] == 0.071682 and REFERENCE_NSM[12] == 0.070031
    assert SEED_NSM[12] == 0.070619  # BW16_D4, a section of Lambda16, not the record lattice
    assert best_known()[6] == BestKnown(6, "E6*", 0.074244)
    for n, name in BEST_KNOWN.items():
        assert get_lattice(name).dim == n


def test_names_are_case_insensitive_and_aliases_work() -> None:
    assert get_lattice("e8").name == get_lattice(" E8 ").name == "E8"
    assert get_lattice("leech").name == "Lambda24" and get_lattice("bw16").name == "Lambda16"
    assert get_lattice("D8+").name == "E8" and get_lattice("Z3*").name == "Z3"


def test_a_name_is_registered_once() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_lattice("E8")(lambda: torch.eye(8))


def _imports(tree: ast.AST) -> list[ast.AST]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_no_function_level_imports(path: Path) -> None:
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))}
    hidden = [n.lineno for n in _imports(tree) if id(n) not in top]
    assert not hidden, f"{path.name}: imports inside functions at lines {hidden}"


def test_no_import_circles_inside_lattices() -> None:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        deps = set()
        for node in _imports(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            deps |= {m.split(".")[2] for m in names if m and m.startswith("llvq.lattices.")}
        graph[path.stem] = deps - {path.stem}
    graph.pop("__init__")
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        if state.get(node) == 1:
            raise AssertionError("import circle: " + " -> ".join([*trail, node]))
        if state.get(node) == 2:
            return
        state[node] = 1
        for dep in graph.get(node, ()):
            visit(dep, [*trail, node])
        state[node] = 2

    for module in graph:
        visit(module, [])
