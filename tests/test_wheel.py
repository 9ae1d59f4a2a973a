"""The built wheel ships what an installed jaxcnn needs: every preset config inside the package.

Installing the wheel and training from it is `.ci/wheel` (run by `.ci/run`): it needs the
dependencies from PyPI, too slow for a test.
"""

import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO

# What the build reads: pyproject.toml, the README it names, the package.
SOURCES = ("pyproject.toml", "README.md", "jaxcnn")


def can_build_wheels() -> bool:
    """Whether `pip wheel --no-build-isolation` works here: bdist_wheel is in setuptools from 70.1."""
    try:  # the installed versions, without importing them (setuptools patches distutils on import)
        importlib.metadata.version("pip")
        setuptools = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return False
    version = tuple(int(part) for part in setuptools.split(".")[:2] if part.isdigit())
    return version >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory) -> set[str]:
    """The file list of a wheel built from a copy of this checkout (so no build/ is left in it)."""
    if not can_build_wheels():
        pytest.skip("building a wheel offline needs pip and setuptools>=70.1 (or setuptools and wheel) in "
                    "this Python; pip install -e '.[test]' installs them")
    tmp = tmp_path_factory.mktemp("wheel")
    (tmp / "src").mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, tmp / "src" / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, tmp / "src" / name)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                             "--quiet", "--wheel-dir", str(tmp / "dist"), str(tmp / "src")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp / "dist").glob("jaxcnn-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_the_wheel_ships_every_preset_config_in_the_package(wheel_files):
    presets = sorted(p.name for p in (REPO / "jaxcnn" / "configs").glob("*.py"))
    assert "__init__.py" in presets and "digits_cnn.py" in presets
    missing = [name for name in presets if f"jaxcnn/configs/{name}" not in wheel_files]
    assert missing == []


def test_the_wheel_ships_every_module_and_the_jaxcnn_command(wheel_files):
    modules = sorted(str(p.relative_to(REPO)) for p in (REPO / "jaxcnn").rglob("*.py") if "__pycache__" not in p.parts)
    assert [m for m in modules if m not in wheel_files] == []
    assert any(name.endswith(".dist-info/entry_points.txt") for name in wheel_files)
