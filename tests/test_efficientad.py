"""EfficientAD's method pieces: teacher statistics, losses, penalty images, teacher files,
map normalisation and scoring."""

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config
from PIL import Image

from adjax.methods import build
from adjax.weights import WeightsError


def _config(**model):
    cfg = load_config("efficientad", "quick")
    cfg.model.update({"width": 0.0625, "out_channels": 8, **model})
    return cfg


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (6, 128, 128, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def method_and_state(images):
    method = build(_config())
    state = method.init(jax.random.key(0), {"image": jnp.asarray(images)})
    return method, state


def test_teacher_statistics_follow_the_reference(method_and_state, images):
    method, state = method_and_state
    x = method.prepare(jnp.asarray(images))
    assert x.shape == (6, 160, 160, 3)  # the quick config reflect-pads 128 px by 16
    feats = np.asarray(method.teacher_net.apply(state.teacher, x))  # [N, h, w, C]
    assert feats.shape[1:3] == (32, 32)  # the map covers the 128 px image at stride 4
    mean = feats.mean(axis=(1, 2)).mean(axis=0)
    std = np.sqrt(((feats - mean) ** 2).mean(axis=(1, 2)).mean(axis=0))
    np.testing.assert_allclose(state.teacher_mean, mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(state.teacher_std, std, rtol=1e-4, atol=1e-6)


def test_train_step_updates_only_student_and_autoencoder(method_and_state, images):
    _, state = method_and_state
    cfg = _config()
    cfg.loss.augment_factor = 0.0  # no colour jitter: the AE branch sees the image itself
    method = build(cfg)
    new, metrics = jax.jit(method.train_step)(state, {"image": jnp.asarray(images[:2])},
                                              jax.random.key(1))
    x = method.prepare(jnp.asarray(images[:2]))
    target = (method.teacher_net.apply(state.teacher, x) - state.teacher_mean) / \
        state.teacher_std
    ae = method.autoencoder_net.apply(state.params["autoencoder"], x)
    student = method.student_net.apply(state.params["student"], x)[..., 8:]
    assert float(metrics["loss_ae"]) == pytest.approx(float(jnp.mean((target - ae) ** 2)),
                                                      rel=1e-4)
    assert float(metrics["loss_stae"]) == pytest.approx(float(jnp.mean((ae - student) ** 2)),
                                                        rel=1e-4)
    assert float(metrics["loss_penalty"]) == 0.0  # no penalty folder configured
    for a, b in zip(jax.tree.leaves(new.teacher), jax.tree.leaves(state.teacher), strict=True):
        np.testing.assert_array_equal(a, b)
    changed = [not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params), strict=True)]
    assert all(changed)


def test_hard_loss_averages_the_top_quantile(method_and_state, images):
    method, state = method_and_state
    cfg = _config()
    cfg.loss.hard_quantile = 0.0  # every element is "hard": the loss becomes the plain MSE
    plain = build(cfg)
    x = method.prepare(jnp.asarray(images[:2]))
    target = (method.teacher_net.apply(state.teacher, x) - state.teacher_mean) / state.teacher_std
    student = plain.student_net.apply(state.params["student"], x)[..., :8]
    mse = float(jnp.mean((target - student) ** 2))
    _, metrics = jax.jit(plain.train_step)(state, {"image": jnp.asarray(images[:2])},
                                           jax.random.key(1))
    assert float(metrics["loss_hard"]) == pytest.approx(mse, rel=1e-4)
    _, metrics = jax.jit(method.train_step)(state, {"image": jnp.asarray(images[:2])},
                                            jax.random.key(1))
    assert float(metrics["loss_hard"]) > mse  # the 0.999 quantile keeps only the largest errors


def test_penalty_images_from_a_folder(tmp_path, method_and_state, images):
    _, state = method_and_state
    folder = tmp_path / "penalty"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(images[i]).save(folder / f"{i}.png")
    cfg = _config()
    cfg.loss.penalty_dir = str(folder)
    cfg.data.cache_dir = str(tmp_path / "cache")
    method = build(cfg)
    pools = method.extra_pools()
    assert pools["penalty"].shape == (3, 128, 128, 3) and pools["penalty"].dtype == np.uint8
    batch = {"image": jnp.asarray(images[:2]), "penalty": jnp.asarray(pools["penalty"][:2])}
    _, metrics = jax.jit(method.train_step)(state, batch, jax.random.key(1))
    assert float(metrics["loss_penalty"]) > 0.0


def test_teacher_loaded_from_a_file(tmp_path, method_and_state, images):
    _, state = method_and_state
    path = tmp_path / "teacher.msgpack"
    shifted = jax.tree.map(lambda a: a + 0.5, state.teacher)
    path.write_bytes(flax.serialization.to_bytes(shifted))
    method = build(_config(teacher_path=str(path)))
    loaded = method.init(jax.random.key(0), {"image": jnp.asarray(images[:2])},
                         method.pretrained())
    for a, b in zip(jax.tree.leaves(loaded.teacher), jax.tree.leaves(shifted), strict=True):
        np.testing.assert_array_equal(a, b)
    assert method.describe(loaded)["teacher"] == str(path)
    with pytest.raises(FileNotFoundError, match="teacher_path"):
        build(_config(teacher_path=str(tmp_path / "missing"))).pretrained()
    # A teacher of another width stops with the leaf at fault, before any training.
    wide = build(_config(out_channels=16)).init(jax.random.key(0),
                                                {"image": jnp.asarray(images[:2])})
    path.write_bytes(flax.serialization.to_bytes(wide.teacher))
    with pytest.raises(WeightsError, match=r"teacher.msgpack has .* of shape .*16"):
        method.pretrained()


def test_calibration_and_prediction(method_and_state, images):
    method, state = method_and_state
    val = {"image": jnp.asarray(images[:4])}
    state = method.calibrate(state, val)
    maps_st, maps_ae = method.feature_maps(state, jnp.asarray(images[:4]))
    q = np.quantile(np.asarray(maps_st), [0.9, 0.995])
    np.testing.assert_allclose(state.quantiles[0], q, rtol=1e-5)
    out = jax.jit(method.predict)(state, jnp.asarray(images))
    assert out.anomaly_map.shape == (6, 128, 128) and out.score.shape == (6,)
    np.testing.assert_allclose(out.score, out.anomaly_map.max(axis=(1, 2)))
    # The quick map covers the whole image: no border cell is the padding's exact 0.
    assert not np.any(np.asarray(out.anomaly_map)[:, 0, :] == 0.0)


def test_reference_border_is_the_map_padding(images):
    # s and m: unpadded input, the 24 x 24 feature map (at 128 px) padded by 4 cells of 0.
    cfg = _config(input_pad=0)
    cfg.map.pad = 4
    method = build(cfg)
    state = method.init(jax.random.key(0), {"image": jnp.asarray(images[:2])})
    state = method.calibrate(state, {"image": jnp.asarray(images[:2])})
    maps_st, _ = method.feature_maps(state, jnp.asarray(images[:1]))
    assert maps_st.shape == (1, 24, 24)
    out = jax.jit(method.predict)(state, jnp.asarray(images[:1]))
    np.testing.assert_array_equal(np.asarray(out.anomaly_map)[0, :6, :6], 0.0)


def test_bfloat16_computation_keeps_float32_params(method_and_state, images):
    _, state = method_and_state
    method = build(_config(dtype="bfloat16"))
    new, metrics = jax.jit(method.train_step)(state, {"image": jnp.asarray(images[:2])},
                                              jax.random.key(1))
    assert np.isfinite(float(metrics["loss"]))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(new.params))


# ----------------------------------------------------------------------------- CDO (seed 004)


def test_noise_patches_follow_the_settings():
    from adjax.synth.patches import noise_patches

    images = jnp.full((24, 128, 128, 3), 0.5)
    key = jax.random.key(3)
    out, mask = jax.jit(lambda k, x: noise_patches(k, x, p=1.0, min_patches=1, max_patches=1))(
        key, images)
    out, mask = np.asarray(out), np.asarray(mask)
    for i in range(len(images)):
        rows, cols = np.nonzero(mask[i])
        height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
        # One square of side 2 * half, half in [128 // 40, 128 // 10) = [3, 12), all inside.
        assert height == width and height % 2 == 0 and 6 <= height <= 22
        assert mask[i].sum() == height * width
    values = out[mask] * 255.0
    np.testing.assert_allclose(values, np.round(values), atol=1e-3)  # k / 255, k in 0..254
    assert values.max() <= 254.001 and len(np.unique(np.round(values))) > 200
    np.testing.assert_array_equal(out[~mask], 0.5)
    _, none = noise_patches(key, images, p=0.0)
    assert not np.asarray(none).any()
    _, rect = noise_patches(key, images, p=1.0, min_patches=1, max_patches=1, square=False)
    shapes = {(np.ptp(np.nonzero(m)[0]), np.ptp(np.nonzero(m)[1])) for m in np.asarray(rect)}
    assert any(h != w for h, w in shapes)  # the CDO code's independent half-sides
    gauss, gmask = noise_patches(key, images, p=1.0, noise="gaussian")
    g = np.asarray(gauss)[np.asarray(gmask)]
    assert g.min() >= 0.0 and g.max() <= 1.0
    assert not np.allclose(g * 255.0, np.round(g * 255.0), atol=1e-3)


def test_noise_patches_skip_the_background():
    from adjax.synth.patches import background, noise_patches

    images = np.full((16, 128, 128, 3), 0.5, np.float32)
    images[:, :, :64] = 0.0  # a black left half: background (mean of RGB below 30 / 255)
    bg = np.asarray(background(jnp.asarray(images[0])))
    assert bg[:, :64 + 9].all() and not bg[:, 64 + 9:].any()  # dilated by 9 (19 x 19)
    _, mask = noise_patches(jax.random.key(0), jnp.asarray(images), p=1.0, min_patches=4,
                            skip_background=True)
    # Centres lie at column >= 73, so a patch (half-side < 12) starts at column >= 62.
    assert not np.asarray(mask)[:, :, :62].any()
    _, anywhere = noise_patches(jax.random.key(0), jnp.asarray(images), p=1.0, min_patches=4)
    assert np.asarray(anywhere)[:, :, :62].any()


def test_mask_reaches_the_feature_grid_as_the_map_leaves_it():
    from adjax.methods.efficientad import mask_at_features

    mask = np.zeros((1, 256, 256), bool)
    mask[0, 16:20, 40:44] = True  # image pixels of feature cell (0, 6): 4 * (j + 4) = 40
    cells = np.asarray(mask_at_features(jnp.asarray(mask), 56, 4))
    assert cells.shape == (1, 56, 56) and np.argwhere(cells[0]).tolist() == [[0, 6]]


def _cdo_reference(t, s, mask, gamma):
    """Eq. 4.9 in numpy: L2-normalised features, weights from the batch means."""
    t = t / np.linalg.norm(t, axis=-1, keepdims=True)
    s = s / np.linalg.norm(s, axis=-1, keepdims=True)
    d = ((t - s) ** 2).sum(-1)
    dn, da = d[~mask], d[mask]
    wn = (dn / dn.mean()) ** gamma
    wa = (da.mean() / da) ** gamma if da.size else np.zeros(0)
    return (np.sum(wn * dn) - np.sum(wa * da)) / (wn.sum() + wa.sum()), wn, wa


@pytest.mark.parametrize("with_anomaly", [True, False])
def test_cdo_loss_is_eq_4_9_with_stop_gradient_weights(with_anomaly):
    from adjax.nn.cdo import cdo_loss

    rng = np.random.default_rng(0)
    t = rng.normal(size=(2, 6, 6, 8))
    s = rng.normal(size=(2, 6, 6, 8))
    mask = np.zeros((2, 6, 6), bool)
    if with_anomaly:
        mask[0, 1:3, 2:5] = True
    expected, wn, wa = _cdo_reference(t, s, mask, 2.0)
    assert float(cdo_loss(jnp.asarray(t), jnp.asarray(s), jnp.asarray(mask))) == \
        pytest.approx(expected, rel=1e-5)
    assert float(cdo_loss(jnp.asarray(t), jnp.asarray(s), jnp.asarray(mask),
                          batch_scale=True)) == pytest.approx(2 * expected, rel=1e-5)
    # The gradient treats the weights as constants: that of sum(w d) / sum(w) with w fixed.
    w = np.zeros(mask.shape)
    w[~mask], w[mask] = wn, -wa
    total = wn.sum() + wa.sum()

    def fixed(s):
        tn = t / np.linalg.norm(t, axis=-1, keepdims=True)
        sn = s / jnp.linalg.norm(s, axis=-1, keepdims=True)
        return jnp.sum(jnp.asarray(w) * jnp.sum((tn - sn) ** 2, -1)) / total

    np.testing.assert_allclose(
        jax.grad(lambda s: cdo_loss(jnp.asarray(t), s, jnp.asarray(mask)))(jnp.asarray(s)),
        jax.grad(fixed)(jnp.asarray(s)), rtol=1e-4, atol=1e-7)


def test_cdo_step_adds_the_cdo_loss_on_the_patched_copy(method_and_state, images):
    from adjax.methods.efficientad import mask_at_features
    from adjax.nn.cdo import cdo_loss
    from adjax.synth.patches import noise_patches

    _, state = method_and_state
    cfg = _config()
    cfg.loss.coeff_cdo = 0.5
    cfg.synth.p = 1.0
    method = build(cfg)
    rng = jax.random.key(5)
    _, metrics = jax.jit(method.train_step)(state, {"image": jnp.asarray(images[:1])}, rng)
    synth, mask = noise_patches(jax.random.split(rng, 4)[3], jnp.asarray(images[:1]) / 255.0,
                                **cfg.synth.to_dict())
    x = method._net_input(synth)
    target = (method.teacher_net.apply(state.teacher, x) - state.teacher_mean) / \
        state.teacher_std
    student = method.student_net.apply(state.params["student"], x)[..., :8]
    expected = cdo_loss(target, student, mask_at_features(mask, target.shape[1], 0))
    assert float(metrics["loss_cdo"]) == pytest.approx(float(expected), rel=1e-3)
    assert float(metrics["loss"]) == pytest.approx(
        sum(float(metrics[k]) for k in ("loss_hard", "loss_ae", "loss_stae"))
        + 0.5 * float(metrics["loss_cdo"]), rel=1e-5)


@pytest.mark.parametrize("variant, terms, alpha", [
    ("st-only", ("loss_hard",), 1.0), ("ae-only", ("loss_ae", "loss_stae"), 0.0)])
def test_ablation_variants_train_and_score_their_branch_only(method_and_state, images, variant,
                                                             terms, alpha):
    _, state = method_and_state
    cfg = load_config("efficientad", variant)
    assert cfg.model.size == "m" and cfg.map.alpha == alpha
    quick = _config()
    quick.loss.update({k: cfg.loss[k] for k in ("coeff_hard", "coeff_ae", "coeff_stae")})
    quick.map.alpha = alpha
    method = build(quick)
    _, metrics = jax.jit(method.train_step)(state, {"image": jnp.asarray(images[:1])},
                                            jax.random.key(1))
    assert float(metrics["loss"]) == pytest.approx(sum(float(metrics[k]) for k in terms),
                                                   rel=1e-6)
    # A constant map of weight 0 (zero quantile spread) would make the fusion NaN.
    calibrated = state.replace(quantiles=jnp.array([[1.0, 2.0], [1.0, 2.0]]).at[
        0 if alpha == 0 else 1].set(0.0))
    out = jax.jit(method.predict)(calibrated, jnp.asarray(images[:2]))
    assert np.isfinite(np.asarray(out.anomaly_map)).all()


def test_records_name_the_teacher_and_its_sha256(tmp_path, method_and_state, images):
    from adjax import weights

    _, state = method_and_state
    path = tmp_path / "teacher.msgpack"
    path.write_bytes(flax.serialization.to_bytes(state.teacher))
    method = build(_config(teacher_path=str(path)))
    loaded = method.init(jax.random.key(0), {"image": jnp.asarray(images[:2])},
                         method.pretrained())
    info = method.describe(loaded)
    assert info["teacher"] == str(path) and info["teacher_sha256"] == weights.sha256(path)
    assert build(_config()).describe(state)["teacher"].startswith("random initialisation")
