"""Seed 001's models (Ferreira 2023): the VAE, the U-Net, RIAD's MSGMS and GANomaly; shapes,
parameter counts against PyTorch's layer formulas, losses against their equations, and one
training step and prediction of each method on tiny networks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from adjax.methods import build
from adjax.models.vae import VAE, kl_sum

# rbg keys: XLA on CPU compiles their initialisers several times faster than threefry's.
_KEY = jax.random.key(0, impl="rbg")


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _images(n=4, size=32, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (n, size, size, 3),
                                                            np.uint8))


def _conv(cin, cout, k, bias=True):
    return cin * cout * k * k + (cout if bias else 0)


def _linear(fin, fout):
    return fin * fout + fout


# ----------------------------------------------------------------------------- VAE


def test_vae_thesis_shapes_and_parameter_count():
    """Latent 256 on 256 x 256 input, 256 -> 16 in four stride-2 convs; the count is the
    PyTorch model's with BatchNorm2d/1d (scale and shift) after every layer but the heads and
    the last conv."""
    cfg = load_config("vae", "thesis")
    net = build(cfg).net
    x = jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32)
    variables = jax.eval_shape(net.init, jax.random.key(0), x)
    out = jax.eval_shape(net.apply, variables, x)
    assert out["reconstruction"].shape == (2, 256, 256, 3) and out["mu"].shape == (2, 256)
    w = cfg.model.widths  # 32, 64, 128, 256
    flat = w[-1] * 16 * 16
    expected = (sum(_conv(a, b, 4) + 2 * b for a, b in zip((3, *w[:-1]), w, strict=True))
                + _linear(flat, 512) + 2 * 512 + 2 * _linear(512, 256)
                + _linear(256, 512) + 2 * 512 + _linear(512, flat) + 2 * flat
                + sum(_conv(a, b, 3) + 2 * b for a, b in ((256, 128), (128, 64), (64, 32)))
                + _conv(32, 3, 3))
    assert _count(variables["params"]) == expected


def test_vae_kl_is_eq_4_3():
    mu = jnp.asarray([[1.0, -2.0]])
    logvar = jnp.log(jnp.asarray([[4.0, 0.5]]))
    want = 0.5 * ((1 + 4 - np.log(4) - 1) + (4 + 0.5 - np.log(0.5) - 1))
    assert float(kl_sum(mu, logvar)[0]) == pytest.approx(want, rel=1e-6)


@pytest.fixture(scope="module")
def vae_method():
    cfg = load_config("vae", "quick")
    cfg.model.update(widths=(4, 8), hidden=16, latent=8)
    return build(cfg)


def test_vae_step_is_eq_4_10_and_predicts_the_error_map(vae_method):
    method, images = vae_method, _images()
    state = method.init(_KEY, {"image": images})
    rng = jax.random.key(1)
    x = images / 255.0
    k_drop, k_sample = jax.random.split(rng)
    out = jax.jit(lambda s, x: method.net.apply(
        {"params": s.params, "batch_stats": s.batch_stats}, x, train=True, sample=True,
        rngs={"dropout": k_drop, "sample": k_sample}, mutable=["batch_stats"])[0])(state, x)
    want = np.mean(np.sum((np.asarray(out["reconstruction"]) - np.asarray(x)) ** 2,
                          axis=(1, 2, 3)) + 0.1 * np.asarray(kl_sum(out["mu"], out["logvar"])))
    new, metrics = jax.jit(method.train_step)(state, {"image": images}, rng)
    assert float(metrics["loss"]) == pytest.approx(float(want), rel=1e-4)
    assert not jax.tree.all(jax.tree.map(jnp.array_equal, new.params, state.params))
    pred = jax.jit(method.predict)(new, images)
    assert pred.anomaly_map.shape == (4, 32, 32)
    np.testing.assert_allclose(pred.score, pred.anomaly_map.max(axis=(1, 2)), rtol=1e-6)
    # Without smoothing the map is the channel-mean squared error of the z = mu reconstruction.
    plain = build(method.config.copy_and_resolve_references())
    plain.config.score.smooth_sigma = 0.0
    recon, amap = jax.jit(lambda s, images: (plain.reconstruct(s, images / 255.0),
                                             plain.predict(s, images).anomaly_map))(new, images)
    error = np.mean((np.asarray(recon) - np.asarray(x)) ** 2, axis=-1)
    np.testing.assert_allclose(amap, error, rtol=1e-4, atol=1e-7)


def test_vae_bad_keys_name_themselves():
    cfg = load_config("vae", "quick")
    cfg.loss.reconstruction = "huber"
    with pytest.raises(ValueError, match="config.loss.reconstruction"):
        build(cfg)
    with pytest.raises(ValueError, match="not a multiple of 16"):
        VAE().init(jax.random.key(0), jnp.zeros((1, 40, 40, 3)))
