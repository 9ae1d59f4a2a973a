"""The `jaxcnn` command: parse the command line (`cli_parser`), then call one library function.

User errors (`JaxcnnError`) print as one line on stderr with exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import os
import pathlib
import sys
import traceback
from typing import Iterator, Sequence

from jaxcnn.runtime import stop
from jaxcnn.bench.settings import BenchSettings
from jaxcnn.commands.export_defaults import DEFAULT_PLATFORMS
from jaxcnn.cli_parser import build_parser, split_overrides
from jaxcnn.runtime.orbax_logs import ignore_closed_event_loop_callbacks
from jaxcnn.errors import JaxcnnError
from jaxcnn.files.json_output import check_json_path, text_output, write_json_output

def default_workdir(config_name: str) -> pathlib.Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = pathlib.Path("runs") / f"{config_name}-{stamp}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = pathlib.Path("runs") / f"{config_name}-{stamp}-{suffix}"
    return path


def run_train(args: argparse.Namespace, overrides: list[str]) -> int:
    with libraries_loading():
        from jaxcnn.files.checkpoint import TrainingInterrupted
        from jaxcnn.runtime import determinism
        from jaxcnn.config import config_name, config_to_json, read_config, validate_config
        from jaxcnn.training.divergence import TrainingDiverged
        from jaxcnn.training.loop import train_and_evaluate
        from jaxcnn.runtime.distributed import initialize_distributed, is_main_process, note_local_devices

    # Before anything touches a device: JAX's distributed runtime must start first.
    joined = initialize_distributed(args.coordinator, args.num_processes, args.process_id,
                                    auto_detect=args.distributed, local_devices=args.local_devices,
                                    timeout_s=args.init_timeout)
    config = read_config(args.config, overrides + ["dataset.download=true"] * args.download)
    determinism.apply(config)  # before anything starts JAX's backend (validating builds the model)
    if joined:
        note_local_devices()  # a process driving fewer GPUs than its node has says so
    stop.check_startup()  # a Ctrl-C while the libraries loaded
    if args.show_config:
        validate_config(config)
        print(config_to_json(config))
        return 0  # else the run checks its config once, first thing (training.run.build_run)
    if not args.workdir and ((args.num_processes or 1) > 1 or args.distributed):
        raise JaxcnnError("several processes train into one shared workdir: pass the same --workdir to every process")
    workdir = pathlib.Path(args.workdir) if args.workdir else default_workdir(config_name(args.config))
    try:
        summary = train_and_evaluate(config, workdir, data_dir=args.data_dir, quiet=args.quiet,
                                     fresh=args.fresh)
    except TrainingInterrupted as stopped:
        print(f"jaxcnn: {stopped}", file=sys.stderr)
        return 0
    except TrainingDiverged as diverged:
        print(f"jaxcnn: {diverged}", file=sys.stderr)
        return diverged.exit_status
    if is_main_process() and "members" in summary:  # seeds or a sweep (jaxcnn/core/members.py)
        from jaxcnn.training.summary import summary_lines
        print("\n".join(summary_lines(summary, workdir)))
    elif is_main_process():
        print(f"test_accuracy {summary['test_accuracy']:.4f}  test_loss {summary['test_loss']:.4f}  "
              f"({summary['test_examples']} test examples, {summary['epochs_run']} epochs, "
              f"{summary['wall_time_s']:.1f} s)  workdir {workdir}")
    return 0


def run_report(args: argparse.Namespace, overrides: list[str]) -> int:
    from jaxcnn.report.markdown import write_report

    report = write_report(args.workdirs, args.out)
    figures = sorted(report.parent.rglob("*.png"))
    print(f"wrote {report} and {len(figures)} figures in {report.parent}")
    return 0


def run_models(args: argparse.Namespace, overrides: list[str]) -> int:
    import jax
    import jax.numpy as jnp

    from jaxcnn import models

    try:
        input_shape = tuple(int(v) for v in args.input_shape.split(","))
    except ValueError:
        input_shape = ()
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise JaxcnnError(f"--input-shape: expected three positive integers H,W,C, got {args.input_shape!r}")
    rows = []
    for name in [*models.list_models(), *args.paths]:
        shape = input_shape if models.is_import_path(name) else models.default_input_shape(name)
        model = models.create_model(name, num_classes=10)
        # eval_shape: parameter shapes without computing (or allocating) any parameter.
        variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *shape)))
        rows.append((name, "x".join(map(str, shape)), models.count_params(variables["params"])))
    width = max(10, *(len(row[0]) for row in rows))
    print(f"{'model':<{width}} {'input':<10} {'params':>12}")
    for name, shape, count in rows:
        print(f"{name:<{width}} {shape:<10} {count:>12,}")
    return 0


def run_eval(args: argparse.Namespace, overrides: list[str]) -> int:
    from jaxcnn.commands.saved import evaluate_saved, load_saved_model

    check_json_path(args.json)
    result = evaluate_saved(load_saved_model(args.workdir, args.step, args.member), args.split, args.data_dir)
    split = args.split
    with text_output(args.json):
        print(f"{split}_accuracy {result[f'{split}_accuracy']:.4f}  {split}_loss {result[f'{split}_loss']:.4f}  "
              f"({result[f'{split}_examples']} {split} examples, step {result['step']})  workdir {args.workdir}")
    write_json_output(args.json, result)
    return 0


def run_predict(args: argparse.Namespace, overrides: list[str]) -> int:
    from jaxcnn.commands.saved import check_top, load_saved_model, predict

    check_top(args.top)  # before the model is loaded
    check_json_path(args.json)
    if args.exported is not None or args.onnx is not None:
        results = run_predict_exported(args)
    else:
        results = predict(load_saved_model(args.workdir, args.step, args.member), args.files, args.top, invert=args.invert)
    with text_output(args.json):
        for result in results:
            ranked = ", ".join(f"{c['name']} ({c['probability']:.3f})" for c in result["top"])
            print(f"{result['file']}: {ranked}")
    write_json_output(args.json, results)
    return 0


def run_predict_exported(args: argparse.Namespace) -> list[dict]:
    """`predict --exported FILE` or `--onnx FILE`: one file holds one member at one step."""
    if args.member is not None:
        raise JaxcnnError("--member applies to --workdir; an exported model holds one member (choose it at "
                          "`jaxcnn export --member`)")
    if args.step is not None:
        raise JaxcnnError("--step applies to --workdir; an exported model holds one step (choose it at "
                          "`jaxcnn export --step`)")
    if args.onnx is not None:
        from jaxcnn.commands.onnx_export import predict_onnx
        return predict_onnx(args.onnx, args.files, args.top, invert=args.invert)
    from jaxcnn.commands.export import predict_exported
    return predict_exported(args.exported, args.files, args.top, invert=args.invert)


def run_export(args: argparse.Namespace, overrides: list[str]) -> int:
    from jaxcnn.commands.export import parse_platforms, sidecar_path, write_export

    platforms = parse_platforms(args.platforms)
    if args.format == "onnx":
        return run_export_onnx(args)
    out, meta = write_export(args.workdir, args.step, args.out, platforms, args.member)
    shape = "x".join(map(str, meta["input_shape"]))
    print(f"wrote {out} ({out.stat().st_size:,} bytes; uint8 batch x {shape} -> {meta['activation']} "
          f"probabilities of {len(meta['class_names'])} classes; step {meta['step']}; "
          f"{', '.join(meta['platforms'])}) and {sidecar_path(out)}")
    return 0


def run_export_onnx(args: argparse.Namespace) -> int:
    """`jaxcnn export --format onnx`: the model through jax2onnx (`jaxcnn.commands.onnx_export`)."""
    from jaxcnn.commands.export import sidecar_path
    from jaxcnn.commands.onnx_export import write_onnx

    if args.platforms != ",".join(DEFAULT_PLATFORMS):
        raise JaxcnnError("--platforms applies to --format jax; an ONNX model runs wherever an ONNX runtime does")
    out, meta = write_onnx(args.workdir, args.step, args.out, args.member)
    print(f"wrote {out} ({out.stat().st_size:,} bytes; uint8 batch x {'x'.join(map(str, meta['input_shape']))} "
          f"-> {meta['activation']} probabilities of {len(meta['class_names'])} classes; step {meta['step']}; "
          f"ONNX) and {sidecar_path(out)}")
    return 0


def run_bench(args: argparse.Namespace, overrides: list[str]) -> int:
    from jaxcnn.bench import accuracy as bench_accuracy
    from jaxcnn.checks import check_seed_count

    if args.seeds is not None:
        check_seed_count(args.seeds)  # before anything runs, with --to-accuracy or without
    if args.to_accuracy is not None:
        return bench_accuracy.command(args, overrides)
    if args.config or overrides:
        raise JaxcnnError("--config and --config.KEY=VALUE apply to --to-accuracy TARGET only")
    check_json_path(args.json)  # before the benchmark, so its results cannot be lost
    defaults = BenchSettings()
    settings = BenchSettings(
        models=tuple(args.model or defaults.models), modes=tuple(args.mode or defaults.modes),
        batch_sizes=tuple(args.batch_size or defaults.batch_sizes), dtypes=tuple(args.dtype or defaults.dtypes),
        seed=args.seed, min_time=args.min_time, repeats=args.repeats, steps_per_call=args.steps_per_call,
        fingerprint_steps=args.fingerprint_steps, num_train=args.num_train, num_test=args.num_test,
        dataset=args.dataset, data_dir=args.data_dir, conv_impl=args.conv_impl)
    with text_output(args.json):
        outcome = measure_bench(args, settings)
    write_json_output(args.json, outcome)
    return 0


def measure_bench(args: argparse.Namespace, settings: BenchSettings) -> dict:
    """`jaxcnn bench`'s measurements: rows on stderr as they are measured, then the table."""
    from jaxcnn.bench.throughput import format_row, format_table, run_benchmark

    if args.seeds is not None:  # members in one program against single runs (jaxcnn/bench/seeds.py)
        from jaxcnn.bench.seeds import print_seeds_benchmark
        return print_seeds_benchmark(settings, args.seeds, args.compilation_cache_dir)
    report = lambda row: print("  ".join(format_row(row)), file=sys.stderr, flush=True)  # noqa: E731
    outcome = run_benchmark(settings, cache_dir=args.compilation_cache_dir, report=report)
    print(format_table(outcome["results"]))
    return outcome


def run_compare(args: argparse.Namespace, overrides: list[str]) -> int:
    from jaxcnn.commands.compare import compare, format_comparison

    check_json_path(args.json)
    result = compare(args.a, args.b)
    with text_output(args.json):
        print(format_comparison(result))
    write_json_output(args.json, result)
    return 0


def run_verify(args: argparse.Namespace, overrides: list[str]) -> int:
    from jaxcnn.commands.verify import verify

    return verify(args.workdir, args.steps, args.data_dir)


def run_pack(args: argparse.Namespace, overrides: list[str]) -> int:
    """`jaxcnn pack FOLDER OUT`: an image folder as ArrayRecord files (`jaxcnn.data.array_records`)."""
    from jaxcnn.data.array_records import pack_image_folder

    size = None
    if args.image_size:
        try:
            size = tuple(int(v) for v in args.image_size.split(","))
        except ValueError:
            raise JaxcnnError(f"--image-size: expected H,W in pixels, got {args.image_size!r}; e.g. --image-size 28,28")
    counts = pack_image_folder(args.folder, args.out, size, args.test_fraction, args.seed)
    print(f"wrote {counts['train']} training and {counts['test']} test records to {args.out}")
    return 0


COMMANDS = {"train": run_train, "report": run_report, "models": run_models, "eval": run_eval, "predict": run_predict,
            "export": run_export, "verify": run_verify, "compare": run_compare, "bench": run_bench,
            "pack": run_pack}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # SIGINT/SIGTERM are a flag from here on, before JAX is imported (jaxcnn.runtime.stop)
        with stop.watching_from_the_start():
            return run_command(argv)
    return run_command(argv)


def run_command(argv: list[str]) -> int:
    """Parses `argv` and runs its command; a user error is one line on stderr and exit status 2."""
    ignore_closed_event_loop_callbacks()
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    overrides = split_overrides(rest, parser) if args.command in ("train", "bench") else rest
    if overrides and args.command not in ("train", "bench"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return COMMANDS[args.command](args, overrides)
    except JaxcnnError as e:
        if os.environ.get("JAXCNN_TRACEBACK") == "1":  # the cause's traceback, e.g. of a user's model
            traceback.print_exception(e)
        print(f"jaxcnn: error: {e}", file=sys.stderr)
        return 2
    except stop.StartupInterrupted as e:  # a stop signal before training began
        print(f"jaxcnn: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:  # before training installed its handler, or a second Ctrl-C
        print("jaxcnn: interrupted", file=sys.stderr)
        return 130


class _Process:
    """Set by `console`: this process is the `jaxcnn` executable, and it ends with its command."""

    executable = False


def console() -> None:
    """The `jaxcnn` executable: `main`, then a quick exit (`exit_now`)."""
    _Process.executable = True
    exit_now(main())


@contextlib.contextmanager
def libraries_loading() -> Iterator[None]:
    """Holds Python's cyclic garbage collector off while a command of the executable imports JAX,
    Flax and Optax, then moves every object they built to the collector's permanent generation
    (`gc.freeze`): those objects live until the process ends, so no later collection need walk
    them. Importing creates some 140,000 objects and no garbage; the collector walked them all
    in the import and at each full collection of the run after it (README, "Start-up").
    Called from Python (`main(argv)`, as the tests do), it changes nothing: a process that goes on
    keeps its collector as it was."""
    if not _Process.executable:
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def exit_now(status: int) -> None:
    """Exits with `status` once the exit handlers (`atexit`: JAX's, Orbax's, logging's) have run,
    without the interpreter's teardown of every module and object: after a run, that teardown
    (JAX's, Flax's and Orbax's modules, the compiled programs) took about 0.3 s, as long as the
    rest of the command's ending together. Only when no other non-daemon thread is left, whose work
    the usual exit would wait for; else the usual exit."""
    import atexit
    import threading

    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(status)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(status)


if __name__ == "__main__":
    console()
