"""VT-ADL: the thesis's parameter count, shapes, the two NLLs against numpy/scipy, the
aligned-corners resize, training (noise, BatchNorm statistics), prediction and the trainer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_record_holds_the_runs_metrics, load_config
from scipy import ndimage, special

from adjax import evaluate
from adjax.methods import build
from adjax.methods.vtadl import code_nll, mixture_nll
from adjax.models.vtadl import DECODER_512, VTADL, patchify
from adjax.nn.capsules import RoutingCapsules, squash
from adjax.nn.decoders import transposed_conv_output_size
from adjax.nn.layers import resize_bilinear_align_corners
from adjax.nn.ssim import gaussian_filter, ssim
from adjax.train import train


def _count(tree) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


def _tiny(**model):
    """32 px, 8 px patches (16 tokens), width 16, one block; 64-D capsule -> 4x4x4 -> 32 px."""
    cfg = load_config("vtadl", "quick")
    cfg.data.image_size = 32
    cfg.model.update(patch=8, dim=16, depth=1, heads=2, mlp_dim=32, capsule_dim=64,
                     decoder_grid=4, decoder=((8, 4, 2, 1), (3, 4, 4, 0)), components=3,
                     **model)
    cfg.loss.nll = "mixture"  # the thesis's loss (quick trains with the code's)
    cfg.optim.lr = 1e-3
    return cfg


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny(images):
    method = build(_tiny())
    state = method.init(jax.random.key(0), {"image": jnp.asarray(images)})
    return method, state


# -- the full-size model (shapes only: jax.eval_shape compiles nothing) ----------------------


def test_parameter_count_is_the_thesis_table_7_1():
    cfg = load_config("vtadl", "paper")
    method = build(cfg)
    x = jax.ShapeDtypeStruct((1, 512, 512, 3), jnp.uint8)
    state = jax.eval_shape(method.init, jax.random.key(0), {"image": x})
    counts = {name: _count(tree) for name, tree in state.params.items()}
    enc = state.params["encoder"]
    # 6,291,968 patch embedding + 6 x 2,101,248 blocks + 33,792 position embedding and class
    # token; the capsule transforms 4096 x 512 x 8; pi, mu, sigma heads 512 x (K + 2 x 512 K).
    assert counts == {"encoder": 18_933_248, "capsules": 16_777_216, "decoder": 142_099,
                      "mdn": 78_720_000}
    assert _count(enc["patch_embedding"]) == 6_291_968
    assert _count(enc["block_0"]) == 2_101_248
    assert _count(enc["pos_embedding"]) + _count(enc["cls_token"]) == 33_792
    # Table 7.1 counts torchsummary-style: no directly registered parameters (position
    # embedding, class token, capsule W) and not the separately declared density head.
    thesis = counts["encoder"] - 33_792 + counts["decoder"]
    assert thesis == 19_041_555
    assert method.describe(state)["params_thesis_convention"] == 19_041_555
    code = jax.eval_shape(build(load_config("vtadl", "code")).init, jax.random.key(0),
                          {"image": x})
    assert _count(code.params["mdn"]) == 5_248_000  # K = 10


def test_full_size_shapes_and_decoder_sizes():
    sizes = [transposed_conv_output_size(8, DECODER_512[:i + 1]) for i in range(len(DECODER_512))]
    assert sizes == [15, 49, 245, 497, 502, 512]
    net = VTADL()
    x = jax.ShapeDtypeStruct((2, 512, 512, 3), jnp.float32)
    variables = jax.eval_shape(lambda k, x: net.init({"params": k}, x), jax.random.key(0), x)
    out = jax.eval_shape(lambda v, x: net.apply(v, x), variables, x)
    shapes = {k: v.shape for k, v in out.items()}
    assert shapes == {"tokens": (2, 64, 512), "reconstruction": (2, 512, 512, 3),
                      "logits": (2, 64, 150), "mean": (2, 64, 150, 512),
                      "scale": (2, 64, 150, 512)}


@pytest.mark.parametrize("variant", ["paper", "code", "quick"])
def test_every_variant_builds(variant):
    cfg = load_config("vtadl", variant)
    size = cfg.data.image_size
    state = jax.eval_shape(build(cfg).init, jax.random.key(0),
                           {"image": jax.ShapeDtypeStruct((1, size, size, 3), jnp.uint8)})
    assert int(state.step.size) == 1


def test_patchify_is_the_einops_rearrangement():
    x = np.arange(2 * 4 * 6 * 3).reshape(2, 4, 6, 3)
    p = np.asarray(patchify(jnp.asarray(x), 2))
    assert p.shape == (2, 6, 12)
    # patch (row 1, column 2) of image 1, flattened (p1, p2, c)
    np.testing.assert_array_equal(p[1, 1 * 3 + 2], x[1, 2:4, 4:6].reshape(-1))


def test_bad_geometry_is_one_clear_error():
    cfg = _tiny()
    cfg.data.image_size = 48
    with pytest.raises(ValueError, match="decoder"):
        build(cfg).init(jax.random.key(0), {"image": jnp.zeros((1, 48, 48, 3), jnp.uint8)})


# -- losses ----------------------------------------------------------------------------------


def _mdn_inputs(seed=0, shape=(3, 5), k=4, d=6):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((*shape, d))
    logits = rng.standard_normal((*shape, k))
    mean = rng.standard_normal((*shape, k, d))
    scale = rng.standard_normal((*shape, k, d)) * 2
    scale[0, 0, 0, 0] = -40.0  # a tiny sigma: softplus underflows in float32
    return x, logits, mean, scale


def test_mixture_nll_is_the_log_sum_exp_of_the_gaussians():
    x, logits, mean, scale = _mdn_inputs()
    sigma = np.logaddexp(0.0, scale)  # softplus in float64
    log_pi = logits - special.logsumexp(logits, axis=-1, keepdims=True)
    log_n = np.sum(-0.5 * ((x[..., None, :] - mean) / sigma) ** 2 - np.log(sigma)
                   - 0.5 * np.log(2 * np.pi), axis=-1)
    ref = -special.logsumexp(log_pi + log_n, axis=-1)
    ours = mixture_nll(*(jnp.asarray(a, jnp.float32) for a in (x, logits, mean, scale)))
    np.testing.assert_allclose(ours, ref, rtol=2e-5)


def test_code_nll_is_the_authors_pi_weighted_sum():
    x, logits, mean, scale = _mdn_inputs(seed=1)
    scale[0, 0, 0, 0] = 0.3
    pi = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    logvar = np.log1p(np.exp(scale))
    ref = np.zeros(x.shape[:-1])
    for k in range(logits.shape[-1]):  # mdn1.log_gaussian, then the pi-weighted sum
        a = (x - mean[..., k, :]) ** 2
        log_p = -0.5 * (np.log(2 * np.pi) + (logvar[..., k, :] + a / np.exp(logvar[..., k, :]))
                        .sum(-1))
        ref += pi[..., k] * -log_p
    ours = code_nll(*(jnp.asarray(a, jnp.float32) for a in (x, logits, mean, scale)))
    np.testing.assert_allclose(ours, ref, rtol=1e-5)


@pytest.mark.parametrize("iterations", [1, 3])
def test_one_output_capsule_routing_is_the_squashed_sum(iterations):
    # The reconstruction vector: with one output capsule every coupling is 1, so routing (kept
    # to compare with the authors' 3 iterations) is squash(sum_i W_i u_i).
    u = jax.random.normal(jax.random.key(0), (2, 32, 8))
    layer = RoutingCapsules(1, 64, iterations, stop_inner_gradient=True)
    variables = layer.init(jax.random.key(1), u)
    w = variables["params"]["weights"]  # [I, 1, 64, 8]
    np.testing.assert_allclose(layer.apply(variables, u)[:, 0],
                               squash(jnp.einsum("ijdk,bik->bd", w, u)), rtol=1e-5, atol=1e-7)


# -- map pieces ------------------------------------------------------------------------------


def test_align_corners_resize_matches_scipy_zoom():
    x = np.random.default_rng(5).random((2, 8, 5, 3)).astype(np.float32)
    ours = np.asarray(resize_bilinear_align_corners(jnp.asarray(x), (29, 17)))
    # zoom with grid_mode=False maps corner pixel centres onto each other: align_corners=True.
    ref = ndimage.zoom(x.astype(np.float64), (1, 29 / 8, 17 / 5, 1), order=1, grid_mode=False)
    assert ref.shape == ours.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    small = np.asarray(resize_bilinear_align_corners(jnp.asarray([[[[0.0], [4.0]]]]), (1, 5)))
    np.testing.assert_allclose(small[0, 0, :, 0], [0, 1, 2, 3, 4])  # PyTorch's 2 -> 5


# -- training and prediction -----------------------------------------------------------------


def test_train_step_lowers_the_loss_and_updates_batch_stats(tiny, images):
    method, state = tiny
    step = jax.jit(method.train_step)
    batch = {"image": jnp.asarray(images)}
    first, metrics0 = step(state, batch, jax.random.key(1))
    keys = {"loss", "nll", "mse", "ssim"}
    assert keys <= set(metrics0) and all(metrics0[k].shape == () for k in keys)
    assert float(metrics0["loss"]) == pytest.approx(
        float(metrics0["nll"] + 5 * metrics0["mse"] - 0.5 * metrics0["ssim"]), rel=1e-5)
    assert all(not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(first.params), jax.tree.leaves(state.params), strict=True))
    assert all(not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(first.batch_stats), jax.tree.leaves(state.batch_stats),
                   strict=True))
    # The training noise comes from the step's rng.
    _, other = step(state, batch, jax.random.key(2))
    assert float(other["nll"]) != float(metrics0["nll"])
    s = first
    for _ in range(6):
        s, metrics = step(s, batch, jax.random.key(1))
    assert float(metrics["loss"]) < float(metrics0["loss"])


def test_prediction_map_and_scores(tiny, images):
    method, state = tiny
    x = jnp.asarray(images)
    predict = jax.jit(method.predict)
    out = predict(state, x)
    assert out.anomaly_map.shape == (4, 32, 32) and out.anomaly_map.dtype == jnp.float32
    assert out.score.shape == (4,)
    # Deterministic in inference: no noise, BatchNorm running averages.
    np.testing.assert_array_equal(predict(state, x).score, out.score)

    def reference(state, x):  # the map and the thesis's score, spelled out
        xf = x / 255.0
        net_out = method.net.apply({"params": state.params, "batch_stats": state.batch_stats},
                                   xf)
        nll = method.patch_nll(net_out)  # [4, 16]
        grid = resize_bilinear_align_corners(nll.reshape(4, 4, 4, 1), (32, 32))
        rec = net_out["reconstruction"]
        mse = jnp.mean((rec - xf) ** 2, axis=(1, 2, 3))
        combined = mse - ssim(xf, rec, padding="zeros") + nll.max(-1)  # thesis: -SSIM
        return nll, gaussian_filter(grid, 1.0, mode="symmetric")[..., 0], combined

    nll, expected_map, expected_score = jax.jit(reference)(state, x)
    np.testing.assert_allclose(out.anomaly_map, expected_map, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out.score, expected_score, rtol=1e-5)
    kinds = ("nll_max", "nll_sum", "map_max")

    def scores(state, x):  # one compile for all three (the network is shared by CSE)
        return [build(_tiny_score(kind)).predict(state, x).score for kind in kinds]

    for value, score in zip((nll.max(-1), nll.sum(-1), out.anomaly_map.max((1, 2))),
                            jax.jit(scores)(state, x), strict=True):
        np.testing.assert_allclose(score, value, rtol=1e-5)


def _tiny_score(kind):
    cfg = _tiny()
    cfg.score.kind = kind
    return cfg


def test_trainer_and_evaluation_run_end_to_end(synth_root, tmp_path):
    cfg = _tiny()
    cfg.data.root = str(synth_root)
    cfg.data.cache_dir = str(tmp_path / "cache")
    cfg.train.update(steps=4, batch_size=4, steps_per_call=2, checkpoint_every=2, log_every=2)
    cfg.eval.batch_size = 4
    state = train(cfg, tmp_path / "work")  # the batch of 4 sharded over 4 CPU devices
    assert int(state.step) == 4
    record, path = evaluate.evaluate(tmp_path / "work", tmp_path / "results")
    assert path.is_file() and record["method"] == "vtadl" and record["variant"] == "quick"
    assert_record_holds_the_runs_metrics(record, tmp_path / "work",
                                         ("image_auroc", "pixel_auroc", "aupro_0.3"))
    assert record["run"]["params"]["capsules"] == 16 * 16 // 8 * 64 * 8
    assert record["notes"]["nll"] == "mixture"
