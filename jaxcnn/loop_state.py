"""The training loop's own state: one record, saved in every checkpoint and restored whole.

`LoopState` is where the loop stands (step, epoch, position in the epoch's order, the epoch's
sums so far), what it has seen (best validation values, the early-stopping tracker, the plateau
controller) and how long `metrics.jsonl` was. `due` is the one predicate for "is it time?".
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from jaxcnn import optim


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
