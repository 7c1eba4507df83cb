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
from adjax.nn.layers import resize_bilinear

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
    # Table 5.1's reconstruction errors: L1, MSE and scikit-image's Gaussian SSIM per image.
    from skimage.metrics import structural_similarity

    r, xs = np.asarray(recon, np.float64), np.asarray(x, np.float64)
    np.testing.assert_allclose(pred.reconstruction["recon_l1"], np.abs(r - xs).mean(
        axis=(1, 2, 3)), rtol=1e-4)
    np.testing.assert_allclose(pred.reconstruction["recon_mse"], ((r - xs) ** 2).mean(
        axis=(1, 2, 3)), rtol=1e-4)
    want_ssim = [structural_similarity(a, b, channel_axis=-1, data_range=1.0,
                                       gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False)
                 for a, b in zip(xs, r, strict=True)]
    np.testing.assert_allclose(pred.reconstruction["recon_ssim"], want_ssim, rtol=1e-3)


def test_vae_bad_keys_name_themselves():
    cfg = load_config("vae", "quick")
    cfg.loss.reconstruction = "huber"
    with pytest.raises(ValueError, match="config.loss.reconstruction"):
        build(cfg)
    with pytest.raises(ValueError, match="not a multiple of 16"):
        VAE().init(jax.random.key(0), jnp.zeros((1, 40, 40, 3)))


# ----------------------------------------------------------------------------- RIAD


def test_grid_masks_blank_every_cell_exactly_once():
    from adjax.methods.riad import grid_masks

    masks = np.asarray(grid_masks(jax.random.key(3), 16, 4))
    assert masks.shape == (3, 16, 16)
    np.testing.assert_array_equal((1 - masks).sum(0), np.ones((16, 16)))
    cells = masks.reshape(3, 4, 4, 4, 4)  # constant inside each 4 x 4 cell
    assert (cells == cells[:, :, :1, :, :1]).all()
    assert sorted((1 - masks).sum((1, 2)) // 16) == [5, 5, 6]  # 16 cells dealt into 3 sets


def test_msgms_is_zero_for_equal_images_and_sees_a_changed_patch():
    from adjax.nn.gms import gms_map, msgms_anomaly_map, msgms_loss

    x = jax.random.uniform(jax.random.key(0), (1, 32, 32, 3))
    y = x.at[:, 8:16, 8:16].set(0.5)
    gms, same, changed, amap = jax.jit(lambda x, y: (
        gms_map(x, y), msgms_loss(x, x), msgms_loss(x, y), msgms_anomaly_map(x, y)))(x, y)
    assert gms.shape == (1, 30, 30)
    np.testing.assert_allclose(same, 0.0, atol=1e-6)
    assert float(changed[0]) > 0.01  # the patch is 1/16 of the image
    amap = np.asarray(amap)[0]
    assert amap.shape == (32, 32) and amap[10:14, 10:14].mean() > 5 * amap[24:, 24:].mean()


@pytest.fixture(scope="module")
def riad_method():
    cfg = load_config("riad", "quick")
    cfg.data.image_size = 32
    cfg.model.widths = (4, 8)
    cfg.masks.sizes = (8,)
    return build(cfg)


def test_riad_step_is_eq_2_7_and_predicts_a_smoothed_msgms_map(riad_method):
    from adjax.methods.riad import grid_masks, mean_filter
    from adjax.nn.gms import msgms_anomaly_map

    method, images = riad_method, _images(2)
    state = method.init(_KEY, {"image": images})
    rng = jax.random.key(5)
    x = images / 255.0

    @jax.jit
    def reference(state):  # eq. 2.7 on the masks the step draws; eq. 2.8 on the test masks
        masks = grid_masks(jax.random.split(rng)[1], 32, 8)
        recon, _ = method.inpaint(state.params, state.batch_stats, x, masks, train=True)
        t = method.losses(x, recon)
        test_masks = grid_masks(jax.random.split(jax.random.key(0), 1)[0], 32, 8)
        test_recon, _ = method.inpaint(state.params, state.batch_stats, x, test_masks, False)
        return (jnp.mean(t["mse"] + t["msgms"] + t["ssim"]), recon,
                mean_filter(msgms_anomaly_map(x, test_recon), 5), method.predict(state, images))

    want, recon, amap, pred = reference(state)
    # Every pixel comes from the copy in which it was blanked, never from the input itself.
    assert not np.allclose(recon, x, atol=1e-3)
    _, metrics = jax.jit(method.train_step)(state, {"image": images}, rng)
    assert float(metrics["loss"]) == pytest.approx(float(want), rel=1e-4)
    np.testing.assert_allclose(pred.anomaly_map, amap, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred.score, amap.max(axis=(1, 2)), rtol=1e-5)


def test_mean_filter_is_a_window_mean():
    from adjax.methods.riad import mean_filter

    x = np.random.default_rng(0).random((1, 9, 9)).astype(np.float32)
    np.testing.assert_allclose(mean_filter(jnp.asarray(x), 3)[0, 4, 4], x[0, 3:6, 3:6].mean(),
                               rtol=1e-6)


def test_riad_grid_sizes_must_divide_the_image():
    cfg = load_config("riad", "quick")
    cfg.masks.sizes = (3,)
    with pytest.raises(ValueError, match="config.masks.sizes"):
        build(cfg)


# ----------------------------------------------------------------------------- GANomaly


def _dcgan_encoder_count(nz, ndf, nc=3, size=32):
    """PyTorch's GANomaly Encoder: bias-free convs, BatchNorm2d on the pyramid convs."""
    n, width, side = _conv(nc, ndf, 4, False), ndf, size // 2
    while side > 4:
        n += _conv(width, 2 * width, 4, False) + 2 * 2 * width
        width, side = 2 * width, side // 2
    return n + _conv(width, nz, 4, False)


def test_ganomaly_parameter_counts_follow_the_authors_networks():
    from adjax.models.ganomaly import Discriminator, Generator

    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    g = jax.eval_shape(Generator().init, jax.random.key(0), x)["params"]
    d = jax.eval_shape(Discriminator().init, jax.random.key(0), x)["params"]
    # Decoder at 32 px: 100 -> 256 (4x4) -> 128 -> 64 -> 3, BN after all but the last.
    decoder = (_conv(100, 256, 4, False) + 512 + _conv(256, 128, 4, False) + 256
               + _conv(128, 64, 4, False) + 128 + _conv(64, 3, 4, False))
    assert _count(g["decoder"]) == decoder
    assert _count(g) == 2 * _dcgan_encoder_count(100, 64) + decoder
    assert _count(d) == _dcgan_encoder_count(1, 64)
    out = jax.eval_shape(Generator().apply, {"params": g, "batch_stats": jax.eval_shape(
        Generator().init, jax.random.key(0), x)["batch_stats"]}, x)
    assert out["fake"].shape == (2, 32, 32, 3) and out["latent_i"].shape == (2, 100)


@pytest.fixture(scope="module")
def ganomaly_method():
    cfg = load_config("ganomaly", "quick")
    cfg.model.update(nz=8, ngf=4, ndf=4)
    cfg.score.image = "latent"  # the paper's score
    return build(cfg)


def test_ganomaly_step_moves_each_net_by_its_own_loss(ganomaly_method):
    method, images = ganomaly_method, _images(4, 16)
    state = method.init(_KEY, {"image": images})
    new, metrics = jax.jit(method.train_step)(state, {"image": images}, jax.random.key(1))
    m = {k: float(v) for k, v in metrics.items()}
    assert m["loss"] == pytest.approx(m["loss_adv"] + 50 * m["loss_con"] + m["loss_enc"],
                                      rel=1e-5)
    for net in ("generator", "discriminator"):
        assert not jax.tree.all(jax.tree.map(jnp.array_equal, new.params[net],
                                             state.params[net]))
    pred = jax.jit(method.predict)(new, images)
    out = jax.jit(lambda s: method.generator.apply(
        {"params": s.params["generator"], "batch_stats": s.batch_stats["generator"]},
        images / 127.5 - 1.0))(new)
    np.testing.assert_allclose(pred.score, np.mean((out["latent_i"] - out["latent_o"]) ** 2, -1),
                               rtol=1e-4, atol=1e-7)
    assert pred.anomaly_map.shape == (4, 16, 16)


def test_ganomaly_needs_a_power_of_two_side():
    from adjax.models.ganomaly import Generator

    with pytest.raises(ValueError, match="power of two"):
        Generator().init(jax.random.key(0), jnp.zeros((1, 48, 48, 3)))


# ----------------------------------------------------------------------------- U-Net


def test_unet_parameter_count_is_the_classic_unets():
    """Widths 64-512 with a 1,024 bottom: the count of the PyTorch U-Net built from the same
    blocks (double 3x3 conv + BatchNorm2d, 1x1 head), 6 input channels."""
    from adjax.models.unet import UNet

    x = jax.ShapeDtypeStruct((1, 64, 64, 6), jnp.float32)
    variables = jax.eval_shape(UNet().init, jax.random.key(0), x)

    def double(cin, cout):
        return _conv(cin, cout, 3) + _conv(cout, cout, 3) + 4 * cout

    widths = (64, 128, 256, 512)
    want = sum(double(a, b) for a, b in zip((6, *widths[:-1]), widths, strict=True))
    want += double(512, 1024)
    want += sum(double(up + skip, skip) for up, skip in
                zip((1024, 512, 256, 128), (512, 256, 128, 64), strict=True))
    want += _conv(64, 1, 1)
    assert _count(variables["params"]) == want
    assert jax.eval_shape(UNet().apply, variables, x).shape == (1, 64, 64, 1)


def test_dihedral_inverse_undoes_every_transform():
    from adjax.methods.supervised_unet import dihedral

    x = jnp.arange(2 * 4 * 4, dtype=jnp.float32).reshape(2, 4, 4)
    seen = set()
    for code in range(8):
        bits = jnp.asarray([(code >> i) & 1 for i in range(3)], bool)
        t = dihedral(x, bits)
        seen.add(tuple(np.asarray(t[0]).ravel()))
        np.testing.assert_array_equal(dihedral(t, bits, inverse=True), x)
    assert len(seen) == 8


def test_segmentation_losses_follow_eqs_4_1_5_9_5_10():
    from adjax.methods.supervised_unet import segmentation_loss

    p = jnp.asarray([[[0.9, 0.2], [0.6, 0.1]]])
    y = jnp.asarray([[[1.0, 0.0], [1.0, 0.0]]])
    bce = -np.mean(np.log([0.9, 0.8, 0.6, 0.9]))
    inter, both = 1.5, 1.8 + 2.0
    dice = 1 - (2 * inter + 1) / (both + 1)
    iou = 1 - (inter + 1) / (both - inter + 1)
    assert float(segmentation_loss(p, y, ("bce",))) == pytest.approx(bce, rel=1e-5)
    assert float(segmentation_loss(p, y, ("bce", "dice", "iou"))) == pytest.approx(
        bce + dice + iou, rel=1e-5)


def _unet_config(**model):
    cfg = load_config("supervised_unet", "quick")
    cfg.data.image_size = 32
    cfg.model.update(widths=(4, 8), **model)
    return cfg


def test_supervised_unet_needs_anomalous_training_images_and_a_vae(tmp_path):
    cfg = _unet_config(inputs="image")
    cfg.data.supervised_fraction = 0.0
    with pytest.raises(ValueError, match="config.data.supervised_fraction is 0 and "
                                         "config.data.labelled_train is false"):
        build(cfg)
    with pytest.raises(ValueError, match="config.model.vae_workdir is empty"):
        build(_unet_config(vae_workdir=""))
    with pytest.raises(ValueError, match="config.model.inputs"):
        build(_unet_config(inputs="depth"))
    with pytest.raises(ValueError, match="config.model.vae_workdir: .* does not exist"):
        build(_unet_config(vae_workdir=str(tmp_path))).pretrained()


def test_supervised_unet_step_with_consistency_and_the_vae_residual(vae_method):
    """Image + residual of a (random) VAE at its own size, augmentation and consistency on."""
    cfg = _unet_config(vae_workdir="unused")
    cfg.loss.update(terms=("bce", "dice"), consistency=1.0)
    method = build(cfg)
    images = _images(2)
    vae_state = vae_method.init(_KEY, {"image": _images(1, 64)})
    # The VAE run a user would point at, without its work directory (64 px, the U-Net 32).
    vae_config = vae_method.config.copy_and_resolve_references()
    vae_config.data.image_size = 64
    method.vae.__dict__["run"] = (vae_method, vae_config)
    vae = {"params": vae_state.params, "batch_stats": vae_state.batch_stats}
    state = method.init(_KEY, {"image": images}, vae)
    masks = jnp.zeros((2, 32, 32), jnp.uint8).at[0, 8:16, 8:16].set(1)

    @jax.jit
    def step_and_input(state):
        x = images / 255.0
        recon = vae_method.reconstruct(vae_state, resize_bilinear(x, 64))
        residual = x - resize_bilinear(recon, 32)  # PyTorch's bilinear, no anti-aliasing
        new, metrics = method.train_step(state, {"image": images, "mask": masks},
                                         jax.random.key(2))
        return method.network_input(state, x), residual, new, metrics, method.predict(new,
                                                                                     images)

    inputs, residual, new, metrics, pred = step_and_input(state)
    assert inputs.shape == (2, 32, 32, 6)
    np.testing.assert_allclose(inputs[..., 3:], residual, atol=1e-5)
    np.testing.assert_allclose(inputs[..., :3], images / 255.0, atol=1e-6)
    assert float(metrics["loss"]) == pytest.approx(
        float(metrics["loss_base"] + metrics["loss_consistency"]), rel=1e-5)
    assert float(metrics["loss_consistency"]) > 0
    assert pred.anomaly_map.shape == (2, 32, 32)
    assert float(pred.anomaly_map.min()) >= 0 and float(pred.anomaly_map.max()) <= 1


# ----------------------------------------------------------------------------- data


def test_supervised_fraction_moves_anomalous_test_images_into_training(synth_root):
    from adjax import config as common
    from adjax.data import datasets
    from adjax.train import OpenRun

    cfg = common.data_config(root=str(synth_root), category="tiles", image_size=32)
    full_test = datasets.test(cfg)
    train0, _ = datasets.train_and_validation(cfg, seed=0)
    cfg.supervised_fraction = 0.5
    train, val = datasets.train_and_validation(cfg, seed=0)
    test = datasets.test(cfg)
    moved = train.take(np.arange(len(train0), len(train)))
    n_anomalous = int(full_test.labels.sum())
    assert len(moved) == n_anomalous // 2 and moved.labels.all() and moved.masks.any()
    assert val.labels.sum() == 0
    assert not set(moved.paths) & set(test.paths)
    assert len(test) + len(moved) == len(full_test)
    assert [m.shape for m in datasets.original_masks(cfg)] == [(128, 128)] * len(test)
    run = OpenRun(None, None, None, None, train, val, len(test), None)
    assert set(run.pools) == {"image", "label", "mask"}
    cfg.supervised_fraction = 1.5
    with pytest.raises(ValueError, match="config.data.supervised_fraction must be in"):
        datasets.test(cfg)


def test_per_image_protocol_averages_each_images_metrics():
    from sklearn.metrics import roc_auc_score

    from adjax.metrics import per_image

    rng = np.random.default_rng(0)
    maps = rng.random((3, 8, 8)).round(1)  # ties
    masks = np.zeros((3, 8, 8), np.uint8)
    masks[0, :2] = 1
    masks[1, 4:, 4:] = 1  # image 2 has no anomalous pixel: left out
    maps[1] = 0.0  # nothing predicted: F1 = IoU = 0
    out = per_image(maps, masks, 0.3)
    assert out["per_image_count"] == 2
    want_auroc = np.mean([roc_auc_score(masks[i].ravel(), maps[i].ravel()) for i in (0, 1)])
    assert out["per_image_pixel_auroc"] == pytest.approx(want_auroc, rel=1e-12)
    pred = maps[0] >= 0.3
    tp = np.sum(pred & (masks[0] == 1))
    f1 = 2 * tp / (pred.sum() + masks[0].sum())
    assert out["per_image_f1"] == pytest.approx(f1 / 2)
    assert out["per_image_accuracy"] == pytest.approx(
        (np.mean(pred == masks[0]) + np.mean(masks[1] == 0)) / 2)
    assert load_config("supervised_unet", "quick").eval.per_image_threshold == 0.3
    from sklearn.metrics import roc_curve

    curve = per_image(maps, masks, 0.3, curve_points=11)["per_image_mean_roc"]
    want = []
    for i in (0, 1):
        fpr, tpr, _ = roc_curve(masks[i].ravel(), maps[i].ravel(), drop_intermediate=False)
        want.append(np.interp(np.linspace(0, 1, 11), fpr, tpr))
    np.testing.assert_allclose(curve["tpr"], np.mean(want, axis=0), atol=1e-12)


# ----------------------------------------------------------------------------- multi-level


def test_multilevel_valid_centres_are_the_thesis_counts():
    from adjax.methods.multilevel import valid_region

    # (I_size - 32)^2 patches per image: 50,176 at 256 and 230,400 at 512 (Sec. 4.1.2).
    assert int(valid_region(256).sum()) == 50_176
    assert int(valid_region(512).sum()) == 230_400


@pytest.fixture(scope="module")
def multilevel_method():
    cfg = load_config("multilevel", "quick")
    cfg.data.image_size = 40
    cfg.model.update(width=4, hidden=8, latent=4, agg=4, mlp=(8, 8, 8, 8))
    cfg.patches.update(per_step=8, border="copy")  # the thesis's valid pixels
    cfg.loss.alpha = 0.001
    return build(cfg)


def test_multilevel_patches_are_balanced_and_centred(multilevel_method):
    method, images = multilevel_method, _images(2, 40)
    masks = jnp.zeros((2, 40, 40), jnp.uint8).at[1, 18:22, 20:23].set(1)
    x = images / 255.0
    patches, labels, weights = jax.jit(method.training_patches)(jax.random.key(0), x, masks)
    assert patches.shape == (8, 33, 33, 3) and labels.tolist() == [1] * 4 + [0] * 4
    assert weights.tolist() == [1.0] * 8
    # Each positive patch's centre is an anomalous pixel of image 1: find it there.
    for p in np.asarray(patches[:4]):
        hits = [(r, c) for r in range(18, 22) for c in range(20, 23)
                if np.allclose(x[1, r - 16:r + 17, c - 16:c + 17], p)]
        assert len(hits) == 1
    _, _, weights = jax.jit(method.training_patches)(jax.random.key(0), x, masks * 0)
    assert weights.tolist() == [0.0] * 4 + [1.0] * 4  # no anomalous pixel: no positives


def _step_and_predict(method, images, masks):
    """(metrics of one supervised step from a new state, the prediction after it)."""
    state = method.init(_KEY, {"image": images})

    @jax.jit
    def step_and_predict(state):
        new, metrics = method.train_step(state, {"image": images, "mask": masks},
                                         jax.random.key(1))
        return metrics, method.predict(new, images)

    return step_and_predict(state)


def test_multilevel_step_is_eq_4_5_and_fills_the_border(multilevel_method):
    method, images = multilevel_method, _images(2, 40)
    masks = jnp.zeros((2, 40, 40), jnp.uint8).at[1, 18:22, 20:23].set(1)
    metrics, pred = _step_and_predict(method, images, masks)
    m = {k: float(v) for k, v in metrics.items()}
    assert m["loss"] == pytest.approx(m["loss_mse"] + m["loss_kl"] + 0.001 * m["loss_bce"],
                                      rel=1e-5)
    amap = np.asarray(pred.anomaly_map)
    assert amap.shape == (2, 40, 40) and ((amap > 0) & (amap < 1)).all()
    # Border pixels copy the nearest valid one.
    np.testing.assert_array_equal(amap[:, :16, 20], np.broadcast_to(amap[:, 16:17, 20], (2, 16)))
    np.testing.assert_array_equal(amap[:, 30, 24:], np.broadcast_to(amap[:, 30, 23:24], (2, 16)))
    assert len(np.unique(amap[0, 16:24, 16:24])) > 1


def test_multilevel_reconstruction_errors_use_each_patchs_centre(multilevel_method):
    """Table 5.3's decoder metrics: the image whose valid pixels are their patches'
    reconstructed centres (borders copied from the input), against the input."""
    method, images = multilevel_method, _images(2, 40)
    state = method.init(_KEY, {"image": images})
    pred = jax.jit(method.predict)(state, images)
    x = np.asarray(images, np.float32) / 255.0
    centres = [(b, r, c) for b in range(2) for r in range(16, 24) for c in range(16, 24)]
    patches = np.stack([x[b, r - 16:r + 17, c - 16:c + 17] for b, r, c in centres])
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    recon = np.asarray(method.net.apply(variables, jnp.asarray(patches))["reconstruction"])
    assembled = x.copy()
    for (b, r, c), patch in zip(centres, recon, strict=True):
        assembled[b, r, c] = patch[16, 16]
    want = np.abs(assembled - x).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(pred.reconstruction["recon_l1"], want, rtol=1e-4)
    assert sorted(pred.reconstruction) == ["recon_l1", "recon_mse", "recon_ssim"]


def test_multilevel_reflect_border_classifies_every_pixel():
    cfg = load_config("multilevel", "quick")
    cfg.data.image_size = 24  # smaller than a patch: only possible with reflect padding
    cfg.model.update(width=4, hidden=8, latent=4, agg=4, mlp=(8, 8, 8, 8))
    cfg.patches.update(per_step=8, border="reflect")
    method, images = build(cfg), _images(2, 24)
    masks = jnp.zeros((2, 24, 24), jnp.uint8).at[0, 0:2, 0:2].set(1)  # in the corner
    metrics, pred = _step_and_predict(method, images, masks)
    assert np.isfinite(float(metrics["loss"]))
    amap = np.asarray(pred.anomaly_map)
    assert amap.shape == (2, 24, 24)
    assert amap[0, 0, 0] != amap[0, 0, 1] and amap[0, 0, 0] != amap[0, 1, 0]  # no copied edge
    with pytest.raises(ValueError, match="config.patches.border"):
        cfg.patches.border = "wrap"
        build(cfg)
