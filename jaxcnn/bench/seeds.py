"""`jaxcnn bench --seeds N`: N members in one compiled program against N single runs one by one.

Both sides are built by `jaxcnn train`'s own setup (`training.run.setup`: the run's config, its
data on the device, its compiled calls with `steps_per_call` steps per call, state donated) on the
devices there are: the single run with one seed, the members with the seeds `seed`, ...,
`seed + N - 1`, each with its own epoch order (members over the devices as `jaxcnn train` places
them). Throughput is member-images per second: images trained per
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

from jaxcnn.bench.settings import BenchSettings
from jaxcnn.bench.throughput import check_settings, environment, timed_rate
from jaxcnn.bench.workload import Workload, bench_program, full_calls, make_workload, train_cycle
from jaxcnn.checks import check_seed_count


def _program(work: Workload, settings: BenchSettings, num_members: int | None, cache_dir: str) -> dict[str, Any]:
    """The training call of a single run (`num_members` None) or of a run of `num_members` members,
    built by `jaxcnn train`'s own setup (`bench_program`) on the devices there are, warmed up:
    `train_some` (one call; returns the member-images it trained), `sync` and the cold `compile_s`."""
    k = settings.steps_per_call
    program = bench_program(work, settings, k, cache_dir, num_members, parallel="auto")
    inputs, first = full_calls(program, k)[0]
    start = time.perf_counter()
    compiled = program.calls.programs["train"].lower(program.state, program.zero_totals(), inputs, first,
                                                     num_steps=k).compile()
    compile_s = time.perf_counter() - start
    cycle = train_cycle(program, compiled, program.state, k)
    cycle()
    return {"train_some": cycle, "sync": cycle.sync, "compile_s": compile_s}


def _rates(work: Workload, settings: BenchSettings, num_members: int, cache_dir: str) -> dict[str, Any]:
    """Both programs, timed in alternation (`repeats` times each), so that the load of a shared
    machine weighs on both alike: the medians of their rates and of the ratio of each pair."""
    single, stacked = _program(work, settings, None, cache_dir), _program(work, settings, num_members, cache_dir)
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
        results = []
        for name in settings.models:
            for batch_size in settings.batch_sizes:
                for dtype in settings.dtypes:
                    work = make_workload(name, batch_size, dtype, settings)
                    row = {"model": name, "batch_size": batch_size, "dtype": dtype, "members": num_members,
                           **_rates(work, settings, num_members, cache_dir or tmp), "load": os.getloadavg()[0]}
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
