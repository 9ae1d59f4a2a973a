"""Measures the Grain feed (`dataset.input=grain`) on a folder of JPEGs larger than the device
budget: loader images/s with 0, 1 and 2 worker processes, against the model's training step rate.

    python scripts/grain_throughput.py [--images 100000] [--folder /tmp/jaxcnn-grain-jpegs]

Writes the folder once (10 classes of 64x64 RGB JPEGs; kept for later runs: a second run only
measures), then prints a markdown table. The decoded folder (N x 64 x 64 x 3 bytes: 1.2 GB for
100,000) is over the `--budget-mb` (default 1024) device budget the table states, so `auto` would
not place it on the device; Grain reads it from the files. The loader is timed as training reads
it (decode, random-resized crop (0.35, 1), stack into batches of 256), after its first 25 batches
(the workers' start, paid once per run, and their filled buffers left out); the model's rate is `jaxcnn`'s training
of the same shape from memory (`dataset.input=device`, synthetic 64x64x3), logged images/s.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIZE, CLASSES, BATCH = 64, 10, 256
SKIP = 25  # more than 2 workers' buffers hold: (READ_BUFFER + WORKER_BUFFER) each


def write_folder(folder: pathlib.Path, count: int) -> float:
    """`count` JPEGs in `CLASSES` subfolders (smooth colour fields with noise, ~2-3 KB each);
    seconds taken (0 when the folder holds them already)."""
    from PIL import Image

    if len(list(folder.glob("*/*.jpg"))) == count:
        return 0.0
    started, rng = time.perf_counter(), np.random.default_rng(0)
    ramp = np.linspace(0, 1, SIZE, dtype=np.float32)
    for i in range(count):
        label = i % CLASSES
        (folder / f"c{label}").mkdir(parents=True, exist_ok=True)
        base = 40 + 18 * label + 120 * ramp[None, :, None] * rng.random(3, dtype=np.float32)
        pixels = np.clip(base + rng.normal(0, 12, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"c{label}" / f"{i:06d}.jpg", quality=85)
    return time.perf_counter() - started


def loader_rate(split, workers: int, batches: int) -> float:
    """Images/s of the training pipeline with `workers` processes, over `batches` batches after the
    first `SKIP` (the workers' start, and the batches their buffers held by then, left out)."""
    from jaxcnn.data import grain_feed
    from jaxcnn.data.records import Layout, TrainRecords

    grain = grain_feed.import_grain()
    records = TrainRecords(split.images, split.labels, Layout(len(split), BATCH, (0, BATCH)), 0, (0.35, 1.0))
    iterator = iter(grain_feed.train_pipeline(grain, records, 0, workers))
    for _ in range(SKIP):
        next(iterator)
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    rate = batches * BATCH / (time.perf_counter() - started)
    iterator.close()
    return rate


def model_rate(model: str, steps: int) -> float:
    """Logged training images/s of `model` on 64x64x3 inputs held on the device (the last interval)."""
    from jaxcnn.config import load_config
    from jaxcnn.files.writers import read_jsonl
    from jaxcnn.training.loop import train_and_evaluate

    overrides = [f"model.name={model}", "dataset.name=synthetic", f"dataset.image_shape=({SIZE}, {SIZE}, 3)",
                 f"dataset.num_train={BATCH * steps}", "dataset.num_test=256", "dataset.val_fraction=0",
                 f"batch_size={BATCH}", "num_epochs=1", f"log_every_steps={steps // 2}", "dataset.input=device",
                 "checkpoint.enabled=false"]
    with tempfile.TemporaryDirectory() as workdir:
        train_and_evaluate(load_config("digits_cnn", overrides), pathlib.Path(workdir) / "run", quiet=True)
        logged = [r for r in read_jsonl(pathlib.Path(workdir) / "run" / "metrics.jsonl") if r["event"] == "train"]
    return float(logged[-1]["images_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--folder", type=pathlib.Path, default=pathlib.Path(tempfile.gettempdir()) / "jaxcnn-grain-jpegs")
    parser.add_argument("--batches", type=int, default=40, help="batches of 256 timed per loader")
    parser.add_argument("--budget-mb", type=float, default=1024.0)
    parser.add_argument("--models", default="tiny_cnn,cnn")
    args = parser.parse_args()
    from jaxcnn.data import load_dataset

    written_s = write_folder(args.folder, args.images)
    started = time.perf_counter()
    dataset = load_dataset("image_folder", path=str(args.folder), test_fraction=0.01, val_fraction=0.0, lazy=True)
    listed_s = time.perf_counter() - started
    decoded_mb = dataset.train.images.nbytes / 2**20
    disk_mb = sum(f.stat().st_size for f in args.folder.glob("*/*.jpg")) / 2**20
    print(f"{args.images} JPEGs in {args.folder} ({disk_mb:.0f} MiB on disk; written in {written_s:.0f} s); "
          f"training split {len(dataset.train)} images, {decoded_mb:.0f} MiB decoded > device budget "
          f"{args.budget_mb:.0f} MiB; listed with headers in {listed_s:.1f} s; {os.cpu_count()} CPU cores")
    print("\n| reader | images/s |\n|---|---:|")
    for workers in (0, 1, 2):
        print(f"| Grain loader, {workers} workers (decode + random-resized crop, batches of {BATCH}) | "
              f"{loader_rate(dataset.train, workers, args.batches):,.0f} |", flush=True)
    for model in args.models.split(","):
        print(f"| model `{model}` training steps, 64x64x3 from device memory, batch {BATCH} | "
              f"{model_rate(model, 20):,.0f} |", flush=True)


if __name__ == "__main__":
    main()
