"""MNIST to 99% test accuracy in seconds: a small CNN with BatchNorm, one epoch of batches of 32, one-cycle SGD.

    jaxcnn train --config mnist_speedrun --data-dir ../shared/data
    jaxcnn bench --to-accuracy 0.99 --config mnist_speedrun --data-dir ../shared/data --seeds 5

Conv 8 → BN → ReLU → max-pool, conv 32 (same), conv 64 (same), then one Dense 576 → 10 (23,962
parameters); Nesterov SGD 0.3 with momentum 0.9, batch 32, label smoothing 0.1, a one-cycle
learning rate (`warmup_linear`: 0.2 epochs up from 0, then linearly down to 0) over one epoch of
all 60,000 training images (no validation split: the test split only measures).

Batch 32 (since issue 23's third pass), not 64: seeds 0-4 end at 99.20-99.27% (mean 99.22%)
instead of 99.01-99.18% (mean 99.10%), the margin the issue asks for, in 5-6% more training time
on the Intel Xeon with AMX; the PyTorch-eager twin pays its per-operation cost on twice the steps.
The README's "Time to accuracy" has the measured times, against the PyTorch twin
(`scripts/peers/torch_speedrun.py`), and how the recipe was chosen.
"""

from jaxcnn.config import base_config


def get_config():
    config = base_config(model="cnn", dataset="mnist")
    config.dataset.val_fraction = 0.0
    config.batch_size = 32
    config.num_epochs = 1
    config.model.blocks = ((8,), (32,), (64,))
    config.model.hidden = ()
    config.model.batch_norm = True
    config.model.pool = "max"
    config.loss.label_smoothing = 0.1
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.3
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = True
    config.schedule.name = "warmup_linear"
    config.schedule.warmup_epochs = 0.2
    return config.lock()
