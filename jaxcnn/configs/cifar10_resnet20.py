"""ResNet-20 (He et al. 2016, 272k params) on CIFAR-10 with the paper's recipe.

    jaxcnn train --config cifar10_resnet20 --data-dir DATA --download

`--download` fetches the binary release (cifar-10-binary.tar.gz, sha256-checked) into DATA/cifar10/
the first time; offline, put the unpacked `.bin` files there. SGD 0.1, momentum 0.9, weight decay
1e-4 (as an L2 term: loss.l2 = 5e-5, whose gradient is 1e-4·w), batch 128, 164 epochs (64k steps)
with the rate ÷10 at epochs 82 and 123; per-channel mean/std from the training split; random
crops of the image padded by 4 and horizontal flips, on the device.

Expected: about 91-92% test accuracy; He et al. report 91.25% (8.75% error) training on all
50,000 images, and re-implementations typically land at 91-92%. Here 10% of the training set is
held out for validation, which usually costs a few tenths of a point (set dataset.val_fraction=0
to train on all of it). These figures are published ones, not measured with jaxcnn: no GPU and no
CIFAR-10 files were available when this config was written. On a single modern GPU the run should
take on the order of 10-20 minutes (a few thousand to tens of thousands of images/s for this
small network); on a 2-core CPU it takes days.
"""

from jaxcnn.config import base_config


def get_config():
    config = base_config(model="resnet20", dataset="cifar10")
    config.dataset.per_channel_stats = True
    config.augment.crop_padding = 4
    config.augment.flip = True
    config.batch_size = 128
    config.eval_batch_size = 1000
    config.num_epochs = 164
    config.log_every_steps = 200
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.1
    config.optimizer.momentum = 0.9
    config.loss.l2 = 5e-5
    config.schedule.name = "piecewise"
    config.schedule.boundaries_epochs = (82, 123)
    config.schedule.decay_rate = 0.1
    return config.lock()
