"""The training loop's own state: one record, saved in every checkpoint and restored whole.

`LoopState` is where the loop stands (step, epoch, position in the epoch's order, the epoch's
sums so far), what it has seen (best validation values, the early-stopping tracker, the plateau
controller) and how long `metrics.jsonl` was. `RunLoop` is a run's: the shared counters and one
`LoopState` per member (a single run is the case of one). `due` is the one predicate for "is it time?".
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections
import numpy as np

from jaxcnn.core import optim


def due(step: int, every: int) -> bool:
    """Whether something done every `every` steps (0: never) is due after `step` steps."""
    return every > 0 and step % every == 0


@dataclasses.dataclass
class EarlyStopping:
    """Stops when the monitored validation metric has not improved by `min_delta` for `patience` epochs."""

    monitor: str
    patience: int
    min_delta: float
    best: float = math.nan
    best_epoch: int = 0
    bad_epochs: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Records one epoch's value; returns True when it is a new best."""
        sign = -1.0 if self.monitor.endswith("loss") else 1.0
        if math.isnan(self.best) or sign * (value - self.best) > self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience


def zero_epoch_sums() -> dict[str, float]:
    return {"loss": 0.0, "accuracy": 0.0, "steps": 0}


@dataclasses.dataclass
class LoopState:
    """Where the training loop stands; a checkpoint holds it with the `TrainState`."""

    stopping: EarlyStopping
    plateau: optim.PlateauScheduler | None = None
    step: int = 0
    epoch: int = 1  # the epoch to run next
    position: int = 0  # the index into that epoch's order to run next
    epochs_run: int = 0
    epoch_sums: dict[str, float] = dataclasses.field(default_factory=zero_epoch_sums)
    best_val_loss: float = math.inf
    best_val_accuracy: float = -math.inf
    metrics_bytes: int = 0  # the length of metrics.jsonl when the checkpoint was taken
    stopped_early: bool = False

    def to_json(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        record["plateau"] = self.plateau.state_dict() if self.plateau is not None else None
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> LoopState:
        record = dict(record)
        stopping = EarlyStopping(**record.pop("stopping"))
        plateau = record.pop("plateau")
        return cls(stopping, optim.PlateauScheduler.from_state_dict(plateau) if plateau is not None else None,
                   **record)

    def start_epoch(self) -> None:
        """Moves to the next epoch's first step (the epoch just run is done)."""
        self.epochs_run = self.epoch
        self.epoch, self.position, self.epoch_sums = self.epoch + 1, 0, zero_epoch_sums()


def fresh_loop_state(config: ml_collections.ConfigDict) -> LoopState:
    """A member's trackers before its first step: early stopping and the plateau controller as configured."""
    stopping = config.early_stopping
    return LoopState(EarlyStopping(stopping.monitor, stopping.patience, stopping.min_delta),
                     optim.make_plateau_scheduler(config.schedule))


# The counters every member shares: where the program stands, and how long metrics.jsonl was.
SHARED = ("step", "epoch", "position", "epochs_run", "metrics_bytes")


@dataclasses.dataclass
class RunLoop:
    """Where a run stands. `shared`: the program's counters (step, epoch, position in the epoch's
    order, the length of metrics.jsonl). `members`: each member's own `LoopState` (its epoch sums,
    best values, early stopping, plateau, epochs run, whether it stopped); a stopped member's is
    left as it was. A single run is the case of one member, and its checkpoints keep the one flat
    `LoopState` record they always held (`to_json`, `from_json` read both)."""

    shared: LoopState
    members: list[LoopState]

    @classmethod
    def start(cls, config: ml_collections.ConfigDict, num_members: int) -> RunLoop:
        return cls(fresh_loop_state(config), [fresh_loop_state(config) for _ in range(num_members)])

    def to_json(self) -> dict[str, Any]:
        if len(self.members) == 1:  # a single run: one record, its counters the shared ones
            return {**self.members[0].to_json(), **{key: getattr(self.shared, key) for key in SHARED}}
        return {"shared": self.shared.to_json(), "members": [m.to_json() for m in self.members]}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> RunLoop:
        if "shared" not in record:
            return cls(LoopState.from_json(record), [LoopState.from_json(record)])
        return cls(LoopState.from_json(record["shared"]), [LoopState.from_json(m) for m in record["members"]])

    def active(self) -> np.ndarray:
        """One flag per member: still training (not stopped early)."""
        return np.asarray([not m.stopped_early for m in self.members])

    @property
    def all_stopped(self) -> bool:
        return not self.active().any()

    def start_epoch(self, trained: np.ndarray) -> None:
        """The next epoch for the program and for every member that `trained` this epoch."""
        for member, flag in zip(self.members, trained):
            if flag:
                member.step = self.step
                member.start_epoch()
        self.shared.start_epoch()

    # The shared counters, read and written as a `LoopState`'s are by the loop and the checkpointer.
    step = property(lambda self: self.shared.step, lambda self, v: setattr(self.shared, "step", v))
    epoch = property(lambda self: self.shared.epoch, lambda self, v: setattr(self.shared, "epoch", v))
    position = property(lambda self: self.shared.position, lambda self, v: setattr(self.shared, "position", v))
    metrics_bytes = property(lambda self: self.shared.metrics_bytes,
                             lambda self, v: setattr(self.shared, "metrics_bytes", v))
    epochs_run = property(lambda self: self.shared.epochs_run)
