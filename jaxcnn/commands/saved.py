"""A trained model from its workdir's checkpoints: `jaxcnn eval` and `jaxcnn predict`.

The model, optimizer and input pipeline are rebuilt from the config stored in the checkpoint, the
arrays restored into that state, and evaluation runs through the loop's own `evaluate`, so the
numbers are the training run's numbers.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import pathlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcnn import data
from jaxcnn.core import autotune, ema, losses, precision
from jaxcnn.files import checkpoint
from jaxcnn.core.augment import tta_logits, with_mirror
from jaxcnn.core.build import build, make_prepare, tta_of
from jaxcnn.config import config_from_json, dataset_options
from jaxcnn.data.device import normalize
from jaxcnn.data.feed import DeviceFeed
from jaxcnn.data.images import load_image
from jaxcnn.errors import JaxcnnError
from jaxcnn.models.conv_plan import FORWARD
from jaxcnn.core.evaluation import eval_predict, evaluate, means
from jaxcnn.core.executor import Executor
from jaxcnn.core.metrics import TOP_K, classification_metrics
from jaxcnn.core.state import TrainState
from jaxcnn.core.steps import eval_predict_step, zero_eval_sums, zero_train_totals


@dataclasses.dataclass
class SavedModel:
    """The state of one checkpoint step with the config and dataset facts of its run."""

    workdir: pathlib.Path
    step: int
    config: ml_collections.ConfigDict
    meta: dict[str, Any]
    state: TrainState
    tuned: autotune.Tuned = autotune.DEFAULT  # the run's recorded convolutions and compiler options

    def jit(self, fn: Any) -> Any:
        """`fn` jitted with the XLA options the run chose for its forward-only programs."""
        return jax.jit(fn, compiler_options=self.tuned.compiler_options()[FORWARD])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["input_shape"])

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.meta["class_names"])


def _choose_step(manager: Any, which: str | None, meta: dict[str, Any], config: ml_collections.ConfigDict,
                 directory: pathlib.Path) -> int:
    """`which`: "best", "latest", a step number, or None for the step whose parameters the run's
    final test used (the best with early_stopping.restore_best, else the latest)."""
    steps = manager.all_steps()
    latest = max(steps)
    if which is None:
        restores_best = config.early_stopping.enabled and config.early_stopping.restore_best
        return meta["best_step"] if restores_best and meta["best_step"] is not None else latest
    if which == "latest":
        return latest
    if which == "best":
        if meta["best_step"] is None or meta["best_step"] not in steps:
            raise JaxcnnError(f"{directory} has no best checkpoint (the run had no validation split or no "
                              "finished epoch); use --step latest")
        return meta["best_step"]
    try:
        step = int(which)
    except ValueError:
        raise JaxcnnError(f"--step must be best, latest or a step number, got {which!r}") from None
    if step not in steps:
        raise JaxcnnError(f"{directory} has no checkpoint for step {step}; it has steps "
                          f"{', '.join(map(str, sorted(steps)))}")
    return step


def _read(reader: Any, manager: Any, step: int, directory: pathlib.Path, *args: Any) -> Any:
    try:
        return reader(manager, step, *args)
    except Exception as e:  # Orbax and tensorstore raise many types for damaged files
        text = " ".join(str(e).split())[:200]  # Orbax's messages run over several lines: one line
        raise JaxcnnError(f"checkpoint step {step} in {directory} cannot be read ({type(e).__name__}: "
                          f"{text}); pick another with --step") from e


def check_same_run(workdir: pathlib.Path, saved_config: dict[str, Any]) -> None:
    """Refuses checkpoints whose config is not the run's `config.json` (a `checkpoints/` folder
    replaced by another run's), which eval and predict would otherwise use silently; the keys a
    resumed run may change are ignored. Nothing to compare without a readable config.json."""
    from jaxcnn.files.workdir import config_differences

    try:
        recorded = json.loads((workdir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    differing = config_differences(saved_config, recorded) if isinstance(recorded, dict) else []
    if differing:
        raise JaxcnnError(f"the checkpoints in {workdir / checkpoint.CHECKPOINT_DIR} are not of the run in "
                          f"{workdir / 'config.json'}: {', '.join(differing)[:300]}; were they copied from another "
                          "run? restore the run's own checkpoints/")


def load_saved_model(workdir: str | pathlib.Path, step: str | None = None, member: int | None = None) -> SavedModel:
    """The model saved in `workdir/checkpoints` at `step` (see `_choose_step`); reads only. A run of
    members needs `member`: that member's parameters, with its config (`member_config`)."""
    workdir = pathlib.Path(workdir)
    directory = workdir / checkpoint.CHECKPOINT_DIR
    if not directory.is_dir():
        raise JaxcnnError(f"workdir '{workdir}' has no {checkpoint.CHECKPOINT_DIR}/ folder; pass the "
                          "--workdir of a run trained with checkpoint.enabled=true")
    manager = checkpoint.open_manager(directory, read_only=True)
    try:
        if not manager.all_steps():
            raise JaxcnnError(f"{directory} holds no committed checkpoint; train longer or resume the run first")
        latest_meta = _read(checkpoint.read_meta, manager, manager.latest_step(), directory)
        check_member(workdir, latest_meta.get("members"), member)
        check_same_run(workdir, latest_meta["config"])
        config = config_from_json(json.dumps(latest_meta["config"]))
        chosen = _choose_step(manager, step, latest_meta, config, directory)
        meta = _read(checkpoint.read_meta, manager, chosen, directory)
        config = config_from_json(json.dumps(meta["config"]))
        tuned = autotune.read_plan(workdir / autotune.PLAN_FILE, "recorded") or autotune.DEFAULT
        like = _abstract_saved(config, meta, tuned.conv)
        restored = _read(checkpoint.read_arrays, manager, chosen, directory, like)
    finally:
        manager.close()
    if member is None:  # with EMA on, the moving averages (what the run validated and tested)
        return SavedModel(workdir, chosen, config, meta, ema.view(restored["train_state"]), tuned)
    state = _member_state(restored["train_state"], member, best=step is None and _restores_best(config))
    return SavedModel(workdir, chosen, member_config(config, meta["members"][member]), meta, state, tuned)


def check_member(workdir: pathlib.Path, members_meta: list | None, member: int | None) -> None:
    """`--member K`: required for a run of members (0 <= K < its members), refused for a single run."""
    if not members_meta:
        if member is not None:
            raise JaxcnnError(f"--member applies to a run of members (seeds or a sweep); workdir '{workdir}' "
                              "trained one model: leave --member out")
        return
    if member is None:
        raise JaxcnnError(f"workdir '{workdir}' trained {len(members_meta)} members in one program (seeds or a "
                          f"sweep); choose one with --member K (0 to {len(members_meta) - 1})")
    if isinstance(member, bool) or not isinstance(member, numbers.Integral) or not 0 <= member < len(members_meta):
        raise JaxcnnError(f"--member must be a member of the run, 0 to {len(members_meta) - 1}, got {member!r}")


def _restores_best(config: ml_collections.ConfigDict) -> bool:
    stopping = config.early_stopping
    return stopping.enabled and stopping.restore_best and config.dataset.val_fraction > 0


def _abstract_saved(config: ml_collections.ConfigDict, meta: dict[str, Any], plan: tuple = ()) -> dict[str, Any]:
    """The checkpoint's arrays as shapes only, placed on this process's first device: a single
    run's state, or a run of members' stacked state (and each member's best variables). `plan`: the
    run's convolution plan, which the state's model computes with."""
    parts = build(config, meta["num_classes"], meta["steps_per_epoch"], conv_plan=plan)
    shape = tuple(meta["input_shape"])
    scaled = precision.scaling_of(config) is not None  # float16: the totals count skipped steps
    totals = jax.eval_shape(lambda: zero_train_totals(scaled))
    if not meta.get("members"):
        state = parts.abstract_state(config, shape)
    else:
        from jaxcnn.core import members  # the stacked state's layout: its seeds and swept values

        member_list = members.members_of(config)
        stack = jax.eval_shape(lambda: members.init_members(lambda seed: parts.init_state(config, shape, seed),
                                                            member_list, config.optimizer.learning_rate))
        state = {"state": stack, **({"best": (stack.params, stack.batch_stats)} if _restores_best(config) else {})}
        totals = jax.eval_shape(lambda: members.stacked_zeros(zero_train_totals(scaled), len(member_list)))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                        {"train_state": state, "totals": totals})


def _member_state(saved: dict[str, Any], member: int, best: bool) -> TrainState:
    """Member `member` of a stacked saved state; with `best`, its best epoch's variables (restore_best)."""
    own = lambda tree: jax.tree.map(lambda leaf: leaf[member], tree)
    state = ema.view(own(saved["state"]))
    if best and "best" in saved:
        params, batch_stats = own(saved["best"])
        state = state.replace(params=params, batch_stats=batch_stats)
    return state


def member_config(config: ml_collections.ConfigDict, member: dict[str, Any]) -> ml_collections.ConfigDict:
    """The config of one member as its own single run: its seed and swept values, no seeds or sweep."""
    values = {"seed": member["seed"], "seeds": None, **member["sweep"]}
    values.update({f"sweep.{section}.{key}": None for section, sub in config.sweep.items() for key in sub})
    own = config_from_json(json.dumps(config.to_dict()))
    with own.unlocked():
        for dotted, value in values.items():
            *path, key = dotted.split(".")
            section = own
            for name in path:
                section = section[name]
            section[key] = value
    return own


def evaluate_saved(saved: SavedModel, split: str = "test", data_dir: str | None = None) -> dict[str, Any]:
    """Loss and accuracy of the saved model on its dataset's `split` ("test" or "val"), keyed as in
    `summary.json` (`test_accuracy`, `test_loss`, `test_examples`, ...)."""
    if split not in ("test", "val"):
        raise JaxcnnError(f"--split must be test or val, got {split!r}")
    config = saved.config
    dataset = data.load_dataset(config.dataset.name, data_dir=data_dir or config.dataset.data_dir or None,
                                val_fraction=config.dataset.val_fraction, seed=config.seed,
                                **dataset_options(config))
    examples = dataset.test if split == "test" else dataset.val
    if len(examples) == 0:
        raise JaxcnnError(f"the run has no {split} split (dataset.val_fraction is 0); use --split test")
    executor = Executor("none")
    calls = executor.compile(make_prepare(config, train=False), make_prepare(config, train=False),
                             config.loss.name, TOP_K, options=saved.tuned.compiler_options())
    state, feed = executor.put(saved.state), DeviceFeed(examples, executor)
    if split == "test":  # the program the run's test used (`Run.test`), so the numbers are its own
        sums, _ = eval_predict(calls, state, feed, config.eval_batch_size, executor.put(zero_eval_sums()))
        result = {key: value.item() for key, value in means(sums).items()}
    else:  # the validation's program
        result = evaluate(calls, state, feed, config.eval_batch_size)
    return {f"{split}_accuracy": result["accuracy"], f"{split}_loss": result["loss"],
            f"{split}_examples": result["count"], "step": saved.step, "model": config.model.name,
            "dataset": dataset.name, "seed": config.seed}


def evaluate_arrays(saved: SavedModel, pixels: np.ndarray, labels: np.ndarray, batch_size: int = 1000) -> dict:
    """Loss, accuracy and the test metrics (`classification_metrics`, as `summary.json`'s
    `test_metrics`) of uint8 `pixels` (N, H, W, C) with int `labels` (N,): the run's own test step
    (`eval_predict_step`) on its normalisation, so the numbers are those
    its test would give on these images."""
    if labels.max() >= len(saved.class_names):
        raise JaxcnnError(f"labels: class {labels.max()} is out of range; the model has "
                          f"{len(saved.class_names)} classes (0 to {len(saved.class_names) - 1})")
    mean, std, loss_name = saved.config.dataset.mean, saved.config.dataset.std, saved.config.loss.name

    @saved.jit
    def outputs(state, images, classes):
        batch = {"image": normalize(images, mean, std), "label": classes, "mask": jnp.ones(classes.shape)}
        return eval_predict_step(state, batch, loss_name, TOP_K)

    parts = [jax.device_get(outputs(saved.state, pixels[i:i + batch_size], labels[i:i + batch_size]))
             for i in range(0, len(pixels), batch_size)]
    count = sum(float(sums["count"]) for sums, _ in parts)
    each = {key: np.concatenate([out[key] for _, out in parts]) for key in parts[0][1]}
    metrics = classification_metrics(labels, each["predicted"], each["confidence"], each["in_top_k"],
                                     saved.class_names)
    return {"loss": sum(float(sums["loss_sum"]) for sums, _ in parts) / count,
            "accuracy": sum(float(sums["correct"]) for sums, _ in parts) / count, "count": int(count),
            "metrics": metrics}


# ---------------------------------------------------------------------------- predict


def check_top(top: int) -> None:
    """`--top` (classes to print per file) must be at least 1; more than the classes prints them all."""
    if isinstance(top, bool) or not isinstance(top, numbers.Integral) or top < 1:
        raise JaxcnnError(f"--top must be a whole number of classes >= 1, got {top!r}")


def classifier(saved: SavedModel) -> Callable[[Any, jax.Array], jax.Array]:
    """`classify(variables, pixels)`: uint8 images (B, H, W, C) of the run's input shape -> float32
    (B, num_classes) class probabilities. Normalised as in training, the model in evaluation mode
    (BatchNorm's running averages, no dropout), the output activation of the run's loss
    (`losses.predict_probabilities`). `jaxcnn predict` and `jaxcnn export` both compute this."""
    apply_fn, mean, std = saved.state.apply_fn, saved.config.dataset.mean, saved.config.dataset.std
    loss_name, flip = saved.config.loss.name, tta_of(saved.config) == "flip"  # eval.tta: as in the run's test

    def classify(variables: Any, pixels: jax.Array) -> jax.Array:
        batch = {"image": normalize(pixels, mean, std)}
        logits = tta_logits(lambda images: apply_fn(variables, images, train=False),
                            with_mirror(batch) if flip else batch)
        return losses.predict_probabilities(loss_name, logits.astype(jnp.float32))

    return classify


def predict(saved: SavedModel, files: Sequence[str | pathlib.Path], top: int = 3,
            invert: bool = False) -> list[dict[str, Any]]:
    """For each file, its `top` classes (at most all of them) by probability (softmax, or sigmoid for
    a run trained with binary_cross_entropy): [{"file", "top": [{"class", "name", "probability"},
    ...]}, ...]. `invert`: see `load_image`."""
    check_top(top)
    if not files:
        raise JaxcnnError("predict needs at least one image file")
    pixels = np.stack([load_image(f, saved.input_shape, invert) for f in files])
    probabilities = saved.jit(classifier(saved))(saved.state.variables(), jnp.asarray(pixels))
    return top_classes(files, np.asarray(probabilities), saved.class_names, top)


def top_classes(files: Sequence[str | pathlib.Path], probabilities: np.ndarray, class_names: Sequence[str],
                top: int) -> list[dict[str, Any]]:
    """Each file's `top` classes by probability (ties by class index), as `predict` returns them."""
    top = min(top, probabilities.shape[-1])
    results = []
    for file, row in zip(files, probabilities):
        best = np.argsort(-row, kind="stable")[:top]
        results.append({"file": str(file), "top": [
            {"class": int(c), "name": class_names[c], "probability": float(row[c])} for c in best]})
    return results
