"""jaxcnn: train, evaluate and compare MLP and CNN image classifiers with JAX, Flax, Optax and Orbax."""

from jaxcnn.api import Model, load, train
from jaxcnn.config import base_config, load_config
from jaxcnn.data import Dataset, load_dataset, register_dataset
from jaxcnn.errors import JaxcnnError
from jaxcnn.loop import train_and_evaluate
from jaxcnn.models import create_model, register_model

__all__ = ["Dataset", "JaxcnnError", "Model", "base_config", "create_model", "load", "load_config", "load_dataset",
           "register_dataset", "register_model", "train", "train_and_evaluate"]
