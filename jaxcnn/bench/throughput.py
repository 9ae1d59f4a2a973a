"""The benchmark: training and evaluation throughput, compile times, memory and FLOPs per mode.

Modes:
- `baseline`: the way typical Flax code trains, kept as the yardstick: a `flax.training`
  TrainState, one `jax.jit` step per batch over NumPy batches sliced on the host (as the Flax MNIST
  example does), XLA's own convolution (`nn.Conv`).
- `step`: jaxcnn, one compiled call per step, data on the device, state donated.
- `fused`: jaxcnn, `steps_per_call` steps per compiled call, as the training loop runs them.
Both are the program `jaxcnn train` builds for the equivalent config (`training.run.setup`, through
`jaxcnn.bench.workload.bench_program`): its feeds, compiled calls, initial state and autotuned plan.

Each (model, mode, batch size, dtype) gets a fresh, seeded state. The `fingerprint` is the loss of
the `fingerprint_steps`-th step from that state: identical across runs with the same seed. The timed
training then goes on from the state after that step.
Throughput is the median of `repeats` timed repeats (each at least `min_time` seconds) after a
warm-up; compile time is cold (first compilation, which fills a persistent compilation cache) and
warm (the same program again, now loaded from that cache).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxcnn import models
from jaxcnn.bench import baseline
from jaxcnn.core import precision
from jaxcnn.models import im2col
# JAX-free, so that the grammar (`jaxcnn bench --help`) shows the defaults without loading JAX.
from jaxcnn.bench.settings import MODES, BenchSettings
from jaxcnn.bench.workload import (LEARNING_RATE, MOMENTUM, Workload, bench_program, full_calls, make_workload,
                                   train_cycle)
from jaxcnn.runtime.compilation import enable_compilation_cache
from jaxcnn.data.feed import chunks
from jaxcnn.errors import JaxcnnError
from jaxcnn.runtime.host_memory import keep_freed_host_memory
from jaxcnn.training.run import Program


def check_settings(settings: BenchSettings) -> None:
    for mode in settings.modes:
        if mode not in MODES:
            raise JaxcnnError(f"unknown benchmark mode {mode!r} (--mode); expected one of: {', '.join(MODES)}")
    for name in settings.models:
        models.create_model(name, 10)  # unknown names fail here, listing the known ones
    for dtype in settings.dtypes:
        precision.compute_dtype(dtype)
    im2col.resolve_conv_impl(settings.conv_impl)
    for key in ("repeats", "steps_per_call", "fingerprint_steps", "eval_batch_size", "num_train", "num_test"):
        value = getattr(settings, key)
        if not isinstance(value, int) or value < 1:
            raise JaxcnnError(f"benchmark setting {key} must be a positive integer, got {value!r}")
    if any(not isinstance(b, int) or b < 1 for b in settings.batch_sizes):
        raise JaxcnnError(f"--batch-size must be positive integers, got {list(settings.batch_sizes)}")
    if not settings.min_time > 0:
        raise JaxcnnError(f"--min-time must be > 0 seconds, got {settings.min_time}")


# ---------------------------------------------------------------------------- measuring


def timed_rate(run: Callable[[], int], sync: Callable[[], Any], min_time: float, repeats: int) -> float:
    """Median items/s of `repeats` repeats; each calls `run` (dispatches work, returns the items it
    covers) until at least `min_time` seconds have passed, then waits for the results (`sync`)."""
    rates = []
    for _ in range(repeats):
        sync()
        items, start = 0, time.perf_counter()
        while True:
            items += run()
            if time.perf_counter() - start >= min_time:
                break
        sync()
        rates.append(items / (time.perf_counter() - start))
    return statistics.median(rates)


def compile_times(jitted: Any, args: tuple, kwargs: dict | None = None) -> tuple[Any, float, float]:
    """(compiled, cold seconds, warm seconds): trace, lower and compile twice. In between, JAX's
    in-memory caches are cleared, so the second time is that of a new process: the program is
    traced and lowered again and loaded from the persistent compilation cache the first filled."""
    kwargs = kwargs or {}
    start = time.perf_counter()
    jitted.lower(*args, **kwargs).compile()
    cold = time.perf_counter() - start
    jax.clear_caches()
    start = time.perf_counter()
    compiled = jitted.lower(*args, **kwargs).compile()
    return compiled, cold, time.perf_counter() - start


def flops_of(jitted: Any, args: tuple, kwargs: dict | None = None) -> float | None:
    """XLA's FLOP count of one call of `jitted` (None where the backend does not report it)."""
    analysis = jitted.lower(*args, **(kwargs or {})).compile().cost_analysis()
    if isinstance(analysis, list):
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if platform.system() == "Darwin" else peak / 1024


def peak_device_memory_mb() -> float | None:
    stats = jax.devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / 2**20


# ---------------------------------------------------------------------------- the modes


def _jaxcnn_mode(work: Workload, settings: BenchSettings, steps_per_call: int, cache_dir: str) -> dict[str, Any]:
    """jaxcnn's own calls as `jaxcnn train` builds them (`bench_program`): `steps_per_call` steps per
    compiled call (1: the `step` mode), the data on the device, state donated."""
    program = bench_program(work, settings, steps_per_call, cache_dir)
    train, (inputs, start) = program.calls.programs["train"], full_calls(program, steps_per_call)[0]
    args = (program.state, program.zero_totals(), inputs, start)
    compiled, cold, warm = compile_times(train, args, {"num_steps": steps_per_call})
    # FLOPs of one step (XLA does not multiply a scan body's cost by its trip count).
    flops = flops_of(train, args, {"num_steps": 1})
    state, fingerprint = fingerprint_of(program, inputs, settings.fingerprint_steps, steps_per_call)
    cycle = train_cycle(program, compiled, state, steps_per_call)

    def eval_pass() -> int:
        program.evaluate(cycle.state, "test")  # as `jaxcnn train` evaluates; fetches the sums: waits
        return len(work.test.labels)

    row = _measure(cycle, eval_pass, lambda: cycle.state, settings, cold, warm, flops, work, fingerprint)
    return {**row, "autotune": program.tuned.to_json()}


def fingerprint_of(program: Program, inputs: dict[str, Any], steps: int, steps_per_call: int) -> tuple[Any, float]:
    """(the state after step `steps`, that step's loss alone): trained from the program's initial
    state (donated) in calls of `steps_per_call` steps, the last step with fresh totals of its own."""
    state, totals, index = program.state, program.zero_totals(), program.executor.index
    for start, n in chunks(steps - 1, steps_per_call):
        state, totals = program.calls.train(state, totals, inputs, index(start), n)
    state, totals = program.calls.train(state, program.zero_totals(), inputs, index(steps - 1), 1)
    return state, float(totals["loss"])


def _measure(train_some: Callable[[], int], eval_pass: Callable[[], int], get_state: Callable[[], Any],
             settings: BenchSettings, cold: float, warm: float, flops_per_step: float | None,
             work: Workload, fingerprint: float) -> dict[str, Any]:
    """Warm up, then time training and evaluation; returns one result row."""
    sync = lambda: jax.block_until_ready(get_state())
    train_some()
    train_rate = timed_rate(train_some, sync, settings.min_time, settings.repeats)
    eval_pass()
    eval_rate = timed_rate(eval_pass, sync, settings.min_time, settings.repeats)
    flops_per_image = flops_per_step / work.batch_size if flops_per_step else None
    return {
        "train_images_per_s": train_rate,
        "eval_images_per_s": eval_rate,
        "compile_s": cold,
        "warm_compile_s": warm,
        "peak_rss_mb": peak_rss_mb(),
        "peak_device_memory_mb": peak_device_memory_mb(),
        "flops_per_image": flops_per_image,
        "gflops": flops_per_image * train_rate / 1e9 if flops_per_image else None,
        "fingerprint": fingerprint,
    }


def matmul_peak_gflops(n: int = 2048, seconds: float = 1.0) -> float:
    """This process's float32 matmul rate (n×n @ n×n, jitted, XLA's defaults), in GFLOP/s: the best
    of back-to-back calls over `seconds`. The peak a model's GFLOP/s is a share of (`peak_pct`)."""
    a = jax.device_put(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32))
    matmul = jax.jit(lambda x: x @ x)
    jax.block_until_ready(matmul(a))
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        jax.block_until_ready(matmul(a))
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def environment(settings: BenchSettings) -> dict[str, Any]:
    device = jax.devices()[0]
    versions = {}
    for package in ("jax", "jaxlib", "flax", "optax", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    versions["python"] = platform.python_version()
    return {
        "device_kind": device.device_kind,
        "platform": device.platform,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "versions": versions,
        "seed": settings.seed,
        "config": {k: list(v) if isinstance(v, (list, tuple)) else v
                   for k, v in dataclasses.asdict(settings).items()},
    }


def run_benchmark(settings: BenchSettings, cache_dir: str | None = None,
                  report: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Measures every model × batch size × dtype × mode; returns `{"env": ..., "results": [...]}`.

    Compile times need the persistent compilation cache: it is enabled in `cache_dir` (default a
    fresh temporary folder, so the first compilation is cold). Run it in a fresh process (as
    `jaxcnn bench` does): JAX reads the cache setting at its first compilation.
    `report` is called with each result row in the results' order. Every `baseline` is measured
    first, with the C library's default allocator settings as a plain Flax script has them; the
    jaxcnn modes then run with `host_memory.keep_freed_host_memory`, which `jaxcnn train` applies.
    """
    check_settings(settings)
    with tempfile.TemporaryDirectory(prefix="jaxcnn-bench-cache-") as tmp:
        enable_compilation_cache(cache_dir or tmp)
        cases = [(name, batch_size, dtype) for name in settings.models for batch_size in settings.batch_sizes
                 for dtype in settings.dtypes]
        workloads = {case: make_workload(*case, settings) for case in cases}
        # Every baseline first, with the C library's default allocator settings, as a plain Flax
        # script runs; then jaxcnn's modes with the settings `jaxcnn train` applies (process-wide).
        baselines = {case: baseline.run(workloads[case], settings, _measure, compile_times, flops_of, LEARNING_RATE,
                                        MOMENTUM) for case in cases} if "baseline" in settings.modes else {}
        keep_freed_host_memory()
        peak = matmul_peak_gflops()
        results = []
        for case in cases:
            baseline_rate = baselines[case]["train_images_per_s"] if case in baselines else None
            for mode in settings.modes:
                if mode == "baseline":
                    row = baselines[case]
                else:
                    row = _jaxcnn_mode(workloads[case], settings, settings.steps_per_call if mode == "fused" else 1,
                                       cache_dir or tmp)
                name, batch_size, dtype = case
                row = {"model": name, "mode": mode, "batch_size": batch_size, "dtype": dtype, **row,
                       "speedup_vs_baseline": row["train_images_per_s"] / baseline_rate if baseline_rate else None,
                       "peak_pct": 100 * row["gflops"] / peak if row.get("gflops") else None}
                results.append(row)
                if report:
                    report(row)
    return {"env": {**environment(settings), "matmul_peak_gflops": peak}, "results": results}


TABLE_COLUMNS = (
    ("model", "model", "{}"), ("mode", "mode", "{}"), ("batch", "batch_size", "{}"), ("dtype", "dtype", "{}"),
    ("train img/s", "train_images_per_s", "{:,.0f}"), ("× baseline", "speedup_vs_baseline", "{:.2f}"),
    ("eval img/s", "eval_images_per_s", "{:,.0f}"), ("compile s", "compile_s", "{:.2f}"),
    ("warm s", "warm_compile_s", "{:.2f}"), ("MFLOP/img", "flops_per_image", "{}"),
    ("GFLOP/s", "gflops", "{:.1f}"), ("% peak", "peak_pct", "{:.1f}"), ("RSS MB", "peak_rss_mb", "{:.0f}"), ("fingerprint", "fingerprint", "{:.6f}"),
)


def format_row(row: dict[str, Any]) -> list[str]:
    cells = []
    for _, key, fmt in TABLE_COLUMNS:
        value = row.get(key)
        if value is None:
            cells.append("-")
        elif key == "flops_per_image":
            cells.append(f"{value / 1e6:.2f}")
        else:
            cells.append(fmt.format(value))
    return cells


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of the result rows."""
    lines = ["| " + " | ".join(title for title, _, _ in TABLE_COLUMNS) + " |",
             "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(format_row(row)) + " |" for row in results]
    return "\n".join(lines)
