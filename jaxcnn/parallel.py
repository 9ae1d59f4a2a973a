"""How a step runs: on one device, `pmap` over a host's devices, or `jit` over a device mesh.

The loop defines two pure per-batch bodies, `train_one(state, totals, batch, axis_name)` and
`eval_one(state, totals, batch, axis_name)`, and asks a `Strategy` to compile them into the calls
it makes every step:

    train_fn(state, totals, split, order, i) -> (state, totals)
    eval_fn(state, totals, split, order, mask, i) -> totals

where `order` (and `mask`) are (steps, global_batch) arrays of example indices, and step `i`'s global
batch is `split[order[i]]`. Every strategy splits that global batch into equal contiguous slices,
one per device, so the results agree across strategies (up to float rounding of the reductions):

- `none`: one device; `jax.jit` as is.
- `pmap`: `jax.pmap` over a host's local devices. The state, the totals and the data are broadcast
  (`in_axes=None`) and the outputs are replicated (`out_axes=None`), so the loop sees ordinary
  arrays; only the order is mapped, each device reading its slice. `train_step` averages gradients
  and metrics with `lax.pmean` over `PMAP_AXIS`, and the model is built with
  `bn_axis_name=PMAP_AXIS` so BatchNorm uses statistics over the whole global batch.
- `sharded`: `jax.jit` over a 1-D `('data',)` mesh: state and data replicated (`P()`), the order
  and hence the batch split with `P('data')`; the compiler inserts the all-reduce, and BatchNorm
  (no axis name) sees the global batch.
- `auto`: `sharded` when there is more than one device, else `none`.

With several processes (`initialize_distributed`), `sharded` spans every process's devices. The
splits then stay on the host: each process gathers only its own slice of every global batch and
`jax.make_array_from_process_local_data` assembles the global batch. Every process runs the same
loop; metrics are computed on the global batch, so they are global. Devices are never picked by
id (ids are not contiguous across processes), only by position in `jax.devices()`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxcnn import fused
from jaxcnn.compilation import compiler_options
from jaxcnn.data import Split
from jaxcnn.data.device import DeviceSplit, epoch_order, eval_order, put_on_device
from jaxcnn.data.host import place_splits
from jaxcnn.errors import JaxcnnError

STRATEGIES = ("auto", "none", "pmap", "sharded")
PMAP_AXIS = "batch"  # the named axis of pmap: lax.pmean over it; BatchNorm's axis_name
MESH_AXIS = "data"  # the one axis of the sharded strategy's mesh

# train_one(state, totals, batch, axis_name) -> (state, totals); eval_one(...) -> totals.
BatchFn = Callable[..., Any]


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, auto_detect: bool = False,
                           timeout_s: int = 300) -> bool:
    """Joins JAX's distributed runtime before any device is used; returns whether it did.

    Either all of `coordinator` ("HOST:PORT"), `num_processes` and `process_id` are given, or
    `auto_detect` asks JAX to read them from the cluster environment it recognises (SLURM, Open
    MPI, Kubernetes JobSets, Cloud TPU pods). With neither, nothing happens (one process).
    """
    given = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
    if not auto_detect and all(v is None for v in given.values()):
        return False
    if not auto_detect:
        missing = [flag for flag, value in given.items() if value is None]
        if missing:
            raise JaxcnnError(f"multi-process training needs --coordinator, --num-processes and "
                              f"--process-id together; missing {', '.join(missing)}")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise JaxcnnError(f"--process-id must be in [0, {num_processes}) and --num-processes >= 1, "
                              f"got --process-id {process_id} --num-processes {num_processes}")
        host, sep, port = coordinator.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise JaxcnnError(f"--coordinator must be HOST:PORT (e.g. 10.0.0.1:1234), got '{coordinator}'")
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id,
                                   initialization_timeout=timeout_s)
    except (RuntimeError, ValueError) as e:  # unreachable coordinator, timeout, no cluster found
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise JaxcnnError(f"jax.distributed.initialize failed ({first_line}); check --coordinator, "
                          f"--num-processes and --process-id, and that every process was started") from e
    return True


def is_main_process() -> bool:
    """Process 0: the only one that writes logs, metrics and summaries."""
    return jax.process_index() == 0


def check_divisible(batch_size: int, num_devices: int, key: str = "batch_size") -> None:
    if batch_size % num_devices:
        raise JaxcnnError(f"{key} {batch_size} is not divisible by the {num_devices} devices it is "
                          f"split across; use a multiple of {num_devices}")


class Strategy:
    """One device: plain `jax.jit`. The base of the multi-device strategies.

    The splits are placed as `dataset.input` says (on the device, or fed from the host), and the
    step calls take the split's own inputs (`DeviceSplit.train_inputs`, `HostSplit.train_inputs`).
    """

    name = "none"
    bn_axis_name: str | None = None  # the model's BatchNorm axis_name under this strategy

    def __init__(self, devices: Sequence[jax.Device] | None = None):
        self.devices = list(devices) if devices is not None else [jax.local_devices()[0]]

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    def wait(self, tree: Any) -> Any:
        """`tree` (the previous step's output), waited for when several CPU devices run the step.

        XLA:CPU launches each device's part of a call on a small thread pool (one thread per core).
        When the host dispatches many steps ahead, queued launches of later steps occupy those
        threads while waiting for earlier steps, and an earlier step's all-reduce waits for a device
        whose launch cannot get a thread: a deadlock ("Termination timeout for all reduce", seen
        with 2 simulated devices on 2 cores). Waiting for step N-1 before dispatching step N keeps
        one step in flight; on accelerators nothing waits.
        """
        if self.num_devices > 1 and self.devices[0].platform == "cpu":
            return jax.block_until_ready(tree)
        return tree

    def check_batch_size(self, batch_size: int) -> None:
        check_divisible(batch_size, self.num_devices)

    def eval_batch_size(self, requested: int, num_examples: int) -> int:
        """The eval batch: at most `requested` (and the split size), a multiple of the devices."""
        size = max(1, min(requested, num_examples))
        return math.ceil(size / self.num_devices) * self.num_devices

    def replicate(self, tree: Any) -> Any:
        """The state, or the metric totals, placed whole on every device of the strategy, once,
        so that the step calls do not copy them from one device to the others each time."""
        return jax.device_put(tree, self.devices[0])

    def place_split(self, split: Split) -> Any:
        return put_on_device(split)

    def place_splits(self, splits: tuple[Split, ...], input_mode: str, budget_mb: float) -> tuple[Any, ...]:
        """The splits as the step calls read them: on the device, or fed from the host."""
        return place_splits(splits, input_mode, budget_mb)

    def train_inputs(self, split: Any, seed: int, epoch: int, batch_size: int, start: int = 0) -> Iterator[tuple]:
        """The inputs of each training call of `epoch` from position `start`."""
        return split.train_inputs(seed, epoch, batch_size, start)

    def eval_inputs(self, split: Any, batch_size: int) -> Iterator[tuple]:
        return split.eval_inputs(batch_size)

    def compile_train(self, train_one: BatchFn, prepare: Callable, batch_fn: Callable) -> Callable:
        """`prepare(batch, state)` turns a uint8 batch into the step's batch (normalised, augmented);
        `batch_fn(*inputs)` reads the uint8 batch from the call's inputs."""

        def train_fn(state, totals, *inputs):
            return train_one(state, totals, prepare(batch_fn(*inputs), state), None)

        return jax.jit(train_fn, donate_argnums=(0, 1), compiler_options=compiler_options())

    def compile_eval(self, eval_one: BatchFn, prepare: Callable, batch_fn: Callable) -> Callable:
        def eval_fn(state, totals, *inputs):
            return eval_one(state, totals, prepare(batch_fn(*inputs), state), None)

        return jax.jit(eval_fn, donate_argnums=(1,), compiler_options=compiler_options())

    def compile_train_many(self, prepare: Callable, unroll: bool | int | None = None) -> Callable:
        """`fn(state, totals, split, order, start, num_steps) -> (state, totals, per_step_metrics)`:
        `num_steps` (static) training steps in one call (`fused.train_many`); state and totals donated."""
        return jax.jit(fused.train_many(prepare, unroll), donate_argnums=(0, 1), static_argnames=("num_steps",),
                       compiler_options=compiler_options())

    def compile_eval_all(self, prepare: Callable, unroll: bool | int | None = None) -> Callable | None:
        """`fn(state, split, order, mask) -> totals`: every evaluation batch in one call
        (`fused.eval_all`); None where the strategy evaluates one call per batch."""
        return jax.jit(fused.eval_all(prepare, unroll), compiler_options=compiler_options())

    def epoch_order(self, seed: int, epoch: int, num_examples: int, batch_size: int) -> Any:
        """The epoch's order (steps, batch) as the fused calls read it."""
        return epoch_order(seed, epoch, num_examples, batch_size)

    def step_index(self, i: int) -> Any:
        return i

    def local_copy(self, tree: Any) -> Any:
        """`tree` (e.g. the final state) as plain arrays on this process's first device, for the
        single-device work after training (predictions)."""
        return tree


class _MultiDevice(Strategy):
    """What pmap and sharded share: the splits on every device, step inputs (split, order, i)."""

    def place_splits(self, splits: tuple[Split, ...], input_mode: str, budget_mb: float) -> tuple[Any, ...]:
        if input_mode == "host":
            raise JaxcnnError(f"dataset.input=host feeds one device; with parallel={self.name} keep the "
                              "data on the devices (dataset.input=device or auto)")
        return tuple(self.place_split(s) for s in splits)

    def train_inputs(self, split: Any, seed: int, epoch: int, batch_size: int, start: int = 0) -> Iterator[tuple]:
        order = self.place_order(epoch_order(seed, epoch, len(split), batch_size))
        return ((split, order, self.step_index(i)) for i in range(start, order.shape[-2]))

    def eval_inputs(self, split: Any, batch_size: int) -> Iterator[tuple]:
        order, mask = eval_order(len(split), self.eval_batch_size(batch_size, len(split)))
        steps = order.shape[0]
        order, mask = self.place_order(order), self.place_order(mask)
        return ((split, order, mask, self.step_index(i)) for i in range(steps))

    def step_index(self, i: int) -> Any:
        return self.indices[i]

    def compile_eval_all(self, prepare: Callable, unroll: bool | int | None = None) -> Callable | None:
        return None

    def epoch_order(self, seed: int, epoch: int, num_examples: int, batch_size: int) -> Any:
        return self.place_order(epoch_order(seed, epoch, num_examples, batch_size))

    def local_copy(self, tree: Any) -> Any:
        device = jax.local_devices()[0]
        return jax.tree.map(lambda x: jax.device_put(np.asarray(x.addressable_data(0)), device)
                            if isinstance(x, jax.Array) else x, tree)


class PmapStrategy(_MultiDevice):
    """`jax.pmap` over one host's devices; cross-device means over `PMAP_AXIS`."""

    name = "pmap"
    bn_axis_name = PMAP_AXIS

    def __init__(self, devices: Sequence[jax.Device] | None = None):
        if jax.process_count() > 1:
            raise JaxcnnError("parallel=pmap runs on one process's devices; with several processes "
                              "use parallel=sharded (or auto)")
        super().__init__(devices if devices is not None else jax.local_devices())
        # pmap's outputs with out_axes=None are replicated over this mesh: placing the inputs on
        # it too means no transfer per step.
        self.mesh = jax.sharding.Mesh(np.array(self.devices), (PMAP_AXIS,))
        self.replicated = NamedSharding(self.mesh, P())
        self.indices = PlacedIndices(self.replicated)

    def replicate(self, tree: Any) -> Any:
        return _placed(tree, self.replicated)

    def place_split(self, split: Split) -> Any:
        return _placed(put_on_device(split), self.replicated)

    def place_order(self, order: jax.Array | np.ndarray) -> Any:
        # (steps, n * b) -> (n, steps, b): device d's rows are columns [d*b, (d+1)*b) of every step.
        steps, size = order.shape
        n = self.num_devices
        per_device = np.asarray(order).reshape(steps, n, size // n).transpose(1, 0, 2)
        return _placed(per_device, NamedSharding(self.mesh, P(PMAP_AXIS)))

    def compile_train(self, train_one: BatchFn, prepare: Callable, batch_fn: Callable) -> Callable:
        def train_fn(state, totals, split, order, i):
            return train_one(state, totals, prepare(DeviceSplit.train_batch(split, order, i), state), PMAP_AXIS)

        step = jax.pmap(train_fn, PMAP_AXIS, in_axes=(None, None, None, 0, None), out_axes=None,
                        devices=self.devices, donate_argnums=(0, 1))
        return lambda state, totals, split, order, i: step(self.wait(state), totals, split, order, i)

    def compile_eval(self, eval_one: BatchFn, prepare: Callable, batch_fn: Callable) -> Callable:
        def eval_fn(state, totals, split, order, mask, i):
            return eval_one(state, totals, prepare(DeviceSplit.eval_batch(split, order, mask, i), state), PMAP_AXIS)

        step = jax.pmap(eval_fn, PMAP_AXIS, in_axes=(None, None, None, 0, 0, None), out_axes=None,
                        devices=self.devices, donate_argnums=(1,))
        return lambda state, totals, split, order, mask, i: step(state, self.wait(totals), split, order, mask, i)

    def compile_train_many(self, prepare: Callable, unroll: bool | int | None = None) -> Callable:
        raise JaxcnnError("steps_per_call > 1 is not supported with parallel=pmap; use parallel=sharded "
                          "(or auto), or steps_per_call=1")


class ShardedStrategy(_MultiDevice):
    """`jax.jit` over a 1-D `('data',)` mesh of every process's devices; state replicated, batch split."""

    name = "sharded"

    def __init__(self, devices: Sequence[jax.Device] | None = None):
        super().__init__(devices if devices is not None else jax.devices())
        self.mesh = jax.make_mesh((self.num_devices,), (MESH_AXIS,),
                                  axis_types=(jax.sharding.AxisType.Auto,), devices=self.devices)
        self.replicated = NamedSharding(self.mesh, P())
        self.rows = NamedSharding(self.mesh, P(MESH_AXIS))  # a batch, split along its first axis
        self.columns = NamedSharding(self.mesh, P(None, MESH_AXIS))  # an order, split along the batch
        self.multi_process = jax.process_count() > 1
        self.indices = PlacedIndices(self.replicated)

    def replicate(self, tree: Any) -> Any:
        if self.multi_process:  # every process holds the same values: each supplies its copy
            return jax.tree.map(
                lambda x: jax.make_array_from_process_local_data(self.replicated, np.asarray(x), x.shape),
                tree)
        return _placed(tree, self.replicated)

    def place_split(self, split: Split) -> Any:
        # Several processes: the split stays on the host; each process feeds its slices (below).
        return split if self.multi_process else _placed(put_on_device(split), self.replicated)

    def place_order(self, order: jax.Array | np.ndarray) -> Any:
        return np.asarray(order) if self.multi_process else _placed(order, self.columns)

    def step_index(self, i: int) -> Any:
        return i if self.multi_process else self.indices[i]  # several processes index on the host

    def compile_train(self, train_one: BatchFn, prepare: Callable, batch_fn: Callable) -> Callable:
        if self.multi_process:
            step = jax.jit(lambda state, totals, batch: train_one(state, totals, prepare(batch, state), None),
                           donate_argnums=(0, 1), out_shardings=self.replicated,
                           compiler_options=compiler_options())
            return lambda state, totals, split, order, i: step(self.wait(state), totals,
                                                               self._feed(split, order[i]))

        def train_fn(state, totals, split, order, i):
            batch = jax.lax.with_sharding_constraint(DeviceSplit.train_batch(split, order, i), self.rows)
            return train_one(state, totals, prepare(batch, state), None)

        step = jax.jit(train_fn, donate_argnums=(0, 1), out_shardings=self.replicated,
                       compiler_options=compiler_options())
        return lambda state, totals, split, order, i: step(self.wait(state), totals, split, order, i)

    def compile_train_many(self, prepare: Callable, unroll: bool | int | None = None) -> Callable:
        if self.multi_process:
            raise JaxcnnError("steps_per_call > 1 needs the data on the devices, which a multi-process run does "
                              "not have; use steps_per_call=1")
        constrain = lambda batch: jax.lax.with_sharding_constraint(batch, self.rows)
        many = jax.jit(fused.train_many(prepare, unroll, constrain), donate_argnums=(0, 1),
                       static_argnames=("num_steps",), out_shardings=self.replicated,
                       compiler_options=compiler_options())
        return lambda state, totals, split, order, start, num_steps: many(
            self.wait(state), totals, split, order, start, num_steps=num_steps)

    def compile_eval(self, eval_one: BatchFn, prepare: Callable, batch_fn: Callable) -> Callable:
        if self.multi_process:
            step = jax.jit(lambda state, totals, batch: eval_one(state, totals, prepare(batch, state), None),
                           donate_argnums=(1,), out_shardings=self.replicated,
                           compiler_options=compiler_options())
            return lambda state, totals, split, order, mask, i: step(
                state, self.wait(totals), self._feed(split, order[i], mask[i]))

        def eval_fn(state, totals, split, order, mask, i):
            batch = DeviceSplit.eval_batch(split, order, mask, i)
            return eval_one(state, totals, prepare(jax.lax.with_sharding_constraint(batch, self.rows), state), None)

        step = jax.jit(eval_fn, donate_argnums=(1,), out_shardings=self.replicated,
                       compiler_options=compiler_options())
        return lambda state, totals, split, order, mask, i: step(state, self.wait(totals), split, order, mask, i)

    def _feed(self, split: Split, indices: np.ndarray, mask: np.ndarray | None = None) -> dict[str, jax.Array]:
        """This process's rows of one global batch, gathered on the host and assembled into the
        global batch; the rows are the ones the sharding gives this process's devices."""
        size = len(indices)
        lo, hi = self._process_rows(size)
        local = {"image": split.images[indices[lo:hi]], "label": split.labels[indices[lo:hi]]}
        if mask is not None:
            local["mask"] = mask[lo:hi]
        return {k: jax.make_array_from_process_local_data(self.rows, v, (size, *v.shape[1:]))
                for k, v in local.items()}

    def _process_rows(self, size: int) -> tuple[int, int]:
        slices = self.rows.addressable_devices_indices_map((size,)).values()
        return min(s[0].start or 0 for s in slices), max(s[0].stop or size for s in slices)


def _placed(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """`tree` on `sharding`, waited for.

    Every input of a multi-device step is on all its devices before the call, so the call itself
    copies nothing (copies share XLA:CPU's thread pool with the launches, see `Strategy.wait`):
    placed here once per epoch, evaluation or log interval, never per step.
    """
    return jax.block_until_ready(jax.device_put(tree, sharding))


class PlacedIndices:
    """Step indices as int32 scalars already on every device, so that passing the step index to a
    multi-device step transfers nothing (see `_placed`). Grown by doubling, so it blocks rarely."""

    def __init__(self, sharding: jax.sharding.Sharding):
        self.sharding = sharding
        self.placed: list[jax.Array] = []

    def __getitem__(self, i: int) -> jax.Array:
        if i >= len(self.placed):
            new = range(len(self.placed), max(2 * len(self.placed), i + 1, 64))
            self.placed.extend(_placed([np.int32(k) for k in new], self.sharding))
        return self.placed[i]


def resolve(name: str) -> str:
    """`auto` -> `sharded` with more than one device (over all processes), else `none`."""
    if name not in STRATEGIES:
        raise JaxcnnError(f"unknown parallel strategy {name!r} (parallel); expected one of: "
                          f"{', '.join(STRATEGIES)}")
    if name == "auto":
        return "sharded" if jax.device_count() > 1 else "none"
    return name


def create_strategy(name: str, devices: Sequence[jax.Device] | None = None) -> Strategy:
    """The strategy `name` over `devices` (default: all devices the strategy can use)."""
    resolved = resolve(name)
    if resolved == "none" and jax.process_count() > 1:
        raise JaxcnnError(f"parallel={name} uses one device, but {jax.process_count()} processes were "
                          "started; use parallel=sharded (or auto)")
    return {"none": Strategy, "pmap": PmapStrategy, "sharded": ShardedStrategy}[resolved](devices)
