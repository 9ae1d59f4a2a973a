"""Image files to uint8 pixels, one way for training (`image_folder`) and for `jaxcnn predict`.

Pillow decodes; transparency is composited on black (as MNIST's background); the result is converted
to grey or RGB and resized bilinearly to the wanted (H, W, C).
"""

from __future__ import annotations

import pathlib

import numpy as np

from jaxcnn.errors import JaxcnnError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def to_pixels(array: np.ndarray, path: pathlib.Path, input_shape: tuple[int, int, int]) -> np.ndarray:
    """A (H, W) or (H, W, C) array of pixel values 0..255 -> uint8 of `input_shape`, resized
    bilinearly and converted to grey or RGB as the model expects."""
    from PIL import Image

    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise JaxcnnError(f"{path}: expected an image of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
                          f"got {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or array.min() < 0 or array.max() > 255:
        raise JaxcnnError(f"{path}: expected pixel values 0..255, got {array.dtype} in "
                          f"[{array.min()}, {array.max()}]; scale the array to 0..255")
    image = Image.fromarray(np.rint(array).astype(np.uint8))
    height, width, channels = input_shape
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.BILINEAR)
    pixels = np.asarray(image, np.uint8)
    return pixels[..., None] if channels == 1 else pixels


def load_image(path: str | pathlib.Path, input_shape: tuple[int, int, int]) -> np.ndarray:
    """An image file (through Pillow) or `.npy` pixel array as uint8 (H, W, C) of `input_shape`."""
    from PIL import Image, UnidentifiedImageError

    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix in IMAGE_SUFFIXES:
            with Image.open(path) as image:
                if "A" in image.getbands() or image.mode == "P":
                    mode = "RGBA"
                else:
                    mode = "L" if len(image.getbands()) == 1 else "RGB"
                array = np.asarray(image.convert(mode))
        else:
            raise JaxcnnError(f"{path}: unsupported file type '{suffix}'; pass image files "
                              f"({', '.join(IMAGE_SUFFIXES)}) or .npy arrays")
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError) as e:
        raise JaxcnnError(f"{path}: cannot be read as an image: {_reason(e)}") from e
    if array.ndim == 3 and array.shape[-1] == 4:  # transparency over a black background, as MNIST's
        array = array[..., :3] * (array[..., 3:] / 255.0)
    return to_pixels(array, path, input_shape)


def read_header(path: pathlib.Path) -> tuple[int, int, bool]:
    """(height, width, is_grey) of an image file, read without decoding its pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            return height, width, image.mode in GRAY_MODES
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError) as e:
        raise JaxcnnError(f"{path}: cannot be read as an image: {_reason(e)}") from e


def _reason(error: Exception) -> str:
    """The first line of Pillow's message (the user sees one line)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
