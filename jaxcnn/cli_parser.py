"""The `jaxcnn` command line's grammar: one `add_*_parser` per command; `cli.COMMANDS` runs them.

Building it imports nothing heavy (no JAX, Flax, Optax, Orbax or NumPy), so that `jaxcnn --help`
and `jaxcnn CMD --help` answer at once: the defaults it shows come from JAX-free modules
(`bench_settings`, `export_defaults`), which the heavy modules import in turn.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from jaxcnn.bench.settings import DEFAULT_MODELS, MODES, BenchSettings
from jaxcnn.commands.export_defaults import DEFAULT_NAME, DEFAULT_PLATFORMS, EXPORT_DIR, FORMATS, ONNX_NAME

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


STEP_HELP = ("checkpoint to use: best, latest or a step number (default: the parameters the run's "
             "final test used: best with early_stopping.restore_best, else latest)")


MEMBER_HELP = ("for a run of members (seeds or a sweep): the member to use, 0 to members - 1 (its number in "
               "summary.json's members)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxcnn", description="Train, evaluate and compare MLP and CNN image classifiers with JAX/Flax.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train_parser(commands)
    add_report_parser(commands)
    add_models_parser(commands)
    add_eval_parser(commands)
    add_predict_parser(commands)
    add_export_parser(commands)
    add_verify_parser(commands)
    add_compare_parser(commands)
    add_bench_parser(commands)
    add_pack_parser(commands)
    return parser


def add_json_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """`--json PATH`, one meaning in every command (`jaxcnn.files.json_output`): a file, or `-`."""
    parser.add_argument("--json", metavar="PATH",
                        help=f"write {what} as JSON to the file PATH, or with `-` to standard output "
                             "(the text then goes to standard error)")


def add_train_parser(commands: argparse._SubParsersAction) -> None:
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
    distributed.add_argument("--local-devices", metavar="all|I,J,...",
                             help="the node's GPUs this process drives: `all` for one process per node "
                                  "(default under SLURM and Open MPI: the one GPU of the process's local rank)")
    distributed.add_argument("--init-timeout", type=int, default=300, metavar="SECONDS",
                             help="how long to wait for all processes to connect (default: 300)")


def add_report_parser(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser(
        "report", help="figures and report.md for one or more finished runs",
        description="Draw PNG figures (curves by step and epoch, learning rate, confusion matrix, "
                    "calibration, the most confidently wrong test images) and write report.md linking "
                    "them. Given several workdirs, also overlay their validation curves and compare "
                    "their summaries in a table. Needs matplotlib: pip install 'jaxcnn[report]'.")
    report.add_argument("workdirs", nargs="+", metavar="WORKDIR", help="workdir of a `jaxcnn train` run")
    report.add_argument("--out", metavar="DIR",
                        help="output directory (default: WORKDIR/plots for one workdir, ./report for several)")


def add_eval_parser(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "eval", help="evaluate a saved model on its dataset's test or validation split",
        description="Restore a checkpoint from a training workdir, rebuild the model and data from its "
                    "config, and print its loss and accuracy (the run's own test numbers for the same step).")
    evaluate.add_argument("--workdir", metavar="DIR", required=True, help="the training run's workdir")
    evaluate.add_argument("--step", metavar="STEP", help=STEP_HELP)
    evaluate.add_argument("--member", type=int, metavar="K", help=MEMBER_HELP)
    evaluate.add_argument("--split", choices=("test", "val"), default="test", help="split to evaluate (default: test)")
    evaluate.add_argument("--data-dir", metavar="DIR", help="dataset directory (default: the run's, or $JAXCNN_DATA_DIR)")
    add_json_argument(evaluate, "one object keyed as summary.json (test_accuracy, test_loss, ...)")


def add_predict_parser(commands: argparse._SubParsersAction) -> None:
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
    source.add_argument("--onnx", metavar="FILE",
                        help="an ONNX model written by `jaxcnn export --format onnx`, run with onnxruntime "
                             "(pip install 'jaxcnn[onnx]'); class names from FILE.json beside it")
    predict.add_argument("--step", metavar="STEP", help=STEP_HELP + "; with --workdir only")
    predict.add_argument("--member", type=int, metavar="K", help=MEMBER_HELP + "; with --workdir only")
    predict.add_argument("--top", type=int, default=3, metavar="K", help="classes to print per file (default: 3)")
    add_json_argument(predict, "one list, one object per file,")
    predict.add_argument("--invert", action="store_true",
                         help="invert pixel values (255 - x) first: for dark digits on a light background, "
                              "as in photos of handwriting (MNIST digits are light on dark)")
    predict.add_argument("files", nargs="+", metavar="FILE",
                         help="image files (.png, .jpg, .bmp, .gif, ...) or .npy arrays")


def add_export_parser(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export", help="write a saved model as a jax.export artifact that runs with JAX alone",
        description="Write the model of a checkpoint as a serialized jax.export artifact (StableHLO): "
                    "uint8 images (any batch size, the run's height, width and channels) in, class "
                    "probabilities out, the normalisation folded in and the parameters embedded; plus "
                    "FILE.json with the class names, input shape, mean/std and step. Run it with "
                    "`jaxcnn predict --exported FILE` or jax.export.deserialize (README, Exported models).")
    export.add_argument("--workdir", metavar="DIR", required=True, help="the training run's workdir")
    export.add_argument("--step", metavar="STEP", help=STEP_HELP)
    export.add_argument("--member", type=int, metavar="K", help=MEMBER_HELP)
    export.add_argument("--format", choices=FORMATS, default="jax",
                        help="jax: a jax.export artifact (default); onnx: an ONNX model through jax2onnx, "
                             "for onnxruntime and other ONNX runtimes (pip install 'jaxcnn[onnx]')")
    export.add_argument("--out", metavar="FILE", help=f"output file (default: WORKDIR/{EXPORT_DIR}/{DEFAULT_NAME}, "
                                                      f"with --format onnx WORKDIR/{EXPORT_DIR}/{ONNX_NAME})")
    export.add_argument("--platforms", default=",".join(DEFAULT_PLATFORMS), metavar="LIST",
                        help=f"platforms to lower for, comma-separated (default: {','.join(DEFAULT_PLATFORMS)}); "
                             "--format jax only")


def add_models_parser(commands: argparse._SubParsersAction) -> None:
    models = commands.add_parser("models", help="list the registered models with parameter counts",
                                 description="List every registered model with its default input "
                                             "shape and parameter count (10 classes); import paths "
                                             "given (module.path:Class) are listed after them.")
    models.add_argument("paths", nargs="*", metavar="MODULE:CLASS",
                        help="your own models by import path (their folder on PYTHONPATH or the current one)")
    models.add_argument("--input-shape", metavar="H,W,C", default="28,28,1",
                        help="input of the import-path models (default: 28,28,1)")


def add_pack_parser(commands: argparse._SubParsersAction) -> None:
    pack = commands.add_parser(
        "pack", help="write an image folder as ArrayRecord files (dataset.name=array_record)",
        description="Write the images of FOLDER (one subfolder per class; train/ and test/, else a seeded "
                    "stratified --test-fraction held out) into OUT as ArrayRecord files, read lazily by "
                    "dataset.name=array_record dataset.path=OUT (jaxcnn/data/array_records.py); needs the "
                    "[grain] extra.")
    pack.add_argument("folder", metavar="FOLDER", help="the image folder")
    pack.add_argument("out", metavar="OUT", help="the folder to write (meta.json, train/test .array_record)")
    pack.add_argument("--image-size", metavar="H,W", help="the size images are resized to when read "
                                                          "(default: their one size)")
    pack.add_argument("--test-fraction", type=float, default=0.2, metavar="F",
                      help="share of each class held out as the test split without test/ (default: 0.2)")
    pack.add_argument("--seed", type=int, default=0, help="picks the held-out examples (default: 0)")


def add_bench_parser(commands: argparse._SubParsersAction) -> None:
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
                       help="float32, bfloat16 or float16 (repeatable; default: float32)")
    add_json_argument(bench, "{env, results}")
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
    bench.add_argument("--seeds", type=int, metavar="N",
                       help="with --to-accuracy: the seeds to train (default: 5); alone: N members in one "
                            "program against N single runs, in member-images/s (jaxcnn/bench/seeds.py)")
    add_to_accuracy_arguments(bench)


def add_to_accuracy_arguments(bench: argparse.ArgumentParser) -> None:
    """`jaxcnn bench`'s options of the time-to-accuracy mode, here rather than in
    `jaxcnn.bench.accuracy` (which imports JAX), so that `jaxcnn bench --help` loads no JAX."""
    group = bench.add_argument_group(
        "time to accuracy", "With --to-accuracy, train --config from scratch on its data, once per seed, "
        "until a test evaluation reaches TARGET; --config.KEY=VALUE overrides apply, and --data-dir, "
        "--seed (the first seed) and --json keep their meaning.")
    group.add_argument("--to-accuracy", type=float, metavar="TARGET", help="test accuracy to reach, e.g. 0.99")
    group.add_argument("--config", metavar="FILE", help="preset name or config file to train (as for train)")
    group.add_argument("--eval-every", type=int, default=0, metavar="STEPS",
                       help="steps between test evaluations (default: four per epoch)")
    group.add_argument("--same-process", action="store_true",
                       help="train every seed in this process (default: each in a fresh one)")


def add_compare_parser(commands: argparse._SubParsersAction) -> None:
    compare = commands.add_parser(
        "compare", help="paired comparison of two runs over the same seeds (mean difference, CI, p-value)",
        description="Pair two runs' members by seed (and sweep value) and print, per metric, the mean "
                    "difference A - B, its 95%% CI, the paired t-test's p-value and the seeds a paired t-test "
                    "needs to detect it (power 0.8, level 0.05). Reads only their summary.json.")
    compare.add_argument("a", metavar="A", help="workdir of a run (or a run of seeds)")
    compare.add_argument("b", metavar="B", help="workdir of the run to compare it with")
    add_json_argument(compare, "the comparison (one object)")


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


def add_verify_parser(commands: argparse._SubParsersAction) -> None:
    verify = commands.add_parser(
        "verify", help="re-run a run from its config.json and check that it reproduces bitwise",
        description="Train the run in WORKDIR again from its config.json, in a temporary folder (or only "
                    "its first N steps), and compare: `bitwise` when the parameters and metrics.jsonl (without "
                    "timing fields) are identical, else `differs` with the largest parameter difference in "
                    "ulps and the first metrics.jsonl record that differs. Warns when this environment "
                    "differs from the run's certificate.json. Exit status 0 bitwise, 1 differs, 2 bad input.")
    verify.add_argument("workdir", metavar="WORKDIR", help="the workdir of a `jaxcnn train` run")
    verify.add_argument("--steps", type=int, metavar="N",
                        help="re-run only the first N training steps and compare up to there (parameters "
                             "where the run kept a checkpoint of step N)")
    verify.add_argument("--data-dir", metavar="DIR",
                        help="dataset directory (default: the run's, or $JAXCNN_DATA_DIR)")
