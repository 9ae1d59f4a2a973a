"""A run's starting weights when it fine-tunes (`config.init_from`): another run's, merged by name
into this run's fresh initial state (`core.finetune.merged`), for a single run or every member.

Applied to a new run only: a resumed run's checkpoint holds its weights already. The optimizer's
state stays as initialised: the supported optimizers build it from the parameters' shapes alone
(zero moments, step counts), which the merge keeps.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxcnn.core import ema, finetune
from jaxcnn.files.pretrained import read_pretrained


def check_freeze(config: Any, state: Any, stacked: bool) -> None:
    """Refuses (one line) a `config.freeze` pattern that matches none of the model's parameters."""
    if config.freeze:
        params = jax.tree.map(lambda leaf: leaf[0], state.params) if stacked else state.params
        finetune.check_patterns(tuple(config.freeze), params)


def starting_weights(config: Any, state: Any, num_classes: int, stacked: bool) -> tuple[Any, list[str]]:
    """`state` (on the host) with `config.init_from`'s weights, and the lines that say so (where they
    came from; the classifier head re-initialised when the classes differ). Unchanged without it."""
    if not config.init_from:
        return state, []
    source = read_pretrained(config.init_from)
    classes, head, lead = (source.num_classes, num_classes), [], 1 if stacked else 0
    params = finetune.merged(state.params, source.params, "parameter", classes, head, lead)
    batch_stats = finetune.merged(state.batch_stats, source.batch_stats, "BatchNorm statistic", classes, [], lead)
    state = state.replace(params=params, batch_stats=batch_stats)
    if ema.is_on(state):  # the averages start from the loaded weights, as they start from the initial ones
        state = state.replace(ema=jax.tree.map(np.copy, {"params": params, "batch_stats": batch_stats}))
    lines = [f"init_from: parameters and BatchNorm statistics of {source.where}"]
    return state, lines + [line for line in [finetune.head_line(head, classes)] if line]
