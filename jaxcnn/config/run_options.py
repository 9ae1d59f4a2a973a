"""The config keys that say how a run runs, not what it trains: `max_steps` (the run's length) and
`profile_steps` (parsed here; checked with the rest of the config in `config.validate_config`, and
against the run's length in `jaxcnn.training.profiling`)."""

from __future__ import annotations

from typing import Any

import ml_collections

from jaxcnn.errors import JaxcnnError


def run_length(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """The training steps the whole run takes: every epoch's, or `max_steps` when fewer."""
    total = steps_per_epoch * config.num_epochs
    return min(total, config.max_steps) if config.max_steps > 0 else total


def parse_profile_steps(value: Any) -> tuple[int, int] | None:
    """`profile_steps` -> (first, last) training steps to trace (1-based, both included), or None
    for `()` (off). Anything but two integers 1 <= first <= last is one line naming the key."""
    if value in ((), [], None, ""):
        return None
    pair = tuple(value) if isinstance(value, (tuple, list)) else None
    if (pair is None or len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in pair)
            or not 1 <= pair[0] <= pair[1]):
        raise JaxcnnError(f"profile_steps must be \"(FIRST, LAST)\": two training steps 1 <= FIRST <= LAST "
                          f"to trace, e.g. --config.profile_steps=\"(10, 15)\", or () for none; got {value!r}")
    return pair
