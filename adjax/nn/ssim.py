"""Structural similarity (SSIM; Wang, Bovik, Sheikh, Simoncelli 2004) with a Gaussian window,
and the separable Gaussian filter it is built on.

Images are NHWC floats. Two border conventions are in use in the reference code:

- ``padding="valid"``: only windows that lie inside the image. Its mean equals scikit-image's
  ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``,
  which filters with reflected borders and then crops the window radius before averaging.
- ``padding="zeros"``: a same-size map from zero-padded windows, borders included in the mean;
  what the ``pytorch_ssim`` package (used by VT-ADL and PIADE) computes.

``win_size`` replaces the Gaussian by a uniform square window with sample (n - 1) statistics:
scikit-image's defaults (``gaussian_weights=False, use_sample_covariance=True``), which seed
000's data-set analyses use with ``win_size=5``.

The Gaussian kernel is scipy.ndimage's: radius ``int(truncate * sigma + 0.5)``, normalised to a
sum of one (radius 5 for sigma 1.5: the usual 11 x 11 window).
"""

import jax
import jax.numpy as jnp
import numpy as np

_PADDINGS = ("valid", "zeros")
_FILTER_MODES = ("valid", "constant", "symmetric", "reflect")


def gaussian_kernel(sigma: float, radius: int) -> np.ndarray:
    """The normalised 1-D Gaussian of standard deviation `sigma` on [-radius, radius]."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return (w / w.sum()).astype(np.float32)


def gaussian_matrix(n: int, sigma: float, truncate: float = 4.0,
                    mode: str = "symmetric") -> np.ndarray:
    """[n_out, n] weights that Gaussian-filter a length-n signal along one axis.

    `mode` as `gaussian_filter`; n_out is n, or n - 2 * radius for "valid".
    """
    if mode not in _FILTER_MODES:
        raise ValueError(f"mode must be one of {_FILTER_MODES}, got {mode!r}.")
    radius = int(truncate * sigma + 0.5)
    w = gaussian_kernel(sigma, radius)
    centres = np.arange(radius, n - radius) if mode == "valid" else np.arange(n)
    m = np.zeros((len(centres), n), np.float32)
    for t, wt in zip(range(-radius, radius + 1), w, strict=True):
        src = centres + t
        if mode == "symmetric":  # d c b a | a b c d | d c b a, repeated as far as needed
            src = np.mod(src, 2 * n)
            src = np.where(src >= n, 2 * n - 1 - src, src)
        elif mode == "reflect":  # d c b | a b c d | c b a: the edge is not repeated
            period = max(2 * n - 2, 1)
            src = np.mod(src, period)
            src = np.where(src >= n, period - src, src)
        keep = (src >= 0) & (src < n)
        np.add.at(m, (np.nonzero(keep)[0], src[keep]), wt)
    return m


def gaussian_filter(x: jax.Array, sigma: float, *, truncate: float = 4.0,
                    mode: str = "symmetric", impl: str | None = None) -> jax.Array:
    """Separable Gaussian blur of NHWC `x` over H and W, each channel on its own.

    Args:
      x: [B, H, W, C] float array.
      sigma: standard deviation in pixels.
      truncate: the kernel radius is ``int(truncate * sigma + 0.5)`` (scipy.ndimage's rule).
      mode: "symmetric" (edge-mirrored, scipy.ndimage's "reflect" and its default), "reflect"
        (mirrored about the edge pixel, which is not repeated: PyTorch's and kornia's "reflect",
        scipy.ndimage's "mirror"), "constant" (zeros outside the image), or "valid" (no
        padding: the output shrinks by the radius on every side).
      impl: "conv", two depthwise 1-D convolutions (the fewest FLOPs; the fast choice on GPU
        and TPU), or "matmul", one product with a banded [n_out, n] matrix per axis (on CPU
        about ten times faster than XLA's depthwise convolution, forward and backward). None
        picks "matmul" on CPU and "conv" elsewhere. Both are exact.
    """
    impl = impl or ("matmul" if jax.default_backend() == "cpu" else "conv")
    hi = jax.lax.Precision.HIGHEST
    if impl == "matmul":
        mh = jnp.asarray(gaussian_matrix(x.shape[1], sigma, truncate, mode), x.dtype)
        mw = jnp.asarray(gaussian_matrix(x.shape[2], sigma, truncate, mode), x.dtype)
        x = jnp.einsum("oh,bhwc->bowc", mh, x, precision=hi)
        return jnp.einsum("pw,bowc->bopc", mw, x, precision=hi)
    if impl != "conv":
        raise ValueError(f"impl must be 'conv' or 'matmul', got {impl!r}.")
    if mode not in _FILTER_MODES:
        raise ValueError(f"mode must be one of {_FILTER_MODES}, got {mode!r}.")
    radius = int(truncate * sigma + 0.5)
    kernel = jnp.asarray(gaussian_kernel(sigma, radius), x.dtype)
    channels = x.shape[-1]
    if mode != "valid":
        pad = ((0, 0), (radius, radius), (radius, radius), (0, 0))
        x = jnp.pad(x, pad, mode=mode) if mode in ("symmetric", "reflect") else jnp.pad(x, pad)
    for shape in ((-1, 1, 1, 1), (1, -1, 1, 1)):  # H, then W; HWIO with I = 1 per group
        k = kernel.reshape(shape)
        x = jax.lax.conv_general_dilated(
            x, jnp.broadcast_to(k, (*k.shape[:3], channels)), (1, 1), "VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels,
            precision=hi)
    return x


def ssim_map(x: jax.Array, y: jax.Array, *, data_range: float = 1.0, sigma: float = 1.5,
             truncate: float = 3.5, k1: float = 0.01, k2: float = 0.03,
             padding: str = "valid", win_size: int | None = None) -> jax.Array:
    """The local SSIM of NHWC images `x` and `y`, per pixel and channel.

    Local means, variances and the covariance are Gaussian-weighted (population, not sample,
    statistics) or, with `win_size`, means over a uniform win_size x win_size window with the
    variances and covariance scaled by n / (n - 1), n = win_size^2 (scikit-image's default;
    `sigma` and `truncate` are then unused); c1 = (k1 * data_range)^2, c2 = (k2 * data_range)^2.
    `padding` is "valid" ([B, H - 2r, W - 2r, C], r the window radius) or "zeros"
    ([B, H, W, C]); see the module docstring.
    """
    if padding not in _PADDINGS:
        raise ValueError(f"padding must be one of {_PADDINGS}, got {padding!r}.")
    x = x.astype(jnp.float32)
    y = y.astype(jnp.float32)
    # One filter call for the five moments, stacked on the channel axis (not the batch axis,
    # which data parallelism shards).
    stacked = jnp.concatenate([x, y, x * x, y * y, x * y], axis=-1)
    if win_size is None:
        moments = gaussian_filter(stacked, sigma, truncate=truncate,
                                  mode="valid" if padding == "valid" else "constant")
        scale = 1.0
    else:
        if win_size < 1 or win_size % 2 == 0:
            raise ValueError(f"win_size must be odd and positive, got {win_size}.")
        moments = _uniform_filter(stacked, win_size, padding)
        scale = win_size**2 / (win_size**2 - 1) if win_size > 1 else 1.0
    mx, my, mxx, myy, mxy = jnp.split(moments, 5, axis=-1)
    vx, vy, cxy = (scale * (mxx - mx * mx), scale * (myy - my * my),
                   scale * (mxy - mx * my))
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def _uniform_filter(x: jax.Array, size: int, padding: str) -> jax.Array:
    """Means of NHWC `x` over size x size windows: inside the image ("valid") or zero-padded to
    the same size ("zeros")."""
    r = size // 2
    pad = "VALID" if padding == "valid" else ((0, 0), (r, r), (r, r), (0, 0))
    sums = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, size, size, 1), (1, 1, 1, 1), pad)
    return sums / size**2


def ssim(x: jax.Array, y: jax.Array, **kwargs) -> jax.Array:
    """Mean SSIM per image, [B]; keyword arguments as `ssim_map`."""
    return jnp.mean(ssim_map(x, y, **kwargs), axis=(1, 2, 3))
