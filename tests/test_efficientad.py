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
