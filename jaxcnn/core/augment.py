"""On-device data augmentation: pure functions of (images, rng), run inside the compiled train step.

The key of a step is `fold_in(fold_in(state.rng, AUGMENT_SALT), state.step)`, so a step's
augmentation depends only on the seed and the step number (like dropout), survives a resume, and
needs no host randomness. Evaluation never augments.

Images are the normalised float32 batch (B, H, W, C); padding and cutout fill with 0, which after
normalisation is the dataset mean colour.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxcnn.spec import AugmentSpec

# Folded into the state's key so augmentation draws a stream separate from dropout's.
AUGMENT_SALT = 0xA067


AugmentConfig = AugmentSpec  # the `config.augment` section, typed: keys, defaults and checks in jaxcnn.spec


def augment_config(section: Mapping[str, Any]) -> AugmentConfig:
    """The `config.augment` section, checked."""
    return AugmentSpec.parse(section)


def step_key(rng: jax.Array, step: jax.Array) -> jax.Array:
    """The augmentation key of training step `step` for a state whose key is `rng`."""
    return jax.random.fold_in(jax.random.fold_in(rng, AUGMENT_SALT), step)


def random_crop(images: jax.Array, rng: jax.Array, padding: int) -> jax.Array:
    """Zero-pads each image by `padding` on every side and crops it back at a random offset."""
    batch, height, width, channels = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(rng, (batch, 2), 0, 2 * padding + 1)

    def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

    return jax.vmap(crop)(padded, offsets)


def random_flip(images: jax.Array, rng: jax.Array) -> jax.Array:
    """Mirrors each image left-right with probability 1/2."""
    flip = jax.random.bernoulli(rng, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


def cutout(images: jax.Array, rng: jax.Array, size: int) -> jax.Array:
    """Zeroes a `size`x`size` square centred on a random pixel of each image (clipped at the border)."""
    batch, height, width, _ = images.shape
    ky, kx = jax.random.split(rng)
    cy = jax.random.randint(ky, (batch, 1, 1), 0, height)
    cx = jax.random.randint(kx, (batch, 1, 1), 0, width)
    ys = jnp.arange(height)[None, :, None]
    xs = jnp.arange(width)[None, None, :]
    start_y, start_x = cy - size // 2, cx - size // 2
    inside = (ys >= start_y) & (ys < start_y + size) & (xs >= start_x) & (xs < start_x + size)
    return jnp.where(inside[..., None], 0.0, images).astype(images.dtype)


def make_augment(config: AugmentConfig) -> Callable[[jax.Array, jax.Array], jax.Array] | None:
    """`augment(images, rng)` applying the enabled transforms in order crop, flip, cutout; None if
    none is enabled (so the step compiles without any augmentation code)."""
    if not config.enabled:
        return None

    def augment(images: jax.Array, rng: jax.Array) -> jax.Array:
        crop_key, flip_key, cutout_key = jax.random.split(rng, 3)
        if config.crop_padding:
            images = random_crop(images, crop_key, config.crop_padding)
        if config.flip:
            images = random_flip(images, flip_key)
        if config.cutout:
            images = cutout(images, cutout_key, config.cutout)
        return images

    return augment
