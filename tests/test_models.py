"""Tests for the EfficientAD networks (adjax.models.pdn, adjax.models.autoencoder) and the
PyTorch-faithful layers they are built from (adjax.nn.layers).

Shapes and parameter counts come from `jax.eval_shape`, so the full-size networks are only traced,
never compiled; the few numeric checks run on tiny inputs.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adjax.models.autoencoder import Autoencoder, decoder_sizes
from adjax.models.pdn import PDN, output_size
from adjax.nn.layers import Conv2d, avg_pool, resize_bilinear

SIDE = 256
IMAGE = jax.ShapeDtypeStruct((1, SIDE, SIDE, 3), jnp.float32)
# rbg keys compile far faster than threefry on CPU; the draws' distribution is what is tested.
FAST_KEY = jax.random.key(0, impl="rbg")


def _abstract_params(model, image=IMAGE):
    return jax.eval_shape(model.init, jax.random.key(0), image)


def _count(model, image=IMAGE) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(_abstract_params(model, image)))


def _output_shape(model, image=IMAGE) -> tuple[int, ...]:
    return jax.eval_shape(model.apply, _abstract_params(model, image), image).shape


# ---------------------------------------------------------------- parameter counts

# Published / derived from the layer tables (EfficientAD, reference code).
PDN_S_TEACHER, PDN_S_STUDENT = 2_694_144, 4_267_392
PDN_M_TEACHER, PDN_M_STUDENT = 8_026_624, 11_615_488
AUTOENCODER = 1_096_320


@pytest.mark.parametrize(
    ("size", "out_channels", "expected"),
    [("s", 384, PDN_S_TEACHER), ("s", 768, PDN_S_STUDENT),
     ("m", 384, PDN_M_TEACHER), ("m", 768, PDN_M_STUDENT)],
)
def test_pdn_parameter_count(size, out_channels, expected):
    assert _count(PDN(size=size, out_channels=out_channels)) == expected


def test_pdn_parameter_count_does_not_depend_on_padding():
    assert _count(PDN(size="s", padding=True)) == PDN_S_TEACHER


def test_autoencoder_parameter_count():
    assert _count(Autoencoder()) == AUTOENCODER


def test_autoencoder_keeps_the_reference_bottleneck_kernel_at_other_sizes():
    # The reference's last encoder conv has an 8x8 kernel at every size: a 3x3 bottleneck at
    # 320 px and the same 1,096,320 parameters; bottleneck_1x1 widens the kernel to H/32.
    image = jax.ShapeDtypeStruct((1, 320, 320, 3), jnp.float32)
    assert _count(Autoencoder(), image) == AUTOENCODER
    assert _count(Autoencoder(bottleneck_1x1=True), image) == 1_243_776
    assert _output_shape(Autoencoder(), image) == (1, 72, 72, 384)


@pytest.mark.parametrize(("size", "total"), [("s", 8_057_856), ("m", 20_738_432)])
def test_efficientad_total_parameter_count(size, total):
    nets = (PDN(size=size, out_channels=384), PDN(size=size, out_channels=768), Autoencoder())
    assert sum(_count(net) for net in nets) == total


@pytest.mark.parametrize("size", ["s", "m"])
def test_width_scales_hidden_widths_only(size):
    full = PDN(size=size, out_channels=384)
    narrow = PDN(size=size, out_channels=384, width=0.25)
    assert _count(narrow) < _count(full)
    # The output width is the teacher's feature width, whatever the hidden widths.
    assert _output_shape(narrow) == _output_shape(full)


def test_autoencoder_width_scales_parameters():
    narrow = Autoencoder(width=0.25)
    assert _count(narrow) < AUTOENCODER
    assert _output_shape(narrow) == (1, 56, 56, 384)


def test_pdn_rejects_unknown_size():
    with pytest.raises(ValueError, match="'x'"):
        _abstract_params(PDN(size="x"))


# ---------------------------------------------------------------- output shapes


@pytest.mark.parametrize("size", ["s", "m"])
@pytest.mark.parametrize(("padding", "side"), [(False, 56), (True, 64)])
def test_pdn_output_shape(size, padding, side):
    assert _output_shape(PDN(size=size, out_channels=384, padding=padding)) == (1, side, side, 384)
    assert output_size(SIDE, padding) == side


def test_student_output_has_768_channels():
    assert _output_shape(PDN(size="s", out_channels=768)) == (1, 56, 56, 768)


def test_autoencoder_output_shape():
    assert _output_shape(Autoencoder()) == (1, 56, 56, 384)


def test_decoder_sizes_match_the_reference_at_256():
    assert decoder_sizes(SIDE) == (3, 8, 15, 32, 63, 127, 56)
    assert decoder_sizes(SIDE, padding=True)[-1] == 64


def test_padded_autoencoder_matches_padded_pdn():
    assert _output_shape(Autoencoder(padding=True)) == (1, 64, 64, 384)


@pytest.mark.parametrize("shape, kwargs", [
    ((1, 96, 96, 3), dict(bottleneck_1x1=True)), ((1, 144, 144, 3), dict(bottleneck_1x1=True)),
    ((1, 128, 64, 3), dict(bottleneck_1x1=True)), ((1, 224, 224, 3), dict())])
def test_autoencoder_rejects_small_sides_not_divisible_by_32_or_not_square(shape, kwargs):
    with pytest.raises(ValueError, match="divisible by 32 and of at least"):
        _abstract_params(Autoencoder(**kwargs), jax.ShapeDtypeStruct(shape, jnp.float32))


# ---------------------------------------------------------------- resize_bilinear


def _torch_bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Row d holds the weights PyTorch's `interpolate(mode="bilinear", align_corners=False)`
    gives the input samples for output sample d (one axis).

    The source positions are computed in float32, as PyTorch's kernel does for float32
    tensors: at 128 -> 56 their rounding alone moves outputs by ~2e-5 from the exact values.
    """
    scale = np.float32(n_in / n_out)
    dst = np.arange(n_out, dtype=np.float32)
    src = np.maximum((dst + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0.0))
    weights = np.zeros((n_out, n_in), np.float64)
    for d, s in enumerate(src.astype(np.float64)):
        x0 = math.floor(s)
        x1 = min(x0 + 1, n_in - 1)
        frac = s - x0
        weights[d, x0] += 1.0 - frac
        weights[d, x1] += frac
    return weights


def _torch_resize(x: np.ndarray, h: int, w: int) -> np.ndarray:
    rows = _torch_bilinear_matrix(x.shape[1], h)
    cols = _torch_bilinear_matrix(x.shape[2], w)
    return np.einsum("ph,nhwc,qw->npqc", rows, x.astype(np.float64), cols)


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ((1, 4), (3, 8)),      # upsampling, from a single row
        ((9, 4), (15, 8)),     # upsampling
        ((128, 13), (56, 5)),  # downsampling (EfficientAD's 127 -> 56 step is of this kind)
        ((13, 9), (5, 15)),    # shrink one axis, grow the other
    ],
)
def test_resize_bilinear_matches_pytorch(src, dst):
    x = np.random.default_rng(0).normal(size=(2, *src, 3)).astype(np.float32)
    out = resize_bilinear(jnp.asarray(x), dst)
    assert out.shape == (2, *dst, 3)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), _torch_resize(x, *dst), atol=1e-5, rtol=0)


def test_resize_bilinear_int_size_is_square():
    x = np.random.default_rng(1).normal(size=(1, 4, 4, 2)).astype(np.float32)
    out = resize_bilinear(jnp.asarray(x), 7)
    np.testing.assert_allclose(np.asarray(out), _torch_resize(x, 7, 7), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- avg_pool


def _numpy_avg_pool(x: np.ndarray, window: int, stride: int, pad: int) -> np.ndarray:
    """PyTorch's AvgPool2d(count_include_pad=True, ceil_mode=False)."""
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    oh = (xp.shape[1] - window) // stride + 1
    ow = (xp.shape[2] - window) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, x.shape[3]))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * stride:i * stride + window, j * stride:j * stride + window]
            out[:, i, j] = patch.sum(axis=(1, 2)) / window**2
    return out


@pytest.mark.parametrize(("window", "stride", "pad"), [(2, 2, 1), (3, 2, 1), (2, 2, 0)])
def test_avg_pool_counts_padded_zeros(window, stride, pad):
    # Positive values so a mean over only the real pixels would be visibly larger at the border.
    x = np.random.default_rng(2).uniform(1.0, 2.0, size=(1, 5, 6, 2)).astype(np.float32)
    out = np.asarray(avg_pool(jnp.asarray(x), window, stride, pad))
    np.testing.assert_allclose(out, _numpy_avg_pool(x, window, stride, pad), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- Conv2d


def _numpy_conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int,
                pad: int) -> np.ndarray:
    """PyTorch's Conv2d (zero padding `pad` on every side) on NHWC / HWIO arrays."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    k = kernel.shape[0]
    oh = (xp.shape[1] - k) // stride + 1
    ow = (xp.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, kernel.shape[-1]))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * stride:i * stride + k, j * stride:j * stride + k]
            out[:, i, j] = np.einsum("nhwc,hwco->no", patch, kernel) + bias
    return out


@pytest.mark.parametrize(("kernel", "stride", "pad"), [(4, 1, 3), (4, 2, 1), (3, 1, 1), (3, 2, 0)])
def test_conv2d_pads_symmetrically_like_pytorch(kernel, stride, pad):
    x = np.random.default_rng(3).normal(size=(1, 5, 6, 2)).astype(np.float32)
    conv = Conv2d(3, kernel, stride=stride, padding=pad)
    params = conv.init(FAST_KEY, jnp.asarray(x))
    out = np.asarray(conv.apply(params, jnp.asarray(x)))
    p = params["params"]["conv"]
    expected = _numpy_conv(x, np.asarray(p["kernel"]), np.asarray(p["bias"]), stride, pad)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)


def test_conv2d_init_is_pytorch_default():
    in_ch, features, kernel = 8, 16, 3
    conv = Conv2d(features, kernel)
    params = conv.init(FAST_KEY, jnp.zeros((1, 5, 5, in_ch)))["params"]["conv"]
    w, b = np.asarray(params["kernel"]), np.asarray(params["bias"])
    bound = 1.0 / math.sqrt(in_ch * kernel * kernel)
    assert w.shape == (kernel, kernel, in_ch, features)
    assert b.shape == (features,)
    assert np.abs(w).max() <= bound
    assert np.abs(b).max() <= bound
    # U(-bound, bound): std bound/sqrt(3), and the draws reach close to the bound.
    np.testing.assert_allclose(w.std(), bound / math.sqrt(3), rtol=0.1)
    assert np.abs(w).max() > 0.9 * bound
    assert abs(w.mean()) < 0.1 * bound
    assert len(np.unique(b)) == features  # not a constant (e.g. Flax's zero bias)
    assert np.abs(b).max() > 0.3 * bound


# ---------------------------------------------------------------- autoencoder dropout


@pytest.fixture(scope="module")
def small_autoencoder():
    """A tiny autoencoder at 128 px (the smallest side whose decoder starts above 0x0), with
    params shared by the dropout and no-dropout variants (dropout adds no parameters)."""
    image = jax.random.uniform(jax.random.key(1, impl="rbg"), (1, 128, 128, 3))
    kwargs = dict(out_channels=8, width=0.125, bottleneck_1x1=True)
    params = jax.jit(Autoencoder(**kwargs).init)(FAST_KEY, image)
    return kwargs, params, image


@pytest.fixture(scope="module")
def forward_without_dropout(small_autoencoder):
    """The default (dropout=0.0) autoencoder in training mode, as a function of a dropout key."""
    kwargs, params, image = small_autoencoder
    model = Autoencoder(**kwargs)
    assert model.dropout == 0.0
    return jax.jit(lambda key: model.apply(params, image, train=True, rngs={"dropout": key}))


def test_autoencoder_dropout_is_random_in_training(small_autoencoder, forward_without_dropout):
    kwargs, params, image = small_autoencoder
    model = Autoencoder(dropout=0.2, **kwargs)

    @jax.jit
    def forward(key):
        return model.apply(params, image, train=True, rngs={"dropout": key})

    a = forward(jax.random.key(3, impl="rbg"))
    b = forward(jax.random.key(4, impl="rbg"))
    again = forward(jax.random.key(3, impl="rbg"))
    assert not np.allclose(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(again))
    # Inference is deterministic, needs no dropout rng, and equals the dropout-free network.
    inference = jax.jit(lambda: model.apply(params, image, train=False))()
    reference = forward_without_dropout(jax.random.key(3, impl="rbg"))
    np.testing.assert_allclose(np.asarray(inference), np.asarray(reference), rtol=1e-6,
                               atol=1e-6)


def test_autoencoder_without_dropout_has_no_randomness(forward_without_dropout):
    a = forward_without_dropout(jax.random.key(3, impl="rbg"))
    b = forward_without_dropout(jax.random.key(4, impl="rbg"))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
