"""The seed MLP of the course notes: flatten 28x28 -> Dense 512 ReLU -> Dense 10 (softmax in the loss).

    jaxcnn train --config configs/mnist_mlp.py --data-dir ../shared/data

RMSprop 1e-3, batch 128, 5 epochs, inputs scaled to [0, 1], as in the notes' Keras run (98.01%).
Reaches ~98.0-98.2% MNIST test accuracy in about a minute on a 2-core CPU.
"""

from jaxcnn.config import base_config


def get_config():
    config = base_config(model="mlp", dataset="mnist")
    config.batch_size = 128
    config.num_epochs = 5
    config.optimizer.name = "rmsprop"
    config.optimizer.learning_rate = 1e-3
    return config.lock()
