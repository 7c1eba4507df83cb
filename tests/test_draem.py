"""DRAEM: the on-device anomaly synthesis (Perlin masks, the imgaug-style augmenters, the
blend, the three paths), the networks against the reference's layer table and initialisation,
the loss terms against the reference's formulas, the method's step, scores and view masks, and
seed 002's threshold rule. Tiny shapes (32 px, widths 4) so that each function compiles once."""

import functools
import math
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import load_config
from flax.traverse_util import flatten_dict
from PIL import Image, ImageEnhance, ImageOps

from adjax import config as config_lib
from adjax import evaluate
from adjax.data.layouts import DataError
from adjax.methods import build
from adjax.models.draem import Bottleneck, Discriminative, Reconstructive, SelfAttention
from adjax.nn.focal import focal_loss
from adjax.synth import augmenters as aug
from adjax.synth import draem as synth
from adjax.synth.perlin import perlin_mask, perlin_noise
from adjax.synth.textures import load_textures, procedural_textures

SIZE = 32


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# -- Perlin noise ------------------------------------------------------------------------------


def _reference_perlin(angles: np.ndarray, shape, res) -> np.ndarray:
    """The reference's rand_perlin_2d_np, transcribed with the gradient angles given."""
    delta = (res[0] / shape[0], res[1] / shape[1])
    d = (shape[0] // res[0], shape[1] // res[1])
    grid = np.mgrid[0:res[0]:delta[0], 0:res[1]:delta[1]].transpose(1, 2, 0) % 1
    gradients = np.stack((np.cos(angles), np.sin(angles)), axis=-1)

    def tile(s1, s2):
        return np.repeat(np.repeat(gradients[s1[0]:s1[1], s2[0]:s2[1]], d[0], 0), d[1], 1)

    def dot(grad, shift):
        return ((np.stack((grid[..., 0] + shift[0], grid[..., 1] + shift[1]), -1) * grad)
                .sum(-1))

    n00 = dot(tile([0, -1], [0, -1]), [0, 0])
    n10 = dot(tile([1, None], [0, -1]), [-1, 0])
    n01 = dot(tile([0, -1], [1, None]), [0, -1])
    n11 = dot(tile([1, None], [1, None]), [-1, -1])
    t = 6 * grid**5 - 15 * grid**4 + 10 * grid**3

    def lerp(a, b, w):
        return (b - a) * w + a

    return math.sqrt(2) * lerp(lerp(n00, n10, t[..., 0]), lerp(n01, n11, t[..., 0]), t[..., 1])


@pytest.mark.parametrize("res", [(4, 2), (1, 8)])
def test_perlin_noise_is_the_reference_formula(res):
    key = jax.random.key(3)
    ours = np.asarray(perlin_noise(key, (SIZE, SIZE), res, max_res=8))
    table = np.asarray(jax.random.uniform(key, (9, 9), maxval=2 * math.pi))
    expected = _reference_perlin(table[:res[0] + 1, :res[1] + 1], (SIZE, SIZE), res)
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_perlin_mask_is_binary_and_its_threshold_matters():
    key = jax.random.key(0)
    low = np.asarray(perlin_mask(key, (SIZE, SIZE), threshold=(0.0, 0.0)))
    high = np.asarray(perlin_mask(key, (SIZE, SIZE), threshold=(0.5, 0.5)))
    assert set(np.unique(low)) <= {0.0, 1.0} and set(np.unique(high)) <= {0.0, 1.0}
    assert (high <= low).all() and low.sum() > high.sum()


# -- augmenters --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 32 x 32 uint8 image with gradients, edges and noise (every channel different)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    base = np.stack([4 * xx + 20, 3 * yy + 60, (xx * yy) % 97 + 80], -1).astype(np.float32)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def _run(fn, key, image):
    return np.asarray(jax.jit(fn)(key, jnp.asarray(image, jnp.float32)))


def test_equalize_is_pils(photo):
    expected = np.asarray(ImageOps.equalize(Image.fromarray(photo)))
    np.testing.assert_array_equal(_run(aug.equalize, jax.random.key(0), photo), expected)


def test_autocontrast_is_pils_with_the_drawn_cutoff(photo):
    key = jax.random.key(5)
    cutoff = int(jax.random.randint(key, (), 0, 21))
    expected = np.asarray(ImageOps.autocontrast(Image.fromarray(photo), cutoff=cutoff))
    ours = _run(aug.autocontrast, key, photo)
    assert cutoff > 0 and not np.array_equal(ours, photo)
    # PIL's table is float64 and truncates: a value on an integer boundary may land one below.
    assert np.abs(ours - expected).max() <= 1 and (ours == expected).mean() > 0.98


def test_sharpness_is_pils_with_the_drawn_factor(photo):
    key = jax.random.key(1)
    factor = float(jax.random.uniform(key, (), minval=0.0, maxval=2.0))
    expected = np.asarray(ImageEnhance.Sharpness(Image.fromarray(photo)).enhance(factor))
    ours = _run(aug.sharpness, key, photo)
    assert np.abs(ours - expected.astype(np.float32)).max() <= 1.0  # rounding of the blend


def test_hsv_round_trip_and_invert_posterize(photo):
    x = jnp.asarray(photo, jnp.float32) / 255.0
    back = aug._hsv_to_rgb(*aug._rgb_to_hsv(x))
    np.testing.assert_allclose(np.asarray(back), np.asarray(x), atol=1e-5)
    np.testing.assert_array_equal(_run(aug.invert, jax.random.key(0), photo), 255 - photo)
    key = jax.random.key(2)
    step = 2 ** (8 - int(jax.random.randint(key, (), 1, 9)))  # the drawn number of bits
    posterized = _run(aug.posterize, key, photo)
    assert (posterized % step == 0).all() and (photo - posterized >= 0).all()
    assert (photo - posterized < step).all()


def test_augment_draws_distinct_augmenters_and_stays_in_range(photo):
    keys = jax.random.split(jax.random.key(0), 8)
    textures = jnp.broadcast_to(jnp.asarray(photo), (8, *photo.shape))
    out = {loop: np.asarray(jax.jit(functools.partial(synth.augment_batch, count=3, loop=loop))(
        keys, textures)) for loop in synth.LOOPS}
    np.testing.assert_array_equal(out["map"], out["vmap"])  # the same draws either way
    out = out["map"]
    assert out.shape == (8, SIZE, SIZE, 3) and out.min() >= 0 and out.max() <= 255
    assert (out == np.round(out)).all()
    assert len({o.tobytes() for o in out}) == 8  # different draws per key


# -- the synthesis ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(1)
    n = 256
    images = rng.uniform(0.2, 0.8, (n, SIZE, SIZE, 3)).astype(np.float32)
    images[: n // 2, :, : SIZE // 2] = 0.0  # a blank left half for the focused augmentation
    textures = procedural_textures(16, SIZE, seed=0)[rng.integers(0, 16, n)]
    return jnp.asarray(images), jnp.asarray(textures)


@functools.cache
def _synth(spec: synth.Spec):
    return jax.jit(lambda k, x, t: synth.synthesize(k, x, t, spec))


def _check_masks(out):
    """Masks are {0, 1}; the image changed exactly inside them; the label says a mask is set."""
    mask = out["mask"]
    assert set(np.unique(mask)) <= {0.0, 1.0}
    changed = np.any(out["augmented"] != out["image"], axis=-1)
    assert not changed[mask == 0].any()  # nothing outside the mask
    assert changed[mask == 1].mean() > 0.95  # (a texture may equal the image by chance)
    np.testing.assert_array_equal(out["label"], mask.reshape(len(mask), -1).max(1))
    assert not mask[out["path"] == 0].any()


def test_synthesis_shapes_determinism_and_masks(batch):
    images, textures = batch
    spec = synth.Spec(rotate_p=0.0)
    out = jax.tree.map(np.asarray, _synth(spec)(jax.random.key(0), images, textures))
    again = jax.tree.map(np.asarray, _synth(spec)(jax.random.key(0), images, textures))
    other = np.asarray(_synth(spec)(jax.random.key(1), images, textures)["mask"])
    assert out["augmented"].shape == images.shape and out["mask"].shape == images.shape[:3]
    for name in out:
        np.testing.assert_array_equal(out[name], again[name])
    assert not np.array_equal(out["mask"], other)
    np.testing.assert_array_equal(out["image"], np.asarray(images))  # rotate_p = 0
    _check_masks(out)
    # p(no anomaly) = 0.5 (4 sigma at n = 256); no cutout path by default.
    assert abs((out["path"] == 0).mean() - 0.5) < 0.125 and not (out["path"] == 2).any()
    assert out["label"][out["path"] == 1].mean() > 0.8  # few Perlin draws stay empty


def test_cutout_focused_rotated_three_way(batch):
    images, textures = batch
    spec = synth.Spec(p_clean=0.25, p_cutout=0.5, focused=True, rotate_p=1.0)
    out = jax.tree.map(np.asarray, _synth(spec)(jax.random.key(2), images, textures))
    _check_masks(out)
    for path, p in enumerate((0.25, 0.25, 0.5)):
        assert abs((out["path"] == path).mean() - p) < 0.125, path
    blank = np.all(out["image"] == 0.0, axis=-1)  # half the images' left halves, and corners
    assert blank.any() and not out["mask"][blank].any()
    # Rotated by some angle in (-90, 90): no image of the second half (no blank half) is kept.
    assert not np.array_equal(out["image"][-1], np.asarray(images)[-1])
    for m, a, b in zip(out["mask"], out["augmented"], blank, strict=True):
        if m.any() and (a[m == 1] == 1.0).all():  # a white rectangle, cut by blank pixels
            rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
            box = np.zeros_like(m)
            box[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = 1
            np.testing.assert_array_equal(m, box * ~b)
            assert len(rows) <= 0.3 * SIZE + 1 and len(cols) <= 0.3 * SIZE + 1
    assert sum(bool(m.any()) for m in out["mask"][out["path"] == 2]) > 0.8 * (
        out["path"] == 2).sum()


def test_bad_synthesis_values_name_their_key():
    with pytest.raises(ValueError, match="config.synth.blend"):
        synth.Spec(blend="paper")
    with pytest.raises(ValueError, match="p_clean \\+ config.synth.p_cutout"):
        synth.Spec(p_clean=0.8, p_cutout=0.5)


def test_texture_folder_without_images_is_one_sentence(tmp_path):
    (tmp_path / "banded").mkdir()
    (tmp_path / "banded" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=re.escape(f"texture folder {tmp_path} holds no images")):
        load_textures(tmp_path, SIZE)
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(tmp_path / "banded" / "b.jpg")
    assert load_textures(tmp_path, SIZE).shape == (1, SIZE, SIZE, 3)  # found at depth 2


# -- the networks ---------------------------------------------------------------------------------


def _conv(cin: int, cout: int, k: int = 3) -> int:
    return k * k * cin * cout + cout


def _block(cin: int, mid: int, cout: int) -> int:  # [conv-BN-ReLU] x 2
    return _conv(cin, mid) + 2 * mid + _conv(mid, cout) + 2 * cout


def test_parameter_counts_are_the_reference_layer_table():
    """Counted from model_unet.py's layers (conv 9 in out + out, BatchNorm 2 c)."""
    b = 128
    encoder = (_block(3, b, b) + _block(b, 2 * b, 2 * b) + _block(2 * b, 4 * b, 4 * b)
               + _block(4 * b, 8 * b, 8 * b) + _block(8 * b, 8 * b, 8 * b))
    decoder = sum(_conv(c, c) + 2 * c + _block(c, c, o) for c, o in
                  ((8 * b, 4 * b), (4 * b, 2 * b), (2 * b, b), (b, b))) + _conv(b, 3)
    assert encoder + decoder == 69_048_579
    b = 64
    widths = (b, 2 * b, 4 * b, 8 * b, 8 * b, 8 * b)
    encoder = sum(_block(cin, c, c) for cin, c in zip((6,) + widths[:-1], widths, strict=True))
    decoder = sum(_conv(cin, c) + 2 * c + _block(c + skip, c, c) for cin, c, skip in
                  ((8 * b, 8 * b, 8 * b), (8 * b, 4 * b, 8 * b), (4 * b, 2 * b, 4 * b),
                   (2 * b, b, 2 * b), (b, b, b))) + _conv(b, 2)
    assert encoder + decoder == 28_374_146

    def params(net, channels):
        x = jnp.zeros((1, SIZE, SIZE, channels))
        keys = {"params": jax.random.key(0), "noise": jax.random.key(1)}
        return jax.eval_shape(functools.partial(net.init, train=False), keys, x)["params"]

    assert _count(params(Reconstructive(128), 3)) == 69_048_579
    assert _count(params(Discriminative(64), 6)) == 28_374_146
    # SAGAN on the 1024-channel bottleneck: Q, K 1024 -> 128, V 1024 -> 1024, gamma.
    attention = params(Reconstructive(128, ("vae", "attention")), 3)
    assert _count(attention) == 69_048_579 + 2 * _conv(1024, 128, 1) + _conv(1024, 1024, 1) + 1


def test_initialisation_is_the_references_weights_init(trained):
    params = trained[1]["params"]  # the tiny method's state at step 0, base 4
    kernels = np.concatenate([np.asarray(v).ravel() for k, v in flatten_dict(params).items()
                              if k[-1] == "kernel"])
    scale = np.concatenate([np.asarray(v) for k, v in flatten_dict(params).items()
                            if k[-2:] == ("bn", "scale")])
    assert abs(kernels.std() - 0.02) < 0.001 and abs(kernels.mean()) < 0.001
    assert abs(scale.mean() - 1.0) < 0.005 and abs(scale.std() - 0.02) < 0.005
    bias = np.asarray(params["discriminative"]["fin_out"]["conv"]["bias"])
    assert np.abs(bias).max() <= 1 / math.sqrt(9 * 4)  # PyTorch's default bias is kept


def test_attention_starts_as_the_identity_and_vae_noise_flag():
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 16))
    att = SelfAttention()
    variables = att.init(jax.random.key(1), x)
    np.testing.assert_allclose(np.asarray(att.apply(variables, x)), np.asarray(x), atol=1e-6)

    def run(noise_key, train=False, **kw):
        return np.asarray(Bottleneck(("vae",), **kw).apply(
            {}, x, train=train, rngs={"noise": jax.random.key(noise_key)}))

    np.testing.assert_array_equal(run(1, test_noise=False), x)  # no noise at test time
    assert not np.array_equal(run(1, train=True, test_noise=False),
                              run(2, train=True, test_noise=False))
    # z = x + eps exp(0.5 x) with eps ~ N(0, 1), at test time too by default.
    eps = (run(1) - np.asarray(x)) / np.exp(0.5 * np.asarray(x))
    assert abs(eps.mean()) < 0.2 and abs(eps.std() - 1.0) < 0.15


# -- the loss -----------------------------------------------------------------------------------


def test_focal_loss_is_the_reference_formula():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 5, 2)).astype(np.float32)
    target = (rng.uniform(size=(2, 5, 5)) > 0.7).astype(np.float32)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    one_hot = np.clip(np.eye(2)[target.astype(int)], 1e-5, 1 - 1e-5)
    pt = (one_hot * p).sum(-1) + 1e-5
    expected = np.mean(-((1 - pt) ** 2) * np.log(pt))
    ours = float(focal_loss(jnp.asarray(p), jnp.asarray(target)))
    assert ours == pytest.approx(expected, rel=1e-5)


# -- the method ---------------------------------------------------------------------------------


def _tiny_config(**score) -> ml_collections.ConfigDict:
    cfg = load_config("draem", "quick")
    cfg.data.image_size = SIZE
    cfg.model.update(reconstructive_base=4, discriminative_base=4)
    cfg.synth.procedural_count = 4
    cfg.train.update(steps=10, batch_size=4)
    cfg.score.update(filter=3, **score)
    return cfg


@pytest.fixture(scope="module")
def trained():
    """A tiny DRAEM after three steps, its variables at step 0, and test images."""
    method = build(_tiny_config())
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
    state = method.init(jax.random.key(0), {"image": jnp.asarray(images)})
    initial = {"params": state.params, "batch_stats": state.batch_stats}
    textures = method.extra_pools()["texture"]
    step = jax.jit(method.train_step)
    losses = []
    for i in range(3):
        batch = {"image": jnp.asarray(images), "texture": jnp.asarray(textures)}
        state, metrics = step(state, batch, jax.random.key(i))
        losses.append({k: float(v) for k, v in metrics.items()})
    return method, initial, state, images, losses


def test_train_step_runs_and_updates(trained):
    method, _, state, _, losses = trained
    assert int(state.step) == 0  # the trainer advances it
    for m in losses:
        assert all(math.isfinite(v) for v in m.values())
        assert m["loss"] == pytest.approx(m["loss_l2"] + m["loss_ssim"] + m["loss_focal"],
                                          rel=1e-5)
    assert set(method.describe(state)["params"]) == {"reconstructive", "discriminative"}
    assert "procedural" in method.describe(state)["textures"]


def test_prediction_and_pre_equals_post_without_a_mask(trained):
    _, _, state, images, _ = trained
    maps = {}
    for timing in ("pre", "post"):
        method = build(_tiny_config(mask_timing=timing))
        maps[timing] = jax.tree.map(np.asarray, jax.jit(method.predict)(state, images))
    pred = maps["post"]
    assert pred.anomaly_map.shape == (4, SIZE, SIZE) and pred.score.shape == (4,)
    assert (pred.anomaly_map >= 0).all() and (pred.anomaly_map <= 1).all()
    np.testing.assert_array_equal(maps["pre"].anomaly_map, pred.anomaly_map)
    np.testing.assert_array_equal(maps["pre"].score, pred.score)
    # The score is the max of the 3 x 3 mean filter (zeros counted at the border).
    padded = np.pad(pred.anomaly_map, ((0, 0), (1, 1), (1, 1)))
    box = sum(padded[:, i:i + SIZE, j:j + SIZE] for i in range(3) for j in range(3)) / 9
    np.testing.assert_allclose(pred.score, box.max((1, 2)), rtol=1e-5)


def test_view_masks_pre_and_post(trained, tmp_path):
    _, _, state, images, _ = trained
    keep = np.zeros((SIZE, SIZE), np.uint8)
    keep[:, : SIZE // 2] = 255
    Image.fromarray(keep).save(tmp_path / "view.png")
    out = {}
    for timing in ("pre", "post"):
        method = build(_tiny_config(mask=str(tmp_path / "view.png"), mask_timing=timing))
        out[timing] = np.asarray(jax.jit(method.predict)(state, images).anomaly_map)
    assert (out["post"][:, :, SIZE // 2:] == 0).all()
    assert not np.allclose(out["pre"], out["post"])  # masked before the network, not after
    Image.fromarray(keep[:, :20]).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match=re.escape(f"view mask {tmp_path / 'small.png'} is 20x32")):
        build(_tiny_config(mask=str(tmp_path / "small.png"))).view_mask  # noqa: B018


def test_schedule_drops_the_learning_rate_at_the_milestones():
    cfg = _tiny_config()
    cfg.optim.update(lr=0.1, milestones=(0.5, 0.8), gamma=0.1)
    tx = build(cfg).tx
    params = jnp.zeros(())
    opt_state = tx.init(params)
    sizes = []
    for _ in range(10):  # Adam's step on a constant gradient is the learning rate
        updates, opt_state = tx.update(jnp.ones(()), opt_state, params)
        sizes.append(-float(updates))
    np.testing.assert_allclose(sizes, [0.1] * 5 + [0.01] * 3 + [0.001] * 2, rtol=1e-4)


@pytest.mark.parametrize("variant", ["paper", "line512", "quick", "cars-ssim-focused"])
def test_every_variant_builds(variant):
    cfg = load_config("draem", variant)
    config_lib.validate(cfg)
    assert build(cfg).spec.blend in synth.BLENDS
    if variant == "line512":  # checkpoints kept at epochs 2,000 ... 3,000 of 61 images
        t = cfg.train
        kept = [t.steps - i * t.checkpoint_every for i in range(t.keep_checkpoints)]
        assert [s // 61 for s in kept[::-1]] == [2000, 2250, 2500, 2750, 3000]
        assert isinstance(build(cfg).tx, optax.GradientTransformation)


# -- seed 002's "optimal" threshold ------------------------------------------------------------


def test_optimal_threshold_takes_the_most_accurate_rule_with_ties_to_max():
    val = np.array([0.0, 0.1, 0.2, 0.3, 1.0])  # max 1.0; k-sigma ~1.4; quantile(0.5) 0.2
    labels = np.array([0, 0, 1, 1])
    # Anomalies at 0.5: only the quantile separates them.
    out = evaluate.thresholded(np.array([0.1, 0.15, 0.5, 0.5]), labels, val, "optimal", 0.5,
                               1.0, "image")
    assert out["image_threshold_rule"] == "quantile" and out["image_accuracy_val_optimal"] == 1
    # All three rules separate anomalies at 2.0: the tie goes to max.
    out = evaluate.thresholded(np.array([0.1, 0.15, 2.0, 2.0]), labels, val, "optimal", 0.5,
                               1.0, "image")
    assert out["image_threshold_rule"] == "max" and out["image_threshold_val_optimal"] == 1.0


def test_table_4_2_rows_name_their_choices_and_lpips_rows_need_weights():
    cfg = load_config("draem", "cars-invlpips-focused-attention-vae")
    assert cfg.loss.recon == "inv_lpips" and cfg.synth.focused
    assert tuple(cfg.model.bottleneck) == ("vae", "attention")
    with pytest.raises(ValueError, match="config.loss.recon 'inv_lpips' needs LPIPS-AlexNet"):
        build(cfg)
    default = load_config("draem", "cars-default")
    assert default.loss.recon == "ssim" and not default.synth.focused
    assert tuple(default.model.bottleneck) == ()


# -- LPIPS (seed 000's reconstruction losses) ----------------------------------------------------


def _lpips_files(tmp_path, lin_channels=(64, 192, 384, 256, 256)):
    """A torchvision-AlexNet-shaped state dict and lpips-package-shaped linear layers, as .npz."""
    rng = np.random.default_rng(0)
    trunk, cin = {}, 3
    for (c, k, *_), index in zip(((64, 11), (192, 5), (384, 3), (256, 3), (256, 3)),
                                 (0, 3, 6, 8, 10), strict=True):
        trunk[f"features.{index}.weight"] = rng.normal(0, 0.05, (c, cin, k, k)).astype(np.float32)
        trunk[f"features.{index}.bias"] = rng.normal(0, 0.05, (c,)).astype(np.float32)
        cin = c
    trunk["classifier.1.weight"] = np.zeros((4, 9216), np.float32)  # not used
    lin = {f"lin{i}.model.1.weight": rng.uniform(0, 1, (1, c, 1, 1)).astype(np.float32)
           for i, c in enumerate(lin_channels)}
    np.savez(tmp_path / "alexnet.npz", **trunk)
    np.savez(tmp_path / "lin.npz", **lin)
    return trunk, lin


def test_lpips_import_and_distance(tmp_path):
    from adjax.nn.lpips import LPIPS
    from adjax.weights import WeightsError, load_lpips

    trunk, lin = _lpips_files(tmp_path)
    x = jax.random.uniform(jax.random.key(0), (2, SIZE, SIZE, 3), minval=-1.0, maxval=1.0)
    like = jax.eval_shape(LPIPS().init, jax.random.key(0), x, x)
    variables = load_lpips(tmp_path / "alexnet.npz", tmp_path / "lin.npz", like)
    params = variables["params"]
    np.testing.assert_array_equal(params["trunk"]["Conv2d_1"]["conv"]["kernel"],
                                  trunk["features.3.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["lin4"], lin["lin4.model.1.weight"].ravel())
    apply = jax.jit(LPIPS().apply)
    distance = np.asarray(apply(variables, x, x[::-1]))
    assert distance.shape == (2,) and (distance > 0).all()
    np.testing.assert_allclose(np.asarray(apply(variables, x, x)), 0.0, atol=1e-6)
    # The SqueezeNet variant's linear layers (7 taps) do not fit: one sentence naming the file.
    _lpips_files(tmp_path, lin_channels=(64, 128, 256, 384, 384, 512, 512))
    with pytest.raises(WeightsError, match=re.escape(f"weights file {tmp_path / 'lin.npz'} "
                                                     f"does not fit LPIPS-AlexNet")):
        load_lpips(tmp_path / "alexnet.npz", tmp_path / "lin.npz", like)


def test_lpips_reconstruction_terms(tmp_path, trained):
    _, _, state, _, _ = trained
    _lpips_files(tmp_path)
    terms = {}
    for recon in ("lpips", "inv_lpips"):
        cfg = _tiny_config()
        cfg.loss.update(recon=recon, lpips_trunk=str(tmp_path / "alexnet.npz"),
                        lpips_lin=str(tmp_path / "lin.npz"))
        method = build(cfg)
        weighted = state.replace(lpips=method.pretrained()["lpips"])
        x = jax.random.uniform(jax.random.key(0), (2, SIZE, SIZE, 3))
        logits = jnp.zeros((2, SIZE, SIZE, 2))
        out = method.losses(weighted, x[::-1], x, logits, jnp.zeros((2, SIZE, SIZE)))
        assert set(out) == {"l2", recon, "focal"}
        terms[recon] = float(out[recon])
    assert terms["lpips"] > 0 and terms["inv_lpips"] == pytest.approx(1 - terms["lpips"])
