"""Where a run of members stands (`MembersLoop`: one `LoopState` per member), and the small
on-device helpers of its stacked values."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcnn import optim
from jaxcnn.loop_state import EarlyStopping, LoopState


def stacked_zeros(tree: Any, num_members: int) -> Any:
    """`tree` (zeros: `zero_train_totals()`, `zero_eval_sums()`) with one copy per member."""
    return jax.tree.map(lambda x: jnp.zeros((num_members, *x.shape), x.dtype), tree)


@jax.jit
def keep_best(improved: jax.Array, variables: Any, best: Any) -> Any:
    """`best` with the members that `improved` replaced by their current `variables`."""
    return jax.tree.map(lambda new, old: jnp.where(improved.reshape((-1,) + (1,) * (new.ndim - 1)), new, old),
                        variables, best)


@dataclasses.dataclass
class MembersLoop:
    """`shared`: where the program stands (step, epoch, position in the epoch's order, the length
    of metrics.jsonl). `members`: each member's own `LoopState` (its epoch sums, best values,
    early stopping, plateau, epochs run, whether it stopped); a stopped member's is left as it was."""

    shared: LoopState
    members: list[LoopState]

    @classmethod
    def start(cls, config: ml_collections.ConfigDict, num_members: int) -> MembersLoop:
        stopping = config.early_stopping

        def fresh() -> LoopState:
            return LoopState(EarlyStopping(stopping.monitor, stopping.patience, stopping.min_delta),
                             optim.make_plateau_scheduler(config.schedule))

        return cls(fresh(), [fresh() for _ in range(num_members)])

    def to_json(self) -> dict[str, Any]:
        return {"shared": self.shared.to_json(), "members": [m.to_json() for m in self.members]}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> MembersLoop:
        return cls(LoopState.from_json(record["shared"]), [LoopState.from_json(m) for m in record["members"]])

    def active(self) -> np.ndarray:
        """One flag per member: still training (not stopped early)."""
        return np.asarray([not m.stopped_early for m in self.members])

    @property
    def all_stopped(self) -> bool:
        return not self.active().any()

    # The shared counters, read and written as a `LoopState`'s are by the loop and the checkpointer.
    step = property(lambda self: self.shared.step, lambda self, v: setattr(self.shared, "step", v))
    epoch = property(lambda self: self.shared.epoch, lambda self, v: setattr(self.shared, "epoch", v))
    position = property(lambda self: self.shared.position, lambda self, v: setattr(self.shared, "position", v))
    metrics_bytes = property(lambda self: self.shared.metrics_bytes,
                             lambda self, v: setattr(self.shared, "metrics_bytes", v))
    epochs_run = property(lambda self: self.shared.epochs_run)
