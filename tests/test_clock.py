"""The run's clock: compilation is timed apart, and every step, the first call's included, is training."""

from jaxcnn.training import clock as clock_module
from jaxcnn.training.clock import Clock


class FakeTime:
    def __init__(self):
        self.now = 100.0

    def perf_counter(self):
        return self.now


def test_compile_time_is_left_out_of_the_epoch_and_the_log_interval_and_every_call_counts_as_training(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr(clock_module, "time", fake)
    clock = Clock(cache_start={"hits": 0, "misses": 0})
    clock.start_epoch(0)

    def compile_for(seconds):
        def compile_fn():
            fake.now += seconds
            return seconds > 0
        return compile_fn

    assert clock.compile(compile_for(2.0)) is True  # the run's first program
    clock.after_call(4)
    fake.now += 1.0  # the first call's 4 steps run
    assert clock.compile(compile_for(0.0)) is False  # the same program: nothing compiled
    clock.after_call(4)
    fake.now += 1.0
    assert clock.log_rate(8, 10) == 40.0  # 8 steps of 10 images in 2 s of training (2 s compiling left out)
    assert clock.compile(compile_for(0.5)) is False  # a new program (a shorter last call), not the first
    clock.after_call(1)
    fake.now += 0.25
    assert clock.end_epoch() == 2.25 and clock.train_s == 2.25
    assert clock.compile_s == 2.5 and clock.timed_steps == 9
    assert clock.log_rate(9, 10) == 40.0  # 1 step in 0.25 s: the 0.5 s compile left out of this interval too
