"""MNIST to 99% test accuracy in seconds: a small CNN with BatchNorm, one epoch, one-cycle SGD.

    jaxcnn train --config mnist_speedrun --data-dir ../shared/data
    jaxcnn bench --to-accuracy 0.99 --config mnist_speedrun --data-dir ../shared/data --seeds 5

Conv 8 → BN → ReLU → max-pool, conv 32 (same), conv 64 (same), then one Dense 576 → 10 (23,962
parameters); Nesterov SGD 0.3 with momentum 0.9, batch 128, label smoothing 0.1, a one-cycle
learning rate (`warmup_linear`: 0.2 epochs up from 0, then linearly down to 0) over one epoch of
all 60,000 training images (no validation split: the test split only measures).

Measured on the project's 2-core CPU, quiet (load ~2), seeds 0-4 each in a fresh process
(`jaxcnn bench --to-accuracy 0.99 ... --seeds 5`): every seed reached 99.0% test accuracy (99.02-99.08%
at the stopping evaluation), after 1 epoch (seed 2: 0.75); training time to 99.0% median 9.1 s
(7.2-9.5 s), the whole command to that evaluation median 13.1 s (10.9-13.6 s), compilation 0.9 s.
`jaxcnn train --config mnist_speedrun` (seed 0): 99.08%, 13.2 s for the whole command. SGD 0.4
missed with seed 2 (98.95%); README, "Time to accuracy", has how the recipe was chosen.
"""

from jaxcnn.config import base_config


def get_config():
    config = base_config(model="cnn", dataset="mnist")
    config.dataset.val_fraction = 0.0
    config.batch_size = 128
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
