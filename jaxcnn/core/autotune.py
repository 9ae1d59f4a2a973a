"""Convolutions, compiler options and steps per call chosen by measurement, on the machine the run is on.

As cuDNN's autotuner does for a GPU, `tune` times the candidates once per machine and model and
keeps the fastest; the choice is cached (`cache_file`) next to the compilation cache, recorded in
the run's workdir (`PLAN_FILE`: a resumed or verified run replays it, so it stays bitwise the same),
in `summary.json` and in the certificate.

What is measured is the model's own program in each context, not a convolution alone: the
gradient of the loss for a training batch (`TRAIN`), the forward pass and argmax for an evaluation
batch (`FORWARD`). Convolutions fuse with their neighbours, and XLA's options change which library
computes them, so only the whole program says which is faster. The search is coordinate descent:
under each compiler option set, from the default convolutions (`im2col.resolve_conv_impl`), it
tries each candidate implementation of each convolution shape in turn, keeping a change only when
it is faster by `MARGIN` in timings interleaved with the current best's; then the option sets'
winners are timed against each other (the default set, `compilation.DEFAULT_SET`, wins ties). With
`config.steps_per_call` 0, the training step once per call is timed against a fused call of
`FUSED_STEPS` (`_fused_steps`), which a run uses only when it saves more than the start-up of its
programs over the run's steps (`Tuned.for_run`). Forward programs
are timed on at most `FORWARD_BATCH_CAP` examples, and trials not started within `BUDGET_S` per
context are skipped, so that a large model's first run waits seconds, not minutes.

Only on CPU: XLA picks among cuDNN's and its own convolutions itself on GPUs and TPUs. Processes of
a multi-process run keep the defaults unless the workdir records a plan (each would measure its own).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn.core.build import model_of
from jaxcnn.core.executor import default_unroll, scan_steps
from jaxcnn.models import conv_plan, im2col, pooled
from jaxcnn.models.conv_plan import FORWARD, TRAIN
from jaxcnn.runtime import compilation

PLAN_FILE = "autotune.json"
SWITCH_ENV = "JAXCNN_AUTOTUNE"  # "0": no measurement, the defaults (many short runs; the test suite)
MARGIN = 0.97  # a candidate replaces the current choice when it takes at most 97% of its time
SMALL_CHANNELS = 16  # shift and im2col are candidates for convolutions of at most this many input channels
WINDOW_S = 0.05  # each timing window; the best of `ROUNDS` interleaved windows counts
ROUNDS = 3
# Forward programs are timed on at most this many examples (an evaluation batch of 1000 whole).
# Not 256: per example, XLA's own convolution of the Flax-example CNN's second layer cost the same
# as YNNPACK's at 256 examples and 1.8x more at 1000 (README, "Chosen by measurement").
FORWARD_BATCH_CAP = 1024
BUDGET_S = 20.0  # per context, shared by the option sets: trials not started in time are skipped
# Steps per call tried against one (`config.steps_per_call = 0`): a rolled loop of many steps, or
# an unrolled one of a few where the executor unrolls (convolutions on CPU: `executor.default_unroll`),
# whose compile time grows with the steps.
FUSED_STEPS = {"rolled": 16, "unrolled": 4}
# What fused calls add to every start of a run: a second program (the shorter call that ends an
# epoch or a logging interval) and a larger one, traced and loaded from the compilation cache
# (README, "Start-up"). A run fuses only when its steps save more than this (`Tuned.for_run`).
FUSED_START_S = 0.5
# In the cache key: plans measured before a change to what they time are measured again (2: steps
# per call measured; 3: the max pool's gradient rewritten; 4: the time fused steps save recorded;
# 5: BatchNorm's and the convolution bias's gradients as fast sums; 6: a first layer computed with
# its pool, `jaxcnn.models.pooled`, and forward programs timed on up to 1024 examples).
PLAN_VERSION = 6


@dataclasses.dataclass(frozen=True)
class Tuned:
    """A run's choices: `conv` (`conv_plan.Plan`), the compiler option set per context, where they
    came from ("measured", "cached", "recorded" or "default") and the times measured (ms per batch)."""

    conv: conv_plan.Plan = ()
    options: tuple[tuple[str, str], ...] = ()
    source: str = "default"
    timings: tuple[tuple[str, str, float], ...] = ()
    steps_per_call: int = 1  # training steps per compiled call, for `config.steps_per_call = 0` (auto)
    fused_saving_ms: float = 0.0  # per step: what a call of the measured fused count saved against one

    def for_run(self, num_steps: int, period: int = 0) -> "Tuned":
        """This plan for a run of `num_steps` training steps: its fused calls only when they save more
        than their start-up (`FUSED_START_S`) over the run (a short run calls one step at a time), of
        a count that fits `period` (`fitting_count`)."""
        if self.steps_per_call == 1:
            return self
        if 1e-3 * self.fused_saving_ms * num_steps < FUSED_START_S:
            return dataclasses.replace(self, steps_per_call=1)
        return dataclasses.replace(self, steps_per_call=fitting_count(self.steps_per_call, period))

    def compiler_options(self) -> dict[str, dict[str, str] | None]:
        """The XLA options of the train program and of the forward-only ones (evaluate, predict)."""
        named = dict(self.options)
        return {context: compilation.compiler_options(option_set=named.get(context)) for context in (TRAIN, FORWARD)}

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "options": dict(self.options), "steps_per_call": self.steps_per_call,
                "fused_saving_ms": round(self.fused_saving_ms, 4),
                "conv": [{"shape": s, "context": c, "impl": i} for s, c, i in self.conv],
                "timings_ms": [{"context": c, "choice": what, "ms": round(ms, 3)} for c, what, ms in self.timings]}

    @classmethod
    def from_json(cls, value: dict[str, Any], source: str) -> "Tuned":
        return cls(conv=tuple((e["shape"], e["context"], e["impl"]) for e in value.get("conv", ())),
                   options=tuple(sorted(value.get("options", {}).items())), source=source,
                   steps_per_call=int(value.get("steps_per_call", 1)),
                   fused_saving_ms=float(value.get("fused_saving_ms", 0.0)))


DEFAULT = Tuned()


def fitting_count(count: int, period: int) -> int:
    """`count` steps per call, or the count next to it (one more, else one less) that divides
    `period` where `count` does not. `period`: the steps between the points where a call must end
    (the gcd of the epoch's steps and the logging and checkpoint intervals; 0: none). A fitting count
    makes every call of the run the same program; otherwise a shorter call ends each period, a
    second program to load (README, "Chosen by measurement")."""
    if period <= 0 or period % count == 0:
        return count
    return next((near for near in (count + 1, count - 1) if near > 1 and period % near == 0), count)


def candidates(in_channels: int, poolable: bool = False, context: str = FORWARD) -> tuple[str, ...]:
    """The implementations tried for a convolution: XLA's always; shift-and-add and im2col only for
    few input channels, where they can win (README, "Speed"); with many they lost 2-8x. Forward
    only, with the pool after it in one pass where that can be (`poolable`, `jaxcnn.models.pooled`):
    differentiated, it was 2-4x slower than shift-and-add."""
    small = ("xla", "shift", "im2col") if in_channels <= SMALL_CHANNELS else ("xla",)
    return small + ((pooled.IMPL,) if poolable and context == FORWARD else ())


def machine_key() -> dict[str, Any]:
    """What makes timings of one machine valid on another: CPU model and flags, backend, versions."""
    cpu = {}
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() in ("model name", "flags") and name.strip() not in cpu:
                cpu[name.strip()] = value.strip()
    except OSError:
        pass
    import jaxlib
    return {"cpu": cpu, "cores": os.cpu_count(), "backend": jax.default_backend(), "jax": jax.__version__,
            "jaxlib": jaxlib.__version__}


def cache_file(cache_dir: pathlib.Path, what: dict[str, Any]) -> pathlib.Path:
    """The cache entry of model and batches `what` on this machine."""
    digest = hashlib.sha256(json.dumps([machine_key(), what], sort_keys=True, default=str).encode()).hexdigest()
    return cache_dir / "autotune" / f"{digest[:32]}.json"


def read_plan(path: pathlib.Path, source: str) -> Tuned | None:
    """The plan in `path`, None when there is none or it cannot be read (then it is measured again)."""
    try:
        return Tuned.from_json(json.loads(path.read_text()), source)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write_plan(path: pathlib.Path, tuned: Tuned) -> None:
    """Writes `tuned` atomically (another process may read or write the same cache entry)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(tuned.to_json(), indent=1) + "\n")
    os.replace(partial, path)


def _seconds_per_call(fn: Callable[[], Any]) -> float:
    """One timing window: calls of `fn` for about `WINDOW_S`, each waited for (dispatch is
    asynchronous: unwaited calls would queue far beyond the window), in seconds per call."""
    calls, start = 0, time.perf_counter()
    while calls < 1 or time.perf_counter() - start < WINDOW_S:
        jax.block_until_ready(fn())
        calls += 1
    return (time.perf_counter() - start) / calls


def _interleaved(first: Callable[[], Any], second: Callable[[], Any]) -> tuple[float, float]:
    """The best window of each of two programs, timed in turn so that a busy moment hits both."""
    jax.block_until_ready((first(), second()))
    times = [(_seconds_per_call(first), _seconds_per_call(second)) for _ in range(ROUNDS)]
    return min(t[0] for t in times), min(t[1] for t in times)


@dataclasses.dataclass
class _Probe:
    """The program of one context for a model built from a plan: `run(plan, option_set)` compiles it
    and returns a zero-argument callable that runs it once on fixed inputs."""

    make_model: Callable[[conv_plan.Plan], nn.Module]
    variables: Any
    context: str
    images: jax.Array
    labels: jax.Array

    def run(self, plan: conv_plan.Plan, option_set: str) -> Callable[[], Any]:
        model = self.make_model(plan)
        options = compilation.compiler_options(option_set=option_set)
        if self.context == FORWARD:
            fn = jax.jit(lambda v, x: jnp.argmax(model.apply(v, x, train=False), -1), compiler_options=options)
            return lambda: fn(self.variables, self.images)
        fn = jax.jit(jax.value_and_grad(self.loss(model)), compiler_options=options)
        return lambda: fn(self.variables["params"], self.images, self.labels)

    def loss(self, model: nn.Module) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
        """`(params, images, labels) -> loss` of `model` in training mode, the other collections fixed."""
        rest = {k: v for k, v in self.variables.items() if k != "params"}

        def loss(params, x, y):
            logits, _ = model.apply({"params": params, **rest}, x, train=True, mutable=list(rest),
                                    rngs={"dropout": jax.random.key(0)})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        return loss

    def steps(self, plan: conv_plan.Plan, option_set: str, num_steps: int, unroll: bool | int) -> Callable[[], Any]:
        """`num_steps` training steps (the loss gradient and an SGD update) in one compiled call, as
        the executor's call runs them (`scan_steps`: one step is called directly)."""
        loss, options = self.loss(self.make_model(plan)), compilation.compiler_options(option_set=option_set)

        def step(params, _):
            value, grads = jax.value_and_grad(loss)(params, self.images, self.labels)
            return jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads), value

        fn = jax.jit(lambda params: scan_steps(step, params, num_steps, params, unroll), compiler_options=options)
        return lambda: fn(self.variables["params"])


def _descend(probe: _Probe, shapes: list[tuple[str, int, bool]], default: conv_plan.Plan, tune_conv: bool
             ) -> tuple[conv_plan.Plan, str, list[tuple[str, str, float]]]:
    """For each compiler option set, coordinate descent over each convolution shape's candidates;
    then the option sets' winners against each other. (Options first, then convolutions, missed
    pairs that only win together, such as `shift` inside jaxcnn's options forward only.)"""
    timings: list[tuple[str, str, float]] = []
    winners = [_descend_convs(probe, shapes if tune_conv else [], default, option_set, timings)
               for option_set in compilation.OPTION_SETS]
    plan, option_set, best = winners[0]
    for other_plan, other_set, other in winners[1:]:
        t_best, t_other = _interleaved(best, other)
        timings.append((probe.context, f"options {other_set} with its best convolutions (against "
                                        f"{option_set}: {1e3 * t_best:.3f})", 1e3 * t_other))
        if t_other <= MARGIN * t_best:
            plan, option_set, best = other_plan, other_set, other
    return plan, option_set, timings


def _descend_convs(probe: _Probe, shapes: list[tuple[str, int, bool]], plan: conv_plan.Plan, option_set: str,
                   timings: list) -> tuple[conv_plan.Plan, str, Callable]:
    """Coordinate descent over each convolution shape's candidates under one option set, within
    its share of `BUDGET_S`."""
    deadline = time.perf_counter() + BUDGET_S / len(compilation.OPTION_SETS)
    best = probe.run(plan, option_set)
    for key, in_channels, poolable in shapes:
        first = conv_plan.lookup(plan, key, probe.context)
        for impl in candidates(in_channels, poolable, probe.context):
            if impl != first and time.perf_counter() < deadline:
                trial = tuple(e for e in plan if e[:2] != (key, probe.context)) + ((key, probe.context, impl),)
                plan, _, best = _try(probe, plan, option_set, best, trial, option_set,
                                     f"options {option_set}, {key}: {impl}", timings)
    return plan, option_set, best


def _try(probe: _Probe, plan: conv_plan.Plan, option_set: str, best: Callable, trial: conv_plan.Plan,
         trial_set: str, change: str, timings: list) -> tuple[conv_plan.Plan, str, Callable]:
    """The better of the current choice and a trial (the current one with `change`); the trial's
    time is noted (ms per batch) with the current one's in the same rounds."""
    candidate = probe.run(trial, trial_set)
    t_best, t_trial = _interleaved(best, candidate)
    timings.append((probe.context, f"{change} (against {1e3 * t_best:.3f})", 1e3 * t_trial))
    if t_trial <= MARGIN * t_best:
        return trial, trial_set, candidate
    return plan, option_set, best


def _fused_steps(probe: _Probe, plan: conv_plan.Plan, option_set: str, timings: list) -> tuple[int, float]:
    """The training call's steps and the milliseconds they save per step: `FUSED_STEPS`' count for
    the executor's loop (rolled, or unrolled for convolutions on CPU) when a call of that many is
    faster per step by `MARGIN` than one step per call (the dispatch of a call costs about as much
    as a small model's step), else (1, 0)."""
    unroll = default_unroll(probe.variables["params"])
    k = FUSED_STEPS["unrolled" if unroll is True else "rolled"]
    t_one, t_fused = _interleaved(probe.steps(plan, option_set, 1, unroll), probe.steps(plan, option_set, k, unroll))
    timings.append((TRAIN, f"steps_per_call {k} (against 1: {1e3 * t_one:.3f} per step)", 1e3 * t_fused / k))
    return (k, 1e3 * (t_one - t_fused / k)) if t_fused / k <= MARGIN * t_one else (1, 0.0)


def tune(make_model: Callable[[conv_plan.Plan], nn.Module], input_shape: tuple[int, ...], num_classes: int,
         batches: dict[str, int], tune_conv: bool = True, tune_steps: bool = False) -> Tuned:
    """Measures the plan of the model `make_model(plan)` builds, for inputs of `input_shape` (H, W, C),
    at `batches[context]` examples per device; convolutions only when `tune_conv` (conv_impl "auto"),
    the training call's steps only when `tune_steps` (steps_per_call 0)."""
    model = make_model(())
    with conv_plan.recorded() as shapes:
        variables = jax.jit(lambda key: model.init(key, jnp.zeros((1, *input_shape), jnp.float32)))(jax.random.key(0))
    default = tuple((key, context, im2col.resolve_conv_impl("auto", in_channels=cin, train=context == TRAIN))
                    for key, cin, _ in shapes for context in (TRAIN, FORWARD))
    rng = np.random.default_rng(0)
    conv, options, timings, (steps, saving) = [], [], [], (1, 0.0)
    for context in (TRAIN, FORWARD):
        batch = max(1, int(batches[context]))
        batch = min(batch, FORWARD_BATCH_CAP) if context == FORWARD else batch
        images = jnp.asarray(rng.standard_normal((batch, *input_shape), dtype=np.float32))
        labels = jnp.asarray(rng.integers(0, num_classes, batch), jnp.int32)
        probe = _Probe(make_model, variables, context, images, labels)
        plan, option_set, measured = _descend(probe, list(shapes), default, tune_conv)
        if context == TRAIN and tune_steps:
            steps, saving = _fused_steps(probe, plan, option_set, measured)
        conv += [e for e in plan if e[1] == context]
        options.append((context, option_set))
        timings += measured
    return Tuned(tuple(conv), tuple(sorted(options)), "measured", tuple(timings), steps, saving)


def batches_of(config: Any, num_devices: int, whole_on_device: bool) -> dict[str, int]:
    """Examples per device and program: a training microbatch (`grad_accum_steps`), an evaluation
    batch; split over the devices unless each device holds whole batches (members split over them)."""
    share = 1 if whole_on_device else num_devices
    train = config.batch_size // max(1, config.get("grad_accum_steps", 1)) // share
    return {TRAIN: max(1, train), FORWARD: max(1, config.eval_batch_size // share)}


def choose(config: Any, input_shape: tuple[int, ...], num_classes: int, batches: dict[str, int],
           cache_dir: pathlib.Path | None, recorded: Tuned | None = None, tune_steps: bool = False,
           run_steps: int = 0, period: int = 0) -> Tuned:
    """The plan of `config`'s model: `recorded` (a resumed or verified run's) or `choose_plan`'s
    (with the training call's steps when `tune_steps`: `config.steps_per_call` is 0, one model),
    for a run of `run_steps` training steps whose calls end every `period` steps (`Tuned.for_run`)."""
    if recorded is not None:
        return recorded
    what = {"model": config.model.to_dict(), "dtype": config.dtype}
    return choose_plan(lambda plan: model_of(config, num_classes, conv_plan=plan), what, input_shape, num_classes,
                       batches, cache_dir, tune_conv=config.model.get("conv_impl", "auto") == "auto",
                       tune_steps=tune_steps).for_run(run_steps, period)


def choose_plan(make_model: Callable[[conv_plan.Plan], nn.Module], what: dict[str, Any],
                input_shape: tuple[int, ...], num_classes: int, batches: dict[str, int],
                cache_dir: pathlib.Path | None, tune_conv: bool = True, tune_steps: bool = False) -> Tuned:
    """This machine's cached plan for the model `what` describes (and `make_model` builds), else
    measured now (`tune`) and cached under `cache_dir` (default: the user cache folder). The
    defaults off the CPU, in multi-process runs (module docstring) and with `SWITCH_ENV`=0."""
    if jax.default_backend() != "cpu" or jax.process_count() > 1 or os.environ.get(SWITCH_ENV, "1") == "0":
        return DEFAULT
    what = {**what, "input_shape": list(input_shape), "num_classes": num_classes, "batches": batches,
            "tune_conv": tune_conv, "tune_steps": tune_steps, "version": PLAN_VERSION}
    path = cache_file(pathlib.Path(cache_dir or compilation.default_cache_dir()), what)
    cached = read_plan(path, "cached")
    if cached is not None:
        return cached
    tuned = tune(make_model, input_shape, num_classes, batches, tune_conv, tune_steps)
    try:
        write_plan(path, tuned)
    except OSError:
        pass  # an unwritable cache: measured again next time
    return tuned
