"""The training run's wall-clock bookkeeping (timing keys only: it never changes what is trained)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax


@dataclasses.dataclass
class Clock:
    """Wall-clock bookkeeping: the first call's compile time, training time, images per second."""

    start: float = dataclasses.field(default_factory=time.perf_counter)
    compile_s: float = 0.0
    train_s: float = 0.0
    timed_steps: int = 0
    compiled: bool = False
    epoch_start: float = 0.0
    log_start: float = 0.0
    log_step: int = 0

    def start_epoch(self, step: int) -> None:
        self.epoch_start = self.log_start = time.perf_counter()
        self.log_step = step

    def after_call(self, totals: Any, step: int, num_steps: int) -> None:
        """The first call compiles: its time is the compile time, not training time."""
        if self.compiled:
            self.timed_steps += num_steps
            return
        jax.block_until_ready(totals)
        self.compile_s, self.compiled = time.perf_counter() - self.epoch_start, True
        self.start_epoch(step)

    def log_rate(self, step: int, batch_size: int) -> float:
        """Images per second since the previous log; starts the next interval."""
        now = time.perf_counter()
        rate = (step - self.log_step) * batch_size / max(now - self.log_start, 1e-9)
        self.log_start, self.log_step = now, step
        return rate

    def end_epoch(self) -> float:
        epoch_s = time.perf_counter() - self.epoch_start
        self.train_s += epoch_s
        return epoch_s

    def wall(self) -> float:
        return time.perf_counter() - self.start
