"""Gradient magnitude similarity (GMS) and its multi-scale form (MSGMS), the loss and anomaly
map of RIAD (Zavrtanik, Kristan, Skocaj, Pattern Recognition 2021; seed 001's eqs. 2.5-2.6).

As in the public RIAD implementation: images are averaged over channels, smoothed by a 3x3
median filter (zero-padded), and their gradient magnitude is the norm of the two 3x3 Prewitt
responses (divided by 3; valid convolution, so the map loses one pixel on each side);
GMS = (2 g(x) g(y) + c) / (g(x)^2 + g(y)^2 + c) with c = 0.0026. The scales are the image and
three 2x2 average-pooled copies of it.
"""

import jax
import jax.numpy as jnp
import numpy as np

from adjax.nn.layers import avg_pool, resize_bilinear

GMS_C = 0.0026
SCALES = 4

_PREWITT = np.stack([np.array([[-1, 0, 1]] * 3, np.float32),
                     np.array([[1, 1, 1], [0, 0, 0], [-1, -1, -1]], np.float32)], -1) / 3.0


def _median3(x: jax.Array) -> jax.Array:
    """3x3 median of [B, H, W, 1] with zero padding (kornia's MedianBlur)."""
    h, w = x.shape[1:3]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    shifted = [padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)]
    return jnp.median(jnp.stack(shifted, axis=-1), axis=-1)


def gradient_magnitude(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H - 2, W - 2, 1]: the Prewitt gradient norm of the median-filtered
    channel mean."""
    grey = _median3(jnp.mean(x, axis=-1, keepdims=True))
    g = jax.lax.conv_general_dilated(grey, jnp.asarray(_PREWITT)[:, :, None, :], (1, 1),
                                     "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=jax.lax.Precision.HIGHEST)
    return jnp.sqrt(jnp.sum(g * g, axis=-1, keepdims=True))


def gms_map(x: jax.Array, y: jax.Array, c: float = GMS_C) -> jax.Array:
    """The GMS map of NHWC images x and y, [B, H - 2, W - 2] (1 where their gradients agree)."""
    gx, gy = gradient_magnitude(x), gradient_magnitude(y)
    return ((2 * gx * gy + c) / (gx * gx + gy * gy + c))[..., 0]


def _pyramid(x: jax.Array, y: jax.Array):
    for level in range(SCALES):
        if level:
            x, y = avg_pool(x, 2, 2, 0), avg_pool(y, 2, 2, 0)
        yield x, y


def msgms_loss(x: jax.Array, y: jax.Array) -> jax.Array:
    """Eq. 2.5 per image, [B]: the mean of 1 - GMS over pixels, averaged over the 4 scales."""
    return sum(jnp.mean(1.0 - gms_map(a, b), axis=(1, 2)) for a, b in _pyramid(x, y)) / SCALES


def msgms_anomaly_map(x: jax.Array, y: jax.Array) -> jax.Array:
    """[B, H, W]: 1 - GMS averaged over the 4 scales, each map resized (bilinear) to H x W."""
    size = x.shape[1:3]
    total = sum(resize_bilinear(gms_map(a, b)[..., None], size)[..., 0]
                for a, b in _pyramid(x, y))
    return 1.0 - total / SCALES
