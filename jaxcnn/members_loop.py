"""The training loop of a run of members (`jaxcnn.members`): `loop.train_and_evaluate` hands a
config with `seeds` or a sweep to `train_members`.

The same table of contents as `jaxcnn.loop` (build the run -> train and end each epoch -> finish)
over one stacked state: every compiled call is the single run's call vmapped over the members
(`executor.over_members`). The host keeps one `LoopState` per member: its epoch sums, best values,
early stopping and plateau. A member that stops early is frozen inside the program (the `active`
input keeps its state as it was) while the others train on; the run ends when every member has
stopped or the last epoch is done. Checkpoints hold the stacked state (and each member's best
parameters, for `restore_best`), so a stopped and resumed run equals the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcnn import checkpoint, data, determinism, divergence, members, models, optim, stop
from jaxcnn.build import build, make_prepare
from jaxcnn.compilation import enable_compilation_cache
from jaxcnn.config import config_to_json, dataset_options, validate_config
from jaxcnn.data.host import choose_input
from jaxcnn.data.normalization import mean_std_for, record_mean_std
from jaxcnn.errors import JaxcnnError
from jaxcnn.evaluation import evaluate_sums
from jaxcnn.executor import Executor, plan_calls
from jaxcnn.host_memory import keep_freed_host_memory
from jaxcnn.clock import Clock
from jaxcnn.loop import Run, count_call, interrupt, stop_or_save
from jaxcnn.loop_state import due
from jaxcnn.members_feed import MembersFeed, make_member_feeds
from jaxcnn.members_memory import available_bytes, check_fits, member_bytes
from jaxcnn.members_state import MembersLoop, keep_best, stacked_zeros
from jaxcnn.metrics import TOP_K
from jaxcnn.steps import zero_eval_sums, zero_train_totals
from jaxcnn.workdir import Claim, claim_workdir, record_data_dir
from jaxcnn.writers import RunWriter


@stop.restores_signal_handlers
def train_members(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, data_dir: str | None = None,
                  quiet: bool = False, fresh: bool = False, dataset: data.Dataset | None = None) -> dict[str, Any]:
    """`loop.train_and_evaluate` for a run of members; returns the summary (with `members` and
    `aggregate`, also written to `workdir/summary.json`)."""
    from jaxcnn.members_summary import finish

    run, state, loop = build_members_run(config, workdir, data_dir, quiet, fresh, dataset)
    try:
        while loop.epoch <= run.config.num_epochs and not loop.all_stopped and not run.out_of_steps(loop):
            state = train_epoch(run, state, loop)
            state = end_epoch(run, state, loop)
        return finish(run, state, loop)
    finally:
        run.close()


@dataclasses.dataclass
class MembersRun(Run):
    """A `loop.Run` whose state is a stack of `members`; `evaluate` gives one value per member."""

    members: list[members.Member] = dataclasses.field(default_factory=list)

    @property
    def num_members(self) -> int:
        return len(self.members)

    def evaluate(self, state: Any, split: str) -> dict[str, np.ndarray]:
        zeros = self.executor.put(stacked_zeros(zero_eval_sums(), self.num_members))
        sums = evaluate_sums(self.calls, state, self.feeds[split], self.config.eval_batch_size, zeros,
                             max_batches=self.config.limit_eval_batches)
        return {"loss": sums["loss_sum"] / sums["count"], "accuracy": sums["correct"] / sums["count"],
                "count": sums["count"].astype(int)}

    def saved(self, state: Any) -> dict[str, Any]:
        """What a checkpoint holds of the stacked state: it, and each member's best variables."""
        return {"state": state, **({"best": self.best_variables} if self.best_variables is not None else {})}


def load_member_data(config: ml_collections.ConfigDict, data_dir: str | None, seeds: list[int], executor: Executor,
                     dataset: data.Dataset | None = None):
    """The dataset (its training split whole: the pool), the members' feeds, the steps per epoch,
    and the config with the normalisation used (per-channel statistics: measured on the pool)."""
    dataset = data.load_dataset(dataset or config.dataset.name, data_dir=data_dir or config.dataset.data_dir or None,
                                val_fraction=0.0, seed=config.seed, download=config.dataset.download,
                                **dataset_options(config))
    if choose_input(config.dataset.input, (dataset.train, dataset.test), config.dataset.device_budget_mb) == "host":
        raise JaxcnnError(f"seeds and sweeps read their data on the device; {dataset.name} does not fit "
                          f"dataset.device_budget_mb ({config.dataset.device_budget_mb} MiB) or dataset.input=host; "
                          "raise the budget or set dataset.input=device")
    feeds = make_member_feeds(dataset.train, dataset.test, config.dataset.val_fraction, seeds, executor)
    if config.batch_size > len(feeds["train"]):
        raise JaxcnnError(f"batch_size {config.batch_size} is larger than the training split "
                          f"({len(feeds['train'])} examples of {dataset.name}); lower batch_size")
    config = record_mean_std(config, *mean_std_for(config.dataset, dataset.train))
    config = record_data_dir(config, data_dir or config.dataset.data_dir or None)  # eval and resume use it
    return config, dataset, feeds, len(feeds["train"]) // config.batch_size


def build_members_run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, data_dir: str | None,
                      quiet: bool, fresh: bool, dataset: data.Dataset | None = None
                      ) -> tuple[MembersRun, Any, MembersLoop]:
    """`loop.build_run` for members: the stacked state, vmapped calls, one tracker per member.
    A run that would not fit in memory is refused before the workdir is written."""
    validate_config(config)
    determinism.apply(config)
    member_list = members.members_of(config)
    executor = Executor("none" if config.parallel == "auto" else config.parallel)
    claim = claim_workdir(workdir, config, fresh)
    with claim.undone_on_failure():  # a failed start leaves no lock and no empty folder
        return assemble_members_run(config, claim, executor, member_list, data_dir or claim.data_dir, quiet, dataset)


def assemble_members_run(config: ml_collections.ConfigDict, claim: Claim, executor: Executor,
                         member_list: list[members.Member], data_dir: str | None, quiet: bool,
                         dataset: data.Dataset | None = None) -> tuple[MembersRun, Any, MembersLoop]:
    cache_dir = enable_compilation_cache(config.compilation_cache_dir)
    keep_freed_host_memory()
    clock = Clock()
    config, dataset, feeds, steps_per_epoch = load_member_data(config, data_dir, [m.seed for m in member_list],
                                                               executor, dataset)
    parts = build(config, dataset.num_classes, steps_per_epoch)
    models.check_input_shape(parts.model, dataset.input_shape)
    calls = executor.compile(make_prepare(config, train=True), make_prepare(config, train=False),
                             config.loss.name, TOP_K, members=True)
    init = lambda member_list: members.init_members(lambda seed: parts.init_state(config, dataset.input_shape, seed),
                                                    member_list, config.optimizer.learning_rate)
    tracks_best = config.early_stopping.enabled and config.early_stopping.restore_best and len(feeds["val"]) > 0
    if len(member_list) > 1:
        check_memory(calls, feeds, executor.put(init(member_list[:1])), len(member_list), config.batch_size,
                     tracks_best)
    stop.check_startup(agree=True)  # a stop signal so far: stop before anything is written
    saver = checkpoint.Checkpointer(claim.path, config, {
        "dataset": dataset.name, "input_shape": dataset.input_shape, "num_classes": dataset.num_classes,
        "class_names": dataset.class_names, "steps_per_epoch": steps_per_epoch,
        "members": [m.to_json() for m in member_list]}, watch_signals=True)
    run = MembersRun(config, claim.path, dataset, executor, calls, feeds, steps_per_epoch, saver, None, clock,
                     executor.put(stacked_zeros(zero_train_totals(), len(member_list))), claim=claim,
                     cache_dir=cache_dir, members=member_list)
    state, loop = start_or_resume(run, executor.put(init(member_list)), claim.resuming, tracks_best, quiet)
    run.watch = divergence.Watch(config.on_nonfinite, loop.step, saver)
    return run, state, loop


def check_memory(calls: Any, feeds: dict[str, MembersFeed], one_state: Any, num_members: int, batch_size: int,
                 tracks_best: bool) -> None:
    """Refuses (one line) a run whose members would not fit: one member measured (`members_memory`)."""
    train = feeds["train"]
    one = MembersFeed(train.arrays, train.indices[:1], train.seeds[:1], train.executor)
    inputs, start = next(iter(one.train_calls(1, batch_size, [(0, 1)])))
    totals = train.executor.put(stacked_zeros(zero_train_totals(), 1))
    arguments = (one_state, totals, inputs, start)
    shared = sum(x.nbytes for feed in (train, feeds["test"]) for x in jax.tree.leaves(feed.arrays))
    check_fits(num_members, member_bytes(calls.programs["train"], arguments, tracks_best), shared,
               available_bytes(train.executor.devices[0]))


def start_or_resume(run: MembersRun, state: Any, resuming: bool, tracks_best: bool, quiet: bool
                    ) -> tuple[Any, MembersLoop]:
    """The initial (or restored) stacked state and trackers; the writer; the first lines."""
    config, workdir = run.config, run.workdir
    loop = MembersLoop.start(config, run.num_members)
    if tracks_best:
        run.best_variables = run.executor.put(jax.tree.map(jnp.copy, (state.params, state.batch_stats)))
    restored = run.saver.restore_latest(run.saved(state), run.totals, MembersLoop.from_json) if resuming else None
    if restored is not None:
        saved, run.totals, loop = restored
        state, run.best_variables = saved["state"], saved.get("best")
    run.writer = RunWriter(workdir, tensorboard=config.logging.tensorboard, quiet=quiet,
                           total_steps=run.steps_per_epoch * config.num_epochs, num_epochs=config.num_epochs,
                           metrics_bytes=loop.metrics_bytes if restored is not None else None)
    run.writer.write_text("config.json", config_to_json(config) + "\n")
    run.writer.line(f"training {run.num_members} members in one program: "
                    f"{', '.join(m.label for m in run.members[:4])}{', ...' * (run.num_members > 4)}")
    if restored is not None:
        run.writer.progress.resume(loop.step)
        run.writer.line(f"resuming from the checkpoint of step {loop.step} in {workdir / checkpoint.CHECKPOINT_DIR}")
    return state, loop


# ---------------------------------------------------------------------------- one epoch


def train_epoch(run: MembersRun, state: Any, loop: MembersLoop) -> Any:
    """`loop.train_epoch` for members: the same calls and stops, each member's own order."""
    config, saver = run.config, run.saver
    end = run.epoch_end(loop)  # the epoch's end, or where max_steps is
    plan = plan_calls(loop.position, end, loop.step, config.steps_per_call, (config.log_every_steps, saver.every_steps))
    inputs = run.feeds["train"].train_calls(loop.epoch, config.batch_size, plan)
    # Only early stopping stops members: without it the calls keep every member (no select).
    active = {"active": run.executor.put(loop.active())} if config.early_stopping.enabled else {}
    run.clock.start_epoch(loop.step)
    for (position, num_steps), (call_inputs, start) in zip(plan, inputs):
        state, run.totals = run.calls.train(state, run.totals, {**call_inputs, **active}, start, num_steps)
        epoch_end = count_call(run, loop, position, num_steps, end)
        if due(loop.step, config.log_every_steps) or epoch_end:
            log(run, state, loop)
        if epoch_end:
            break
        save_now, stop = stop_or_save(run, loop)
        if save_now:
            save(run, state, loop, stop)
        elif stop:
            interrupt(run, loop, saved=False)
    return state


def log(run: MembersRun, state: Any, loop: MembersLoop) -> None:
    """The interval's sums of every member: a `train` record per training member when a log step
    is due, the progress bar (means over the training members), the epochs' running sums."""
    config, active = run.config, loop.active()
    fetched = jax.device_get(run.totals)
    rate = run.clock.log_rate(loop.step, config.batch_size * run.num_members)
    steps = np.maximum(fetched["steps"], 1)  # a stopped member's sums stay 0
    loss, accuracy = fetched["loss"] / steps, fetched["accuracy"] / steps
    worst = loss[active][~np.isfinite(loss[active])]  # a member's non-finite loss stops them all (on_nonfinite)
    run.watch.check_loss(float(worst[0] if worst.size else np.max(loss[active], initial=0.0)), loop.step, state)
    if due(loop.step, config.log_every_steps):
        rates = np.asarray(jax.device_get(optim.learning_rate_in_effect(state.opt_state)))
        for m in np.flatnonzero(active):
            run.writer.write({"event": "train", "member": int(m), "epoch": loop.epoch, "step": loop.step,
                              "loss": float(loss[m]), "accuracy": float(accuracy[m]),
                              "learning_rate": float(rates[m]), "images_per_s": rate,
                              "wall_time_s": run.clock.wall()})
    run.writer.progress.log(float(np.mean(loss[active])), float(np.mean(accuracy[active])), rate)
    for m in np.flatnonzero(active):
        sums = loop.members[m].epoch_sums
        loop.members[m].epoch_sums = {k: sums[k] + fetched[k][m].item() for k in sums}
    run.totals = run.executor.put(stacked_zeros(zero_train_totals(), run.num_members))


def end_epoch(run: MembersRun, state: Any, loop: MembersLoop) -> Any:
    """Validates every training member, feeds its trackers, writes its epoch record; then saves."""
    config, epoch, active = run.config, loop.epoch, loop.active()
    epoch_s = run.clock.end_epoch()
    rates = np.asarray(jax.device_get(optim.learning_rate_in_effect(state.opt_state)))
    records = {int(m): {"event": "epoch", "member": int(m), "epoch": epoch, "step": loop.step,
                        "train_loss": loop.members[m].epoch_sums["loss"] / loop.members[m].epoch_sums["steps"],
                        "train_accuracy": loop.members[m].epoch_sums["accuracy"] / loop.members[m].epoch_sums["steps"],
                        "learning_rate": float(rates[m])} for m in np.flatnonzero(active)}
    if run.has_val:
        state = validate(run, state, loop, records)
    rate = run.steps_per_epoch * config.batch_size * run.num_members / max(epoch_s, 1e-9)
    for record in records.values():
        record.update(epoch_time_s=epoch_s, images_per_s=rate, wall_time_s=run.clock.wall())
        run.writer.write(record)
    run.writer.line(epoch_line(records, config.num_epochs, run.num_members, rate))
    for m, member in enumerate(loop.members):
        if active[m]:
            member.stopped_early = config.early_stopping.enabled and run.has_val and member.stopping.should_stop
            member.step = loop.step
            member.start_epoch()
            if member.stopped_early:
                run.writer.line(f"member {m} ({run.members[m].label}): early stopping at epoch {epoch} (best "
                                f"{member.stopping.monitor} {member.stopping.best:.4f} at epoch {member.stopping.best_epoch})")
    loop.shared.start_epoch()
    stop = run.saver.stop_agreed(True)
    last = loop.epoch > config.num_epochs or loop.all_stopped or run.out_of_steps(loop)
    if run.saver.due_at_epoch_end(loop.step, False, last, stop):
        save(run, state, loop, stop)
    elif stop:
        interrupt(run, loop, saved=False)
    return state


def validate(run: MembersRun, state: Any, loop: MembersLoop, records: dict[int, dict]) -> Any:
    """Each training member's validation metrics into its record and trackers; the best variables
    kept per member (`restore_best`); the plateau's learning-rate scale set per member."""
    val = run.evaluate(state, "val")
    improved = np.zeros(run.num_members, bool)
    for m, record in records.items():
        member = loop.members[m]
        record.update(val_loss=float(val["loss"][m]), val_accuracy=float(val["accuracy"][m]))
        member.best_val_loss = min(member.best_val_loss, record["val_loss"])
        member.best_val_accuracy = max(member.best_val_accuracy, record["val_accuracy"])
        improved[m] = member.stopping.update(record[member.stopping.monitor], loop.epoch)
        if member.plateau is not None:
            member.plateau.update(record["val_loss"])
    if run.best_variables is not None:
        run.best_variables = keep_best(run.executor.put(improved), (state.params, state.batch_stats),
                                       run.best_variables)
    if loop.members[0].plateau is not None:
        scales = np.asarray([member.plateau.scale for member in loop.members])
        factors = members.lr_factors(run.members, run.config.optimizer.learning_rate)
        state = run.executor.put(state.replace(opt_state=optim.set_lr_scale(
            state.opt_state, (factors * scales).astype(np.float32))))
    return state


def save(run: MembersRun, state: Any, loop: MembersLoop, stop: bool) -> None:
    """Saves the stacked state and every member's trackers (asynchronously); after a stop request,
    waits and stops."""
    loop.metrics_bytes = run.writer.size()
    run.watch.check_state(state, loop.step)  # no checkpoint of a diverged state
    run.saver.save(run.saved(state), run.totals, loop)
    if stop:
        interrupt(run, loop, saved=True)


def epoch_line(records: dict[int, dict], num_epochs: int, num_members: int, rate: float) -> str:
    """One line per epoch: means (± standard deviation) over the members that trained it."""
    first = next(iter(records.values()))

    def spread(key: str) -> str:
        values = np.asarray([r[key] for r in records.values()])
        return f"{values.mean():.4f}" + (f"±{values.std(ddof=1):.4f}" if len(values) > 1 else "")

    text = f"epoch {first['epoch']}/{num_epochs}  step {first['step']}  {len(records)}/{num_members} members  " \
           f"loss {spread('train_loss')}  acc {spread('train_accuracy')}"
    if "val_loss" in first:
        text += f"  val_loss {spread('val_loss')}  val_acc {spread('val_accuracy')}"
    return text + f"  {rate:.0f} member-img/s"
