"""The Flax-example CNN on MNIST: Conv32-ReLU-AvgPool, Conv64-ReLU-AvgPool, Dense 256 ReLU, Dense 10.

    jaxcnn train --config mnist_cnn --data-dir ../shared/data

SGD 0.1 with momentum 0.9, batch 128, 10 epochs (the Flax example's settings), with one warm-up
epoch then cosine decay. Reaches 99.23% MNIST test accuracy at seed 0 (a constant rate: 99.08%) in
165 s on a free 2-core CPU; 99.0% after 3.5 epochs, 58 s of training (median of seeds 0-4).
"""

from jaxcnn.config import base_config


def get_config():
    config = base_config(model="cnn", dataset="mnist")
    config.batch_size = 128
    config.num_epochs = 10
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.1
    config.optimizer.momentum = 0.9
    config.schedule.name = "warmup_cosine"
    config.schedule.warmup_epochs = 1.0
    return config.lock()
