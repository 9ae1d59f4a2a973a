"""How far apart two sets of variables are, in units in the last place (ulps): `jaxcnn verify`.

The ulp distance of two floats of one dtype is how many representable values lie between them
(0: the same bits; 1: neighbours). Their bit patterns, mapped so that integer order is float order
(negative floats reversed below the positive ones), subtract to it. +0 and -0 are 1 apart here.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxcnn.files.certificate import host_array

_INT_OF_SIZE = {2: np.int16, 4: np.int32, 8: np.int64}


def _ordered(array: np.ndarray) -> np.ndarray:
    """The float bit patterns of `array` as integers (int64, or Python ints for 8-byte floats)
    whose order is the floats' order."""
    bits = array.view(_INT_OF_SIZE[array.dtype.itemsize])
    lowest = np.iinfo(bits.dtype).min
    ordered = np.where(bits < 0, lowest - bits - 1, bits)  # -0.0 -> -1; stays in range for bits < 0
    return ordered.astype(object) if array.dtype.itemsize == 8 else ordered.astype(np.int64)


def max_ulps(a: np.ndarray, b: np.ndarray) -> int:
    """The largest ulp distance between matching elements of two float arrays of one dtype and
    shape (0 for empty arrays). NaNs count by their bits."""
    if a.size == 0:
        return 0
    return int(np.max(np.abs(_ordered(np.ascontiguousarray(a)) - _ordered(np.ascontiguousarray(b)))))


def path_name(path: tuple) -> str:
    """`params/Conv_0/kernel` for a tree path."""
    return "/".join(str(getattr(key, "key", getattr(key, "idx", key))) for key in path)


def _leaves(tree: Any) -> dict[str, np.ndarray]:
    return {path_name(path): host_array(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def compare_variables(original: Any, rerun: Any) -> tuple[bool, str]:
    """(bitwise equal?, one line): the largest difference in ulps, with its array and the
    largest absolute difference; a different structure, shape or dtype is named instead."""
    left, right = _leaves(original), _leaves(rerun)
    if left.keys() != right.keys():
        missing = sorted(set(left) ^ set(right))
        return False, f"different variables: {', '.join(missing[:3])} in only one of them"
    worst, worst_key, worst_abs = 0, "", 0.0
    for key, a in left.items():
        b = right[key]
        if a.shape != b.shape or a.dtype != b.dtype:
            return False, f"{key}: {a.dtype}{list(a.shape)} in the original, {b.dtype}{list(b.shape)} in the re-run"
        if np.issubdtype(a.dtype, np.floating) or a.dtype.name == "bfloat16":
            ulps = max_ulps(a, b)
        else:
            ulps = int(np.count_nonzero(a != b))
        if ulps > worst:
            worst, worst_key = ulps, key
            worst_abs = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
    if worst == 0:
        return True, f"identical ({len(left)} arrays)"
    return False, f"largest difference {worst} ulps, in {worst_key} (absolute {worst_abs:.3g})"
