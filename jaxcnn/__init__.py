"""jaxcnn: train, evaluate and compare MLP and CNN image classifiers with JAX, Flax, Optax and Orbax."""

from jaxcnn.config import base_config, load_config
from jaxcnn.data import load_dataset
from jaxcnn.errors import JaxcnnError
from jaxcnn.loop import train_and_evaluate
from jaxcnn.models import create_model

__all__ = ["JaxcnnError", "base_config", "create_model", "load_config", "load_dataset",
           "train_and_evaluate"]
