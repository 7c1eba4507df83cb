"""SSIM against scikit-image and a scipy transcription of pytorch_ssim; the Gaussian filter
against scipy.ndimage."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import structural_similarity

from adjax.nn.ssim import gaussian_filter, ssim, ssim_map


def _pair(shape, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    x = rng.random(shape)
    y = np.clip(x + 0.15 * rng.standard_normal(shape), 0, 1)
    return (scale * x).astype(np.float32), (scale * y).astype(np.float32)


@pytest.mark.parametrize("data_range", [1.0, 255.0])
def test_valid_ssim_matches_scikit_image(data_range):
    x, y = _pair((2, 37, 30, 3), scale=data_range)
    ours = np.asarray(ssim(jnp.asarray(x), jnp.asarray(y), data_range=data_range))
    ref = [structural_similarity(x[i], y[i], gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=data_range,
                                 channel_axis=-1) for i in range(2)]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_zero_padded_ssim_matches_pytorch_ssim_semantics():
    # pytorch_ssim: an 11x11 Gaussian (sigma 1.5) convolution with zero padding 5, population
    # moments, c1 = 0.01^2, c2 = 0.03^2, the mean over all pixels and channels.
    x, y = _pair((1, 24, 20, 3), seed=1)

    def blur(a):
        return ndimage.gaussian_filter(a.astype(np.float64), (0, 1.5, 1.5, 0), mode="constant",
                                       truncate=3.5)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    ref = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    ours = ssim_map(jnp.asarray(x), jnp.asarray(y), padding="zeros")
    assert ours.shape == x.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_ssim_of_an_image_with_itself_is_one_and_differentiable():
    x, y = _pair((2, 16, 16, 3), seed=2)
    for padding in ("valid", "zeros"):
        np.testing.assert_allclose(ssim(jnp.asarray(x), jnp.asarray(x), padding=padding), 1.0,
                                   rtol=1e-5)
    grad = jax.grad(lambda a: jnp.sum(ssim(a, jnp.asarray(y))))(jnp.asarray(x))
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


@pytest.mark.parametrize(("mode", "scipy_mode"), [("symmetric", "reflect"),
                                                  ("constant", "constant")])
@pytest.mark.parametrize("size", [(20, 23), (6, 5)])  # the second is smaller than the kernel
@pytest.mark.parametrize("impl", ["matmul", "conv"])
def test_gaussian_filter_matches_scipy(mode, scipy_mode, size, impl):
    x = np.random.default_rng(3).random((2, *size, 2)).astype(np.float32)
    ours = gaussian_filter(jnp.asarray(x), 4.0, mode=mode, impl=impl)
    ref = ndimage.gaussian_filter(x.astype(np.float64), (0, 4, 4, 0), mode=scipy_mode)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", ["matmul", "conv"])
def test_valid_filter_is_the_interior(impl):
    x = np.random.default_rng(4).random((1, 30, 26, 1)).astype(np.float32)
    valid = gaussian_filter(jnp.asarray(x), 1.5, truncate=3.5, mode="valid", impl=impl)
    full = gaussian_filter(jnp.asarray(x), 1.5, truncate=3.5, mode="constant", impl=impl)
    assert valid.shape == (1, 20, 16, 1)
    np.testing.assert_allclose(valid, full[:, 5:-5, 5:-5], rtol=1e-6, atol=1e-7)
