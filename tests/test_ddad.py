"""DDAD: the ε-UNet against the reference's layer definitions, the noise schedule and the
conditioned DDIM step against NumPy, the anomaly map's pieces, and a run that trains the UNet,
adds domain adaptation on resume, and evaluates."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from conftest import assert_record_holds_the_runs_metrics, load_config

from adjax import diffusion, evaluate, train
from adjax.config import ConfigError
from adjax.methods import build
from adjax.methods.base import count_params
from adjax.methods.ddad import combine, feature_distance, image_keys
from adjax.models.ddad_unet import CHANNEL_MULTS, Attention, UNet, timestep_embedding
from adjax.nn.ssim import gaussian_filter


def reference_unet_params(size: int, base: int, in_channels: int = 3) -> int:
    """The parameter count of the reference's `UNetModel(size, base)`, walked from its
    constructor's layer definitions (GroupNorm 2C, Conv k*k*I*O + O, Linear I*O + O)."""
    mults, res_blocks = CHANNEL_MULTS[size], 2
    attention_ds = [size // r for r in (32, 16, 8)]
    temb = 4 * base

    def conv(i, o, k):
        return i * o * k * k + o

    def linear(i, o):
        return i * o + o

    def res(i, o):
        return 2 * i + conv(i, o, 3) + linear(temb, o) + 2 * o + conv(o, o, 3) + \
            (0 if i == o else conv(i, o, 1))

    def attn(c):
        return 2 * c + linear(c, 3 * c) + linear(c, c)

    n = linear(base, temb) + linear(temb, temb) + conv(in_channels, base, 3)
    ch, ds = mults[0] * base, 1
    channels = [ch]
    for i, mult in enumerate(mults):
        for _ in range(res_blocks):
            n += res(ch, base * mult)
            ch = base * mult
            n += attn(ch) if ds in attention_ds else 0
            channels.append(ch)
        if i != len(mults) - 1:
            n += res(ch, ch)
            ds *= 2
            channels.append(ch)
    n += res(ch, ch) + attn(ch) + res(ch, ch)
    for i, mult in reversed(list(enumerate(mults))):
        for j in range(res_blocks + 1):
            n += res(ch + channels.pop(), base * mult)
            ch = base * mult
            n += attn(ch) if ds in attention_ds else 0
            if i and j == res_blocks:
                n += res(ch, ch)
                ds //= 2
    return n + 2 * ch + conv(base * mults[0], in_channels, 3)


@pytest.mark.parametrize("base, millions", [(64, 32.95), (32, 8.26)])  # DDAD, DDAD-S
def test_unet_parameter_count_equals_the_references(base, millions):
    x = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    variables = jax.eval_shape(UNet(base).init, jax.random.key(0), x, t)
    expected = reference_unet_params(256, base)
    assert count_params(variables["params"]) == expected
    assert round(expected / 1e6, 2) == millions  # the count the reference documents


def test_our_512_unet_builds_to_an_8x8_bottom():
    x = jax.ShapeDtypeStruct((1, 512, 512, 3), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    net = UNet(8, CHANNEL_MULTS[512], groups=8)
    variables = jax.eval_shape(net.init, jax.random.key(0), x, t)
    assert jax.eval_shape(net.apply, variables, x, t).shape == (1, 512, 512, 3)
    assert variables["params"]["middle_0"]["in_conv"]["conv"]["kernel"].shape[-1] == 32


def test_timestep_embedding_is_sin_then_cos():
    t = np.array([0.0, 3.0, 999.0])
    freqs = np.exp(-math.log(10000) * np.arange(4) / 4)
    expected = np.concatenate([np.sin(np.outer(t, freqs)), np.cos(np.outer(t, freqs))], 1)
    np.testing.assert_allclose(timestep_embedding(jnp.asarray(t), 8), expected, rtol=1e-5,
                               atol=1e-4)


def _group_norm(x, groups, eps=1e-5):
    b, h, w, c = x.shape
    g = x.reshape(b, h * w, groups, c // groups)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = g.var(axis=(1, 3), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape)


def test_attention_uses_the_legacy_head_layout():
    # PyTorch's QKVAttention on an NCT tensor: qkv.reshape(B * heads, 3 * ch, T).split(ch).
    b, side, c, heads = 2, 4, 16, 2
    x = np.random.default_rng(0).normal(size=(b, side, side, c)).astype(np.float32)
    net = Attention(heads, groups=4)
    params = net.init(jax.random.key(1), x)["params"]
    params["proj_out"]["dense"]["kernel"] = jax.random.normal(jax.random.key(2), (c, c))
    out = np.asarray(net.apply({"params": params}, x))
    p = jax.tree.map(np.asarray, params)
    xn = _group_norm(x, 4).reshape(b, side * side, c).transpose(0, 2, 1)        # [B, C, T]
    qkv = np.einsum("io,bit->bot", p["qkv"]["dense"]["kernel"], xn) + \
        p["qkv"]["dense"]["bias"][None, :, None]
    ch = c // heads
    q, k, v = np.split(qkv.reshape(b * heads, 3 * ch, side * side), 3, axis=1)
    s = ch ** -0.25
    logits = np.einsum("bct,bcs->bts", q * s, k * s)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    a = np.einsum("bts,bcs->bct", weights, v).reshape(b, c, side * side)
    h = np.einsum("io,bit->bot", p["proj_out"]["dense"]["kernel"], a) + \
        p["proj_out"]["dense"]["bias"][None, :, None]
    expected = x + h.transpose(0, 2, 1).reshape(x.shape)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_unet_starts_at_zero_and_has_the_image_shape():
    net = UNet(16, (1, 2), attention_resolutions=(16,), heads=2, groups=8)
    x = jnp.ones((2, 32, 32, 3))
    t = jnp.array([0.0, 500.0])
    variables = jax.jit(net.init)(jax.random.key(0), x, t)
    out = jax.jit(net.apply)(variables, x, t)
    assert out.shape == (2, 32, 32, 3) and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, 0.0)  # the zero-initialised output conv
    # Attention on the 16 x 16 level only (down entries 4, 5; up entries 0-2; the middle),
    # and the up-ResBlock after the attention of the last 16 x 16 entry.
    attention = {name for name, p in variables["params"].items() if "qkv" in p}
    assert attention == {"down_4_1", "down_5_1", "middle_1", "up_0_1", "up_1_1", "up_2_1"}
    assert "in_conv" in variables["params"]["up_2_2"]


def test_schedule_matches_numpy():
    abar = diffusion.alphas_cumprod(1e-4, 0.02, 1000)
    betas = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(abar, np.cumprod(1 - betas), rtol=1e-5)
    assert abar[0] == pytest.approx(1 - 1e-4) and abar.dtype == np.float32
    t, t_next = diffusion.ddim_timesteps(250, 25)
    assert list(t) == list(range(225, -1, -25)) and list(t_next) == [*range(200, -1, -25), -1]


def test_epsilon_loss_sums_over_pixels_and_averages_over_images():
    abar = jnp.asarray(diffusion.alphas_cumprod(1e-4, 0.02, 1000))
    x0 = jax.random.uniform(jax.random.key(0), (3, 4, 4, 3), minval=-1, maxval=1)
    key = jax.random.key(1)
    seen = {}

    def eps_fn(x_t, t):
        seen["x_t"], seen["t"] = x_t, t
        return 0.5 * x_t

    loss = float(diffusion.epsilon_loss(eps_fn, x0, key, abar))
    k_t, k_eps = jax.random.split(key)   # the draws the loss makes, in its order
    t = np.asarray(jax.random.randint(k_t, (3,), 0, 1000))
    eps = np.asarray(jax.random.normal(k_eps, x0.shape))
    a = np.asarray(abar)[t][:, None, None, None]
    x_t = np.sqrt(a) * np.asarray(x0) + np.sqrt(1 - a) * eps
    np.testing.assert_allclose(seen["x_t"], x_t, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(seen["t"], t.astype(np.float32))
    assert loss == pytest.approx(np.mean(np.sum((eps - 0.5 * x_t) ** 2, axis=(1, 2, 3))),
                                 rel=1e-5)


def _toy_eps(x, t):
    return 0.3 * x + t[:, None, None, None] / 1000.0


def test_conditioned_ddim_steps_match_numpy():
    abar = diffusion.alphas_cumprod(1e-4, 0.02, 1000)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 4, 4, 3)).astype(np.float32)
    y = np.random.default_rng(1).uniform(-1, 1, (2, 4, 4, 3)).astype(np.float32)
    keys = jax.random.split(jax.random.key(3), 2)
    w, eta = 2.0, 1.0
    out = diffusion.reconstruct(_toy_eps, jnp.asarray(x), jnp.asarray(y), keys,
                                jnp.asarray(abar), start=50, skip=25, w=w, eta=eta)

    def z(i):  # the documented draws: fold i of each image's key
        return np.stack([np.asarray(jax.random.normal(jax.random.fold_in(k, i), x.shape[1:]))
                         for k in keys])

    a64 = np.concatenate([[1.0], abar.astype(np.float64)])  # index t + 1
    xt = np.sqrt(a64[51]) * x + np.sqrt(1 - a64[51]) * z(0)
    for i, (t, t_next) in enumerate([(25, 0), (0, -1)]):
        a, an = a64[t + 1], a64[t_next + 1]
        e = 0.3 * xt + t / 1000.0
        yt = np.sqrt(a) * y + np.sqrt(1 - a) * e
        e_hat = e - w * np.sqrt(1 - a) * (yt - xt)
        x0 = (xt - np.sqrt(1 - a) * e_hat) / np.sqrt(a)
        c1 = eta * np.sqrt((1 - a / an) * (1 - an) / (1 - a))
        c2 = np.sqrt(1 - an - c1**2)
        xt = np.sqrt(an) * x0 + c1 * z(i + 1) + c2 * e_hat
    np.testing.assert_allclose(out, xt, rtol=1e-4, atol=1e-4)


def test_reconstruction_is_one_scan_calling_the_unet_once():
    calls = []

    def eps_fn(x, t):
        calls.append(1)
        return _toy_eps(x, t)

    abar = jnp.asarray(diffusion.alphas_cumprod(1e-4, 0.02, 1000))
    x = jnp.zeros((1, 4, 4, 3))
    jaxpr = jax.make_jaxpr(lambda x, k: diffusion.reconstruct(
        eps_fn, x, x, k, abar, start=250, skip=25, w=1.0))(x, jax.random.split(
            jax.random.key(0), 1))
    scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
    assert len(scans) == 1 and scans[0].params["length"] == 10 and len(calls) == 1


def test_image_keys_depend_on_the_pixels_not_the_batch():
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    key = jax.random.key(0)
    data = jax.random.key_data
    both = data(image_keys(key, jnp.asarray(images)))
    np.testing.assert_array_equal(both[1:], data(image_keys(key, jnp.asarray(images[1:]))))
    assert not np.array_equal(both[0], both[1])


def test_kornia_reflect_blur_equals_scipy_mirror():
    x = np.random.default_rng(0).normal(size=(1, 20, 24, 1)).astype(np.float32)
    expected = scipy.ndimage.gaussian_filter(x[0, ..., 0], 4.0, mode="mirror", truncate=4.0)
    for impl in ("conv", "matmul"):
        out = gaussian_filter(jnp.asarray(x), 4.0, mode="reflect", impl=impl)
        np.testing.assert_allclose(out[0, ..., 0], expected, rtol=1e-4, atol=1e-5)


def test_map_pieces():
    f = {"layer2": jax.random.normal(jax.random.key(0), (2, 4, 4, 8))}
    assert np.allclose(feature_distance(f, f, ("layer2",), (16, 16)), 0.0, atol=1e-6)
    g = {"layer2": -f["layer2"]}  # opposite features: 1 - cos = 2 everywhere
    np.testing.assert_allclose(feature_distance(f, g, ("layer2",), (16, 16)), 2.0, rtol=1e-5)
    d_f = jnp.stack([jnp.full((40, 40), 1.0), jnp.full((40, 40), 2.0)])
    d_p = jnp.stack([jnp.full((40, 40), 4.0), jnp.full((40, 40), 1.0)])
    # batch: max D_f / max D_p = 2 / 4 for both images; image: 1 / 4 and 2 / 1
    np.testing.assert_allclose(combine(d_f, d_p, 1.0, "batch", 4.0)[:, 20, 20], [3.0, 2.5],
                               rtol=1e-5)
    np.testing.assert_allclose(combine(d_f, d_p, 1.0, "image", 4.0)[:, 20, 20], [2.0, 4.0],
                               rtol=1e-5)


def test_configs_build_and_name_the_missing_weights():
    with pytest.raises(ConfigError, match="adjax weights import .*--kind=wide_resnet101_2"):
        build(load_config("ddad", "mvtec"))
    cfg = load_config("ddad", "visa")
    cfg.extractor.weights = "wrn101.msgpack"
    cfg.data.category = "pcb1"
    assert build(cfg).w == 9.0
    cfg.data.category = "unknown_part"
    with pytest.raises(ConfigError, match="config.map.w"):
        build(cfg)
    cfg.map.w = 1.5
    assert build(cfg).w == 1.5


def _tiny_config(root, steps: int, da_steps: int):
    cfg = load_config("ddad", "quick")
    cfg.data.update(root=str(root), image_size=32)
    cfg.model.update(base=16, channel_mults=(1, 2), attention_resolutions=(16,), heads=2,
                     groups=8)
    cfg.extractor.width = 0.25
    cfg.diffusion.skip = 125  # two UNet calls per reconstruction
    cfg.train.update(steps=steps, batch_size=4, steps_per_call=2, checkpoint_every=2)
    cfg.da.update(steps=da_steps, batch_size=4)
    cfg.eval.batch_size = 4
    return cfg


@pytest.fixture(scope="module")
def run(synth_root, tmp_path_factory):
    """A UNet-only run of 2 steps, then resumed with 2 more steps of domain adaptation."""
    workdir = tmp_path_factory.mktemp("ddad")
    # One device: XLA:CPU compiles the step for the four simulated devices ~8x slower.
    kwargs = dict(devices=jax.devices()[:1], log=lambda s: None)
    first = train.train(_tiny_config(synth_root, 2, 0), workdir, **kwargs)
    second = train.train(_tiny_config(synth_root, 4, 2), workdir, **kwargs)
    return workdir, first, second


def test_domain_adaptation_resumes_after_the_unet_and_trains_only_the_extractor(run):
    _, first, second = run
    assert int(first.step) == 2 and int(second.step) == 4
    for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(second.params), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(first.frozen), jax.tree.leaves(second.frozen), strict=True):
        np.testing.assert_array_equal(a, b)
    changed = [not np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(first.extractor), jax.tree.leaves(second.extractor), strict=True)]
    assert all(changed)  # every weight, and the BatchNorm averages (training mode)


def test_eval_writes_finite_metrics_and_names_the_random_extractor(run):
    workdir, _, _ = run
    record, _ = evaluate.evaluate(workdir)
    # the reference's "batch" normalisation makes a map depend on its batch: the same batches
    assert_record_holds_the_runs_metrics(record, workdir, ("image_auroc", "pixel_auroc"),
                                         batch=record["config"]["eval"]["batch_size"])
    assert "random" in record["notes"]["extractor"]


def test_view_masks_zero_the_map_after_or_mask_the_images_before(run, tmp_path):
    from PIL import Image

    workdir, _, state = run
    keep = np.zeros((32, 32), np.uint8)
    keep[:, :16] = 255  # the view's left half
    Image.fromarray(keep).save(tmp_path / "view.png")
    images = jnp.asarray(np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), np.uint8))
    maps = {}
    for timing in ("pre", "post"):
        for mask in ("", str(tmp_path / "view.png")):
            cfg = _tiny_config(workdir, 4, 2)
            cfg.map.update(mask=mask, mask_timing=timing)
            maps[timing, bool(mask)] = np.asarray(
                jax.jit(build(cfg).predict)(state, images).anomaly_map)
    np.testing.assert_array_equal(maps["pre", False], maps["post", False])  # no mask: PRE = POST
    post, plain = maps["post", True], maps["post", False]
    assert np.all(post[:, :, 16:] == 0)
    np.testing.assert_array_equal(post[:, :, :16], plain[:, :, :16])
    assert not np.allclose(maps["pre", True], plain)  # the masked images give another map


def test_a_maps_per_image_normalisation_does_not_depend_on_the_batch(run):
    workdir, _, state = run
    cfg = _tiny_config(workdir, 4, 2)
    cfg.map.norm = "image"
    method = build(cfg)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    predict = jax.jit(method.predict)
    both = predict(state, jnp.asarray(images))
    alone = predict(state, jnp.asarray(images[[1, 1]]))
    np.testing.assert_allclose(both.anomaly_map[1], alone.anomaly_map[0], rtol=1e-4, atol=1e-5)


def test_registration_undoes_a_camera_shift_and_leaves_a_flat_image(synth_root):
    from PIL import Image
    from skimage import transform

    from adjax.registration import Registration

    files = sorted((synth_root / "tiles" / "train" / "good").glob("*.png"))
    reference = np.asarray(Image.open(files[0]).convert("RGB"))
    shift = transform.ProjectiveTransform(np.array([[1, 0, 4.0], [0, 1, -3.0], [0, 0, 1]]))
    moved = (transform.warp(reference / 255.0, shift.inverse) * 255).round().astype(np.uint8)
    mask = np.zeros(reference.shape[:2], bool)
    mask[40:60, 50:70] = True
    moved_mask = transform.warp(mask.astype(float), shift.inverse, order=0) > 0.5
    flat = np.full_like(reference, 128)
    register = Registration(reference)
    images, masks, registered = register(np.stack([moved, flat]), np.stack([moved_mask, mask]))
    assert list(registered) == [True, False]
    np.testing.assert_array_equal(images[1], flat)  # unregistered: unchanged
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(images[0][inner].astype(int) - reference[inner]).mean() < 3.0
    assert (masks[0] == mask).mean() > 0.99

    # the evaluator's step (`adjax eval --register`): splits in, aligned splits and counts out
    from adjax.data.loading import Split
    from adjax.evaluate import register_splits

    def split(images, masks, paths):
        n = len(images)
        return Split(np.stack(images), np.stack(masks).astype(np.uint8), np.ones(n, np.int32),
                     ("hole",) * n, tuple(paths))

    test, val, note = register_splits(
        reference, split([moved, flat], [moved_mask, mask], ["moved.png", "flat.png"]),
        split([moved], [np.zeros_like(mask)], ["val.png"]))
    assert note == {"reference": "the first training image", "test_registered": 1,
                    "test_unregistered": 1, "test_unregistered_files": ["flat.png"],
                    "validation_registered": 1, "validation_unregistered": 0}
    np.testing.assert_array_equal(test.images[0], images[0])
    np.testing.assert_array_equal(test.masks[0], masks[0])
    np.testing.assert_array_equal(test.images[1], flat)
    np.testing.assert_array_equal(val.images[0], images[0])
