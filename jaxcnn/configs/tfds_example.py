"""Any TensorFlow-Datasets image-classification dataset by name: here `tfds:mnist` with the Flax CNN.

    pip install "jaxcnn[tfds]"
    jaxcnn train --config tfds_example --data-dir DATA --download   # first time: prepares it
    jaxcnn train --config tfds_example --data-dir DATA --config.dataset.name=tfds:fashion_mnist

Preparing (`--download`) runs TFDS's download_and_prepare in the ArrayRecord format into DATA/tfds/
and needs TensorFlow; reading needs only tensorflow-datasets. Offline, put the dataset's original
files into DATA/tfds/manual/NAME/ (the error lists them with their sha256) and run with --download
again. Decoded images are cached as .npy in DATA/tfds/jaxcnn_cache/ for fast starts; splits are
chosen with dataset.train_split / dataset.test_split (TFDS split syntax, e.g. "train[:80%]").

Expected: about 99% MNIST test accuracy after 3 epochs (the same data and model as
the mnist_cnn preset, which reaches 99.1-99.3% in 10); seconds per epoch on a GPU, minutes on a
2-core CPU. Not measured through TFDS here: preparing needs TensorFlow and network, which were not
available; the tests run this config on TFDS's mock data.
"""

from jaxcnn.config import base_config


def get_config():
    config = base_config(model="cnn", dataset="tfds:mnist")
    config.batch_size = 128
    config.num_epochs = 3
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    return config.lock()
