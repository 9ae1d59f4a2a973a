"""The command line starts at once: `jaxcnn --help` and every `jaxcnn CMD --help` build the grammar
without importing JAX or the other heavy libraries, in a fresh interpreter as a user runs them."""

import subprocess
import sys

import pytest

from conftest import REPO
from jaxcnn import cli

HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax", "numpy")
PROBE = """
import sys
from jaxcnn import cli
try:
    cli.main(sys.argv[1:])
except SystemExit as e:
    assert e.code == 0, e.code
heavy = [name for name in {heavy!r} if name in sys.modules]
assert not heavy, f"imported by --help: {{heavy}}"
"""


@pytest.mark.parametrize("command", [None, *sorted(cli.COMMANDS)])
def test_help_of_every_command_imports_no_jax(command):
    argv = [command, "--help"] if command else ["--help"]
    result = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage: jaxcnn" in result.stdout


def test_the_help_shows_the_defaults_of_the_jax_modules():
    """The grammar's defaults are those of `jaxcnn.bench.throughput` and `jaxcnn.commands.export`, from one definition."""
    from jaxcnn.bench import throughput as bench, settings as bench_settings
    from jaxcnn.commands import export, export_defaults

    assert bench.BenchSettings is bench_settings.BenchSettings and bench.MODES is bench_settings.MODES
    assert export.DEFAULT_PLATFORMS is export_defaults.DEFAULT_PLATFORMS
    parser = cli.build_parser()
    bench_args = parser.parse_args(["bench"])
    assert (bench_args.min_time, bench_args.repeats) == (bench.BenchSettings().min_time, bench.BenchSettings().repeats)
    assert parser.parse_args(["export", "--workdir", "w"]).platforms == ",".join(export.DEFAULT_PLATFORMS)
