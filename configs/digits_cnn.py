"""The default: the Flax-example CNN on scikit-learn's bundled 8x8 digits (no download, ever).

A mirror of the preset jaxcnn/configs/digits_cnn.py, where its notes are; `--config digits_cnn` is the same.
"""

from jaxcnn.configs.digits_cnn import get_config  # noqa: F401
