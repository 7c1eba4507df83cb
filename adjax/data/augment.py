"""On-device image augmentations, written to match torchvision's semantics.

Images are float arrays in [0, 1], NHWC. Each function is pure and jit-friendly.
"""

import jax
import jax.numpy as jnp

# ITU-R 601-2 luma, as torchvision's rgb_to_grayscale.
_LUMA = jnp.array([0.299, 0.587, 0.114], jnp.float32)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_float(images: jax.Array) -> jax.Array:
    """uint8 [0, 255] (or float already in [0, 1]) -> float32 in [0, 1]."""
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    return images.astype(jnp.float32)


def imagenet_normalize(images: jax.Array) -> jax.Array:
    """Standard ImageNet mean/std normalisation of [0, 1] images."""
    mean = jnp.asarray(IMAGENET_MEAN, images.dtype)
    std = jnp.asarray(IMAGENET_STD, images.dtype)
    return (images - mean) / std


def grayscale(images: jax.Array) -> jax.Array:
    """Luma replicated to three channels."""
    gray = jnp.einsum("...c,c->...", images, _LUMA.astype(images.dtype))[..., None]
    return jnp.broadcast_to(gray, images.shape)


def _blend(images: jax.Array, other: jax.Array, factor: jax.Array) -> jax.Array:
    return jnp.clip(factor * images + (1.0 - factor) * other, 0.0, 1.0)


def adjust_brightness(images: jax.Array, factor: jax.Array) -> jax.Array:
    """torchvision adjust_brightness: blend with black."""
    return _blend(images, jnp.zeros_like(images), factor)


def adjust_contrast(images: jax.Array, factor: jax.Array) -> jax.Array:
    """torchvision adjust_contrast: blend with the mean of each image's grayscale."""
    mean = jnp.mean(grayscale(images)[..., :1], axis=(-3, -2, -1), keepdims=True)
    return _blend(images, jnp.broadcast_to(mean, images.shape), factor)


def adjust_saturation(images: jax.Array, factor: jax.Array) -> jax.Array:
    """torchvision adjust_saturation: blend with the grayscale image."""
    return _blend(images, grayscale(images), factor)


def random_color_jitter(rng: jax.Array, images: jax.Array, strength: float) -> jax.Array:
    """EfficientAD's AE augmentation, per image: one of brightness, contrast or saturation
    (chosen uniformly) with a factor drawn from U(1 - strength, 1 + strength)."""
    n = images.shape[0]
    k_choice, k_factor = jax.random.split(rng)
    choice = jax.random.randint(k_choice, (n,), 0, 3)
    factor = jax.random.uniform(k_factor, (n, 1, 1, 1), images.dtype,
                                1.0 - strength, 1.0 + strength)
    options = jnp.stack([adjust_brightness(images, factor), adjust_contrast(images, factor),
                         adjust_saturation(images, factor)])
    return jnp.take_along_axis(options, choice[None, :, None, None, None], axis=0)[0]


def random_grayscale(rng: jax.Array, images: jax.Array, p: float) -> jax.Array:
    """torchvision RandomGrayscale: each image turns grayscale with probability p."""
    flip = jax.random.bernoulli(rng, p, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, grayscale(images), images)
