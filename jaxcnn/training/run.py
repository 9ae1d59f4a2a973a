"""A run: what it trains with (`Program`, built by `setup`, the one setup of `jaxcnn train`, the
Python API and the benches) and where it writes (`Run`, built by `build_run`).

A run trains M members: one for a plain run, or one per seed and swept value (`jaxcnn.core.members`).
Members change three places, all decided here once: the compiled calls (vmapped over a stacked
state, `member_calls.over_members`), the feed (one pool, index arrays per member, `data.members`) and
the host bookkeeping (`loop_state.RunLoop`, one tracker per member). A plain run keeps the
un-vmapped program (`stacked` is False), so its numbers and checkpoints are what they always were.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcnn import data, models
from jaxcnn.core import autotune, members, precision
from jaxcnn.files import checkpoint
from jaxcnn.runtime import determinism, stop
from jaxcnn.runtime.distributed import all_processes_json
from jaxcnn.training import callbacks as callbacks_module, divergence, profiling
from jaxcnn.training.callbacks import Callbacks
from jaxcnn.training.init_from import check_freeze, starting_weights
from jaxcnn.core.build import build, make_prepare, model_of
from jaxcnn.training.clock import Clock
from jaxcnn.runtime.compilation import enable_compilation_cache
from jaxcnn.config import config_to_json, dataset_options, validate_config
from jaxcnn.config.run_options import run_length
from jaxcnn.data.feed import make_feeds
from jaxcnn.data.normalization import mean_std_for, record_mean_std
from jaxcnn.errors import JaxcnnError
from jaxcnn.core.evaluation import eval_predict, evaluate_sums, means
from jaxcnn.core.executor import Calls, Executor
from jaxcnn.runtime.host_memory import keep_freed_host_memory
from jaxcnn.core.loop_state import RunLoop
from jaxcnn.data.members import MemberPool
from jaxcnn.training.members_memory import available_bytes, check_fits, member_bytes
from jaxcnn.core.metrics import TOP_K
from jaxcnn.core.steps import zero_eval_sums, zero_train_totals
from jaxcnn.files.workdir import Claim, claim_workdir, record_data_dir
from jaxcnn.files.writers import RunWriter


@dataclasses.dataclass
class Program:
    """What a run trains with: its data and feeds, its members, compiled calls and initial state."""

    config: ml_collections.ConfigDict  # with the normalisation and data directory it uses
    dataset: data.Dataset
    executor: Executor
    feeds: dict[str, Any]  # "train", "val", "test"
    steps_per_epoch: int
    members: list[members.Member]
    stacked: bool  # the state holds a stack of members (seeds or a sweep); False: the plain run
    calls: Calls
    state: Any
    cache_dir: pathlib.Path | None  # the persistent compilation cache (None: off)
    tuned: autotune.Tuned  # the convolutions and compiler options measured for this machine

    @property
    def num_members(self) -> int:
        return len(self.members)

    @property
    def scaled(self) -> bool:
        """Whether the run scales its loss (`dtype="float16"`): its totals count the skipped steps."""
        return precision.scaling_of(self.config) is not None

    def zero_totals(self) -> Any:
        """The training totals of a logging interval before its first step, placed."""
        return self.zeros(zero_train_totals(self.scaled))

    def zeros(self, tree: Any) -> Any:
        """`tree` (zero sums) placed on the devices: one per member for a stacked state."""
        return self.put(members.stacked_zeros(tree, self.num_members) if self.stacked else tree)

    def put(self, tree: Any) -> Any:
        """Device values of the run's state's kind placed as its calls keep them: a stack of
        members split over the devices where the executor splits them, else replicated."""
        return self.executor.put(tree, self.executor.member_state if self.stacked else None)

    def train_calls(self, epoch: int, plan: list[tuple[int, int]]) -> Any:
        """The inputs of each planned call of `epoch`: each member's own order (its seed's)."""
        feed, batch_size = self.feeds["train"], self.config.batch_size
        if self.stacked:
            return feed.train_calls(epoch, batch_size, plan)
        return feed.train_calls(self.config.seed, epoch, batch_size, plan)

    def input_states(self) -> list[Any] | None:
        """Every process's training input state for a checkpoint (the Grain feed's iterator; the
        other feeds have none: their order is a function of the loop's position)."""
        state_of = getattr(self.feeds["train"], "iterator_state", None)
        return all_processes_json(state_of()) if state_of is not None else None

    def restore_inputs(self, states: list[Any] | None) -> None:
        """This process's part of a checkpoint's `input_states()`, given back to the feed."""
        restore = getattr(self.feeds["train"], "restore", None)
        if restore is not None and states:
            restore(states[jax.process_index()] if jax.process_index() < len(states) else None)

    def evaluate(self, state: Any, split: str) -> dict[str, np.ndarray]:
        """Loss, accuracy and count over `split`, one value per member."""
        config = self.config
        return means(evaluate_sums(self.calls, state, self.feeds[split], config.eval_batch_size,
                                   self.zeros(zero_eval_sums()), max_batches=config.limit_eval_batches))

    def test(self, state: Any) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The test split in one forward pass: its loss, accuracy and count (one value per member), and
        every member's per-example `predicted`, `confidence`, `in_top_k` ((members, examples) each)."""
        config, feed, num = self.config, self.feeds["test"], self.num_members
        sums, outputs = eval_predict(self.calls, state, feed, config.eval_batch_size,
                                     self.zeros(zero_eval_sums()), max_batches=config.limit_eval_batches)
        count = min(len(feed), sum(int(np.size(o["predicted"])) for o in outputs) // num)  # the padding cut off
        predictions = {key: np.concatenate([o[key].reshape(num, -1) for o in outputs], axis=1)[:, :count]
                       for key in outputs[0]}
        return means(sums), predictions


def setup(config: ml_collections.ConfigDict, executor: Executor, data_dir: str | None,
          dataset: data.Dataset | None = None, member_list: list[members.Member] | None = None,
          recorded: autotune.Tuned | None = None) -> Program:
    """Data, members, model, compiled calls and initial state of `config`: the one setup of every
    run, timed or not. `member_list`: the config's members when the caller has them already (None:
    worked out here). A run of members that would not fit in memory is refused here (one line).
    `recorded`: the plan of convolutions and compiler options to replay (a resumed or verified run's);
    None: this machine's (`autotune.choose`)."""
    cache_dir = enable_compilation_cache(config.compilation_cache_dir)  # on by default ("auto")
    keep_freed_host_memory()  # XLA:CPU's per-call buffers are not faulted in again every call
    member_list = member_list if member_list is not None else members.members_of(config)
    stacked = member_list is not None
    member_list = member_list or [members.Member(0, config.seed)]
    config, dataset, feeds, steps_per_epoch = load_data(config, data_dir, executor, dataset, stacked)
    # One line naming the layer, before anything is measured or traced:
    models.check_input_shape(model_of(config, dataset.num_classes), dataset.input_shape)
    batches = autotune.batches_of(config, executor.num_devices, stacked and executor.split_members)
    tuned = autotune.choose(config, dataset.input_shape, dataset.num_classes, batches, cache_dir, recorded,
                            tune_steps=config.steps_per_call == 0 and not stacked,
                            run_steps=run_length(config, steps_per_epoch), period=call_period(config, steps_per_epoch))
    config = with_steps_per_call(config, tuned.steps_per_call)
    parts = build(config, dataset.num_classes, steps_per_epoch, executor.bn_axis_name, tuned.conv)
    calls = executor.compile(make_prepare(config, train=True), make_prepare(config, train=False),
                             config.loss.name, TOP_K, members=stacked, options=tuned.compiler_options())
    if not stacked:
        state = executor.put(parts.init_state(config, dataset.input_shape))
        check_freeze(config, state, stacked)
        return Program(config, dataset, executor, feeds, steps_per_epoch, member_list, False, calls, state, cache_dir,
                       tuned)
    init = lambda some: members.init_members(lambda seed: parts.init_state(config, dataset.input_shape, seed),
                                             some, config.optimizer.learning_rate)
    pool, seeds = feeds, [m.seed for m in member_list]
    measured = executor.num_devices if executor.split_members else 1  # one member per device
    if len(member_list) > measured:  # measured before the other members' indices and states exist
        check_memory(calls, pool, executor.put(init(member_list[:measured]), executor.member_state),
                     len(member_list) // measured, config)
    feeds = pool.feeds(seeds)
    state = executor.put(init(member_list), executor.member_state)
    check_freeze(config, state, stacked)
    return Program(config, dataset, executor, feeds, steps_per_epoch, member_list, True, calls, state, cache_dir, tuned)


def call_period(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """The steps between the points where a training call must end (`executor.plan_calls`): the gcd
    of the epoch's steps and the logging and checkpoint intervals."""
    return math.gcd(steps_per_epoch, config.log_every_steps, checkpoint.save_interval(config.checkpoint))


def with_steps_per_call(config: ml_collections.ConfigDict, measured: int) -> ml_collections.ConfigDict:
    """`config` with its `steps_per_call` 0 (chosen by measurement) replaced by the plan's count
    (1 where nothing was measured: off the CPU, for members, with the autotuner off), as config.json
    then records it; a count the user set stays."""
    if config.steps_per_call != 0:
        return config
    config = copy.deepcopy(config)
    config.steps_per_call = measured
    return config


def load_data(config: ml_collections.ConfigDict, data_dir: str | None, executor: Executor,
              dataset: data.Dataset | None = None, stacked: bool = False):
    """The dataset (`dataset` if given, else the config's), its feeds, the steps per epoch, and the
    config with the normalisation it uses. For members (`stacked`) the training split is one pool,
    whole, from which each member carves its own validation split: a `MemberPool` instead of feeds."""
    dataset = data.load_dataset(dataset or config.dataset.name, data_dir=data_dir or config.dataset.data_dir or None,
                                val_fraction=0.0 if stacked else config.dataset.val_fraction, seed=config.seed,
                                download=config.dataset.download, lazy=config.dataset.input == "grain",
                                **dataset_options(config))
    if stacked:
        feeds = MemberPool(dataset.train, dataset.test, config.dataset.val_fraction, executor, config.dataset.input,
                           config.dataset.device_budget_mb)
        train_size = feeds.train_size
    else:
        splits = (dataset.train, dataset.val, dataset.test)
        feeds = dict(zip(("train", "val", "test"), make_feeds(
            splits, config.dataset.input, config.dataset.device_budget_mb, executor, config.dataset.workers,
            tuple(config.augment.random_resized_crop) or None)))
        train_size = len(feeds["train"])
    if config.batch_size > train_size:
        raise JaxcnnError(f"batch_size {config.batch_size} is larger than the training split "
                          f"({train_size} examples of {dataset.name}); lower batch_size")
    config = record_mean_std(config, *mean_std_for(config.dataset, dataset.train))  # config.json holds them
    config = record_data_dir(config, data_dir or config.dataset.data_dir or None)  # eval and resume use it
    return config, dataset, feeds, train_size // config.batch_size


def check_memory(calls: Calls, pool: MemberPool, one_state: Any, num_members: int,
                 config: ml_collections.ConfigDict) -> None:
    """Refuses (one line) a run whose members would not fit: one member (per device) measured
    (`members_memory`) with its indices; `num_members`: how many each device holds."""
    measured = jax.tree.leaves(one_state)[0].shape[0]
    feeds = pool.feeds([config.seed] * measured)
    inputs, start = next(iter(feeds["train"].train_calls(1, config.batch_size, [(0, 1)])))
    scaled = precision.scaling_of(config) is not None
    totals = pool.executor.put(members.stacked_zeros(zero_train_totals(scaled), measured), pool.executor.member_state)
    tracks_best = config.early_stopping.enabled and config.early_stopping.restore_best and len(feeds["val"]) > 0
    shared = sum(x.nbytes for feed in (feeds["train"], feeds["test"]) for x in jax.tree.leaves(feed.device_arrays))
    one = member_bytes(calls.programs["train"], (one_state, totals, inputs, start), tracks_best) + pool.index_bytes
    check_fits(num_members, one, shared, available_bytes(pool.executor.devices[0]))


# ---------------------------------------------------------------------------- the run


@dataclasses.dataclass
class Run(Program):
    """A `Program` with its workdir: checkpoints, writers, clock, and the loop's device values."""

    workdir: pathlib.Path = None
    saver: checkpoint.Checkpointer = None
    writer: RunWriter = None
    clock: Clock = None
    totals: Any = None  # the on-device sums of the current logging interval
    best_variables: Any = None  # (params, batch_stats) of the best epoch (per member), for restore_best
    watch: divergence.Watch | None = None  # stops on a non-finite loss (config.on_nonfinite)
    claim: Claim | None = None  # the workdir's lock, released on close
    profiler: profiling.Profiler = profiling.OFF  # the trace of config.profile_steps
    callbacks: Callbacks = dataclasses.field(default_factory=Callbacks)  # the Python API's callbacks (`jaxcnn.training.callbacks`)

    @property
    def has_val(self) -> bool:
        return len(self.feeds["val"]) > 0

    @property
    def tracks_best(self) -> bool:
        stopping = self.config.early_stopping
        return stopping.enabled and stopping.restore_best and self.has_val

    def saved(self, state: Any) -> Any:
        """What a checkpoint holds: the state; for members also each member's best variables."""
        if not self.stacked:
            return state
        return {"state": state, **({"best": self.best_variables} if self.best_variables is not None else {})}

    def epoch_end(self, loop: RunLoop) -> int:
        """The epoch position training stops at in `loop`'s epoch: its end, or where `max_steps` is."""
        if not self.config.max_steps:
            return self.steps_per_epoch
        return min(self.steps_per_epoch, loop.position + max(self.config.max_steps - loop.step, 0))

    def out_of_steps(self, loop: RunLoop) -> bool:
        return 0 < self.config.max_steps <= loop.step

    def close(self) -> None:
        try:
            self.profiler.stop()  # a trace still running when training stopped early or failed
            for feed in self.feeds.values() if isinstance(self.feeds, dict) else ():
                getattr(feed, "close", lambda: None)()  # the Grain feed's worker processes
            if self.writer is not None:
                self.writer.close()
            if self.saver is not None:
                self.saver.close()
        finally:
            if self.claim is not None:
                self.claim.release()


def build_run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, data_dir: str | None,
              quiet: bool, fresh: bool, dataset: data.Dataset | None = None,
              callbacks: Callbacks = callbacks_module.NONE) -> tuple[Run, Any, RunLoop]:
    """The run's program and workdir; resumed from the workdir's last checkpoint when it holds an
    unfinished run."""
    validate_config(config)
    determinism.apply(config)  # a GPU backend started without the deterministic flag: refused
    member_list = members.members_of(config)  # bad seeds or sweep values: refused before the workdir is touched
    executor = Executor(config.parallel, members=len(member_list or ()))
    executor.check_batch_size(config.batch_size)
    claim = claim_workdir(workdir, config, fresh)  # chosen; checked, created and locked by process 0
    with claim.undone_on_failure():  # a failed start leaves no lock and no empty folder
        run, state, loop = assemble_run(config, claim, executor, data_dir or claim.data_dir, quiet, dataset,
                                        member_list)
        run.callbacks = callbacks
        return run, state, loop


def assemble_run(config: ml_collections.ConfigDict, claim: Claim, executor: Executor, data_dir: str | None,
                 quiet: bool, dataset: data.Dataset | None = None,
                 member_list: list[members.Member] | None = None) -> tuple[Run, Any, RunLoop]:
    """The run in the claimed workdir; a stop signal during its start-up stops it (`stop.check_startup`)."""
    clock = Clock()
    program = setup(config, executor, data_dir, dataset, member_list, recorded_plan(claim))
    config = program.config
    profiler = profiling.Profiler(config, claim.path, program.steps_per_epoch)  # a range beyond the run: refused
    stop.check_startup(agree=True)  # a stop signal so far: stop before anything is written
    saver = checkpoint.Checkpointer(claim.path, config, {
        "dataset": program.dataset.name, "input_shape": program.dataset.input_shape,
        "num_classes": program.dataset.num_classes, "class_names": program.dataset.class_names,
        "steps_per_epoch": program.steps_per_epoch,
        **({"members": [m.to_json() for m in program.members]} if program.stacked else {})}, watch_signals=True)
    fields = {f.name: getattr(program, f.name) for f in dataclasses.fields(Program)}
    run = Run(**fields, workdir=claim.path, saver=saver, clock=clock, totals=program.zero_totals(),
              claim=claim, profiler=profiler)
    state, loop = start_or_resume(run, program.state, claim.resuming, quiet)
    run.state = None  # the loop owns the state from here (donated to every call)
    run.watch = divergence.Watch(config.on_nonfinite, loop.step, saver)
    return run, state, loop


def recorded_plan(claim: Claim) -> autotune.Tuned | None:
    """The plan the workdir records (`autotune.PLAN_FILE`): replayed, so that a resumed or verified
    run computes what the original did. A run resumed from before plans were recorded: the defaults."""
    recorded = autotune.read_plan(claim.path / autotune.PLAN_FILE, "recorded")
    return autotune.DEFAULT if recorded is None and claim.resuming else recorded


def start_or_resume(run: Run, state: Any, resuming: bool, quiet: bool) -> tuple[Any, RunLoop]:
    """The initial (or restored) state and trackers; the writer; the first lines."""
    config, workdir, saver = run.config, run.workdir, run.saver
    loop = RunLoop.start(config, run.num_members)
    if run.stacked and run.tracks_best:  # each member's best so far, selected per member (keep_best)
        run.best_variables = run.put(jax.tree.map(jnp.copy, (state.params, state.batch_stats)))
    restored = saver.restore_latest(run.saved(state), run.totals, RunLoop.from_json) if resuming else None
    notes = []
    if restored is None and config.init_from:  # a new run that fine-tunes: its starting weights
        state, notes = starting_weights(config, jax.device_get(state), run.dataset.num_classes, run.stacked)
        state = run.put(state)
        if run.best_variables is not None:
            run.best_variables = run.put(jax.tree.map(jnp.copy, (state.params, state.batch_stats)))
    elif restored is not None:
        saved, run.totals, loop = restored
        run.restore_inputs(saver.restored_inputs)
        state, run.best_variables = (saved["state"], saved.get("best")) if run.stacked else (saved, None)
        if not run.stacked and run.tracks_best and saver.best_step is not None:
            run.best_variables = saver.restore_variables(saver.best_step, state, run.totals)
    run.writer = RunWriter(workdir, tensorboard=config.logging.tensorboard, quiet=quiet,
                           total_steps=run.steps_per_epoch * config.num_epochs, num_epochs=config.num_epochs,
                           metrics_bytes=loop.metrics_bytes if restored is not None else None, config=config)
    run.writer.write_text("config.json", config_to_json(config) + "\n")
    run.writer.write_json(autotune.PLAN_FILE, run.tuned.to_json())
    if restored is not None:
        run.writer.progress.resume(loop.step)
        run.writer.line(f"resuming from the checkpoint of step {loop.step} in {workdir / checkpoint.CHECKPOINT_DIR}")
    run.writer.line(start_line(run, state))
    for line in notes:
        run.writer.line(line)
    return state, loop


def start_line(run: Run, state: Any) -> str:
    config, dataset = run.config, run.dataset
    params = jax.tree.map(lambda leaf: leaf[0], state.params) if run.stacked else state.params
    what = (f"{run.num_members} members ({', '.join(m.label for m in run.members[:4])}"
            f"{', ...' * (run.num_members > 4)}) of " if run.stacked else "")
    return (f"training {what}{config.model.name} ({models.count_params(params):,} parameters) on "
            f"{len(run.feeds['train']):,} {dataset.name} images: {config.num_epochs} epochs of {run.steps_per_epoch} "
            f"steps of {config.batch_size}; compiling")
