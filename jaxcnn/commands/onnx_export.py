"""ONNX export: a trained model as an `.onnx` file that runs without JAX (onnxruntime, ...).

`jaxcnn export --format onnx` converts the very function `jaxcnn predict` computes
(`saved.classifier`: uint8 pixels (batch, H, W, C) -> float32 class probabilities, the run's
normalisation and `eval.tta` folded in, the parameters embedded) with jax2onnx, with a symbolic
batch dimension. Beside it, `FILE.json` holds the class names and what the file expects (as for
`jax.export` artifacts). `jaxcnn predict --onnx FILE` runs it with onnxruntime.

jax2onnx converts JAX primitives one by one; jaxcnn's registered models (Dense, Conv, BatchNorm in
evaluation mode, max and average pooling, dropout off, the activations of `model.activation`)
convert. A model with a primitive jax2onnx has no rule for is refused in one line naming it.
Needs the `onnx` extra: `pip install 'jaxcnn[onnx]'` (jax2onnx 0.13.0, the last release whose
requirements admit jaxcnn's orbax-checkpoint, and onnxruntime).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import pathlib
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp

from jaxcnn.commands.export import _check_out, _write_atomically, classify_files, read_sidecar, sidecar_path
from jaxcnn.commands.export_defaults import EXPORT_DIR, ONNX_NAME
from jaxcnn.errors import JaxcnnError
from jaxcnn.spec import LOSSES

FORMAT = "jaxcnn-onnx/1"
FLAX_PLUGINS_LEFT_OUT = ("jax2onnx.plugins.flax.linen.batch_norm",)
INSTALL = "pip install 'jaxcnn[onnx]'"


def default_path(workdir: str | pathlib.Path, member: int | None = None) -> pathlib.Path:
    """WORKDIR/export/model.onnx, or a member's in WORKDIR/members/K/export/."""
    folder = pathlib.Path(workdir) if member is None else pathlib.Path(workdir) / "members" / str(member)
    return folder / EXPORT_DIR / ONNX_NAME


def _jax2onnx() -> Any:
    """jax2onnx, quiet: its plugins for other libraries (dm_pix) log tracebacks when they fail to import."""
    logging.getLogger("jax2onnx").setLevel(logging.ERROR)
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)
    try:
        import jax2onnx
    except ImportError as e:
        raise JaxcnnError(f"--format onnx needs jax2onnx and onnxruntime: {INSTALL}") from e
    return jax2onnx


@contextlib.contextmanager
def without_flax_batchnorm_plugin() -> Iterator[None]:
    """jax2onnx without its plugin for `nn.BatchNorm`, whose ONNX BatchNormalization comes out in
    NCHW between NHWC tensors: a ResNet's residual `Add` then meets both layouts and onnxruntime
    refuses the model. Without it BatchNorm is traced to its JAX primitives (a multiply and an add
    of the running statistics), converted exactly."""
    from jax2onnx.plugins import plugin_system

    plugin_system.import_all_plugins()
    registry = plugin_system.PLUGIN_REGISTRY
    removed = {name: plugin for name, plugin in registry.items()
               if type(plugin).__module__.startswith(FLAX_PLUGINS_LEFT_OUT)}
    for name in removed:
        del registry[name]
    try:
        yield
    finally:
        registry.update(removed)


def onnx_bytes(saved: Any) -> bytes:
    """The serialized ONNX model of `saved.classifier(saved)` for uint8 input of the run's shape and
    any batch size; a model jax2onnx cannot convert is one line naming what it lacks."""
    from jaxcnn.commands.saved import classifier

    jax2onnx = _jax2onnx()
    classify, variables = classifier(saved), saved.state.variables()
    shape = jax.export.symbolic_shape(f"batch, {', '.join(map(str, saved.input_shape))}")
    try:
        with without_flax_batchnorm_plugin(), contextlib.redirect_stdout(io.StringIO()):  # jax2onnx prints the modules
            model = jax2onnx.to_onnx(lambda pixels: classify(variables, pixels),
                                     [jax.ShapeDtypeStruct(shape, jnp.uint8)], model_name="jaxcnn",
                                     input_names=["pixels"], output_names=["probabilities"])
    except Exception as e:  # noqa: BLE001 (jax2onnx raises ValueError, NotImplementedError, TypeError, ...)
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise JaxcnnError(f"model {saved.config.model.name!r} cannot be converted to ONNX by jax2onnx "
                          f"({type(e).__name__}: {detail}); the README's ONNX section lists the supported "
                          "layers, and `jaxcnn export` (jax.export) takes any model") from e
    return model.SerializeToString()


def onnx_metadata(saved: Any, blob: bytes) -> dict[str, Any]:
    """The sidecar's content: the class names and what the file expects and returns."""
    import jax2onnx

    config = saved.config
    return {"format": FORMAT, "class_names": list(saved.class_names), "input_shape": list(saved.input_shape),
            "input_dtype": "uint8", "input": "pixels 0..255, shape (batch, height, width, channels); any batch size",
            "output": "probabilities (batch, num_classes), float32",
            "activation": LOSSES.lookup(config.loss.name).output, "model": config.model.name,
            "dataset": config.dataset.name, "step": saved.step, "workdir": str(saved.workdir),
            "jax2onnx_version": getattr(jax2onnx, "__version__", "unknown"),
            "sha256": hashlib.sha256(blob).hexdigest()}


def write_onnx(workdir: str | pathlib.Path, step: str | None = None, out: str | pathlib.Path | None = None,
               member: int | None = None) -> tuple[pathlib.Path, dict[str, Any]]:
    """Converts the model saved in `workdir` at `step` (of `member`) to `out` (default
    `default_path(workdir)`) and `out.json`; returns (out, the sidecar's content)."""
    from jaxcnn.commands.saved import load_saved_model

    out = pathlib.Path(out) if out is not None else default_path(workdir, member)
    _check_out(out)
    _jax2onnx()  # a missing extra: refused before the model is loaded
    saved = load_saved_model(workdir, step, member)
    blob = onnx_bytes(saved)
    meta = onnx_metadata(saved, blob)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(out, blob)
    _write_atomically(sidecar_path(out), (json.dumps(meta, indent=2) + "\n").encode())
    return out, meta


def load_onnx(path: str | pathlib.Path) -> tuple[Any, dict[str, Any] | None]:
    """An onnxruntime session of the file at `path` and its sidecar (None when missing)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise JaxcnnError(f"--onnx {path}: no such file; pass the file written by `jaxcnn export --format onnx`")
    try:
        import onnxruntime
    except ImportError as e:
        raise JaxcnnError(f"--onnx needs onnxruntime: {INSTALL}") from e
    blob = path.read_bytes()
    try:
        session = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 (onnxruntime raises its own Fail, InvalidProtobuf, ...)
        raise JaxcnnError(f"--onnx {path} is not an ONNX model onnxruntime can load ({type(e).__name__}); "
                          "pass the file written by `jaxcnn export --format onnx`") from e
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(uint8)" or len(inputs[0].shape) != 4:
        raise JaxcnnError(f"--onnx {path} is an ONNX model but not a jaxcnn image classifier (it takes "
                          f"{', '.join(f'{i.type} {i.shape}' for i in inputs)})")
    return session, read_sidecar(path, blob)


def predict_onnx(path: str | pathlib.Path, files: Sequence[str | pathlib.Path], top: int = 3,
                 invert: bool = False) -> list[dict]:
    """`jaxcnn predict --onnx`: the same result as `saved.predict`, computed by onnxruntime."""
    if not files:
        raise JaxcnnError("predict needs at least one image file")
    session, meta = load_onnx(path)
    first = session.get_inputs()[0]
    return classify_files(path, meta, files, tuple(int(d) for d in first.shape[1:]),
                          lambda pixels: session.run(None, {first.name: pixels})[0], top, invert, "the model")
