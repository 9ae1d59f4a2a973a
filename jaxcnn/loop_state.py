"""The training loop's own state: one record, saved in every checkpoint and restored whole.

`LoopState` is where the loop stands (step, epoch, position in the epoch's order, the epoch's
sums so far), what it has seen (best validation values, the early-stopping tracker, the plateau
controller) and how long `metrics.jsonl` was. `due` is the one predicate for "is it time?".
`Clock` keeps a run's times (not saved: a resumed run times itself afresh).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax

from jaxcnn import optim
from jaxcnn.compilation import cache_counts


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


@dataclasses.dataclass
class Clock:
    """Wall-clock bookkeeping: the first call's compile time (and whether the compilation cache
    served it), training time, validation time, images per second."""

    start: float = dataclasses.field(default_factory=time.perf_counter)
    cache_start: dict = dataclasses.field(default_factory=cache_counts)  # before anything compiled
    compile_s: float = 0.0
    cache_hit: bool | None = None  # None: the cache is off
    train_s: float = 0.0
    validation_s: float = 0.0
    timed_steps: int = 0
    steady_s: float = 0.0  # between log steps: training alone (no compile, validation, epoch ends)
    steady_steps: int = 0
    compiled: bool = False
    epoch_start: float = 0.0
    log_start: float = 0.0
    log_step: int = 0

    def start_epoch(self, step: int) -> None:
        self.epoch_start = self.log_start = time.perf_counter()
        self.log_step = step

    def after_call(self, totals: Any, step: int, num_steps: int, cache_on: bool) -> bool:
        """The first call compiles: its time is the compile time, not training time. Returns True
        right after that first call."""
        if self.compiled:
            self.timed_steps += num_steps
            return False
        jax.block_until_ready(totals)
        self.compile_s, self.compiled = time.perf_counter() - self.epoch_start, True
        if cache_on:  # every program so far loaded from the cache, none compiled anew
            hits, misses = (cache_counts()[k] - self.cache_start[k] for k in ("hits", "misses"))
            self.cache_hit = hits > 0 and misses == 0
        self.start_epoch(step)
        return True

    def log_rate(self, step: int, batch_size: int) -> float:
        """Images per second since the previous log; starts the next interval."""
        now = time.perf_counter()
        rate = (step - self.log_step) * batch_size / max(now - self.log_start, 1e-9)
        self.steady_s += now - self.log_start
        self.steady_steps += step - self.log_step
        self.log_start, self.log_step = now, step
        return rate

    def end_epoch(self) -> float:
        epoch_s = time.perf_counter() - self.epoch_start
        self.train_s += epoch_s
        return epoch_s

    def wall(self) -> float:
        return time.perf_counter() - self.start

    def cache_counts(self) -> dict[str, int]:
        """The compilation cache's hits and misses since this clock started."""
        return {k: v - self.cache_start[k] for k, v in cache_counts().items()}
