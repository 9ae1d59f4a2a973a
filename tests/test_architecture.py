"""The package's shape (issue 20): layers that import downwards only, no import cycles, a short top
level, and files and functions small enough to read in one sitting.

The layout these tests expect is the one `scripts/relayout.py` produces; that script does not
rewrite this file, which names the public paths the moves must keep working.
"""

from __future__ import annotations

import ast
import importlib
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE_DIR = REPO / "jaxcnn"
MAX_TOP_LEVEL_MODULES = 15
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def python_files() -> list[pathlib.Path]:
    return sorted(PACKAGE_DIR.rglob("*.py"))


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: pathlib.Path, known: set[str]) -> set[str]:
    """The jaxcnn modules `path` imports anywhere in it, function-level imports included (they hide
    cycles from a reader but not from the interpreter): `from a import b` counts as `a.b` when that
    is a module, else as `a`."""
    name, found = module_name(path), set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
    return {_known_prefix(target, known) for target in found if target.split(".")[0] == "jaxcnn"} - {name, None}


def _known_prefix(target: str, known: set[str]) -> str | None:
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


def import_graph() -> dict[str, set[str]]:
    files = python_files()
    known = {module_name(p) for p in files}
    return {module_name(p): imported_modules(p, known) for p in files}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def function_lengths(path: pathlib.Path) -> list[tuple[str, int]]:
    """(name, lines) of every function and method in `path`, nested ones too, decorators excluded."""
    return [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_the_layers_contract_holds():
    pytest.importorskip("importlinter", reason="import-linter is not installed (pip install -e '.[test]')")
    command = shutil.which("lint-imports", path=os.pathsep.join([str(pathlib.Path(sys.executable).parent),
                                                               os.environ.get("PATH", "")]))
    if command is None:
        pytest.skip("import-linter is installed but its lint-imports command is not on PATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([command, "--no-cache"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


def test_there_are_no_import_cycles_between_jaxcnn_modules():
    assert cycles(import_graph()) == []


def test_the_package_top_level_holds_at_most_15_modules():
    modules = sorted(p.stem for p in PACKAGE_DIR.glob("*.py") if p.stem != "__init__")
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, modules


def test_no_file_is_over_400_lines():
    lengths = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in python_files()}
    assert {name: n for name, n in lengths.items() if n > MAX_FILE_LINES} == {}


def test_no_function_is_over_60_lines():
    long = [f"{p.relative_to(REPO)}:{name} ({n} lines)" for p in python_files()
            for name, n in function_lengths(p) if n > MAX_FUNCTION_LINES]
    assert long == []


def test_no_module_of_the_package_shadows_a_public_name():
    """`jaxcnn.train` is a function: a sub-package `jaxcnn/train/` would replace it as an attribute of
    `jaxcnn` as soon as anything imported it."""
    import jaxcnn

    children = {p.stem for p in PACKAGE_DIR.glob("*.py")} | {p.parent.name for p in PACKAGE_DIR.glob("*/__init__.py")}
    assert children & set(jaxcnn.__all__) == set()


def test_the_documented_public_paths_work_after_every_module_is_imported():
    import jaxcnn

    for path in python_files():
        if path.parent.name != "configs":
            importlib.import_module(module_name(path))
    assert callable(jaxcnn.train) and callable(jaxcnn.load) and callable(jaxcnn.train_and_evaluate)
    assert callable(jaxcnn.register_model) and callable(jaxcnn.register_dataset)
    assert callable(jaxcnn.Dataset.from_arrays)
    assert callable(importlib.import_module("jaxcnn.config").base_config)
    bench = importlib.import_module("jaxcnn.bench")
    assert callable(bench.run_benchmark) and callable(bench.BenchSettings)
