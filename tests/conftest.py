"""Shared fixtures. Real-data tests find MNIST through JAXCNN_DATA_DIR and skip when it is unset."""

import gc
import os
import pathlib
import signal
import tempfile

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent

# The compilation cache is on by default in the user cache folder ($XDG_CACHE_HOME/jaxcnn): the tests,
# and the processes they start, use a temporary one and never write into the real home's cache.
_CACHE_HOME = tempfile.TemporaryDirectory(prefix="jaxcnn-test-cache-home-")
os.environ["XDG_CACHE_HOME"] = _CACHE_HOME.name
# The autotuner (jaxcnn/core/autotune.py) measures each model and batch size once per machine: across the
# suite's hundreds of small configs that is minutes. Its own tests turn it on; the README's commands
# run as a newcomer runs them (with it on).
os.environ["JAXCNN_AUTOTUNE"] = "0"


def real_data_dir() -> pathlib.Path | None:
    value = os.environ.get("JAXCNN_DATA_DIR")
    return pathlib.Path(value) if value else None


requires_mnist = pytest.mark.skipif(
    real_data_dir() is None or not (real_data_dir() / "mnist").is_dir(),
    reason="real MNIST not available: set JAXCNN_DATA_DIR to a directory with mnist/ "
           "(CI sets it to ../shared/data)")


def sigterm_after(monkeypatch, steps: int):
    """Sends this process SIGTERM once the progress bar has counted `steps` training steps (at the
    first call that reaches them): a stop in mid-run, as a scheduler's. Returns (the steps of each
    call seen, a function that puts the progress bar back for the resumed run)."""
    from jaxcnn.files import writers

    original, seen = writers.Progress.step, []

    def step_and_signal(self, epoch, num_steps=1):
        original(self, epoch, num_steps)
        seen.append(num_steps)
        if sum(seen) >= steps and not hasattr(self, "signalled"):
            self.signalled = True
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(writers.Progress, "step", step_and_signal)
    return seen, lambda: monkeypatch.setattr(writers.Progress, "step", original)


def start_capture(capfd) -> None:
    """Empties `capfd` before a command whose stderr is counted line by line. Earlier tests' garbage
    (Orbax's never-awaited coroutines among it) is collected first: a collection during the command
    would print its RuntimeWarnings there, as if the command had."""
    gc.collect()
    capfd.readouterr()
