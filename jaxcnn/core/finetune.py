"""Fine-tuning: starting from another run's weights (`config.init_from`) and freezing layers
(`config.freeze`).

Names are paths of the variables tree joined by "/" ("Conv_0/kernel", "BatchNorm_1/scale"). A
freeze pattern matches a name by `fnmatch`, or any name under it ("Conv_0" freezes "Conv_0/kernel"
and "Conv_0/bias"; "Conv_*" every convolution). Frozen parameters get zero updates
(`optax.multi_transform` with `optax.set_to_zero`, so weight decay cannot move them either) and
their BatchNorm statistics keep their values (`keep_frozen`, inside the training step).
"""

from __future__ import annotations

import fnmatch
from typing import Any, Sequence

import jax
import numpy as np
import optax

from jaxcnn.errors import JaxcnnError


def name_of(path: tuple) -> str:
    """A variable's name from its `jax.tree_util` key path: its keys joined by "/"."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def names(tree: Any) -> list[str]:
    return [name_of(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether `name` is matched by one of `patterns`, itself or as a name under the pattern."""
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, p.rstrip("/") + "/*") for p in patterns)


def check_patterns(patterns: Sequence[str], params: Any) -> None:
    """Refuses (one line) a freeze pattern that matches no parameter: a typo would freeze nothing."""
    known = names(params)
    for pattern in patterns:
        if not any(matches(n, [pattern]) for n in known):
            layers = sorted({n.split("/")[0] for n in known})
            raise JaxcnnError(f"freeze: {pattern!r} matches no parameter; the model's layers: {', '.join(layers)}")


def labels(patterns: Sequence[str]):
    """`multi_transform`'s label function: "frozen" for the parameters `patterns` match, else "train"."""

    def label(params: Any) -> Any:
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "frozen" if matches(name_of(path), patterns) else "train", params)

    return label


def freezing(tx: optax.GradientTransformation, patterns: Sequence[str]) -> optax.GradientTransformation:
    """`tx` for the trained parameters, zero updates for the frozen ones; `tx` itself without patterns."""
    if not patterns:
        return tx
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels(tuple(patterns)))


def keep_frozen(patterns: Sequence[str], old: Any, new: Any) -> Any:
    """The new BatchNorm statistics, but the old ones of the layers `patterns` freeze."""
    if not patterns:
        return new
    return jax.tree_util.tree_map_with_path(
        lambda path, o, n: o if matches(name_of(path), patterns) else n, old, new)


# ---------------------------------------------------------------------------- init_from


def parse_init_from(value: str) -> tuple[str, str | None]:
    """`WORKDIR[:STEP]` -> (workdir, step or None: the latest). STEP: a number, best or latest."""
    workdir, sep, step = value.rpartition(":")
    if sep and workdir and (step.isdigit() or step in ("best", "latest")):
        return workdir, step
    return value, None


def merged(fresh: Any, loaded: Any, kind: str, num_classes: tuple[int, int], notes: list[str], lead: int = 0) -> Any:
    """`fresh` (this run's initial `kind` variables) with every variable `loaded` has by the same name
    and shape. A variable whose shapes differ only in the last axis, the number of classes of each
    run (`num_classes`: source, here), is the classifier head: kept fresh, with a note. Any other
    missing or differing variable is refused in one line. `lead`: leading axes of `fresh` (1 for a
    stack of members), over which the loaded values are repeated."""
    source = {name_of(p): v for p, v in jax.tree_util.tree_flatten_with_path(loaded)[0]}

    def take(path, leaf):
        name, full = name_of(path), np.shape(leaf)
        shape = full[lead:]
        if name not in source:
            raise JaxcnnError(f"init_from: the source run has no {kind} {name!r} (of shape {shape}); "
                              f"it has {', '.join(sorted(source)[:8])}{', ...' * (len(source) > 8)}")
        have = np.shape(source[name])
        if have == shape:
            return np.broadcast_to(np.asarray(source[name], leaf.dtype), full).copy()
        if have[:-1] == shape[:-1] and (have[-1], shape[-1]) == num_classes:
            notes.append(name)
            return leaf
        raise JaxcnnError(f"init_from: {kind} {name!r} has shape {have} in the source run but {shape} here; "
                          "fine-tune the same model (only the classifier head may differ in its classes)")

    return jax.tree_util.tree_map_with_path(take, fresh)


def head_line(notes: list[str], num_classes: tuple[int, int]) -> str | None:
    """The one line saying the classifier head was re-initialised (None: it was loaded)."""
    if not notes:
        return None
    layers = sorted({n.rsplit("/", 1)[0] for n in notes})
    return (f"init_from: classifier head {', '.join(layers)} re-initialised ({num_classes[0]} classes in the "
            f"source run, {num_classes[1]} here)")
