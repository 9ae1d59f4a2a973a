"""The executor: every compiled call of training, evaluation and prediction, on any devices.

One call shape: a compiled call runs `num_steps` steps (`config.steps_per_call`; 1 is the plain
step) of one pure body built from `steps.train_step` (`eval_step`, `eval_predict_step`), reading batch
`j` of the call with `gather(inputs, start + j)` from whatever the data feed supplies
(`jaxcnn.data.feed`): an on-device split with the epoch order, or batches stacked on the host.

How many devices there are is decided here, once, by a 1-D mesh over the devices and the
shardings of the inputs (big_vision's `update_fn` pattern):

- `none`: a mesh of one device.
- `sharded` (`auto` with more than one device): `jax.jit` over a mesh of every device of every
  process; the state replicated, each batch split along its examples; the compiler inserts the
  all-reduce and BatchNorm sees the global batch.
- `pmap`: the per-device program model, as `jax.shard_map` over the same mesh: each device runs
  the body on its slice of the batch with the named axis `AXIS`, `train_step` averages gradients and
  metrics with `lax.pmean`, BatchNorm averages its statistics over the axis, dropout folds in the
  device index. It spans every process's devices as `sharded` does.

Every call is jitted here with the state (and totals) donated and its outputs replicated, so the
loop sees ordinary arrays. Several processes need nothing else: inputs are assembled from each
process's part (`put`), and each process reads its replicated copy of the outputs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxcnn.runtime.compilation import compiler_options
from jaxcnn.errors import JaxcnnError
from jaxcnn.data.feed import WHOLE_KEYS, input_gate
from jaxcnn.core.member_calls import over_members, split_members
from jaxcnn.spec import PARALLEL, one_of
from jaxcnn.core.state import TrainState
from jaxcnn.core.steps import add_to_totals, eval_step, eval_predict_step, train_step

AXIS = "data"  # the mesh's one axis; under pmap also the named axis of lax.pmean and BatchNorm


class Prepare(Protocol):
    """A uint8 batch -> the step's batch (normalised; augmented with the state's step key)."""

    def __call__(self, batch: dict[str, jax.Array], state: TrainState) -> dict[str, jax.Array]: ...


def resolve(name: str) -> str:
    """`auto` -> `sharded` with more than one device (over all processes), else `none`."""
    one_of("parallel", name, PARALLEL, "parallel strategy")
    if name == "auto":
        return "sharded" if jax.device_count() > 1 else "none"
    return name


def gather(inputs: dict[str, jax.Array], i: jax.Array) -> dict[str, jax.Array]:
    """Batch `i` of a call's inputs: rows `order[i]` of an on-device split, or row `i` of batches
    stacked on the host; with the evaluation mask when there is one."""
    if "order" in inputs:
        indices = inputs["order"][i]
        batch = {"image": inputs["images"][indices], "label": inputs["labels"][indices]}
    else:
        batch = {"image": inputs["image"][i], "label": inputs["label"][i]}
    if "mask" in inputs:
        batch["mask"] = inputs["mask"][i]
    return batch


# Evaluation and prediction loop over a call's batches without unrolling, on every backend: on the
# 2-core CPU the forward pass inside a rolled loop ran as fast as unrolled or faster (Flax-example
# CNN, 5 batches of 1000 per call: 5,300 against 4,900 images per CPU-second) and compiled in 4.5 s
# instead of 6.3 s (README, "Speed").
EVAL_UNROLL = 1


def default_unroll(params: Any, backend: str | None = None) -> bool | int:
    """The training call's loop: fully unrolled on CPU for models with convolutions (XLA:CPU ran
    a training step's convolutions fast only outside `while` loops), a rolled loop otherwise. Unrolling
    costs compile time proportional to the steps per call; the persistent compilation cache keeps
    it for later runs."""
    has_conv = any(jnp.ndim(leaf) >= 4 for leaf in jax.tree.leaves(params))
    return True if has_conv and (backend or jax.default_backend()) == "cpu" else 1


def scan_steps(body: Callable, carry: Any, num_steps: int, params: Any, unroll: bool | int | None) -> tuple:
    """`lax.scan(body, carry, arange(num_steps))`; one step is called directly (XLA:CPU compiles a
    one-step scan unlike the step itself, ~1e-8 apart), so one step per call stays the plain step."""
    if num_steps == 1:
        carry, out = body(carry, 0)
        return carry, jax.tree.map(lambda x: x[None], out)
    return lax.scan(body, carry, jnp.arange(num_steps), unroll=default_unroll(params) if unroll is None else unroll)


def train_body(prepare: Prepare, axis_name: str | None, constrain: Callable, unroll: bool | int | None) -> Callable:
    """The pure k-step training call: `(state, totals, inputs, start, num_steps) -> (state, totals)`."""

    def call(state, totals, inputs, start, num_steps):
        def step(carry, j):
            state, totals, gate = carry
            batch = constrain(gather(inputs, start + j + gate))
            state, metrics = train_step(state, prepare(batch, state), axis_name)
            return (state, add_to_totals(totals, metrics), input_gate(metrics["loss"])), None

        (state, totals, _), _ = scan_steps(step, (state, totals, jnp.zeros((), jnp.int32)), num_steps,
                                           state.params, unroll)
        return state, totals

    return call


def eval_body(prepare: Prepare, axis_name: str | None, constrain: Callable, unroll: bool | int | None) -> Callable:
    """The pure k-batch evaluation call: `(state, totals, inputs, start, num_steps) -> totals`, the
    masked sums of `eval_step` added batch by batch in order."""

    def call(state, totals, inputs, start, num_steps):
        def step(totals, j):
            sums = eval_step(state, prepare(constrain(gather(inputs, start + j)), state))
            if axis_name is not None:  # each device summed its slice of the batch
                sums = lax.psum(sums, axis_name)
            return jax.tree.map(jnp.add, totals, sums), None

        return scan_steps(step, totals, num_steps, state.params, EVAL_UNROLL if unroll is None else unroll)[0]

    return call


def eval_predict_body(prepare: Prepare, loss_name: str, top_k: int, axis_name: str | None,
                      constrain: Callable, unroll: bool | int | None) -> Callable:
    """The pure k-batch test call: `(state, totals, inputs, start, num_steps) -> (totals, outputs)`,
    `eval_body`'s sums and the per-example outputs stacked as (num_steps, batch), of one forward
    pass per batch (`eval_predict_step`)."""

    def call(state, totals, inputs, start, num_steps):
        def step(totals, j):
            batch = prepare(constrain(gather(inputs, start + j)), state)
            sums, outputs = eval_predict_step(state, batch, loss_name, top_k)
            if axis_name is not None:  # each device summed its slice of the batch
                sums = lax.psum(sums, axis_name)
            return jax.tree.map(jnp.add, totals, sums), outputs

        return scan_steps(step, totals, num_steps, state.params, EVAL_UNROLL if unroll is None else unroll)

    return call


@dataclasses.dataclass(frozen=True)
class Calls:
    """The compiled calls of one run (`Executor.compile`); `programs` holds the jitted functions
    themselves ("train", "evaluate", "test"), e.g. to lower them for the benchmark."""

    programs: dict[str, Callable]
    wait: Callable[[Any], Any]
    # The training programs compiled, by step count (`compile_train`); `memory_analysis()` of one
    # is what `summary.json` reports of the run's memory.
    compiled: dict[int, jax.stages.Compiled] = dataclasses.field(default_factory=dict)

    def compile_train(self, state: TrainState, totals: Any, inputs: dict, start: jax.Array, num_steps: int) -> bool:
        """Compiles (or loads from the persistent cache) the training program of a call of
        `num_steps` steps, without running it, unless it was compiled already; returns whether it
        compiled. Within a run a call's arguments keep their shapes for a given step count (the
        feed's inputs stack `num_steps` batches at most), so the count names the program. The loop
        calls it before each call so that compiling is not timed as training (`Clock.compile`)."""
        if num_steps in self.compiled:
            return False
        # Nothing left in flight: a compile overlapping earlier calls' steps would hide training
        # time in the compile time the clock leaves out.
        jax.block_until_ready((state, totals))
        # jit's own cache now holds the program too: `train` runs it at once.
        self.compiled[num_steps] = self.programs["train"].lower(state, totals, inputs, start,
                                                                num_steps=num_steps).compile()
        return True

    def train(self, state: TrainState, totals: Any, inputs: dict, start: jax.Array, num_steps: int) -> tuple:
        """`num_steps` training steps -> (state, totals); both donated."""
        return self.programs["train"](self.wait(state), totals, inputs, start, num_steps=num_steps)

    def evaluate(self, state: TrainState, totals: Any, inputs: dict, start: jax.Array, num_steps: int) -> Any:
        """`num_steps` evaluation batches added to `totals` (donated)."""
        return self.programs["evaluate"](state, self.wait(totals), inputs, start, num_steps=num_steps)

    def test(self, state: TrainState, totals: Any, inputs: dict, start: jax.Array, num_steps: int) -> tuple:
        """`num_steps` test batches: (`totals` (donated) with their sums added, their per-example
        outputs, (num_steps, batch) each)."""
        return self.programs["test"](state, self.wait(totals), inputs, start, num_steps=num_steps)


class Executor:
    """A 1-D mesh of the devices a strategy uses, and the one place its calls are compiled."""

    def __init__(self, parallel: str = "none", devices: Sequence[jax.Device] | None = None, members: int = 0):
        self.name = resolve(parallel)
        if self.name == "none" and jax.process_count() > 1:
            raise JaxcnnError(f"parallel={parallel} uses one device, but {jax.process_count()} processes were "
                              "started; use parallel=sharded, pmap or auto")
        if devices is None:
            devices = [jax.local_devices()[0]] if self.name == "none" else jax.devices()
        self.devices = list(devices)
        self.mesh = jax.make_mesh((len(self.devices),), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                                  devices=self.devices)
        self.per_device = self.name == "pmap"
        self.replicated = NamedSharding(self.mesh, P())
        self.stacked = NamedSharding(self.mesh, P(None, AXIS))  # (steps, batch, ...): split along the batch
        # A run of `members` whose count the devices divide: each device trains its own members whole
        # (the member axis split over the mesh, no cross-device traffic); else each member is
        # data-parallel over every device, the members stacked on each.
        self.split_members = members > 1 and len(self.devices) > 1 and members % len(self.devices) == 0
        by_member = NamedSharding(self.mesh, P(AXIS))
        self.member_stacked = by_member if self.split_members else NamedSharding(self.mesh, P(None, None, AXIS))
        self.member_state = by_member if self.split_members and jax.process_count() == 1 else self.replicated
        self._indices: list[jax.Array] = []

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    @property
    def bn_axis_name(self) -> str | None:
        """The models' BatchNorm `axis_name`: the named axis under pmap; none under jit, where the
        batch is global."""
        return AXIS if self.per_device and not self.split_members else None

    def check_batch_size(self, batch_size: int, key: str = "batch_size") -> None:
        if batch_size % self.num_devices:
            raise JaxcnnError(f"{key} {batch_size} is not divisible by the {self.num_devices} devices it is "
                              f"split across; use a multiple of {self.num_devices}")

    def eval_batch_size(self, requested: int, num_examples: int) -> int:
        """The eval batch: at most `requested` (and the split size), a multiple of the devices."""
        size = max(1, min(requested, num_examples))
        return math.ceil(size / self.num_devices) * self.num_devices

    # ------------------------------------------------------------------------ placing inputs

    def sharding_of(self, key: str, members: bool = False) -> NamedSharding:
        if key in WHOLE_KEYS or key == "active":  # the split whole; members' flags, one per member
            return self.replicated
        return self.member_stacked if members else self.stacked

    def process_rows(self, batch_size: int, members: bool = False) -> slice:
        """The rows of a global batch that this process's devices hold (all of them on one process;
        all of them for members split over the devices, whose batches are whole on each)."""
        if members and self.split_members:
            return slice(0, batch_size)
        spans = self.stacked.addressable_devices_indices_map((1, batch_size)).values()
        return slice(min(s[1].start or 0 for s in spans), max(s[1].stop or batch_size for s in spans))

    def put(self, tree: Any, sharding: NamedSharding | None = None) -> Any:
        """Host (or single-device) values placed on the mesh, replicated unless `sharding` says
        otherwise, and waited for: every input of a call is on its devices before the call, so the
        call copies nothing (placed once per epoch, evaluation or call of host batches, never per
        step). With several processes each process supplies its own part."""
        sharding = sharding or self.replicated

        def place(x):
            if jax.process_count() == 1:
                return jax.device_put(x, sharding)
            if isinstance(x, jax.Array) and not x.is_fully_addressable:  # a replicated global value
                x = x.addressable_data(0)
            x = np.asarray(x)
            return jax.make_array_from_process_local_data(sharding, x[self._local_index(sharding, x.shape)], x.shape)

        return jax.block_until_ready(jax.tree.map(place, tree))

    def assemble(self, local: dict[str, np.ndarray], batch_size: int, members: bool = False) -> dict[str, jax.Array]:
        """Stacked host batches of which this process gathered only its rows (`process_rows`), as
        global (steps, batch, ...) arrays split along the batch; (members, steps, batch, ...) with `members`."""
        sharding, lead = (self.member_stacked, 2) if members else (self.stacked, 1)
        if members and self.split_members:  # every member gathered: this process's members kept
            return {k: jax.make_array_from_process_local_data(sharding, v[self._local_index(sharding, v.shape)],
                                                              v.shape) for k, v in local.items()}
        return {k: jax.make_array_from_process_local_data(
                    sharding, v, (*v.shape[:lead], batch_size, *v.shape[lead + 1:])) for k, v in local.items()}

    def _local_index(self, sharding: NamedSharding, shape: tuple[int, ...]) -> tuple[slice, ...]:
        spans = list(sharding.addressable_devices_indices_map(shape).values())
        return tuple(slice(min(s[d].start or 0 for s in spans), max(s[d].stop or shape[d] for s in spans))
                     for d in range(len(shape)))

    def index(self, i: int) -> jax.Array:
        """Call start `i` as an int32 already on every device, so passing it transfers nothing.
        Placed in doubling batches, so this blocks rarely."""
        if i >= len(self._indices):
            new = range(len(self._indices), max(2 * len(self._indices), i + 1, 64))
            self._indices.extend(self.put([np.int32(k) for k in new]))
        return self._indices[i]

    def wait(self, tree: Any) -> Any:
        """`tree` (the previous call's output), waited for when several CPU devices run the call.

        XLA:CPU launches each device's part of a call on a small thread pool; with many calls
        dispatched ahead, queued launches of later calls occupy those threads while an earlier
        call's all-reduce waits for a device whose launch cannot get one: a deadlock ("Termination
        timeout for all reduce", seen with 2 simulated devices on 2 cores). One call in flight
        avoids it; on accelerators nothing waits.
        """
        if self.num_devices > 1 and self.devices[0].platform == "cpu":
            return jax.block_until_ready(tree)
        return tree

    # ------------------------------------------------------------------------ compiling the calls

    def compile(self, prepare_train: Prepare, prepare_eval: Prepare, loss_name: str, top_k: int,
                unroll: bool | int | None = None, members: bool = False,
                options: Mapping[str, dict[str, str] | None] | None = None) -> Calls:
        """The run's three compiled calls; the parallel mapping applied here and nowhere else.
        `members`: the state is a stack of members, each call vmapped over them (`over_members`).
        `options`: XLA's options for the "train" program and the "forward" ones (evaluate, test),
        as the run's measured plan chose them (`jaxcnn.core.autotune`); default `compiler_options()`."""
        options = options or {context: compiler_options() for context in ("train", "forward")}
        axis = AXIS if self.per_device else None
        # Under jit the batch is global: keep it split along the examples like its inputs.
        rows = NamedSharding(self.mesh, P(AXIS))
        constrain = ((lambda batch: batch) if self.per_device or self.num_devices == 1
                     else (lambda batch: lax.with_sharding_constraint(batch, rows)))
        if members and self.split_members:
            return self._compile_split(prepare_train, prepare_eval, loss_name, top_k, unroll, options)
        mapped = over_members if members else (lambda body: body)
        programs = {
            "train": self._jit(mapped(train_body(prepare_train, axis, constrain, unroll)), (0, 1), 2, "state",
                               options["train"], members),
            "evaluate": self._jit(mapped(eval_body(prepare_eval, axis, constrain, unroll)), (1,), 2, "totals",
                                  options["forward"], members),
            "test": self._jit(mapped(eval_predict_body(prepare_eval, loss_name, top_k, axis, constrain, unroll)),
                              (1,), 2, "test", options["forward"], members),
        }
        return Calls(programs, self.wait)

    def _compile_split(self, prepare_train: Prepare, prepare_eval: Prepare, loss_name: str, top_k: int,
                       unroll: bool | int | None, options: Mapping[str, dict[str, str] | None]) -> Calls:
        """The calls of members split over the devices (`split_members`): each device runs its block of
        members as independent programs would (`member_calls.split_members`), state and totals kept split."""
        same = lambda batch: batch
        out, state = self.member_state, self.member_state
        split = lambda body, stacked, donate, outputs, context: jax.jit(
            split_members(over_members(body), self.mesh, AXIS, stacked), donate_argnums=donate,
            static_argnames=("num_steps",), out_shardings=outputs, compiler_options=options[context])
        programs = {
            "train": split(train_body(prepare_train, None, same, unroll), 2, (0, 1), (state, out), "train"),
            "evaluate": split(eval_body(prepare_eval, None, same, unroll), 2, (1,), out, "forward"),
            "test": split(eval_predict_body(prepare_eval, loss_name, top_k, None, same, unroll), 2, (1,), out,
                          "forward"),
        }
        return Calls(programs, self.wait)

    def _jit(self, body: Callable, donate: tuple[int, ...], num_replicated: int, output: str,
             options: dict[str, str] | None, members: bool = False) -> Callable:
        """`body(*replicated, inputs, start, num_steps)` jitted, the one `jax.jit` of the package's
        calls; under pmap first mapped per device (`_per_device`)."""
        fn = self._per_device(body, num_replicated, output, members) if self.per_device else body
        return jax.jit(fn, donate_argnums=donate, static_argnames=("num_steps",), out_shardings=self.replicated,
                       compiler_options=options)

    def _per_device(self, body: Callable, num_replicated: int, output: str, members: bool) -> Callable:
        """`body` as `jax.shard_map` over the mesh: the replicated arguments whole on every device,
        the inputs split as `sharding_of` says; the test's per-example outputs gathered along the batch
        (which follows the member axis of a run of members)."""
        outputs = P(None, None, AXIS) if members else P(None, AXIS)  # per-example: split along the batch
        out_spec = (P(), outputs) if output == "test" else P()

        def mapped(*args, num_steps):
            inputs = args[num_replicated]
            specs = (*[P()] * num_replicated, {k: self.sharding_of(k, members).spec for k in inputs}, P())
            return jax.shard_map(lambda *a: body(*a, num_steps=num_steps), mesh=self.mesh, in_specs=specs,
                                 out_specs=out_spec, check_vma=False)(*args)

        return mapped


def plan_calls(position: int, steps_per_epoch: int, step: int, steps_per_call: int,
               intervals: Sequence[int] = ()) -> list[tuple[int, int]]:
    """(first epoch position, number of steps) of each call from epoch `position` to the epoch's end.

    `step` is the global step count before position `position`. A call holds at most
    `steps_per_call` steps and ends early where the global step after it is a multiple of one of
    `intervals` (the logging and checkpoint intervals; 0 = none), so the host sees the totals and
    saves at exactly the steps one call per step would; calls never cross the epoch's end.
    """
    calls = []
    while position < steps_per_epoch:
        size = min(steps_per_call, steps_per_epoch - position)
        for every in intervals:
            if every > 0:
                size = min(size, every - step % every)
        calls.append((position, size))
        position, step = position + size, step + size
    return calls
