"""A CIFAR-scale VGG (six 3×3 convs with BatchNorm, 64-128-256, Dense 512, 3.2M params) on CIFAR-10.

    jaxcnn train --config cifar10_vgg --data-dir DATA --download

SGD 0.05 with Nesterov momentum 0.9, decoupled weight decay 5e-4, batch 128, 60 epochs of
warmup (1 epoch) then cosine decay; per-channel mean/std from the training split; random crops
(padding 4), horizontal flips and 8×8 cutout on the device.

Expected: roughly 92-93% test accuracy, the range published for VGG-style networks of this size
with flip-and-crop augmentation (cutout adds a few tenths). Not measured with jaxcnn: no GPU and no
CIFAR-10 files were available when this config was written. On a single modern GPU expect on the
order of 10 minutes.
"""

from jaxcnn.config import base_config


def get_config():
    config = base_config(model="vgg", dataset="cifar10")
    config.dataset.per_channel_stats = True
    config.augment.crop_padding = 4
    config.augment.flip = True
    config.augment.cutout = 8
    config.batch_size = 128
    config.eval_batch_size = 1000
    config.num_epochs = 60
    config.log_every_steps = 200
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.05
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 5e-4
    config.schedule.name = "warmup_cosine"
    config.schedule.warmup_epochs = 1.0
    return config.lock()
