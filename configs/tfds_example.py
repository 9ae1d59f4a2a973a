"""Any TensorFlow-Datasets image-classification dataset by name: here `tfds:mnist` with the Flax CNN.

A mirror of the preset jaxcnn/configs/tfds_example.py, where its notes are; `--config tfds_example` is the same.
"""

from jaxcnn.configs.tfds_example import get_config  # noqa: F401
