"""Image files to uint8 pixels, one way for training (`image_folder`) and for `jaxcnn predict`.

Pillow decodes (only the formats of `IMAGE_SUFFIXES`, whatever a file's name says); transparency is
composited on black (as MNIST's background); the result is converted to grey or RGB and resized
bilinearly to the wanted (H, W, C). Images over `MAX_IMAGE_PIXELS` are refused from their header,
before decoding; `.npy` arrays are memory-mapped and their shape checked before any value is read.
"""

from __future__ import annotations

import io
import pathlib
import warnings

import numpy as np

from jaxcnn.data.paths import not_a_regular_file
from jaxcnn.errors import JaxcnnError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
PILLOW_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
# Pillow's 16-bit grey modes ("I" is how older Pillows open a 16-bit PNG): values 0..65535, rescaled
# to 0..255 by x / 257 (65535 -> 255), never clipped. "F" (float TIFF) is taken as pixel values 0..255.
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
# Larger images (width x height) are refused, from the header, before decoding them.
MAX_IMAGE_PIXELS = 64_000_000


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())[:200]


def _check_pixels(array: np.ndarray, path: pathlib.Path) -> np.ndarray:
    """`array` as float32 (H, W) or (H, W, 3|4) pixel values, after checking its shape and size
    (before reading any value, which for a memory-mapped .npy reads the file) and its values."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise JaxcnnError(f"{path}: expected an image of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
                          f"got {array.shape}")
    if array.size == 0:
        raise JaxcnnError(f"{path}: the array is empty (shape {array.shape}); expected an image")
    if array.shape[0] * array.shape[1] > MAX_IMAGE_PIXELS:
        raise JaxcnnError(f"{path}: {array.shape[1]}x{array.shape[0]} pixels is over predict's limit of "
                          f"{MAX_IMAGE_PIXELS:,} pixels; resize it first")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise JaxcnnError(f"{path}: expected integer or float pixel values 0..255, got dtype {array.dtype}")
    array = np.asarray(array, np.float32)  # exact for 0..255
    finite = np.isfinite(array)
    if not finite.all():
        raise JaxcnnError(f"{path}: {array.size - int(finite.sum())} of {array.size} values are NaN or "
                          "infinite; expected pixel values 0..255")
    if array.min() < 0 or array.max() > 255:
        raise JaxcnnError(f"{path}: expected pixel values 0..255, got values in "
                          f"[{array.min():g}, {array.max():g}]; scale the array to 0..255")
    return array


def _read_npy(path: pathlib.Path) -> np.ndarray:
    """The array of a .npy file, memory-mapped: its size is checked before its values are read."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # NumPy raises ValueError, OSError, EOFError, ... for a damaged or pickled file
        if "pickle" in str(e) or "Python objects" in str(e):
            raise JaxcnnError(f"{path}: holds pickled Python objects, which jaxcnn never loads; save a numeric "
                              "array with numpy.save(path, uint8_array)") from e
        raise JaxcnnError(f"{path}: cannot be read as a .npy array of numbers ({_one_line(e)}); "
                          "save one with numpy.save(path, uint8_array)") from e
    if not isinstance(array, np.ndarray):  # an .npz archive under a .npy name
        array.close()
        raise JaxcnnError(f"{path}: is an .npz archive, expected one array saved with numpy.save")
    return array


def _read_image(path: pathlib.Path | io.BytesIO, name: str | None = None) -> np.ndarray:
    """An image file (or its bytes, called `name` in messages) as an (H, W) grey, (H, W, 3) RGB or
    (H, W, 4) RGBA uint8 array; an image over `MAX_IMAGE_PIXELS` is refused from its header, before
    it is decoded."""
    from PIL import Image

    source, path = path, name or path

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # jaxcnn's own, lower limit applies
        try:
            with Image.open(source, formats=PILLOW_FORMATS) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise JaxcnnError(f"{path}: {width}x{height} pixels is over predict's limit of "
                                      f"{MAX_IMAGE_PIXELS:,} pixels; resize it first")
                return _decoded(image)
        except Image.DecompressionBombError as e:
            raise JaxcnnError(f"{path}: the image is over predict's limit of {MAX_IMAGE_PIXELS:,} pixels; "
                              "resize it first") from e
        except JaxcnnError:
            raise
        except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, ... for damaged files
            reason = _one_line(e).replace(repr(source), "its bytes") if name else _one_line(e)
            raise JaxcnnError(f"{path}: cannot be read as an image ({reason})") from e


def _decoded(image: "Image.Image") -> np.ndarray:
    """Pixels of an open image, without losing its range: 16-bit grey as x / 257 (floats 0..255; a
    32-bit "I" image over 65535 is then refused by `_check_pixels`), float grey as it is, palettes
    and transparency as RGBA, other modes as grey ("L") or RGB."""
    if image.mode in SIXTEEN_BIT_MODES:
        return np.asarray(image, np.float64) / 257.0
    if image.mode == "F":
        return np.asarray(image, np.float64)
    if "A" in image.getbands() or image.mode == "P":
        return np.asarray(image.convert("RGBA"))
    return np.asarray(image.convert("L" if len(image.getbands()) == 1 else "RGB"))


def _to_pixels(array: np.ndarray, input_shape: tuple[int, int, int], invert: bool) -> np.ndarray:
    """Checked float pixel values (H, W) or (H, W, 3|4) -> uint8 of `input_shape`: inverted (255 - x)
    with `invert`, transparency composited on black, resized bilinearly, converted to grey or RGB."""
    from PIL import Image

    if array.ndim == 3 and array.shape[-1] == 4:
        colour, alpha = array[..., :3], array[..., 3:] / 255.0
    else:
        colour, alpha = array, 1.0
    if invert:
        colour = 255.0 - colour
    image = Image.fromarray(np.rint(colour * alpha).astype(np.uint8))
    height, width, channels = input_shape
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.BILINEAR)
    pixels = np.asarray(image, np.uint8)
    return pixels[..., None] if channels == 1 else pixels


def load_image(path: str | pathlib.Path, input_shape: tuple[int, int, int], invert: bool = False) -> np.ndarray:
    """An image file (through Pillow) or `.npy` pixel array as uint8 (H, W, C) of `input_shape`;
    with `invert`, dark-on-light pixels become light-on-dark (255 - x), as in MNIST."""
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if suffix != ".npy" and suffix not in IMAGE_SUFFIXES:
        raise JaxcnnError(f"{path}: unsupported file type '{suffix}'; pass image files "
                          f"({', '.join(IMAGE_SUFFIXES)}) or .npy arrays")
    problem = not_a_regular_file(path)
    if problem:
        problem = {"does not exist": "no such file", "is a folder, not a regular file": "is a folder"}.get(problem, problem)
        raise JaxcnnError(f"{path}: {problem}; expected an image file")
    array = _read_npy(path) if suffix == ".npy" else _read_image(path)
    return _to_pixels(_check_pixels(array, path), input_shape, invert)


def image_from_bytes(data: bytes, name: str, input_shape: tuple[int, int, int], native: bool = False) -> np.ndarray:
    """Encoded image bytes (a record's; `name` says which in messages) as uint8 (H, W, C) of
    `input_shape`, or at the image's own H and W with `native` (for a random crop)."""
    array = _check_pixels(_read_image(io.BytesIO(data), name), name)
    shape = (array.shape[0], array.shape[1], input_shape[2]) if native else input_shape
    return _to_pixels(array, shape, invert=False)


def read_header(path: pathlib.Path) -> tuple[int, int, bool]:
    """(height, width, is_grey) of an image file, read without decoding its pixels."""
    from PIL import Image, UnidentifiedImageError

    problem = not_a_regular_file(path)  # opening a FIFO would block: never open one
    if problem:
        raise JaxcnnError(f"{path}: {problem}; expected an image file")
    try:
        with Image.open(path, formats=PILLOW_FORMATS) as image:
            width, height = image.size
            return height, width, image.mode in GRAY_MODES
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError) as e:
        raise JaxcnnError(f"{path}: cannot be read as an image: {_reason(e)}") from e


def _reason(error: Exception) -> str:
    """The first line of Pillow's message (the user sees one line)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
