"""The package's structure: no import cycles, the library never imports the run layer or the
CLI, and each run-directory file name is spelled in one place."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import torchcf

ROOT = Path(torchcf.__file__).parent
LIBRARY = ("data", "models", "training", "evaluation", "serving")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports(module: str) -> set[str]:
    """The torchcf modules ``module`` imports anywhere (functions too, so a cycle cannot hide
    in a deferred import), except those imported for type checking only."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in MODULES}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in MODULES else base)
    return {m for m in found if m in MODULES and m != module}


GRAPH = {module: imports(module) for module in MODULES}


def test_the_graph_was_read():
    assert "torchcf.models.registry" in GRAPH["torchcf.training.config"]
    assert "torchcf.models.gmf" in GRAPH["torchcf.models.registry"]
    assert len(GRAPH) > 40


def test_no_import_cycles():
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = path[path.index(module) :] + [module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for target in sorted(GRAPH[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(GRAPH):
        visit(module, [])


@pytest.mark.parametrize("layer", LIBRARY)
def test_the_library_imports_neither_the_run_layer_nor_the_cli(layer):
    for module, targets in GRAPH.items():
        if module.startswith(f"torchcf.{layer}"):
            upward = {t for t in targets if t.startswith(("torchcf.runs", "torchcf.cli"))}
            assert not upward, (module, upward)


def test_models_know_nothing_of_training():
    for module, targets in GRAPH.items():
        if module.startswith("torchcf.models"):
            assert not {t for t in targets if t.startswith("torchcf.training")}, module


def test_run_directory_files_are_named_in_one_place():
    names = ('"metrics.json"', '"metrics.csv"', '"checkpoint.pt"', '"learning_curve.png"')
    for module, path in MODULES.items():
        if module == "torchcf.runs.rundir":
            continue
        text = path.read_text()
        assert not [n for n in names if n in text], module
