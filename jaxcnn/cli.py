"""The `jaxcnn` command: parse the command line, then call one library function.

User errors (`JaxcnnError`) print as one line on stderr with exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import sys
from typing import Any, Sequence

from jaxcnn.errors import JaxcnnError

OVERRIDE_HELP = """\
config overrides:
  --config.KEY=VALUE    set any key of the config, e.g. --config.num_epochs=3,
                        --config.optimizer.learning_rate=0.01, --config.model.hidden="(256, 128)",
                        --config.model.name=mlp (rebuilds the model section with mlp's options),
                        --config.model.name=my_pkg.nets:MyNet --config.model.options="{'width': 64}"
                        (your own Flax linen or NNX module, by import path).
                        An unknown key fails with a suggestion; `jaxcnn train --show-config`
                        prints every key with its value.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxcnn", description="Train, evaluate and compare MLP and CNN image classifiers with JAX/Flax.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train", help="train a model from a config file and evaluate it on the test split",
        description="Train a model from a config (default: the preset digits_cnn, the embedded "
                    "digits dataset, no download), validate each epoch, then evaluate on the test split. "
                    "Writes config.json, metrics.jsonl and summary.json to the workdir.",
        epilog=OVERRIDE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--config", metavar="FILE",
                       help="a preset name such as mnist_cnn (default: digits_cnn), a Python config file "
                            "(.py, trusted code: it runs) or a run's config.json")
    train.add_argument("--workdir", metavar="DIR",
                       help="output directory (default: a new folder under runs/)")
    train.add_argument("--data-dir", metavar="DIR",
                       help="directory with one subfolder per dataset (mnist/, fashion_mnist/, cifar10/, tfds/); "
                            "default: $JAXCNN_DATA_DIR")
    train.add_argument("--download", action="store_true",
                       help="fetch missing dataset files from their public mirrors into the data directory, "
                            "checksum-verified (mnist, fashion_mnist, cifar10, cifar100), or prepare a "
                            "tfds:NAME dataset (needs TensorFlow); same as --config.dataset.download=true")
    train.add_argument("--quiet", action="store_true", help="print only the final summary line")
    train.add_argument("--show-config", action="store_true",
                       help="print the resolved config (after overrides) and exit")
    train.add_argument("--fresh", action="store_true",
                       help="when the workdir holds a run, start a new one in a numbered subfolder "
                            "(WORKDIR/run-2, ...) instead of resuming it; nothing is deleted")
    distributed = train.add_argument_group(
        "several processes (multi-host)",
        "Start one process per host (or per accelerator group) with the same config; they train "
        "together with parallel=sharded. Only process 0 writes the workdir.")
    distributed.add_argument("--coordinator", metavar="HOST:PORT",
                             help="address of process 0, which every process connects to")
    distributed.add_argument("--num-processes", type=int, metavar="N", help="number of processes")
    distributed.add_argument("--process-id", type=int, metavar="I", help="this process's id, 0..N-1")
    distributed.add_argument("--distributed", action="store_true",
                             help="let JAX read the three values above from the cluster it runs in "
                                  "(SLURM, Open MPI, Kubernetes, Cloud TPU pods)")
    distributed.add_argument("--init-timeout", type=int, default=300, metavar="SECONDS",
                             help="how long to wait for all processes to connect (default: 300)")
    train.set_defaults(func=run_train)

    report = commands.add_parser(
        "report", help="figures and report.md for one or more finished runs",
        description="Draw PNG figures (curves by step and epoch, learning rate, confusion matrix, "
                    "calibration, the most confidently wrong test images) and write report.md linking "
                    "them. Given several workdirs, also overlay their validation curves and compare "
                    "their summaries in a table. Needs matplotlib: pip install 'jaxcnn[report]'.")
    report.add_argument("workdirs", nargs="+", metavar="WORKDIR", help="workdir of a `jaxcnn train` run")
    report.add_argument("--out", metavar="DIR",
                        help="output directory (default: WORKDIR/plots for one workdir, ./report for several)")
    report.set_defaults(func=run_report)

    add_models_parser(commands)

    step_help = ("checkpoint to use: best, latest or a step number (default: the parameters the run's "
                 "final test used: best with early_stopping.restore_best, else latest)")
    evaluate = commands.add_parser(
        "eval", help="evaluate a saved model on its dataset's test or validation split",
        description="Restore a checkpoint from a training workdir, rebuild the model and data from its "
                    "config, and print its loss and accuracy (the run's own test numbers for the same step).")
    evaluate.add_argument("--workdir", metavar="DIR", required=True, help="the training run's workdir")
    evaluate.add_argument("--step", metavar="STEP", help=step_help)
    evaluate.add_argument("--split", choices=("test", "val"), default="test", help="split to evaluate (default: test)")
    evaluate.add_argument("--data-dir", metavar="DIR", help="dataset directory (default: the run's, or $JAXCNN_DATA_DIR)")
    evaluate.add_argument("--json", action="store_true",
                          help="print one JSON object keyed as summary.json (test_accuracy, test_loss, ...)")
    evaluate.set_defaults(func=run_eval)

    predict = commands.add_parser(
        "predict", help="classify image files with a saved model",
        description="Classify image files (PNG, JPEG, BMP, GIF, TIFF, WebP) or .npy pixel arrays (values "
                    "0..255, shape (H, W) or (H, W, C)) with a saved model. Images are converted to the model's "
                    "channels, resized to its input size and normalised as in training; transparency is "
                    "composited on black. "
                    "They should look like the training data (MNIST: a light digit centred on a dark "
                    "background; --invert for dark on light).")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", metavar="DIR", help="the training run's workdir")
    source.add_argument("--exported", metavar="FILE",
                        help="an artifact written by `jaxcnn export`, run with JAX alone (no model code); "
                             "class names from FILE.json beside it")
    predict.add_argument("--step", metavar="STEP", help=step_help + "; with --workdir only")
    predict.add_argument("--top", type=int, default=3, metavar="K", help="classes to print per file (default: 3)")
    predict.add_argument("--json", action="store_true", help="print one JSON list, one object per file")
    predict.add_argument("--invert", action="store_true",
                         help="invert pixel values (255 - x) first: for dark digits on a light background, "
                              "as in photos of handwriting (MNIST digits are light on dark)")
    predict.add_argument("files", nargs="+", metavar="FILE",
                         help="image files (.png, .jpg, .bmp, .gif, ...) or .npy arrays")
    predict.set_defaults(func=run_predict)
    add_export_parser(commands, step_help)
    add_bench_parser(commands)
    return parser


def add_export_parser(commands: argparse._SubParsersAction, step_help: str) -> None:
    from jaxcnn.export import DEFAULT_PLATFORMS, EXPORT_DIR, DEFAULT_NAME

    export = commands.add_parser(
        "export", help="write a saved model as a jax.export artifact that runs with JAX alone",
        description="Write the model of a checkpoint as a serialized jax.export artifact (StableHLO): "
                    "uint8 images (any batch size, the run's height, width and channels) in, class "
                    "probabilities out, the normalisation folded in and the parameters embedded; plus "
                    "FILE.json with the class names, input shape, mean/std and step. Run it with "
                    "`jaxcnn predict --exported FILE` or jax.export.deserialize (README, Exported models).")
    export.add_argument("--workdir", metavar="DIR", required=True, help="the training run's workdir")
    export.add_argument("--step", metavar="STEP", help=step_help)
    export.add_argument("--out", metavar="FILE", help=f"output file (default: WORKDIR/{EXPORT_DIR}/{DEFAULT_NAME})")
    export.add_argument("--platforms", default=",".join(DEFAULT_PLATFORMS), metavar="LIST",
                        help=f"platforms to lower for, comma-separated (default: {','.join(DEFAULT_PLATFORMS)})")
    export.set_defaults(func=run_export)


def add_models_parser(commands: argparse._SubParsersAction) -> None:
    models = commands.add_parser("models", help="list the registered models with parameter counts",
                                 description="List every registered model with its default input "
                                             "shape and parameter count (10 classes); import paths "
                                             "given (module.path:Class) are listed after them.")
    models.add_argument("paths", nargs="*", metavar="MODULE:CLASS",
                        help="your own models by import path (their folder on PYTHONPATH or the current one)")
    models.add_argument("--input-shape", metavar="H,W,C", default="28,28,1",
                        help="input of the import-path models (default: 28,28,1)")
    models.set_defaults(func=run_models)


def add_bench_parser(commands: argparse._SubParsersAction) -> None:
    from jaxcnn import bench_accuracy
    from jaxcnn.bench import BenchSettings, DEFAULT_MODELS, MODES

    defaults = BenchSettings()
    bench = commands.add_parser(
        "bench", help="benchmark training/eval speed, compile time, memory and FLOPs per mode",
        description="Benchmark models × batch sizes × dtypes × modes (baseline: plain jax.jit per step "
                    "over NumPy batches with nn.Conv; step: jaxcnn, one call per step; fused: jaxcnn, "
                    "--steps-per-call steps per call) on seeded synthetic data (or --dataset). Prints a "
                    "table; --json writes every measurement.")
    bench.add_argument("--model", action="append", metavar="NAME",
                       help=f"model (repeatable; default: {' '.join(DEFAULT_MODELS)})")
    bench.add_argument("--mode", action="append", metavar="MODE",
                       help=f"execution mode (repeatable; default: {' '.join(MODES)})")
    bench.add_argument("--batch-size", action="append", type=int, metavar="N",
                       help=f"batch size (repeatable; default: {defaults.batch_sizes[0]})")
    bench.add_argument("--dtype", action="append", metavar="DTYPE",
                       help="float32 or bfloat16 (repeatable; default: float32)")
    bench.add_argument("--json", metavar="FILE", help="write {env, results} as JSON to FILE")
    bench.add_argument("--seed", type=int, default=defaults.seed, help="data, init and order seed")
    bench.add_argument("--min-time", type=float, default=defaults.min_time, metavar="S",
                       help=f"seconds per timed repeat (default: {defaults.min_time})")
    bench.add_argument("--repeats", type=int, default=defaults.repeats,
                       help=f"timed repeats; the median is reported (default: {defaults.repeats})")
    bench.add_argument("--steps-per-call", type=int, default=defaults.steps_per_call, metavar="K",
                       help=f"training steps per call in the fused mode (default: {defaults.steps_per_call})")
    bench.add_argument("--fingerprint-steps", type=int, default=defaults.fingerprint_steps, metavar="N",
                       help=f"the fingerprint is the loss of step N (default: {defaults.fingerprint_steps})")
    bench.add_argument("--num-train", type=int, default=defaults.num_train, metavar="N",
                       help=f"training examples, in whole batches (default: {defaults.num_train:,}, an epoch)")
    bench.add_argument("--num-test", type=int, default=defaults.num_test, metavar="N",
                       help=f"evaluation examples (default: {defaults.num_test})")
    bench.add_argument("--dataset", default=defaults.dataset,
                       help="synthetic (default; the model's input shape) or a real dataset such as mnist")
    bench.add_argument("--data-dir", metavar="DIR", help="for a real --dataset; default: $JAXCNN_DATA_DIR")
    bench.add_argument("--conv-impl", default=defaults.conv_impl,
                       help="model.conv_impl of the step and fused modes: auto (default), xla, shift, im2col, hybrid")
    bench.add_argument("--compilation-cache-dir", metavar="DIR",
                       help="persistent compilation cache (default: a fresh temporary folder, so the "
                            "first compilation is cold)")
    bench_accuracy.add_arguments(bench)
    bench.set_defaults(func=run_bench)


def split_overrides(rest: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """`--config.a.b=1` or `--config.a.b 1` -> ["a.b=1"]; anything else is a usage error."""
    overrides, items = [], list(rest)
    while items:
        item = items.pop(0)
        if not item.startswith("--config."):
            parser.error(f"unrecognized argument: {item}")
        body = item[len("--config."):]
        if "=" not in body:
            if not items:
                parser.error(f"{item} needs a value: {item}=VALUE")
            body = f"{body}={items.pop(0)}"
        overrides.append(body)
    return overrides


def default_workdir(config_name: str) -> pathlib.Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = pathlib.Path("runs") / f"{config_name}-{stamp}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = pathlib.Path("runs") / f"{config_name}-{stamp}-{suffix}"
    return path


def run_train(args: argparse.Namespace, overrides: list[str]) -> int:
    from jaxcnn.checkpoint import TrainingInterrupted
    from jaxcnn.config import config_name, config_to_json, load_config
    from jaxcnn.loop import train_and_evaluate
    from jaxcnn.distributed import initialize_distributed, is_main_process

    # Before anything touches a device: JAX's distributed runtime must start first.
    initialize_distributed(args.coordinator, args.num_processes, args.process_id,
                           auto_detect=args.distributed, timeout_s=args.init_timeout)
    config = load_config(args.config, overrides + ["dataset.download=true"] * args.download)
    if args.show_config:
        print(config_to_json(config))
        return 0
    if not args.workdir and (args.num_processes or 1) > 1:
        raise JaxcnnError("several processes train into one shared workdir: pass the same --workdir to every process")
    workdir = pathlib.Path(args.workdir) if args.workdir else default_workdir(config_name(args.config))
    try:
        summary = train_and_evaluate(config, workdir, data_dir=args.data_dir, quiet=args.quiet,
                                     fresh=args.fresh)
    except TrainingInterrupted as stop:
        print(f"jaxcnn: {stop}", file=sys.stderr)
        return 0
    if is_main_process():
        print(f"test_accuracy {summary['test_accuracy']:.4f}  test_loss {summary['test_loss']:.4f}  "
              f"({summary['test_examples']} test examples, {summary['epochs_run']} epochs, "
              f"{summary['wall_time_s']:.1f} s)  workdir {workdir}")
    return 0


def run_report(args: argparse.Namespace, overrides: list[str]) -> int:
    from jaxcnn.report import write_report

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
    from jaxcnn.saved import evaluate_saved, load_saved_model
    from jaxcnn.writers import dumps_json

    result = evaluate_saved(load_saved_model(args.workdir, args.step), args.split, args.data_dir)
    if args.json:
        print(dumps_json(result))
    else:
        split = args.split
        print(f"{split}_accuracy {result[f'{split}_accuracy']:.4f}  {split}_loss {result[f'{split}_loss']:.4f}  "
              f"({result[f'{split}_examples']} {split} examples, step {result['step']})  workdir {args.workdir}")
    return 0


def run_predict(args: argparse.Namespace, overrides: list[str]) -> int:
    from jaxcnn.saved import check_top, load_saved_model, predict
    from jaxcnn.writers import dumps_json

    check_top(args.top)  # before the model is loaded
    if args.exported is not None:
        results = run_predict_exported(args)
    else:
        results = predict(load_saved_model(args.workdir, args.step), args.files, args.top, invert=args.invert)
    if args.json:
        print(dumps_json(results))
    else:
        for result in results:
            ranked = ", ".join(f"{c['name']} ({c['probability']:.3f})" for c in result["top"])
            print(f"{result['file']}: {ranked}")
    return 0


def run_predict_exported(args: argparse.Namespace) -> list[dict]:
    from jaxcnn.export import predict_exported

    if args.step is not None:
        raise JaxcnnError("--step applies to --workdir; an exported model holds one step (choose it at "
                          "`jaxcnn export --step`)")
    return predict_exported(args.exported, args.files, args.top, invert=args.invert)


def run_export(args: argparse.Namespace, overrides: list[str]) -> int:
    from jaxcnn.export import parse_platforms, sidecar_path, write_export

    out, meta = write_export(args.workdir, args.step, args.out, parse_platforms(args.platforms))
    shape = "x".join(map(str, meta["input_shape"]))
    print(f"wrote {out} ({out.stat().st_size:,} bytes; uint8 batch x {shape} -> {meta['activation']} "
          f"probabilities of {len(meta['class_names'])} classes; step {meta['step']}; "
          f"{', '.join(meta['platforms'])}) and {sidecar_path(out)}")
    return 0


def run_bench(args: argparse.Namespace, overrides: list[str]) -> int:
    from jaxcnn import bench_accuracy
    from jaxcnn.bench import BenchSettings, format_row, format_table, run_benchmark
    from jaxcnn.writers import check_output_file, write_json

    if args.to_accuracy is not None:
        return bench_accuracy.command(args, overrides)
    if args.config or overrides:
        raise JaxcnnError("--config and --config.KEY=VALUE apply to --to-accuracy TARGET only")
    if args.json:
        check_output_file(args.json, "--json")  # before the benchmark, so its results cannot be lost
    defaults = BenchSettings()
    settings = BenchSettings(
        models=tuple(args.model or defaults.models), modes=tuple(args.mode or defaults.modes),
        batch_sizes=tuple(args.batch_size or defaults.batch_sizes), dtypes=tuple(args.dtype or defaults.dtypes),
        seed=args.seed, min_time=args.min_time, repeats=args.repeats, steps_per_call=args.steps_per_call,
        fingerprint_steps=args.fingerprint_steps, num_train=args.num_train, num_test=args.num_test,
        dataset=args.dataset, data_dir=args.data_dir, conv_impl=args.conv_impl)
    report = lambda row: print("  ".join(format_row(row)), file=sys.stderr, flush=True)
    outcome = run_benchmark(settings, cache_dir=args.compilation_cache_dir, report=report)
    print(format_table(outcome["results"]))
    if args.json:
        write_json(pathlib.Path(args.json), outcome, sort_keys=False)
    return 0


def ignore_closed_event_loop_callbacks() -> None:
    """After a failed Orbax read (a damaged checkpoint), tensorstore finishes the cancelled reads on
    its own threads and calls back into the asyncio loop Orbax has already closed; Python would print
    each such `RuntimeError: Event loop is closed` as a traceback. They say nothing the one-line
    error has not, so they are dropped; every other unraisable exception is printed as before."""
    previous = sys.unraisablehook
    if getattr(previous, "ignores_closed_event_loop", False):
        return

    def hook(unraisable: Any) -> None:
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            previous(unraisable)

    hook.ignores_closed_event_loop = True
    sys.unraisablehook = hook


def main(argv: Sequence[str] | None = None) -> int:
    ignore_closed_event_loop_callbacks()
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    overrides = split_overrides(rest, parser) if args.command in ("train", "bench") else rest
    if overrides and args.command not in ("train", "bench"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.func(args, overrides)
    except JaxcnnError as e:
        print(f"jaxcnn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before training installed its handler, or a second Ctrl-C
        print("jaxcnn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
