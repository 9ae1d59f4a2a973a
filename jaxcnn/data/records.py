"""One record at a time, for the Grain feed's CPU workers (`jaxcnn.data.grain_feed`): the order,
the decoding and the random-resized crop. No JAX here: the worker processes import only this.

- `LazyImages`: images as a lazy uint8 (N, H, W, C) array; `FileImages` those of a folder's files
  (`array_records.RecordImages` those of records). Indexing with a slice or an index array gives
  the same images with fewer rows (how splits are carved, without decoding); an integer decodes
  one (resized to (H, W)); `np.asarray` decodes them all (only for a few, e.g. the test's most
  confident mistakes).
- `record_index`: the example the k-th record of a process is, over all epochs: Grain's
  `index_shuffle` (a permutation of the split computed one index at a time, no array of N) keyed by
  (seed, epoch), then this process's rows of each global batch. So the order depends on the seed
  and the epoch only, never on how many workers read, nor on where a run was resumed.
- `random_resized_crop`: a crop of a random area share and aspect ratio, resized to (H, W), drawn
  from a generator keyed by (seed, epoch, example): the same pixels whichever worker reads it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import pathlib
import signal
import threading
import time
from typing import Any

import numpy as np

# Folded into the seeds of the order and of the crops, so they are independent of the run's other keys.
_ORDER_SALT, _CROP_SALT = 0x6A41, 0xC409
RATIO = (3 / 4, 4 / 3)  # the crop's aspect-ratio range (Inception's, as torchvision's RandomResizedCrop)
_CROP_TRIES = 10
_PARENT_POLL_S = 0.5  # how often a worker looks whether the main process is still there


class LazyImages:
    """Images decoded one at a time, as a lazy uint8 (N, H, W, C) array (see the module doc): rows
    `rows` of the source a subclass decodes (`pixels`). A slice or an index array gives the same
    source with fewer rows (how splits are carved, without decoding); an integer decodes one."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, shape: tuple[int, int, int], rows: Any):
        self.image_shape, self.rows = tuple(shape), np.asarray(rows, np.int64)

    def pixels(self, row: int, native: bool) -> np.ndarray:
        """Source row `row` as uint8 pixels of `image_shape` (at its own H and W with `native`)."""
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.rows), *self.image_shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, (int, np.integer)):
            return self.pixels(int(self.rows[index]), native=False)
        carved = copy.copy(self)
        carved.rows = self.rows[index] if isinstance(index, slice) else self.rows[np.asarray(index).reshape(-1)]
        return carved

    def native(self, index: int) -> np.ndarray:
        """Image `index` at its own size (H and W its own, C the split's), for cropping."""
        return self.pixels(int(self.rows[index]), native=True)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.stack([self[i] for i in range(len(self))]) if len(self) else np.zeros(self.shape, np.uint8)
        return out if dtype is None else out.astype(dtype)


class FileImages(LazyImages):
    """The images of a list of files, each decoded and resized when read."""

    def __init__(self, files: list[str], shape: tuple[int, int, int]):
        self.files = list(files)
        super().__init__(shape, np.arange(len(self.files)))

    def pixels(self, row: int, native: bool) -> np.ndarray:
        return decode(self.files[row], self.image_shape, native=native)


def ignore_stop_signals(worker: int, num_workers: int) -> None:
    """Grain's `worker_init_fn`: a worker ignores SIGTERM, SIGINT and the requeue signal, and ends
    when the main process is gone. Why: a scheduler, `timeout` or Ctrl-C signals the whole process
    group; a worker killed by it leaves its batches' shared memory unlinked (the resource tracker
    then warns of "leaked shared_memory objects"), and the main process still needs them to finish
    the current call. The main process stops the workers itself when the feed closes (Grain's
    `close`); the watch ends a worker whose main process quit without closing (a second Ctrl-C)."""
    from jaxcnn.runtime import stop  # imports nothing heavy

    for signum in stop.stop_signals():
        signal.signal(signum, signal.SIG_IGN)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="jaxcnn-parent-watch", daemon=True).start()


def decode(path: str, shape: tuple[int, int, int], native: bool = False) -> np.ndarray:
    """A file as uint8 pixels of `shape` (resized bilinearly; at its own size with `native`)."""
    from jaxcnn.data import images  # Pillow, imported in the worker that decodes

    path = pathlib.Path(path)
    if native:
        pixels = images._check_pixels(images._read_image(path), path)
        return images._to_pixels(pixels, (pixels.shape[0], pixels.shape[1], shape[2]), invert=False)
    return images.load_image(path, shape)


def order_seed(seed: int, epoch: int) -> int:
    """The 32-bit seed of epoch `epoch`'s permutation (Grain's `index_shuffle` takes 32 bits)."""
    return int(np.random.SeedSequence([seed, _ORDER_SALT, epoch]).generate_state(1)[0])


def shuffled(position: int, num_examples: int, seed: int, epoch: int) -> int:
    """The example at `position` of epoch `epoch`'s permutation of `num_examples`."""
    from grain.experimental import index_shuffle

    return int(index_shuffle(position, max_index=num_examples - 1, seed=order_seed(seed, epoch), rounds=4))


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a process's records lie: `rows` (start, stop) of each global batch of `batch_size`,
    `steps` batches per epoch (the last partial batch dropped, as the other feeds drop it)."""

    num_examples: int
    batch_size: int
    rows: tuple[int, int]

    @property
    def steps(self) -> int:
        return self.num_examples // self.batch_size

    @property
    def local_rows(self) -> int:
        return self.rows[1] - self.rows[0]


def record_index(k: int, layout: Layout, seed: int) -> tuple[int, int, int]:
    """(global step from 0, epoch from 1, example) of the k-th record this process reads."""
    step, row = divmod(k, layout.local_rows)
    epoch, position = divmod(step, layout.steps)
    example = shuffled(position * layout.batch_size + layout.rows[0] + row, layout.num_examples, seed, epoch + 1)
    return step, epoch + 1, example


def crop_box(rng: np.random.Generator, height: int, width: int, scale: tuple[float, float]) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop of `scale` share of the area and `RATIO` aspect ratio; after
    `_CROP_TRIES` misses, the largest centred crop of the ratio range (as Inception's)."""
    area = height * width
    for _ in range(_CROP_TRIES):
        target = area * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(math.log(RATIO[0]), math.log(RATIO[1])))
        w, h = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    ratio = width / height
    w, h = (width, int(round(width / RATIO[0]))) if ratio < RATIO[0] else (
        (int(round(height * RATIO[1])), height) if ratio > RATIO[1] else (width, height))
    h, w = min(h, height), min(w, width)
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(image: np.ndarray, out_hw: tuple[int, int], scale: tuple[float, float],
                        rng: np.random.Generator) -> np.ndarray:
    """A random crop of `image` (H, W, C uint8) resized bilinearly to `out_hw`."""
    from PIL import Image

    top, left, h, w = crop_box(rng, image.shape[0], image.shape[1], scale)
    patch = image[top:top + h, left:left + w]
    grey = patch.shape[-1] == 1
    resized = Image.fromarray(patch[..., 0] if grey else patch).resize((out_hw[1], out_hw[0]), Image.BILINEAR)
    pixels = np.asarray(resized, np.uint8)
    return pixels[..., None] if grey else pixels


@dataclasses.dataclass(frozen=True)
class TrainRecords:
    """The k-th training record of this process: pixels (cropped when `crop_scale`), label, step.
    Pickled into every Grain worker, so it holds only what a worker needs."""

    images: Any  # an array (N, H, W, C) or `LazyImages`
    labels: np.ndarray
    layout: Layout
    seed: int
    crop_scale: tuple[float, float] | None = None

    def __call__(self, k: int) -> dict[str, Any]:
        step, epoch, example = record_index(int(k), self.layout, self.seed)
        if self.crop_scale is None:
            pixels = np.asarray(self.images[example], np.uint8)
        else:
            source = self.images.native(example) if isinstance(self.images, LazyImages) else np.asarray(
                self.images[example], np.uint8)
            rng = np.random.default_rng([self.seed, _CROP_SALT, epoch, example])
            pixels = random_resized_crop(source, self.images.shape[1:3], self.crop_scale, rng)
        return {"image": pixels, "label": np.int32(self.labels[example]), "step": np.int64(step)}


@dataclasses.dataclass(frozen=True)
class EvalRecords:
    """Padded evaluation batch `s` of this process: pixels and labels of `order[s]` (no augmentation)."""

    images: Any
    labels: np.ndarray
    order: np.ndarray  # (steps, local rows) example indices

    def __call__(self, s: int) -> dict[str, np.ndarray]:
        indices = self.order[int(s)]
        return {"image": np.stack([np.asarray(self.images[int(i)], np.uint8) for i in indices]),
                "label": np.asarray(self.labels[indices], np.int32)}

