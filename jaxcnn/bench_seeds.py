"""`jaxcnn bench --seeds N`: N members in one compiled program against N single runs one by one.

Both sides train the same model on the same data with the training loop's own calls
(`executor.compile`, `steps_per_call` steps per call, data on the device, state donated): the
single run with one seed, the members with the seeds `seed`, ..., `seed + N - 1`, each with its own
epoch order (`executor.over_members`). Throughput is member-images per second: images trained per
second summed over the members. N single runs one after another train one member at a time, so
their member-images per second is the single run's images per second (each run's compilation
excluded, as it is from the members' rate; both compile times are reported). The two programs are
timed in alternation (`--repeats` pairs of at least `--min-time` seconds each) and the speedup is
the median of the pairs' ratios, so that the load of a shared machine weighs on both alike (its
1-minute load average is recorded with each row).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from jaxcnn import losses, members, optim
from jaxcnn.bench import (BenchSettings, LEARNING_RATE, MOMENTUM, TrainCycle, Workload, _workload, call_starts,
                          check_settings, environment, timed_rate)
from jaxcnn.build import prepare_fn
from jaxcnn.checks import check_seed_count
from jaxcnn.compilation import enable_compilation_cache
from jaxcnn.data.device import epoch_order
from jaxcnn.data.feed import DeviceFeed
from jaxcnn.errors import JaxcnnError
from jaxcnn.executor import Executor
from jaxcnn.host_memory import keep_freed_host_memory
from jaxcnn.members_state import stacked_zeros
from jaxcnn.metrics import TOP_K
from jaxcnn.state import create_train_state
from jaxcnn.steps import zero_train_totals


def _program(work: Workload, settings: BenchSettings, num_members: int | None) -> dict[str, Any]:
    """The compiled training call of a single run (`num_members` None) or of a stack of
    `num_members` members, warmed up: `train_some` (one call; returns the member-images it trained),
    `sync` (waits for the state) and the cold `compile_s`."""
    tx = optim.create_optimizer({"name": "sgd", "learning_rate": LEARNING_RATE, "momentum": MOMENTUM},
                                {"name": "constant"}, steps_per_epoch=len(work.order), num_epochs=1)
    loss_fn = losses.make_classification_loss("cross_entropy", work.num_classes)
    model, shape = work.model(settings.conv_impl), tuple(work.train.images.shape[1:])
    executor = Executor("none")
    prepare = prepare_fn(work.mean, work.std)
    calls = executor.compile(prepare, prepare, "cross_entropy", TOP_K, members=num_members is not None)
    init = lambda seed: create_train_state(model, tx, loss_fn, shape, seed)
    if num_members is None:
        state, totals = executor.put(init(settings.seed)), executor.put(zero_train_totals())
        order, count = work.order, 1
    else:
        group = [members.Member(i, settings.seed + i) for i in range(num_members)]
        state = executor.put(members.init_members(init, group, LEARNING_RATE))
        totals = executor.put(stacked_zeros(zero_train_totals(), num_members))
        order = np.stack([np.asarray(epoch_order(m.seed, 1, len(work.train.labels), work.batch_size)) for m in group])
        count = num_members
    inputs = {**DeviceFeed(work.train, executor).arrays, "order": executor.put(order)}
    k = settings.steps_per_call
    start = time.perf_counter()
    compiled = calls.programs["train"].lower(state, totals, inputs, executor.index(0), num_steps=k).compile()
    compile_s = time.perf_counter() - start
    cycle = TrainCycle(compiled, state, totals, inputs, call_starts(executor, len(work.order), k),
                       work.batch_size * k * count)
    cycle()
    return {"train_some": cycle, "sync": cycle.sync, "compile_s": compile_s}


def _rates(work: Workload, settings: BenchSettings, num_members: int) -> dict[str, Any]:
    """Both programs, timed in alternation (`repeats` times each), so that the load of a shared
    machine weighs on both alike: the medians of their rates and of the ratio of each pair."""
    single, stacked = _program(work, settings, None), _program(work, settings, num_members)
    pairs = []
    for _ in range(settings.repeats):
        one = timed_rate(single["train_some"], single["sync"], settings.min_time, 1)
        many = timed_rate(stacked["train_some"], stacked["sync"], settings.min_time, 1)
        pairs.append((one, many))
    return {"sequential_member_images_per_s": statistics.median(p[0] for p in pairs),
            "members_member_images_per_s": statistics.median(p[1] for p in pairs),
            "speedup_vs_sequential": statistics.median(p[1] / p[0] for p in pairs),
            "single_compile_s": single["compile_s"], "members_compile_s": stacked["compile_s"]}


def run_seeds_benchmark(settings: BenchSettings, num_members: int, cache_dir: str | None = None,
                        report: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """For each model × batch size × dtype: N members in one program against the single run."""
    check_settings(settings)
    check_seed_count(num_members)
    with tempfile.TemporaryDirectory(prefix="jaxcnn-bench-cache-") as tmp:
        enable_compilation_cache(cache_dir or tmp)
        keep_freed_host_memory()
        results = []
        for name in settings.models:
            for batch_size in settings.batch_sizes:
                for dtype in settings.dtypes:
                    work = _workload(name, batch_size, dtype, settings)
                    row = {"model": name, "batch_size": batch_size, "dtype": dtype, "members": num_members,
                           **_rates(work, settings, num_members), "load": os.getloadavg()[0]}
                    results.append(row)
                    if report:
                        report(row)
    return {"env": {**environment(settings), "seeds": num_members}, "results": results}


SEEDS_COLUMNS = (
    ("model", "model", "{}"), ("batch", "batch_size", "{}"), ("dtype", "dtype", "{}"), ("members", "members", "{}"),
    ("sequential member-img/s", "sequential_member_images_per_s", "{:,.0f}"),
    ("one program member-img/s", "members_member_images_per_s", "{:,.0f}"),
    ("× sequential", "speedup_vs_sequential", "{:.2f}"),
    ("single compile s", "single_compile_s", "{:.2f}"), ("members compile s", "members_compile_s", "{:.2f}"),
    ("load", "load", "{:.1f}"),
)


def format_seeds_row(row: dict[str, Any]) -> list[str]:
    return [fmt.format(row[key]) for _, key, fmt in SEEDS_COLUMNS]


def format_seeds_table(results: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(title for title, _, _ in SEEDS_COLUMNS) + " |", "|" + "---|" * len(SEEDS_COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(format_seeds_row(row)) + " |" for row in results])


def print_seeds_benchmark(settings: BenchSettings, num_members: int, cache_dir: str | None) -> dict[str, Any]:
    """`jaxcnn bench --seeds N`: each row on stderr as it is measured, then the table on stdout."""
    import sys

    report = lambda row: print("  ".join(format_seeds_row(row)), file=sys.stderr, flush=True)
    outcome = run_seeds_benchmark(settings, num_members, cache_dir=cache_dir, report=report)
    print(format_seeds_table(outcome["results"]))
    return outcome
