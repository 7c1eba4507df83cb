"""Tests for the on-device augmentations (adjax.data.augment) against numpy versions of
torchvision's formulas."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adjax.data import augment

LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, torchvision's rgb_to_grayscale
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
KEY = jax.random.key(0, impl="rbg")  # compiles faster than threefry on CPU


def _images(n: int = 4, lo: float = 0.0, hi: float = 1.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(lo, hi, size=(n, 6, 5, 3)).astype(np.float32)


def _np_gray(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float64) @ LUMA)[..., None]


def _np_brightness(x: np.ndarray, f: float) -> np.ndarray:
    return np.clip(x * f, 0.0, 1.0)


def _np_contrast(x: np.ndarray, f: float) -> np.ndarray:
    mean = _np_gray(x).mean(axis=(-3, -2, -1), keepdims=True)  # one mean per image
    return np.clip(f * x + (1 - f) * mean, 0.0, 1.0)


def _np_saturation(x: np.ndarray, f: float) -> np.ndarray:
    return np.clip(f * x + (1 - f) * _np_gray(x), 0.0, 1.0)


ADJUSTMENTS = [
    (augment.adjust_brightness, _np_brightness),
    (augment.adjust_contrast, _np_contrast),
    (augment.adjust_saturation, _np_saturation),
]


@pytest.mark.parametrize(("ours", "reference"), ADJUSTMENTS,
                         ids=["brightness", "contrast", "saturation"])
@pytest.mark.parametrize("factor", [0.0, 0.6, 1.0, 1.7])
def test_adjustments_match_torchvision(ours, reference, factor):
    x = _images()
    out = np.asarray(ours(jnp.asarray(x), jnp.float32(factor)))
    assert out.shape == x.shape
    np.testing.assert_allclose(out, reference(x, factor), atol=1e-6, rtol=0)
    assert out.min() >= 0.0
    assert out.max() <= 1.0


@pytest.mark.parametrize(("ours", "_"), ADJUSTMENTS, ids=["brightness", "contrast", "saturation"])
def test_adjustments_take_a_factor_per_image(ours, _):
    x = _images(n=3)
    factors = np.array([0.5, 1.0, 1.5], np.float32).reshape(3, 1, 1, 1)
    out = np.asarray(ours(jnp.asarray(x), jnp.asarray(factors)))
    for i, f in enumerate(factors.ravel()):
        single = np.asarray(ours(jnp.asarray(x[i:i + 1]), jnp.float32(f)))
        np.testing.assert_allclose(out[i:i + 1], single, atol=1e-6, rtol=0)
    np.testing.assert_allclose(out[1], x[1], atol=1e-6, rtol=0)  # factor 1: unchanged


def test_contrast_mean_is_per_image():
    # A dark and a bright image: a batch-wide mean would pull both towards the middle.
    x = np.concatenate([_images(1, 0.0, 0.2), _images(1, 0.8, 1.0, seed=1)])
    out = np.asarray(augment.adjust_contrast(jnp.asarray(x), jnp.float32(0.0)))
    for i in range(2):
        np.testing.assert_allclose(out[i], _np_gray(x[i]).mean(), atol=1e-6, rtol=0)


def test_grayscale_uses_luma():
    x = _images()
    out = np.asarray(augment.grayscale(jnp.asarray(x)))
    np.testing.assert_allclose(out, np.broadcast_to(_np_gray(x), x.shape), atol=1e-6, rtol=0)


def _fit_factor(x: np.ndarray, out: np.ndarray, anchor: np.ndarray) -> tuple[float, float]:
    """Least-squares f with out - anchor = f (x - anchor); returns (f, worst residual)."""
    d, o = (x - anchor).ravel(), (out - anchor).ravel()
    f = float(d @ o / (d @ d))
    return f, float(np.abs(o - f * d).max())


def test_random_color_jitter_applies_one_adjustment_per_image():
    strength = 0.5
    # Values in [0.25, 0.5] stay inside [0, 1] for every factor in [0.5, 1.5], so no clipping
    # hides the factor and each adjustment is exactly linear in it.
    x = _images(n=64, lo=0.25, hi=0.5).astype(np.float64)
    out = np.asarray(augment.random_color_jitter(KEY, jnp.asarray(x, jnp.float32), strength))
    assert out.shape == x.shape
    kinds, factors = [], []
    for i in range(len(x)):
        anchors = {
            "brightness": np.zeros_like(x[i]),
            "contrast": np.full_like(x[i], _np_gray(x[i]).mean()),
            "saturation": np.broadcast_to(_np_gray(x[i]), x[i].shape),
        }
        fits = {k: _fit_factor(x[i], out[i], a) for k, a in anchors.items()}
        matches = [k for k, (_, residual) in fits.items() if residual < 1e-5]
        assert len(matches) == 1, f"image {i} matches {matches}"
        f = fits[matches[0]][0]
        assert 1 - strength - 1e-5 <= f <= 1 + strength + 1e-5
        kinds.append(matches[0])
        factors.append(f)
    # All three kinds are drawn, and each image draws its own factor over the whole range.
    assert set(kinds) == {"brightness", "contrast", "saturation"}
    assert len(np.unique(np.round(factors, 4))) > 50
    assert min(factors) < 1 - strength / 2 < 1 + strength / 2 < max(factors)


def test_random_color_jitter_depends_on_the_key():
    x = jnp.asarray(_images(n=8))
    a = augment.random_color_jitter(KEY, x, 0.2)
    b = augment.random_color_jitter(jax.random.key(1, impl="rbg"), x, 0.2)
    assert not np.allclose(np.asarray(a), np.asarray(b))


def test_random_color_jitter_with_zero_strength_is_identity():
    x = _images(n=8)
    out = np.asarray(augment.random_color_jitter(KEY, jnp.asarray(x), 0.0))
    np.testing.assert_allclose(out, x, atol=1e-6, rtol=0)


def test_imagenet_normalize():
    x = _images()
    out = np.asarray(augment.imagenet_normalize(jnp.asarray(x)))
    np.testing.assert_allclose(out, (x - MEAN) / STD, atol=1e-5, rtol=0)


def test_random_grayscale_extremes():
    x = jnp.asarray(_images(n=8))
    np.testing.assert_array_equal(np.asarray(augment.random_grayscale(KEY, x, 0.0)),
                                  np.asarray(x))
    gray = np.asarray(augment.random_grayscale(KEY, x, 1.0))
    np.testing.assert_array_equal(gray[..., 0], gray[..., 1])
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
    np.testing.assert_allclose(gray[..., 0], _np_gray(np.asarray(x))[..., 0], atol=1e-6)


def test_random_grayscale_decides_per_image():
    x = _images(n=64)
    out = np.asarray(augment.random_grayscale(KEY, jnp.asarray(x), 0.5))
    gray = np.broadcast_to(_np_gray(x), x.shape)
    is_gray = [np.allclose(o, g, atol=1e-6) for o, g in zip(out, gray, strict=True)]
    is_same = [np.array_equal(o, xi) for o, xi in zip(out, x, strict=True)]
    assert all(g != s for g, s in zip(is_gray, is_same, strict=True))  # one or the other
    assert 10 < sum(is_gray) < 54


def test_to_float_from_uint8():
    x = np.array([0, 1, 128, 254, 255], np.uint8).reshape(1, 1, 5, 1)
    out = augment.to_float(jnp.asarray(x))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), x / 255.0, atol=1e-7, rtol=0)
    assert float(out.min()) == 0.0
    assert float(out.max()) == 1.0


def test_to_float_keeps_float_values():
    x = _images(n=1).astype(np.float16)
    out = augment.to_float(jnp.asarray(x))
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), x.astype(np.float32))
