"""Writes requirements-lock.txt: the exact versions, in the current environment, of jaxcnn's
dependencies with the extras CI installs (`test`), followed transitively.

    python scripts/freeze_lock.py [EXTRA ...]      # default: test

Why a script and not `pip freeze`: the environment may hold packages jaxcnn does not need (tools,
other projects); the lock must name only what `pip install -c requirements-lock.txt -e ".[test]"`
installs, so that the constraints stay meaningful. Run it in the environment whose versions
should become the lock (after `pip install -e ".[test]"`), then run the tests.
"""

from __future__ import annotations

import datetime
import importlib.metadata as metadata
import pathlib
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parent.parent


def project_requirements(extras: set[str]) -> list[Requirement]:
    """jaxcnn's own requirements with `extras`, read from pyproject.toml (the installed metadata may
    be older than the file), its references to itself (`jaxcnn[report,...]`) expanded."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts, todo, done = list(project["dependencies"]), list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in done:
            continue
        done.add(extra)
        for text in project["optional-dependencies"][extra]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == "jaxcnn":
                todo.extend(requirement.extras)
            else:
                texts.append(text)
    return [Requirement(text) for text in texts]


def closure(extras: set[str]) -> dict[str, str]:
    """Every installed distribution that jaxcnn[extras] needs, by canonical name, with its version."""
    found: dict[str, str] = {}
    todo = [(r.name, frozenset(r.extras)) for r in project_requirements(extras)]
    seen: set[tuple[str, frozenset]] = set()
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in seen:
            continue
        seen.add((name, wanted))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency not installed here (a platform marker, say)
        found[canonicalize_name(name)] = dist.version
        for text in dist.requires or []:
            requirement = Requirement(text)
            markers = [{"extra": e} for e in wanted] or [{"extra": ""}]
            if requirement.marker is None or any(requirement.marker.evaluate(m) for m in markers):
                todo.append((requirement.name, frozenset(requirement.extras)))
    return found


def main(extras: list[str]) -> None:
    pins = closure(set(extras or ["test"]))
    header = [f"# Exact versions of jaxcnn's dependencies (extras: {', '.join(extras or ['test'])}), written by "
              f"scripts/freeze_lock.py on {datetime.date.today()} (Python {sys.version.split()[0]}).",
              "# CI installs with them: pip install -c requirements-lock.txt -e \".[test]\". pyproject.toml holds",
              "# the ranges; scripts/check_newest.sh tries the newest versions inside them."]
    lines = [f"{name}=={version}" for name, version in sorted(pins.items())]
    (ROOT / "requirements-lock.txt").write_text("\n".join(header + lines) + "\n")
    print(f"wrote requirements-lock.txt: {len(lines)} packages")


if __name__ == "__main__":
    main(sys.argv[1:])
