"""Noise patches: the synthetic anomalies of EfficientAD + CDO (seed-004 thesis, section 4.6).

Each image receives, with probability `p`, between `min_patches` and `max_patches` rectangles
of random noise whose half-sides are drawn from [H/40, H/10) and whose centres keep them inside
the image; the mask marks the replaced pixels. Everything is drawn on the device from one key
per image (`jax.vmap`), inside the compiled step.

The thesis and the CDO authors' code (caoyunkang/CDO `datasets/dataset.py`) differ; the config
picks (defaults: the thesis, except the noise):

- how many: the thesis injects with p = 0.4 and 1-4 patches; the code perturbs every image with
  0-4 patches (`p=1, min_patches=0`).
- shape: the thesis draws squares; the code draws the two half-sides independently
  (`square=False`).
- noise: the code's uniform integers 0..254 / 255 (`"uniform"`, the default, because the thesis
  gives no Gaussian's parameters); `"gaussian"` is N(0.5, 1/sqrt(12)) clipped to [0, 1], the
  uniform's mean and spread.
- background: with `skip_background` a centre never lies on the background, estimated as the
  code does (mean of RGB in 0..255 below 30 or above 220, a 7x7 median filter, a 19x19
  dilation); the code retries up to 200 centres, here the centre is drawn uniformly among the
  allowed ones (anywhere in bounds when an image has none).
"""

import jax
import jax.numpy as jnp

NOISES = ("uniform", "gaussian")


def _window_sum(x: jax.Array, size: int) -> jax.Array:
    return jax.lax.reduce_window(x, 0.0, jax.lax.add, (size, size), (1, 1), "VALID")


def background(image: jax.Array) -> jax.Array:
    """[H, W] bool: the background of one [H, W, 3] image in [0, 1] (CDO's estimate)."""
    gray = jnp.mean(image, axis=-1) * 255.0
    raw = ((gray < 30.0) | (gray > 220.0)).astype(jnp.float32)
    # A median of 49 binary values is 1 where at least 25 are (OpenCV replicates the border).
    median = _window_sum(jnp.pad(raw, 3, mode="edge"), 7) >= 25.0
    # Dilation: the maximum over a 19 x 19 window; zeros outside the image change nothing.
    return _window_sum(jnp.pad(median.astype(jnp.float32), 9), 19) > 0.0


def _one_image(key: jax.Array, image: jax.Array, *, p: float, min_patches: int,
               max_patches: int, square: bool, noise: str,
               skip_background: bool) -> tuple[jax.Array, jax.Array]:
    h, w = image.shape[:2]
    k_apply, k_count, k_size, k_centre, k_noise = jax.random.split(key, 5)
    count = jax.random.randint(k_count, (), min_patches, max_patches + 1)
    count = jnp.where(jax.random.bernoulli(k_apply, p), count, 0)
    lo_h, lo_w = h // 40, w // 40
    half = jnp.stack([jax.random.randint(k, (max_patches,), lo, max(hi, lo + 1)) for k, lo, hi
                      in zip(jax.random.split(k_size), (lo_h, lo_w), (h // 10, w // 10),
                             strict=True)], axis=-1)  # [P, 2]: half-height, half-width
    if square:
        half = jnp.stack([half[:, 0], half[:, 0]], axis=-1)
    rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    free = ~background(image) if skip_background else jnp.ones((h, w), bool)

    def patch(k, hh, hw):
        inside = (rows >= hh) & (rows < h - hh) & (cols >= hw) & (cols < w - hw)
        allowed = jnp.where(jnp.any(inside & free), inside & free, inside)
        index = jax.random.categorical(k, jnp.where(allowed, 0.0, -jnp.inf).ravel())
        r, c = index // w, index % w
        return (jnp.abs(rows - r + 0.5) < hh) & (jnp.abs(cols - c + 0.5) < hw)

    patches = jax.vmap(patch)(jax.random.split(k_centre, max_patches), half[:, 0], half[:, 1])
    mask = jnp.any(patches & (jnp.arange(max_patches) < count)[:, None, None], axis=0)
    if noise == "uniform":
        values = jax.random.randint(k_noise, image.shape, 0, 255).astype(image.dtype) / 255.0
    else:
        values = jnp.clip(0.5 + jax.random.normal(k_noise, image.shape, image.dtype)
                          / jnp.sqrt(12.0), 0.0, 1.0)
    return jnp.where(mask[..., None], values, image), mask


def noise_patches(key: jax.Array, images: jax.Array, *, p: float = 0.4, min_patches: int = 1,
                  max_patches: int = 4, square: bool = True, noise: str = "uniform",
                  skip_background: bool = False) -> tuple[jax.Array, jax.Array]:
    """[B, H, W, 3] images in [0, 1] -> (images with noise patches, [B, H, W] bool masks)."""
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {', '.join(NOISES)}, got {noise!r}.")
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(lambda k, x: _one_image(
        k, x, p=p, min_patches=min_patches, max_patches=max_patches, square=square, noise=noise,
        skip_background=skip_background))(keys, images)
