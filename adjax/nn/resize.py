"""Bilinear resizing with aligned corners (PyTorch's `align_corners=True`,
`nn.UpsamplingBilinear2d`).

Output pixel i samples the input at i * (n_in - 1) / (n_out - 1): the corner pixel centres of
input and output coincide. This differs from the half-pixel convention of `jax.image.resize`
(and `adjax.nn.layers.resize_bilinear`), most visibly when a small grid (e.g. VT-ADL's 8 x 8
patch scores) is enlarged to the image size.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] linear-interpolation weights with aligned corners (rows sum to one)."""
    m = np.zeros((n_out, n_in), np.float32)
    if n_in == 1:
        m[:, 0] = 1.0
        return m
    pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(1)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = pos - lo
    rows = np.arange(n_out)
    m[rows, lo] = 1.0 - frac
    m[rows, lo + 1] += frac
    return m


def resize_bilinear_align_corners(x: jax.Array, size: Sequence[int] | int) -> jax.Array:
    """Bilinear resize of NHWC `x` to `size` with aligned corners (no anti-aliasing)."""
    h, w = (size, size) if isinstance(size, int) else size
    mh = jnp.asarray(align_corners_matrix(x.shape[1], h), x.dtype)
    mw = jnp.asarray(align_corners_matrix(x.shape[2], w), x.dtype)
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,bhwc->bowc", mh, x, precision=hi)
    return jnp.einsum("pw,bowc->bopc", mw, x, precision=hi)
