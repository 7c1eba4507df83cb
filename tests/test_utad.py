"""Seed 001's two-stage model (adjax/models/utad.py, adjax/methods/utad.py): layer counts, AdaIN,
the two training phases, the fusion with the VAE, the calibrated map and the config checks.
Tiny widths at 64 px (the pair discriminator's minimum); one compiled step per module."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from adjax.config import ConfigError
from adjax.methods import build
from adjax.methods.base import count_params
from adjax.models import utad as models
from adjax.nn.layers import adain
from adjax.nn.vgg import VGG19, VGGFeatures

_KEY = jax.random.key(0)


def _conv(cin, cout, k, bias=True):
    return cin * cout * k * k + (cout if bias else 0)


def _images(n=4, size=64, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.integers(0, 256, (n, size, size, 3)), jnp.uint8)


def _config(**changes):
    cfg = load_config("utad", "quick")
    cfg.model.update(ie_widths=(8, 8), disc_width=4, disc_hidden=(8, 8, 8), dim=4,
                     mlp_hidden=8, vae_weight=0.0)
    cfg.train.update(steps=4, batch_size=4)
    cfg.ie.steps = 2
    cfg.expert.batch_size = 2
    cfg.eval.batch_size = 4
    for key, value in changes.items():
        section, name = key.split("__")
        cfg[section][name] = value
    return cfg


def test_inception_and_expert_net_counts_follow_their_layer_tables():
    x = jnp.zeros((1, 64, 64, 3))
    block = jax.eval_shape(lambda k: models.Inception(16).init(k, x, False), _KEY)
    # 1x1, 3x3, 5x5 and the pool's 1x1, 4 channels each, each with BatchNorm (scale, bias).
    assert count_params(block["params"]) == sum(_conv(3, 4, k) + 8 for k in (1, 3, 5, 1))
    d, s = 8, 8
    net = models.ExpertNet(d, s, 32)
    params = jax.eval_shape(net.init, _KEY, x, x, jnp.zeros((1, s)))["params"]
    content = _conv(3, d, 7) + _conv(d, 2 * d, 4) + _conv(2 * d, 4 * d, 4) + 2 * _conv(
        4 * d, 4 * d, 3)
    # The residual block's convs (AdaIN has no parameters), two upsampling convs with their
    # LayerNorms, the output conv.
    decoder = 2 * _conv(4 * d, 4 * d, 3) + _conv(4 * d, 2 * d, 5) + 4 * d + _conv(
        2 * d, d, 5) + 2 * d + _conv(d, 3, 7)
    style = _conv(3, d, 7) + _conv(d, 2 * d, 4) + _conv(2 * d, 4 * d, 4) + 2 * _conv(
        4 * d, 4 * d, 4) + _conv(4 * d, s, 1)
    mlp = (s * 32 + 32) + (32 * 32 + 32) + (32 * 2 * 8 * d + 2 * 8 * d)  # n = 2 x 4 d AdaINs
    assert count_params(params) == 2 * content + 2 * decoder + style + mlp


def test_adain_gives_each_channel_the_style_mean_and_std():
    x = jax.random.normal(_KEY, (2, 8, 8, 3)) * 5 + 2
    gamma, beta = jnp.asarray([[1.0, 2.0, 0.5], [3.0, 1.0, 1.0]]), jnp.asarray(
        [[0.0, -1.0, 4.0], [1.0, 1.0, 1.0]])
    y = np.asarray(adain(x, gamma, beta))
    np.testing.assert_allclose(y.mean(axis=(1, 2)), beta, atol=1e-5)
    np.testing.assert_allclose(y.std(axis=(1, 2)), gamma, rtol=1e-3)


def test_vgg_taps_are_the_truncated_trunks_outputs():
    x = jax.random.uniform(_KEY, (1, 32, 32, 3))
    tapped = VGGFeatures(config=VGG19, taps=(1, 6))
    variables = tapped.init(_KEY, x)
    out = tapped.apply(variables, x)
    for index in (1, 6):
        truncated = VGGFeatures(index + 1, VGG19)
        np.testing.assert_allclose(out[index], truncated.apply(variables, x), rtol=1e-6)


@pytest.fixture(scope="module")
def trained():
    """A method, its state after one IE-Net step and one Expert-Net step, and the calibrated
    state, with the compiled step shared."""
    # L_VGG on, with a random VGG-19 (two taps) standing in for the ImageNet one.
    method = build(_config(expert__vgg=1.0, expert__vgg_weights="unused",
                           expert__vgg_layers=(1, 3)))
    images = _images(4)
    vgg = method.perceptual_net.init(_KEY, jnp.zeros((1, 64, 64, 3)))
    state = method.init(_KEY, {"image": images}, {"perceptual": vgg})
    step = jax.jit(method.train_step)
    batch = {"image": images, "label": jnp.zeros(4, jnp.int32)}
    after_ie, ie_metrics = step(state, batch, jax.random.key(1))
    in_expert = after_ie.replace(step=jnp.asarray(2, jnp.int32))
    after_expert, expert_metrics = step(in_expert, batch, jax.random.key(2))
    calibrated = method.calibrate(after_expert, {"image": images})
    return method, images, state, after_ie, ie_metrics, in_expert, after_expert, \
        expert_metrics, calibrated


def _changed(a, b) -> bool:
    return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                       strict=True))


def test_each_phase_moves_its_own_nets_only(trained):
    method, _, state, after_ie, ie_m, in_expert, after_expert, ex_m, _ = trained
    assert _changed(state.params["ie"], after_ie.params["ie"])
    assert _changed(state.params["disc"], after_ie.params["disc"])
    assert not _changed(state.params["expert"], after_ie.params["expert"])
    assert not _changed(in_expert.params["ie"], after_expert.params["ie"])
    assert not _changed(in_expert.params["disc"], after_expert.params["disc"])
    assert not _changed(in_expert.opt_state["ie"], after_expert.opt_state["ie"])
    assert _changed(in_expert.params["expert"], after_expert.params["expert"])
    ie = {k: float(v) for k, v in ie_m.items()}
    assert ie["loss"] == pytest.approx(ie["loss_mse"] + 0.5 * ie["loss_kl"] + ie["loss_dsc"],
                                       rel=1e-5)
    assert ie["loss_x"] == 0 and ie["loss_dsc"] > 0
    ex = {k: float(v) for k, v in ex_m.items()}
    assert ex["loss"] == pytest.approx(ex["loss_x"] + ex["loss_m"] + ex["loss_style"]
                                       + ex["loss_vgg"], rel=1e-5)
    assert ex["loss_mse"] == 0 and ex["loss_x"] > 0


def test_map_is_the_product_of_validation_scaled_layer_maps(trained):
    method, images, *_, calibrated = trained
    x = images / 255.0
    maps, errors = jax.jit(method._layer_maps)(calibrated, x)
    maps = np.asarray(maps)
    # Calibrated on these images: every layer's maximum over them becomes 1.
    np.testing.assert_allclose(maps.max(axis=(0, 2, 3)), calibrated.layer_scale, rtol=1e-5)
    pred = jax.jit(method.predict)(calibrated, images)
    scaled = maps / np.asarray(calibrated.layer_scale)[None, :, None, None]
    np.testing.assert_allclose(pred.anomaly_map, scaled.prod(axis=1), rtol=1e-4, atol=1e-7)
    assert float(pred.anomaly_map.max()) <= 1.0 + 1e-5
    np.testing.assert_allclose(pred.score, scaled.prod(axis=1).max(axis=(1, 2)), rtol=1e-4)
    assert sorted(pred.reconstruction) == sorted(
        f"recon_{a}_{b}" for a in "xm" for b in ("l1", "mse", "ssim"))
    np.testing.assert_allclose(pred.reconstruction["recon_x_l1"], errors["recon_x_l1"],
                               rtol=1e-5)
    # The original's sum: the mean of the same scaled maps.
    summed = build(_config(score__combine="sum"))
    pred_sum = jax.jit(summed.predict)(calibrated, images)
    np.testing.assert_allclose(pred_sum.anomaly_map, scaled.mean(axis=1), rtol=1e-4, atol=1e-7)


def test_impression_fuses_the_vae_and_the_ie_net(trained):
    method, images, state, *_ = trained
    vae_cfg = load_config("vae", "quick")
    vae_cfg.model.update(widths=(4, 4, 4, 4), hidden=8, latent=4)
    vae_cfg.data.image_size = 32
    vae_method = build(vae_cfg)
    vae_state = vae_method.init(_KEY, {"image": _images(1, 32)})
    fused = build(_config(model__vae_weight=0.8, model__vae_workdir="unused"))
    fused.vae.__dict__["run"] = (vae_method, vae_cfg)
    vae = {"params": vae_state.params, "batch_stats": vae_state.batch_stats}
    x = images / 255.0
    m = jax.jit(fused.impression)(state.replace(vae=vae), x)
    ie = method.impression(state, x)  # vae_weight 0: the IE-Net's reconstruction alone
    want = 0.8 * fused.vae.reconstruct(vae, x) + 0.2 * ie
    np.testing.assert_allclose(m, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("changes, match", [
    ({"model__vae_weight": 0.8, "model__vae_workdir": ""}, "config.model.vae_workdir is empty"),
    ({"expert__vgg": 1.0}, "config.expert.vgg_weights is empty"),
    ({"score__extractor": "alexnet"}, "config.score.extractor"),
    ({"ie__reconstruction": "ssim"}, "config.ie.reconstruction"),
    ({"score__layers": ("layer5",)}, "config.score.layers"),
    ({"data__image_size": 48}, "config.data.image_size must be at least 64"),
    ({"ie__steps": 9}, "config.ie.steps must be in"),
    ({"expert__batch_size": 8}, "config.expert.batch_size"),
])
def test_bad_config_keys_name_themselves(changes, match):
    with pytest.raises(ConfigError, match=match):
        build(_config(**changes))


def test_missing_extractor_weights_name_the_key(tmp_path):
    method = build(_config(score__weights=str(tmp_path / "resnet18.pth")))
    with pytest.raises(FileNotFoundError, match="config.score.weights"):
        method.pretrained()


def test_thesis_and_original_variants():
    thesis, original = load_config("utad", "thesis"), load_config("utad", "original")
    assert (thesis.score.extractor, thesis.score.combine, thesis.eval.per_image_threshold) == (
        "resnet18", "product", 0.3)
    assert (original.score.extractor, original.score.combine,
            original.eval.per_image_threshold) == ("vgg19", "sum", 0.5)
    assert thesis.model.vae_weight == 0.8 and thesis.ie.lr == 1e-4 and thesis.expert.lr == 1e-3
    assert (thesis.train.batch_size, thesis.expert.batch_size) == (16, 8)


def test_train_and_eval_through_the_trainer(synth_root, tmp_path):
    """Both phases through the trainer, calibration on the validation images, and a record
    with the pooled metrics, the per-image protocol and Table 5.4's reconstruction errors."""
    from conftest import assert_record_holds_the_runs_metrics

    from adjax import evaluate, train

    cfg = _config()
    cfg.data.update(root=str(synth_root), category="tiles")
    cfg.train.update(steps_per_call=2, checkpoint_every=4, log_every=4)
    state = train.train(cfg, tmp_path, devices=jax.devices()[:1], log=lambda s: None)
    assert int(state.step) == 4 and not np.allclose(state.layer_scale, 1.0)
    record, _ = evaluate.evaluate(tmp_path)
    assert_record_holds_the_runs_metrics(record, tmp_path, ("image_auroc", "pixel_auroc"),
                                         batch=cfg.eval.batch_size)
    assert {"per_image_f1", "recon_x_ssim", "recon_m_l1"} <= set(record["metrics"])
    assert "random" in record["notes"]["extractor"]
    assert record["run"]["params"].keys() == {"ie", "disc", "expert"}


def test_ie_reconstruction_term_is_eq_4_6_or_the_prose_l1():
    images = _images(4)
    x = images / 255.0
    for kind in ("mse", "l1"):
        cfg = _config(ie__reconstruction=kind)
        cfg.train.steps = cfg.ie.steps = 1  # the IE-Net step alone
        method = build(cfg)
        state = method.init(_KEY, {"image": images})
        _, metrics = jax.jit(method.train_step)(state, {"image": images}, jax.random.key(1))
        recon = method.ie_net.apply({"params": state.params["ie"],
                                     "batch_stats": state.batch_stats["ie"]}, x, train=True,
                                    mutable=["batch_stats"])[0]["reconstruction"]
        error = np.asarray(recon) - np.asarray(x)
        want = np.mean(error ** 2) if kind == "mse" else np.mean(np.abs(error))
        assert float(metrics["loss_mse"]) == pytest.approx(want, rel=1e-4)


def test_perceptual_term_is_eq_4_17_on_the_vgg_taps(trained):
    """L_VGG = sum over the taps of the mean |phi(x_hat) - phi(x)| + |phi(m_hat) - phi(m)|,
    on ImageNet-normalised input."""
    from adjax.data import augment

    method, images, *_, in_expert, _, expert_metrics, _ = trained
    x = images[:2] / 255.0
    m = method.impression(in_expert, x)
    style = jax.random.normal(jax.random.key(2), (2, method.config.model.style_dim))
    out = method.expert_net.apply({"params": in_expert.params["expert"]}, x, m, style)

    def phi(a):
        return method.perceptual_net.apply(in_expert.perceptual, augment.imagenet_normalize(a))

    want = sum(float(jnp.mean(jnp.abs(phi(out[h])[k] - phi(t)[k])))
               for h, t in (("x_hat", x), ("m_hat", m)) for k in (1, 3))
    assert float(expert_metrics["loss_vgg"]) == pytest.approx(want, rel=1e-4)
