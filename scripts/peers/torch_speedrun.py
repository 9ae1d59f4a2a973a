"""The PyTorch-eager twin of jaxcnn's speedrun presets: the yardstick of "time to accuracy".

A reference to run, not a dependency of jaxcnn (install torch beside it: `pip install torch==2.13.0`).
It trains what `jaxcnn train --config mnist_speedrun` (or `fashion_speedrun`) trains, written as a
PyTorch user writes it: the same model (conv 8, 32, 64, each 3x3 SAME -> BatchNorm -> ReLU ->
max-pool 2, then Dense 576 -> 10), the same initialisation (LeCun normal kernels, zero biases, as
Flax), Nesterov SGD with momentum 0.9, label smoothing 0.1, the one-cycle schedule (linear up for
`--warmup-epochs`, then linearly down to 0 at the last step), batch 32 for one epoch (`fashion_speedrun`:
batch 64, 10 epochs), pixels scaled to [0, 1],
a new shuffle per epoch. The images load from the canonical IDX files before the clock starts.

    python scripts/peers/torch_speedrun.py --data-dir ../shared/data --seeds 0 1 2 3 4
    python scripts/peers/torch_speedrun.py --dataset fashion_mnist --widths 16 32 64 --epochs 10 \
        --learning-rate 0.1 --warmup-epochs 0.5 --flip --batch-size 64 --seeds 0 1 2 3 4   # fashion_speedrun

Prints one JSON line per seed: training seconds (the optimisation steps only, as `jaxcnn bench
--to-accuracy` counts them), test accuracy after the last epoch, and the evaluation's seconds.
"""

import argparse
import gzip
import json
import os
import pathlib
import time

import numpy as np
import torch
from torch import nn

FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def read_idx(path: pathlib.Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load(folder: pathlib.Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = (read_idx(folder / name) for name in FILES[split])
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)  # NCHW
    return x.contiguous(), torch.from_numpy(labels.astype(np.int64))


def lecun_normal_(weight: torch.Tensor) -> None:
    """Flax's default kernel initialiser: a normal of variance 1/fan_in truncated at 2 standard deviations."""
    std = (1.0 / weight[0].numel()) ** 0.5 / 0.87962566103423978  # the truncation's variance, corrected
    nn.init.trunc_normal_(weight, std=std, a=-2.0 * std, b=2.0 * std)


def model(widths: list[int]) -> nn.Module:
    layers, channels = [], 1
    for features in widths:
        layers += [nn.Conv2d(channels, features, 3, padding=1), nn.BatchNorm2d(features, eps=1e-5, momentum=0.1),
                   nn.ReLU(), nn.MaxPool2d(2)]
        channels = features
    net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(widths[-1] * 3 * 3, 10))
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            lecun_normal_(module.weight)
            nn.init.zeros_(module.bias)
    return net


def one_cycle(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * step / warmup
    return peak * max(0.0, 1.0 - (step - warmup) / max(1, total - warmup))


def run(seed: int, data: dict, args: argparse.Namespace) -> dict:
    torch.manual_seed(seed)
    net = model(args.widths)
    opt = torch.optim.SGD(net.parameters(), lr=0.0, momentum=0.9, nesterov=True)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    x, y = data["train"]
    steps_per_epoch = len(y) // args.batch_size
    total, warmup = steps_per_epoch * args.epochs, round(args.warmup_epochs * steps_per_epoch)
    generator, step, train_s = torch.Generator().manual_seed(seed), 0, 0.0
    for _ in range(args.epochs):
        order = torch.randperm(len(y), generator=generator)
        net.train()
        start = time.perf_counter()
        for i in range(steps_per_epoch):
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            for group in opt.param_groups:
                group["lr"] = one_cycle(step, total, warmup, args.learning_rate)
            images = x[idx]
            if args.flip:  # a random half of the batch mirrored left-right
                mirrored = torch.rand(len(idx), generator=generator) < 0.5
                images = torch.where(mirrored[:, None, None, None], images.flip(3), images)
            opt.zero_grad(set_to_none=True)
            loss_fn(net(images), y[idx]).backward()
            opt.step()
            step += 1
        train_s += time.perf_counter() - start
    net.eval()
    start = time.perf_counter()
    with torch.no_grad():
        tx, ty = data["test"]
        correct = sum(int((net(tx[i:i + 1000]).argmax(1) == ty[i:i + 1000]).sum()) for i in range(0, len(ty), 1000))
    return {"seed": seed, "train_s": round(train_s, 3), "test_accuracy": correct / len(ty),
            "eval_s": round(time.perf_counter() - start, 3), "steps": step, "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("JAXCNN_DATA_DIR", "../shared/data"))
    parser.add_argument("--dataset", default="mnist", choices=("mnist", "fashion_mnist"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=0.3)
    parser.add_argument("--warmup-epochs", type=float, default=0.2)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 32, 64], help="conv features per block")
    parser.add_argument("--flip", action="store_true", help="random horizontal flips")
    args = parser.parse_args()
    folder = pathlib.Path(args.data_dir) / args.dataset
    data = {split: load(folder, split) for split in FILES}
    for seed in args.seeds:
        print(json.dumps(run(seed, data, args)), flush=True)


if __name__ == "__main__":
    main()
