"""The training run's wall-clock bookkeeping (timing keys only: it never changes what is trained)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax

from jaxcnn.runtime.compilation import cache_counts


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

    def after_call(self, totals: Any, step: int, num_steps: int, cache_on: bool = False) -> bool:
        """The first call compiles: its time is the compile time, not training time. Returns True
        right after that first call."""
        if self.compiled:
            self.timed_steps += num_steps
            return False
        jax.block_until_ready(totals)
        self.compile_s, self.compiled = time.perf_counter() - self.epoch_start, True
        if cache_on:  # every program so far loaded from the cache, none compiled anew
            counts = self.cache_counts()
            self.cache_hit = counts["hits"] > 0 and counts["misses"] == 0
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

    @staticmethod
    def rate(images: int, seconds: float) -> float | None:
        return images / seconds if seconds > 0 and images > 0 else None
