"""The ten imgaug-style augmenters DRAEM applies to its anomaly textures, written in JAX.

Each augmenter takes a key and ONE [H, W, 3] image with values in [0, 255] (float) and returns
the augmented image rounded and clipped to the uint8 range, as imgaug's uint8 pipeline does
after every step; `augment` applies `count` of them drawn without replacement, in the drawn
order (the reference: 3 of 10, `iaa.Sequential` of `np.random.choice(10, 3, replace=False)`).
Under `jax.vmap` `lax.switch` evaluates every branch and selects; `adjax.synth.draem` maps
`augment` over the batch instead, so that only the drawn augmenters run.

The reference's augmenters (VitjanZ/DRAEM `data_loader.py`) and where these differ:

0. `GammaContrast((0.5, 2.0), per_channel=True)`: 255 (x / 255)^g, one g per channel.
1. `MultiplyAndAddToBrightness(mul=(0.8, 1.2), add=(-30, 30))`: Y' = Y mul + add on the luma
   of YCrCb, chroma kept (so every channel moves by Y' - Y). imgaug draws the colour space
   among six and the order of mul and add at random; here YCrCb, mul first.
2. `pillike.EnhanceSharpness()`: PIL's blend of the SMOOTH-filtered image (3x3 kernel 1 1 1 /
   1 5 1 / 1 1 1 over 13, border pixels kept) and the image, factor U(0, 2).
3. `AddToHueAndSaturation((-50, 50), per_channel=True)`: in HSV, hue + v / 255 of half a turn
   (imgaug's projection onto OpenCV's 0..180 hue) and saturation + v' (0..255, clipped), v and
   v' drawn apart.
4. `Solarize(0.5, threshold=(32, 128))`: with p = 0.5, x >= t becomes 255 - x, t ~ U(32, 128).
5. `Posterize()`: keep the top b bits of every value, b ~ {1, ..., 8} per image.
6. `Invert()`: 255 - x.
7. `pillike.Autocontrast()`: per channel, cut c% (c ~ {0, ..., 20}) of the pixels at each end
   of the histogram and stretch the rest to 0..255 (unchanged when nothing is left to stretch).
8. `pillike.Equalize()`: PIL's per-channel histogram equalisation look-up table.
9. `Affine(rotate=(-45, 45))`: rotation about the centre, bilinear, zeros outside.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.scipy.ndimage import map_coordinates

# ITU-R 601 luma, the Y of OpenCV's YCrCb.
_LUMA = jnp.array([0.299, 0.587, 0.114], jnp.float32)


def rotate(image: jax.Array, degrees: jax.Array) -> jax.Array:
    """[H, W, C] rotated by `degrees` about its centre; bilinear, zeros outside the source (what
    imgaug's `Affine(rotate=...)` does with its defaults order=1, cval=0)."""
    h, w = image.shape[:2]
    theta = jnp.deg2rad(degrees)
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                          indexing="ij")
    dy, dx = yy - (h - 1) / 2.0, xx - (w - 1) / 2.0
    # Each output pixel samples the source where the inverse rotation takes it.
    coords = [cos * dy - sin * dx + (h - 1) / 2.0, sin * dy + cos * dx + (w - 1) / 2.0]
    channels = [map_coordinates(image[..., c], coords, order=1, mode="constant", cval=0.0)
                for c in range(image.shape[-1])]
    return jnp.stack(channels, axis=-1)


def _u8(x: jax.Array) -> jax.Array:
    return jnp.clip(jnp.round(x), 0.0, 255.0)


def gamma_contrast(key: jax.Array, x: jax.Array) -> jax.Array:
    """255 (x / 255)^g with g ~ U(0.5, 2) per channel."""
    gamma = jax.random.uniform(key, (3,), minval=0.5, maxval=2.0)
    return _u8(255.0 * (x / 255.0) ** gamma)


def brightness(key: jax.Array, x: jax.Array) -> jax.Array:
    """Luma times U(0.8, 1.2) plus U(-30, 30), chroma kept."""
    k_mul, k_add = jax.random.split(key)
    mul = jax.random.uniform(k_mul, (), minval=0.8, maxval=1.2)
    add = jax.random.uniform(k_add, (), minval=-30.0, maxval=30.0)
    y = x @ _LUMA
    return _u8(x + (y * (mul - 1.0) + add)[..., None])


def sharpness(key: jax.Array, x: jax.Array) -> jax.Array:
    """PIL's EnhanceSharpness with a factor from U(0, 2)."""
    factor = jax.random.uniform(key, (), minval=0.0, maxval=2.0)
    padded = jnp.pad(x, ((1, 1), (1, 1), (0, 0)))
    h, w = x.shape[:2]
    box = sum(padded[i:i + h, j:j + w] for i in range(3) for j in range(3))
    smooth = (box + 4.0 * x) / 13.0
    border = jnp.zeros((h, w), bool).at[1:-1, 1:-1].set(True)[..., None]
    smooth = jnp.where(border, jnp.round(smooth), x)
    return _u8(smooth + factor * (x - smooth))


def _rgb_to_hsv(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Hue in turns [0, 1), saturation and value in [0, 1], of [..., 3] values in [0, 1]."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = jnp.max(x, axis=-1)
    c = v - jnp.min(x, axis=-1)
    safe = jnp.where(c > 0, c, 1.0)
    h = jnp.where(v == r, (g - b) / safe, jnp.where(v == g, 2.0 + (b - r) / safe,
                                                     4.0 + (r - g) / safe))
    h = jnp.where(c > 0, (h / 6.0) % 1.0, 0.0)
    s = jnp.where(v > 0, c / jnp.where(v > 0, v, 1.0), 0.0)
    return h, s, v


def _hsv_to_rgb(h: jax.Array, s: jax.Array, v: jax.Array) -> jax.Array:
    k = (jnp.array([5.0, 3.0, 1.0]) + 6.0 * h[..., None]) % 6.0
    ramp = jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)
    return v[..., None] * (1.0 - s[..., None] * ramp)


def hue_saturation(key: jax.Array, x: jax.Array) -> jax.Array:
    """Hue and saturation each shifted by their own U{-50..50} (imgaug's units)."""
    add = jax.random.randint(key, (2,), -50, 51).astype(jnp.float32)
    h, s, v = _rgb_to_hsv(x / 255.0)
    h = (h + add[0] / 255.0 * 0.5) % 1.0
    s = jnp.clip(s + add[1] / 255.0, 0.0, 1.0)
    return _u8(255.0 * _hsv_to_rgb(h, s, v))


def solarize(key: jax.Array, x: jax.Array) -> jax.Array:
    """With p = 0.5, values at or above t ~ U(32, 128) inverted."""
    k_apply, k_t = jax.random.split(key)
    t = jax.random.uniform(k_t, (), minval=32.0, maxval=128.0)
    out = jnp.where(x >= t, 255.0 - x, x)
    return jnp.where(jax.random.bernoulli(k_apply, 0.5), out, x)


def posterize(key: jax.Array, x: jax.Array) -> jax.Array:
    """The top b ~ U{1..8} bits of every value."""
    step = 2.0 ** (8 - jax.random.randint(key, (), 1, 9)).astype(jnp.float32)
    return jnp.floor(x / step) * step


def invert(key: jax.Array, x: jax.Array) -> jax.Array:
    """255 - x."""
    del key
    return 255.0 - x


def autocontrast(key: jax.Array, x: jax.Array) -> jax.Array:
    """PIL's autocontrast per channel with a cutoff of U{0..20} percent at each end."""
    percent = jax.random.randint(key, (), 0, 21)
    flat = jnp.sort(x.reshape(-1, 3), axis=0)
    n = flat.shape[0]
    cut = (n * percent) // 100  # PIL removes this many pixels at each end
    lo, hi = flat[cut], flat[n - 1 - cut]
    ok = hi > lo
    # PIL's look-up table int(x * 255 / (hi - lo) - lo * 255 / (hi - lo)), clipped.
    stretched = jnp.floor(jnp.clip((x - lo) * 255.0 / jnp.where(ok, hi - lo, 1.0), 0.0, 255.0))
    return jnp.where(ok, stretched, x)


def equalize(key: jax.Array, x: jax.Array) -> jax.Array:
    """PIL's ImageOps.equalize, per channel."""
    del key

    def channel(c):
        values = c.astype(jnp.int32).ravel()
        hist = jnp.bincount(values, length=256)
        last = hist[jnp.max(values)]
        step = (values.size - last) // 255
        before = jnp.cumsum(hist) - hist  # pixels below each value
        lut = jnp.minimum((step // 2 + before) // jnp.maximum(step, 1), 255)
        return jnp.where(step > 0, lut[values].reshape(c.shape).astype(jnp.float32), c)

    return jnp.stack([channel(x[..., i]) for i in range(3)], axis=-1)


def rotate_texture(key: jax.Array, x: jax.Array) -> jax.Array:
    """Rotation by U(-45, 45) degrees."""
    return _u8(rotate(x, jax.random.uniform(key, (), minval=-45.0, maxval=45.0)))


AUGMENTERS: tuple[Callable[[jax.Array, jax.Array], jax.Array], ...] = (
    gamma_contrast, brightness, sharpness, hue_saturation, solarize, posterize, invert,
    autocontrast, equalize, rotate_texture)


def augment(key: jax.Array, x: jax.Array, count: int = 3) -> jax.Array:
    """`count` distinct augmenters of `AUGMENTERS`, drawn without replacement, applied in the
    drawn order to one [H, W, 3] image in [0, 255]."""
    k_choice, k_steps = jax.random.split(key)
    chosen = jax.random.permutation(k_choice, len(AUGMENTERS))[:count]
    keys = jax.random.split(k_steps, count)
    # A loop, not `count` copies of the switch: XLA compiles the ten augmenters once.
    return jax.lax.fori_loop(
        0, count, lambda i, y: jax.lax.switch(chosen[i], AUGMENTERS, keys[i], y), x)
