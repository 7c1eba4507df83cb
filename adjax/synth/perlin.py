"""Perlin-noise masks (DRAEM's anomaly shapes), drawn on the device from one key per image.

`perlin_noise` is the gradient noise of the reference's `rand_perlin_2d_np` (VitjanZ/DRAEM
`perlin.py`): one random unit gradient per lattice point of a `res_y x res_x` lattice, the fade
6t^5 - 15t^4 + 10t^3, the result scaled by sqrt(2). The lattice size is a traced value, so one
compiled function draws every scale: the gradients come from a fixed `(max_res + 1)^2` table of
which the top-left `(res + 1)^2` corner is used (the angles are independent and uniform, so the
corner has the reference's distribution). Cells are found with integer arithmetic, so any image
side works (the reference needs sides divisible by the scale).

`perlin_mask` is the reference's mask: scales 2^a x 2^b with a, b drawn independently from
{min_scale, ..., max_scale - 1} (the reference: 0..5), the noise rotated by U(-rotate, rotate)
degrees about the centre (bilinear, zeros outside, as imgaug's `Affine(rotate=(-90, 90))`),
then thresholded: `noise > threshold`, the threshold drawn from U[low, high] (the reference's
fixed 0.5 is low = high = 0.5; the seed-002 thesis binarises "with a random threshold").
"""

import math

import jax
import jax.numpy as jnp

from adjax.synth.augmenters import rotate


def _fade(t: jax.Array) -> jax.Array:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(key: jax.Array, shape: tuple[int, int], res: tuple[jax.Array, jax.Array],
                 max_res: int = 32) -> jax.Array:
    """[H, W] Perlin noise with a `res = (res_y, res_x)` lattice (ints, traced or not, each in
    1..max_res) over the image; values in about [-1, 1]."""
    h, w = shape
    angles = jax.random.uniform(key, (max_res + 1, max_res + 1), maxval=2.0 * math.pi)
    gradients = jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=-1)

    def cells(n, r):  # lattice cell and position inside it of each pixel along one axis
        scaled = jnp.arange(n) * r
        return scaled // n, (scaled % n).astype(jnp.float32) / n

    cy, fy = cells(h, jnp.asarray(res[0]))
    cx, fx = cells(w, jnp.asarray(res[1]))
    cy, cx = cy[:, None], cx[None, :]
    fy, fx = jnp.broadcast_to(fy[:, None], (h, w)), jnp.broadcast_to(fx[None, :], (h, w))

    def ramp(dy, dx):  # the corner (cy + dy, cx + dx)'s gradient dotted with the offset to it
        g = gradients[cy + dy, cx + dx]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    ty, tx = _fade(fy), _fade(fx)
    top = ramp(0, 0) + ty * (ramp(1, 0) - ramp(0, 0))      # lerp along y at x = cx
    bottom = ramp(0, 1) + ty * (ramp(1, 1) - ramp(0, 1))   # ... and at x = cx + 1
    return math.sqrt(2.0) * (top + tx * (bottom - top))


def perlin_mask(key: jax.Array, shape: tuple[int, int], *, min_scale: int = 0,
                max_scale: int = 6, rotate_degrees: float = 90.0,
                threshold: tuple[float, float] = (0.5, 0.5)) -> jax.Array:
    """[H, W] float {0, 1} mask: rotated Perlin noise above a threshold (module docstring)."""
    if not 0 <= min_scale < max_scale:
        raise ValueError(f"Perlin scales need 0 <= min_scale < max_scale, got {min_scale} and "
                         f"{max_scale}.")
    k_res, k_noise, k_angle, k_threshold = jax.random.split(key, 4)
    res = 2 ** jax.random.randint(k_res, (2,), min_scale, max_scale)
    noise = perlin_noise(k_noise, shape, (res[0], res[1]), max_res=2 ** (max_scale - 1))
    angle = jax.random.uniform(k_angle, (), minval=-rotate_degrees, maxval=rotate_degrees)
    noise = rotate(noise[..., None], angle)[..., 0]
    level = jax.random.uniform(k_threshold, (), minval=threshold[0], maxval=threshold[1])
    return (noise > level).astype(jnp.float32)
