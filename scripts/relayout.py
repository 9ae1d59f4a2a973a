"""Moves jaxcnn's top-level modules into layer packages (issue 20), and rewrites every reference.

Why a script and not a hand edit: the training loop and the command line change on main while the
layout is being decided, so the moves must be re-applied to whatever main holds at merge time.
Run from the repository root (a clean git work tree):

    python scripts/relayout.py           # apply
    python scripts/relayout.py --check   # say what would move; exit 1 if a module is unmapped

It refuses (exit 1, before touching anything) when a top-level module is missing from `MOVES`, so
a module added on main gets a layer by decision, not by accident; a mapped module that no longer
exists (e.g. `members_loop` after the loop rewrite) is skipped. Running it twice does nothing the
second time: a move is pending only while its old file exists, and references are rewritten only
for pending moves.

What it rewrites, in jaxcnn/, tests/, scripts/, configs/, README.md, pyproject.toml and .ci/:
dotted names anywhere in the text (`import jaxcnn.x`, `from jaxcnn.x import y`, the strings of
monkeypatch targets and of `_EXPORTS`, `-m jaxcnn.x`, `jaxcnn.x:main`), `from jaxcnn import x`
(-> `from jaxcnn.layer import x`, aliased when the module is renamed), relative imports (made
absolute first), and file paths `jaxcnn/x.py` in prose. The import-linter contract (`.importlinter`)
is written against the new layout and is deliberately not rewritten.
"""

from __future__ import annotations

import argparse
import ast
import pathlib
import re
import subprocess
import sys

PACKAGE = "jaxcnn"

# Old module -> new module. A module that stays where it is maps to itself (so that it counts as
# decided). A new name equal to a layer package (`jaxcnn.config`) means: the module becomes that
# package's `__init__.py`, so its public path does not change.
MOVES = {
    # top: the entry points
    "jaxcnn.api": "jaxcnn.api",
    "jaxcnn.cli": "jaxcnn.cli",
    "jaxcnn.cli_parser": "jaxcnn.cli_parser",
    # ground floor
    "jaxcnn.errors": "jaxcnn.errors",
    "jaxcnn.spec": "jaxcnn.spec",
    "jaxcnn.checks": "jaxcnn.checks",
    # runtime: processes, signals, XLA settings
    "jaxcnn.distributed": "jaxcnn.runtime.distributed",
    "jaxcnn.stop": "jaxcnn.runtime.stop",
    "jaxcnn.compilation": "jaxcnn.runtime.compilation",
    "jaxcnn.determinism": "jaxcnn.runtime.determinism",
    "jaxcnn.host_memory": "jaxcnn.runtime.host_memory",
    "jaxcnn.orbax_logs": "jaxcnn.runtime.orbax_logs",
    # models and data (packages already; these join them)
    "jaxcnn.layers": "jaxcnn.models.layers",
    "jaxcnn.im2col": "jaxcnn.models.im2col",
    "jaxcnn.members_feed": "jaxcnn.data.members",
    "jaxcnn.member_calls": "jaxcnn.core.member_calls",
    # config: presets, config files, overrides -> spec
    "jaxcnn.config": "jaxcnn.config",
    "jaxcnn.config_files": "jaxcnn.config.files",
    "jaxcnn.run_options": "jaxcnn.config.run_options",
    # core: spec -> parts -> compiled calls
    "jaxcnn.state": "jaxcnn.core.state",
    "jaxcnn.steps": "jaxcnn.core.steps",
    "jaxcnn.losses": "jaxcnn.core.losses",
    "jaxcnn.optim": "jaxcnn.core.optim",
    "jaxcnn.augment": "jaxcnn.core.augment",
    "jaxcnn.precision": "jaxcnn.core.precision",
    "jaxcnn.members": "jaxcnn.core.members",
    "jaxcnn.build": "jaxcnn.core.build",
    "jaxcnn.executor": "jaxcnn.core.executor",
    "jaxcnn.evaluation": "jaxcnn.core.evaluation",
    "jaxcnn.metrics": "jaxcnn.core.metrics",
    "jaxcnn.stats": "jaxcnn.core.stats",
    "jaxcnn.loop_state": "jaxcnn.core.loop_state",
    # files: what a run writes and reads back
    "jaxcnn.writers": "jaxcnn.files.writers",
    "jaxcnn.workdir": "jaxcnn.files.workdir",
    "jaxcnn.checkpoint": "jaxcnn.files.checkpoint",
    "jaxcnn.certificate": "jaxcnn.files.certificate",
    "jaxcnn.run_files": "jaxcnn.files.run_files",
    "jaxcnn.json_output": "jaxcnn.files.json_output",
    # training: the loop and its host-side bookkeeping
    "jaxcnn.loop": "jaxcnn.training.loop",
    "jaxcnn.run": "jaxcnn.training.run",
    "jaxcnn.summary": "jaxcnn.training.summary",
    "jaxcnn.members_loop": "jaxcnn.training.members_loop",
    "jaxcnn.members_state": "jaxcnn.training.members_state",
    "jaxcnn.members_summary": "jaxcnn.training.members_summary",
    "jaxcnn.members_memory": "jaxcnn.training.members_memory",
    "jaxcnn.clock": "jaxcnn.training.clock",
    "jaxcnn.divergence": "jaxcnn.training.divergence",
    "jaxcnn.profiling": "jaxcnn.training.profiling",
    # commands: what runs on a finished run
    "jaxcnn.saved": "jaxcnn.commands.saved",
    "jaxcnn.export": "jaxcnn.commands.export",
    "jaxcnn.verify": "jaxcnn.commands.verify",
    "jaxcnn.ulps": "jaxcnn.commands.ulps",
    "jaxcnn.compare": "jaxcnn.commands.compare",
    "jaxcnn.export_defaults": "jaxcnn.commands.export_defaults",
    # report
    "jaxcnn.report": "jaxcnn.report.markdown",
    "jaxcnn.report_figures": "jaxcnn.report.figures",
    "jaxcnn.report_members": "jaxcnn.report.members",
    "jaxcnn.report_style": "jaxcnn.report.style",
    # bench
    "jaxcnn.bench": "jaxcnn.bench.throughput",
    "jaxcnn.bench_accuracy": "jaxcnn.bench.accuracy",
    "jaxcnn.bench_seeds": "jaxcnn.bench.seeds",
    "jaxcnn.baseline": "jaxcnn.bench.baseline",
    "jaxcnn.bench_settings": "jaxcnn.bench.settings",
}

# The layer packages and the one-line docstring of the `__init__.py` this script creates. The
# training layer is `training`, not `train`: `jaxcnn.train` is the public function of the Python
# API, and a sub-package of that name would replace it as an attribute once imported.
LAYERS = {
    "jaxcnn.runtime": "The runtime layer: processes, stop signals, XLA compilation settings, determinism, host memory.",
    "jaxcnn.config": "The config layer: presets, config files and overrides, checked into the typed spec.",
    "jaxcnn.core": "The core layer: spec -> model, optimizer, loss and state (build), pure steps, the executor, metrics.",
    "jaxcnn.files": "The files layer: the workdir and what a run writes there (metrics, checkpoints, certificate).",
    "jaxcnn.training": "The training layer: the loop (a table of contents) and its host-side bookkeeping.",
    "jaxcnn.commands": "The commands layer: what runs on a finished run (eval, predict, export, verify, compare).",
    "jaxcnn.report": "The report layer: `jaxcnn report`'s figures and report.md.",
    "jaxcnn.bench": "The bench layer: throughput, time to accuracy, members against single runs, the plain-Flax yardstick.",
}

# Names a layer's `__init__.py` re-exports, lazily (PEP 562) so that importing one module of the
# layer does not import the others: public paths that outside code uses.
REEXPORTS = {
    "jaxcnn.bench": {"BenchSettings": "jaxcnn.bench.throughput", "run_benchmark": "jaxcnn.bench.throughput"},
}

REWRITTEN = ("jaxcnn", "tests", "scripts", "configs", ".ci", "README.md", "pyproject.toml")
# This script (its mapping must stay as written) and the architecture test (it names the public
# paths that must survive the moves, e.g. `jaxcnn.bench.run_benchmark`).
NOT_REWRITTEN = {"scripts/relayout.py", "tests/test_architecture.py"}
TEXT_SUFFIXES = {".py", ".md", ".toml", ".sh", ".cfg", ".ini", ".txt", ""}
DOTTED = re.compile(r"(?<![\w.])jaxcnn(?:\.\w+)+")
PATH = re.compile(r"(?<![\w.])jaxcnn/(\w+)\.py\b")


def module_file(root: pathlib.Path, name: str) -> pathlib.Path:
    """Where module `name` lives after the moves: a layer's own name is its package's `__init__.py`."""
    parts = name.split(".")
    if name in LAYERS:
        return root.joinpath(*parts, "__init__.py")
    return root.joinpath(*parts).with_suffix(".py")


def top_level_modules(root: pathlib.Path) -> list[str]:
    """The modules sitting at the package's top level now (files, not packages)."""
    return sorted(f"{PACKAGE}.{p.stem}" for p in (root / PACKAGE).glob("*.py") if p.stem != "__init__")


def unmapped(root: pathlib.Path) -> list[str]:
    """Top-level modules the mapping does not decide: a module added on main since it was written."""
    return [name for name in top_level_modules(root) if name not in MOVES]


def pending_moves(root: pathlib.Path) -> dict[str, str]:
    """The moves still to do: mapped modules whose old file exists and that go somewhere else.
    A mapped module that no longer exists is skipped, which is what makes a second run a no-op."""
    return {old: new for old, new in MOVES.items()
            if old != new and (root / PACKAGE / f"{old.split('.')[-1]}.py").is_file()}


def pending_files(root: pathlib.Path) -> dict[pathlib.Path, pathlib.Path]:
    """Old file -> new file of every pending move, the modules that become a package's
    `__init__.py` included (their dotted name does not change, their file does)."""
    moves = {}
    for old, new in MOVES.items():
        source = root / PACKAGE / f"{old.split('.')[-1]}.py"
        target = module_file(root, new)
        if source.is_file() and source != target:
            moves[source] = target
    return moves


def rename(name: str, moves: dict[str, str]) -> str:
    """`name` (a dotted path, possibly with an attribute after the module) with its longest moved
    module prefix replaced: `jaxcnn.loop.fit` -> `jaxcnn.training.loop.fit`."""
    parts = name.split(".")
    for cut in range(len(parts), 1, -1):
        head = ".".join(parts[:cut])
        if head in moves:
            return ".".join([moves[head], *parts[cut:]])
    return name


def rewrite_dotted(text: str, moves: dict[str, str]) -> str:
    """Every dotted `jaxcnn.x...` in the text: imports, strings, `-m jaxcnn.x`, prose."""
    return DOTTED.sub(lambda m: rename(m.group(0), moves), text)


def rewrite_paths(text: str, paths: dict[str, str]) -> str:
    """File paths of moved modules in prose and comments: `jaxcnn/loop.py` -> `jaxcnn/training/loop.py`
    (`paths`: old -> new, relative to the repository root)."""
    return PATH.sub(lambda m: paths.get(m.group(0), m.group(0)), text)


def split_from_import(names: list[ast.alias], moves: dict[str, str]) -> list[str]:
    """`from jaxcnn import a, b as c` as statements, one per package the names now live in (sorted);
    a renamed module keeps its local name with `as`, so the code that uses it does not change."""
    groups: dict[str, list[str]] = {}
    for alias in names:
        full = moves.get(f"{PACKAGE}.{alias.name}", f"{PACKAGE}.{alias.name}")
        package, _, leaf = full.rpartition(".")
        local = alias.asname or alias.name
        groups.setdefault(package, []).append(leaf if local == leaf else f"{leaf} as {local}")
    return [f"from {package} import {', '.join(items)}" for package, items in sorted(groups.items())]


def absolute_module(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a relative `from .x import y` in `module` names."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _alias(alias: ast.alias) -> str:
    return alias.name if alias.asname is None else f"{alias.name} as {alias.asname}"


Edit = tuple[int, int, int, int, list[str]]  # first line, first column, last line, end column, new statements


def relative_edits(tree: ast.AST, module: str, is_package: bool) -> list[Edit]:
    """Relative imports made absolute, with the old module names (renamed in the next pass)."""
    return [(node.lineno, node.col_offset, node.end_lineno, node.end_col_offset,
             [f"from {absolute_module(node, module, is_package)} import {', '.join(_alias(a) for a in node.names)}"])
            for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level]


def package_import_edits(tree: ast.AST, moves: dict[str, str]) -> list[Edit]:
    """`from jaxcnn import <moved module>, ...` split by the packages the modules now live in. Done
    after the dotted names are renamed, whose pattern would otherwise rename its output again
    (`from jaxcnn.bench import baseline`: `jaxcnn.bench` is an old module too)."""
    return [(node.lineno, node.col_offset, node.end_lineno, node.end_col_offset, split_from_import(node.names, moves))
            for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module == PACKAGE
            and not node.level and any(f"{PACKAGE}.{a.name}" in moves for a in node.names)]


def apply_edits(source: str, edits: list[Edit]) -> str:
    """Replaces each edited statement bottom-up, keeping its indentation, and what followed it on its
    last line (a comment, which speaks of the names still imported first) after the first one."""
    lines = source.splitlines(keepends=True)
    for first, col, last, end_col, new in sorted(edits, reverse=True):
        indent, tail = lines[first - 1][:col], lines[last - 1][end_col:]
        statements = [indent + statement for statement in new]
        statements[0] += tail.rstrip("\r\n")
        lines[first - 1:last] = ["\n".join(statements) + tail[len(tail.rstrip("\r\n")):]]
    return "".join(lines)


FROM_LINE = re.compile(r"^(\s*)from jaxcnn import ([\w, ]+)$", re.MULTILINE)


def rewrite_prose_imports(text: str, moves: dict[str, str]) -> str:
    """`from jaxcnn import x` on one line of a non-Python file (README's examples)."""
    def one(match: re.Match) -> str:
        names = [ast.alias(name=n.split(" as ")[0].strip(), asname=(n.split(" as ")[1].strip() if " as " in n else None))
                 for n in match.group(2).split(",") if n.strip()]
        return "\n".join(match.group(1) + s for s in split_from_import(names, moves))
    return FROM_LINE.sub(one, text)


def module_name(root: pathlib.Path, path: pathlib.Path) -> tuple[str | None, bool]:
    """The dotted name of a file under jaxcnn/ (None elsewhere) and whether it is a package's init."""
    relative = path.relative_to(root)
    if relative.parts[0] != PACKAGE or path.suffix != ".py":
        return None, False
    parts = list(relative.with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def rewrite(root: pathlib.Path, path: pathlib.Path, moves: dict[str, str], paths: dict[str, str]) -> str:
    """The new text of one file, in three passes: relative imports made absolute (they need the old
    location), dotted names and paths renamed, then `from jaxcnn import x` split."""
    text = path.read_text()
    module, is_package = module_name(root, path)
    if module is not None:
        text = apply_edits(text, relative_edits(ast.parse(text), module, is_package))
    text = rewrite_paths(rewrite_dotted(text, moves), paths)
    if path.suffix == ".py":
        return apply_edits(text, package_import_edits(ast.parse(text), moves))
    return rewrite_prose_imports(text, moves)


def files_to_rewrite(root: pathlib.Path) -> list[pathlib.Path]:
    """The tracked text files of `REWRITTEN`, but not `NOT_REWRITTEN`."""
    listed = subprocess.run(["git", "ls-files", "-z", "--", *REWRITTEN], cwd=root, check=True,
                            capture_output=True, text=True).stdout.split("\0")
    paths = [root / name for name in listed if name and name not in NOT_REWRITTEN]
    return [p for p in paths if p.is_file() and p.suffix in TEXT_SUFFIXES]


def layer_init(package: str) -> str:
    """The `__init__.py` of a layer package: its docstring, and lazy re-exports where listed."""
    text = f'"""{LAYERS[package]}"""\n'
    exports = REEXPORTS.get(package)
    if not exports:
        return text
    items = ", ".join(f'"{name}": "{module}"' for name, module in sorted(exports.items()))
    return text + f'''
import importlib
from typing import Any

_EXPORTS = {{{items}}}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Imported on first use, so that importing one module of this layer does not import them all."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {{__name__!r}} has no attribute {{name!r}}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
'''


def git(root: pathlib.Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True)


def apply(root: pathlib.Path) -> list[str]:
    """Rewrites every file in memory, then moves the files with `git mv`, writes the new texts at
    the new paths and adds the missing layer `__init__.py` files. Returns what was done."""
    moves, files = pending_moves(root), pending_files(root)
    paths = {old.relative_to(root).as_posix(): new.relative_to(root).as_posix() for old, new in files.items()}
    texts = {path: rewrite(root, path, moves, paths) for path in files_to_rewrite(root)}
    done = []
    for source, target in files.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        git(root, "mv", str(source.relative_to(root)), str(target.relative_to(root)))
        done.append(f"moved {source.relative_to(root)} -> {target.relative_to(root)}")
    for path, text in texts.items():
        path = files.get(path, path)
        if path.read_text() != text:
            path.write_text(text)
    for package in LAYERS:
        init = module_file(root, package)
        if not init.exists():
            init.parent.mkdir(parents=True, exist_ok=True)
            init.write_text(layer_init(package))
            git(root, "add", str(init.relative_to(root)))
            done.append(f"created {init.relative_to(root)}")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only list the pending moves")
    parser.add_argument("--root", default=str(pathlib.Path(__file__).resolve().parent.parent))
    args = parser.parse_args(argv)
    root = pathlib.Path(args.root).resolve()
    missing = unmapped(root)
    if missing:
        print("relayout: top-level modules not in MOVES (give each a layer in scripts/relayout.py):", file=sys.stderr)
        for name in missing:
            print(f"  {name}", file=sys.stderr)
        return 1
    if args.check:
        for old, new in pending_moves(root).items():
            print(f"{old} -> {new}")
        return 0
    done = apply(root)
    print("\n".join(done) if done else "relayout: nothing to do (already applied)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
