"""Profiles and memory: a `jax.profiler` trace of `config.profile_steps`, and the memory figures of
`summary.json`.

The trace starts before the first training call that runs a step of the range and stops once the
calls that ran its last step have finished (`Profiler.before_call`, called before every training
call; a range that ends with the run stops at its summary). It goes to `WORKDIR/profile/`:
`plugins/profile/<time>/<host>.xplane.pb` for TensorBoard's profile plugin, and
`perfetto_trace.json.gz` beside it for https://ui.perfetto.dev. Only process 0 traces.
"""

from __future__ import annotations

import pathlib
import platform
import resource
from typing import Any

import jax
import ml_collections

from jaxcnn.runtime.distributed import is_main_process
from jaxcnn.errors import JaxcnnError
from jaxcnn.core.executor import plan_calls
from jaxcnn.config.run_options import parse_profile_steps, run_length

PROFILE_DIR = "profile"


class Profiler:
    """Starts and stops the trace of `config.profile_steps` around the training calls."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: pathlib.Path, steps_per_epoch: int):
        """Refuses, in one line, a range beyond the run (checked before training)."""
        self.range = parse_profile_steps(config.profile_steps)
        self.directory = pathlib.Path(workdir) / PROFILE_DIR
        self.active = self.done = False
        total = run_length(config, steps_per_epoch)
        if self.range is not None and self.range[1] > total:
            raise JaxcnnError(f"profile_steps {tuple(self.range)} goes beyond the run's {total} training steps "
                              f"({steps_per_epoch} per epoch x {config.num_epochs} epochs"
                              f"{f', max_steps {config.max_steps}' if config.max_steps else ''}); "
                              f"pick steps between 1 and {total}")
        self.enabled = self.range is not None and is_main_process()

    def before_call(self, step: int, num_steps: int, state: Any) -> None:
        """Before the training call that runs steps `step + 1 .. step + num_steps`: stops the trace
        when the calls before covered the range (waiting for them: `state` is their output), or
        starts it when this call runs the range's first step or a later one."""
        if not self.enabled or self.done:
            return
        first, last = self.range
        if self.active and step >= last:
            self.stop(state)
        elif not self.active and step + num_steps >= first and step < last:
            jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
            self.active = True

    def stop(self, state: Any = None) -> None:
        if self.active:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.active, self.done = False, True


class _Off:
    """No trace: what a run has before `build_run` gives it its `Profiler`."""

    def before_call(self, step: int, num_steps: int, state: Any) -> None:
        pass

    def stop(self, state: Any = None) -> None:
        pass


OFF = _Off()


def peak_host_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if platform.system() == "Darwin" else peak * 1024)


def peak_device_bytes(device: jax.Device) -> int | None:
    """The device's peak bytes in use, where its backend reports it (GPU, TPU; not XLA:CPU)."""
    stats = device.memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def train_call_memory(run: Any, state: Any) -> dict[str, int] | None:
    """XLA's memory analysis of the run's first training call (argument, output, temporary and
    generated-code bytes per device): of the program the loop compiled for it (`Calls.compile_train`),
    compiled here only where no such call ran (a run resumed at its end)."""
    config = run.config
    plan = plan_calls(0, run.steps_per_epoch, 0, config.steps_per_call,
                      (config.log_every_steps, run.saver.every_steps, config.max_steps))[:1]
    num_steps = plan[0][1]
    if num_steps not in run.calls.compiled:
        inputs, start = next(iter(run.train_calls(1, plan)))
        run.calls.compile_train(state, run.totals, inputs, start, num_steps)
    compiled = run.calls.compiled[num_steps]
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    return {key: int(getattr(analysis, f"{key}_size_in_bytes")) for key in
            ("argument", "output", "alias", "temp", "generated_code")}


def memory_summary(run: Any, state: Any) -> dict[str, Any]:
    """`summary.json`'s `memory`; also ends a trace still running (a range ending with the run)."""
    run.profiler.stop(state)
    return {"peak_device_bytes": peak_device_bytes(jax.local_devices()[0]),  # one of this process's
            "peak_host_rss_bytes": peak_host_rss_bytes(),
            # a run of members would lower its call anew (members in turn compile for long): not measured
            "train_call": None if run.stacked else train_call_memory(run, state)}
