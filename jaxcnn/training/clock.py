"""The training run's wall-clock bookkeeping (timing keys only: it never changes what is trained)."""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

from jaxcnn.runtime.compilation import cache_counts


@dataclasses.dataclass
class Clock:
    """Wall-clock bookkeeping: the training programs' compile time (and whether the compilation
    cache served the first), training time, validation time, images per second."""

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
    epoch_compile_s: float = 0.0  # compile time inside the epoch, and inside the log interval:
    log_compile_s: float = 0.0  # left out of their training time

    def start_epoch(self, step: int) -> None:
        self.epoch_start = self.log_start = time.perf_counter()
        self.epoch_compile_s = self.log_compile_s = 0.0
        self.log_step = step

    def compile(self, compile_fn: Callable[[], bool], cache_on: bool = False) -> bool:
        """Runs `compile_fn` (which compiles a training program the run has not run yet, or loads
        it from the persistent cache, and returns whether it did) outside the training time: its
        time is compile time. Every step is then timed as training, the first call's included.
        Returns True right after the run's first compilation."""
        started = time.perf_counter()
        if not compile_fn():
            return False
        elapsed = time.perf_counter() - started
        self.compile_s += elapsed
        self.epoch_compile_s += elapsed
        self.log_compile_s += elapsed
        if self.compiled:
            return False
        self.compiled = True
        if cache_on:  # every program so far loaded from the cache, none compiled anew
            counts = self.cache_counts()
            self.cache_hit = counts["hits"] > 0 and counts["misses"] == 0
        return True

    def after_call(self, num_steps: int) -> None:
        self.timed_steps += num_steps

    def log_rate(self, step: int, batch_size: int) -> float:
        """Images per second since the previous log (its compile time left out); starts the next interval."""
        now = time.perf_counter()
        seconds = max(now - self.log_start - self.log_compile_s, 1e-9)
        rate = (step - self.log_step) * batch_size / seconds
        self.steady_s += seconds
        self.steady_steps += step - self.log_step
        self.log_start, self.log_step, self.log_compile_s = now, step, 0.0
        return rate

    def end_epoch(self) -> float:
        epoch_s = time.perf_counter() - self.epoch_start - self.epoch_compile_s
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
