"""MNIST to 99% test accuracy in seconds: a small CNN with BatchNorm, one epoch of batches of 64, one-cycle SGD.

    jaxcnn train --config mnist_speedrun --data-dir ../shared/data
    jaxcnn bench --to-accuracy 0.99 --config mnist_speedrun --data-dir ../shared/data --seeds 5

Conv 8 → BN → ReLU → max-pool, conv 32 (same), conv 64 (same), then one Dense 576 → 10 (23,962
parameters); Nesterov SGD 0.3 with momentum 0.9, batch 64, label smoothing 0.1, a one-cycle
learning rate (`warmup_linear`: 0.2 epochs up from 0, then linearly down to 0) over one epoch of
all 60,000 training images (no validation split: the test split only measures).

Batch 64 for one epoch, not 128 for two: the same 99.1% (seeds 0-4: 99.08-99.18%, mean 99.13%,
one step per call as a run of one epoch chooses; 99.08-99.23%, mean 99.14%, with 4 fused steps
per call) in about half the training time. At 128, one epoch ended within 0.1% of 99.0%. The README's "Time
to accuracy" has the measured times, against the PyTorch twin (`scripts/peers/torch_speedrun.py`),
and how the recipe was chosen.
"""

from jaxcnn.config import base_config


def get_config():
    config = base_config(model="cnn", dataset="mnist")
    config.dataset.val_fraction = 0.0
    config.batch_size = 64
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
