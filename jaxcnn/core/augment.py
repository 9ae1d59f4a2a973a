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
# Folded into a step's augmentation key for mixup/cutmix, so that turning them on leaves the crop,
# flip and cutout of every step as they were.
MIX_SALT = 0x313C


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


# ---------------------------------------------------------------------------- mixup and cutmix


def betas(rng: jax.Array, alphas: tuple[float, ...]) -> jax.Array:
    """One Beta(a, a) draw per alpha in `alphas`, as G1 / (G1 + G2) of Gamma(a) draws, all from one
    `jax.random.gamma` call: each gamma sampler is a rejection loop that costs seconds to compile
    (`jax.random.beta` compiles two of them per call)."""
    shape = jnp.repeat(jnp.asarray(alphas, jnp.float32), 2)
    gammas = jax.random.gamma(rng, shape).reshape(len(alphas), 2)
    return gammas[:, 0] / jnp.maximum(gammas.sum(-1), jnp.finfo(jnp.float32).tiny)


def mixup(images: jax.Array, partner: jax.Array, lam: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(lam * images + (1 - lam) * partner, lam): mixup (Zhang et al.), one lam per batch."""
    lam = lam.astype(images.dtype)
    return lam * images + (1 - lam) * partner, lam


def cutmix(images: jax.Array, partner: jax.Array, rng: jax.Array, lam: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(images with a box pasted from `partner`, the share of pixels kept): the box covers 1 - lam of
    the image, centred on a random pixel and clipped at the border, and the share returned is the
    clipped box's (Yun et al.); one box per batch."""
    _, height, width, _ = images.shape
    y_key, x_key = jax.random.split(rng)
    cut = jnp.sqrt(1.0 - lam)
    cy, cx = jax.random.randint(y_key, (), 0, height), jax.random.randint(x_key, (), 0, width)
    half_h, half_w = (cut * height / 2).astype(jnp.int32), (cut * width / 2).astype(jnp.int32)
    ys, xs = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    inside = (ys >= cy - half_h) & (ys < cy + half_h) & (xs >= cx - half_w) & (xs < cx + half_w)
    kept = 1.0 - jnp.mean(inside.astype(jnp.float32))
    return jnp.where(inside[None, :, :, None], partner, images), kept.astype(images.dtype)


def make_mix(config: AugmentConfig) -> Callable[[dict, jax.Array], dict] | None:
    """`mix(batch, rng)`: the batch with its images mixed with those of a random permutation of it
    (mixup or cutmix, lam ~ Beta(alpha, alpha); with both on, one of them per step, each with
    probability 1/2), and the partners' labels and the weight of the own label added (`mix_label`,
    `mix_weight`) for `mixed_targets`; None when both are off (the step compiles without them)."""
    if not (config.mixup > 0 or config.cutmix > 0):
        return None
    alphas = tuple(a for a in (config.mixup, config.cutmix) if a > 0)

    def mix(batch: dict, rng: jax.Array) -> dict:
        order_key, beta_key, box_key, choice_key = jax.random.split(rng, 4)
        images, labels = batch["image"], batch["label"]
        order = jax.random.permutation(order_key, images.shape[0])
        partner, lams = images[order], betas(beta_key, alphas)
        mixes = ([mixup(images, partner, lams[0])] if config.mixup > 0 else []) + (
            [cutmix(images, partner, box_key, lams[-1])] if config.cutmix > 0 else [])
        mixed, weight = mixes[0]
        if len(mixes) == 2:
            use_cutmix = jax.random.bernoulli(choice_key)
            mixed, weight = jax.tree.map(lambda a, b: jnp.where(use_cutmix, b, a), mixes[0], mixes[1])
        weights = jnp.full(labels.shape, weight, jnp.float32)
        return {**batch, "image": mixed, "mix_label": labels[order], "mix_weight": weights}

    return mix


def mixed_targets(batch: dict, num_classes: int) -> jax.Array:
    """The loss's targets for `batch`: its integer labels, or for a mixed batch (`make_mix`) the soft
    targets `w * one_hot(label) + (1 - w) * one_hot(mix_label)`."""
    if "mix_weight" not in batch:
        return batch["label"]
    weight = batch["mix_weight"][:, None]
    return (weight * jax.nn.one_hot(batch["label"], num_classes)
            + (1 - weight) * jax.nn.one_hot(batch["mix_label"], num_classes))


# ---------------------------------------------------------------------------- test-time augmentation


def with_mirror(batch: dict) -> dict:
    """An evaluation batch with the mirror images of its images (`mirror`), for `eval.tta="flip"`."""
    return {**batch, "mirror": batch["image"][:, :, ::-1, :]}


def tta_logits(apply: Callable[[jax.Array], jax.Array], batch: dict) -> jax.Array:
    """The model's logits for `batch`; with its mirror images (`with_mirror`), the mean of the
    logits of each image and its mirror, computed in one call (evaluation mode: the batch's other
    examples do not change an example's logits)."""
    if "mirror" not in batch:
        return apply(batch["image"])
    images = batch["image"]
    logits = apply(jnp.concatenate([images, batch["mirror"]]))
    return (logits[:images.shape[0]] + logits[images.shape[0]:]) / 2
