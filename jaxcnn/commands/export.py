"""Exported models: a trained model as a serialized `jax.export` artifact that runs with JAX alone.

`jaxcnn export` writes `FILE` (default `WORKDIR/export/model.jaxexport`), the StableHLO of

    uint8 images (batch, H, W, C) -> float32 class probabilities (batch, num_classes)

with a symbolic batch dimension (any batch size), the run's normalisation `(x / 255 - mean) / std`
folded in, the model in evaluation mode and the parameters embedded as constants: the same function
as `jaxcnn predict` (`saved.classifier`). Beside it, `FILE.json` holds what the artifact does not:
class names, input shape and dtype, mean/std, the output activation, step, versions and the
artifact's sha256. Reading it back needs only `jax.export.deserialize(bytes).call(images)`
(and the `flatbuffers` package); `predict_exported` does that and nothing more with the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import struct
import sys
import tempfile
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.data.paths import not_a_regular_file
from jaxcnn.errors import JaxcnnError
# JAX-free, so that the grammar (`jaxcnn export --help`) shows them without loading JAX.
from jaxcnn.commands.export_defaults import DEFAULT_NAME, DEFAULT_PLATFORMS, EXPORT_DIR, KNOWN_PLATFORMS
from jaxcnn.spec import LOSSES

FORMAT = "jaxcnn-export/1"


def default_path(workdir: str | pathlib.Path, member: int | None = None) -> pathlib.Path:
    """WORKDIR/exported/model..., or a member's in WORKDIR/members/K/exported/."""
    folder = pathlib.Path(workdir) if member is None else pathlib.Path(workdir) / "members" / str(member)
    return folder / EXPORT_DIR / DEFAULT_NAME


def sidecar_path(path: str | pathlib.Path) -> pathlib.Path:
    """`FILE.json` beside `FILE`."""
    path = pathlib.Path(path)
    return path.with_name(path.name + ".json")


def parse_platforms(text: str) -> tuple[str, ...]:
    """"cpu,cuda" -> ("cpu", "cuda"); each one of `KNOWN_PLATFORMS`, no repeats."""
    platforms = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in platforms if p not in KNOWN_PLATFORMS]
    if not platforms or unknown or len(set(platforms)) != len(platforms):
        raise JaxcnnError(f"--platforms must be a comma-separated list of distinct platforms among "
                          f"{', '.join(KNOWN_PLATFORMS)}, got {text!r}")
    return platforms


# ---------------------------------------------------------------------------- writing


def export_model(saved: Any, platforms: Sequence[str] = DEFAULT_PLATFORMS) -> jax.export.Exported:
    """The `jax.export.Exported` of `saved.classifier(saved)` with the saved variables embedded, for
    uint8 input of the run's shape with a symbolic batch dimension."""
    from jaxcnn.commands.saved import classifier

    classify, variables = classifier(saved), saved.state.variables()
    batch, = jax.export.symbolic_shape("batch")
    spec = jax.ShapeDtypeStruct((batch, *saved.input_shape), jnp.uint8)
    return jax.export.export(jax.jit(lambda pixels: classify(variables, pixels)),
                             platforms=tuple(platforms))(spec)


def export_metadata(saved: Any, exported: jax.export.Exported, blob: bytes) -> dict[str, Any]:
    """The sidecar's content: what a user of the artifact needs besides the artifact."""
    from jaxcnn.files import checkpoint

    config = saved.config
    versions = checkpoint.library_versions()
    return {
        "format": FORMAT,
        "class_names": list(saved.class_names),
        "input_shape": list(saved.input_shape),
        "input_dtype": "uint8",
        "input": "pixels 0..255, shape (batch, height, width, channels); any batch size",
        "mean": config.dataset.mean, "std": config.dataset.std,
        "output": "probabilities (batch, num_classes), float32",
        "activation": LOSSES.lookup(config.loss.name).output,
        "model": config.model.name, "dataset": config.dataset.name, "loss": config.loss.name,
        "step": saved.step, "workdir": str(saved.workdir),
        "platforms": list(exported.platforms),
        "jaxcnn_version": versions["jaxcnn"], "jax_version": versions["jax"],
        "jaxlib_version": versions["jaxlib"],
        "sha256": hashlib.sha256(blob).hexdigest(),
    }


def _write_atomically(path: pathlib.Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: a failure leaves `path` as it was."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise


def _check_out(out: pathlib.Path) -> None:
    for target in (out, sidecar_path(out)):
        if target.is_dir():
            raise JaxcnnError(f"--out {out}: {target} is a folder; pass a file name such as "
                              f"{out / DEFAULT_NAME}")
    if out.parent.exists() and not out.parent.is_dir():
        raise JaxcnnError(f"--out {out}: {out.parent} is a file, not a folder")
    _check_writable(out)


def _check_writable(out: pathlib.Path) -> None:
    """Probes the folder `out` goes in (or the nearest existing one above it, where the folder
    would be created), so that a read-only run or `--out` is refused before the model is loaded."""
    folder = out.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise JaxcnnError(f"--out {out}: {folder} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".jaxcnn-probe-")
        os.close(handle)
        os.unlink(probe)
    except OSError as e:
        raise JaxcnnError(f"--out {out}: cannot write in {folder} ({e.strerror or e}); pass --out FILE in a "
                          "writable folder") from e


def write_export(workdir: str | pathlib.Path, step: str | None = None, out: str | pathlib.Path | None = None,
                 platforms: Sequence[str] = DEFAULT_PLATFORMS, member: int | None = None
                 ) -> tuple[pathlib.Path, dict[str, Any]]:
    """Exports the model saved in `workdir` at `step` (as `jaxcnn predict --step`; of `member` in a
    run of members) to `out`
    (default `default_path(workdir)`) and `out.json`; returns (out, the sidecar's content)."""
    from jaxcnn.commands.saved import load_saved_model

    out = pathlib.Path(out) if out is not None else default_path(workdir, member)
    _check_out(out)
    saved = load_saved_model(workdir, step, member)
    exported = export_model(saved, platforms)
    blob = bytes(exported.serialize())
    meta = export_metadata(saved, exported, blob)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(out, blob)
        _write_atomically(sidecar_path(out), (json.dumps(meta, indent=2) + "\n").encode())
    except OSError as e:  # a full disk, or permissions changed since the probe
        raise JaxcnnError(f"--out {out}: cannot be written ({e.strerror or e}); pass --out FILE in a "
                          "writable folder with free space") from e
    return out, meta


# ---------------------------------------------------------------------------- reading


def _warn(message: str) -> None:
    print(f"jaxcnn: warning: {message}", file=sys.stderr)


def read_sidecar(path: pathlib.Path, blob: bytes) -> dict[str, Any] | None:
    """`path`'s sidecar, or None (with a warning) when it is missing; warns when it describes
    another artifact (its sha256 differs)."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        _warn(f"{sidecar} not found: classes are named by their index")
        return None
    try:
        meta = json.loads(sidecar.read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("class_names"), list):
            raise ValueError("no class_names list")
    except (OSError, ValueError) as e:
        raise JaxcnnError(f"{sidecar}: not the JSON that `jaxcnn export` writes ({e}); delete it to "
                          "use the artifact with classes named by their index") from e
    if meta.get("sha256") not in (None, hashlib.sha256(blob).hexdigest()):
        _warn(f"{sidecar} was written for another artifact (sha256 differs); its class names may be wrong")
    return meta


def load_exported(path: str | pathlib.Path) -> tuple[jax.export.Exported, dict[str, Any] | None]:
    """The deserialized artifact at `path` and its sidecar (None when missing). Deserializing runs
    whatever the file holds: load only files you trust."""
    path = pathlib.Path(path)
    problem = not_a_regular_file(path)  # a FIFO is never opened: reading it would block
    if problem:
        problem = "no such file" if problem == "does not exist" else problem
        raise JaxcnnError(f"--exported {path}: {problem}; pass the file written by `jaxcnn export`")
    blob = path.read_bytes()
    try:
        exported = jax.export.deserialize(bytearray(blob))
    except ImportError as e:  # jax needs flatbuffers to deserialize
        raise JaxcnnError(f"reading {path} needs the flatbuffers package: pip install flatbuffers") from e
    except Exception as e:  # flatbuffers raises struct.error, IndexError, ... on other bytes
        detail = "not a flatbuffer" if isinstance(e, struct.error) else f"{type(e).__name__}: {e}"
        raise JaxcnnError(f"--exported {path} is not a jax.export artifact ({detail.splitlines()[0][:160]}); "
                          "pass the file written by `jaxcnn export`") from e
    avals = exported.in_avals
    shape = avals[0].shape if len(avals) == 1 else ()
    if (len(shape) != 4 or avals[0].dtype != jnp.uint8 or isinstance(shape[0], int)
            or not all(isinstance(d, int) for d in shape[1:])):
        raise JaxcnnError(f"--exported {path} is a jax.export artifact but not a jaxcnn image classifier (it "
                          f"takes {', '.join(map(str, avals))}, not one uint8 (batch, H, W, C) array of any batch)")
    return exported, read_sidecar(path, blob)


def predict_exported(path: str | pathlib.Path, files: Sequence[str | pathlib.Path], top: int = 3,
                     invert: bool = False) -> list[dict]:
    """`jaxcnn predict --exported`: the same result as `saved.predict`, computed by the artifact."""
    if not files:
        raise JaxcnnError("predict needs at least one image file")
    exported, meta = load_exported(path)
    platform = jax.export.default_export_platform()
    if platform not in exported.platforms:
        raise JaxcnnError(f"--exported {path} was exported for {', '.join(exported.platforms)}, and JAX runs "
                          f"on {platform} here; export again with --platforms including {platform}")
    input_shape = tuple(int(d) for d in exported.in_avals[0].shape[1:])
    return classify_files(path, meta, files, input_shape, exported.call, top, invert, "the artifact")


def classify_files(path: str | pathlib.Path, meta: dict | None, files: Sequence[str | pathlib.Path],
                   input_shape: tuple[int, ...], classify: Any, top: int, invert: bool, what: str) -> list[dict]:
    """Each file's `top` classes by an exported model's probabilities (`classify(uint8 pixels)`),
    named by its sidecar (`meta`, None: class numbers), as `saved.predict` gives them."""
    from jaxcnn.commands.saved import load_image, top_classes

    pixels = np.stack([load_image(f, input_shape, invert) for f in files]).astype(np.uint8)
    probabilities = np.asarray(classify(pixels))
    num_classes = probabilities.shape[-1]
    names = meta["class_names"] if meta is not None else [str(c) for c in range(num_classes)]
    if len(names) != num_classes:
        raise JaxcnnError(f"{sidecar_path(path)} names {len(names)} classes, but {what} outputs "
                          f"{num_classes}; export the model again")
    return top_classes(files, probabilities, names, top)
