"""`jaxcnn export`'s default output path and platforms, without JAX.

Kept apart from `jaxcnn.commands.export` (which imports JAX) so that the command line's grammar
(`jaxcnn.cli_parser`) can show them in `jaxcnn export --help` without loading JAX;
`jaxcnn.commands.export` imports them from here, so they are defined once.
"""

EXPORT_DIR = "export"
DEFAULT_NAME = "model.jaxexport"
# One artifact for every backend: JAX lowers the function once per platform and picks the branch
# of the platform it is called on. Convolutions keep the implementation that model.conv_impl
# chose on the exporting machine.
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")
KNOWN_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
ONNX_NAME = "model.onnx"  # `jaxcnn export --format onnx` (jaxcnn.commands.onnx_export)
FORMATS = ("jax", "onnx")
