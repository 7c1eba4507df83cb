"""PIADE and the pyramidal auto-encoder: building blocks against PyTorch's conventions, shapes
and parameter counts, ImageNet weight import from torchvision-style state dicts, and the
methods' training step and score on a tiny network."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from adjax.methods import build
from adjax.models.piade import PIADE, adaptive_avg_pool, select_vector
from adjax.models.pyramid_ae import PyramidAE
from adjax.nn.decoders import DECODERS, TransposedConvDecoder
from adjax.nn.layers import nchw_view
from adjax.nn.resnet import ResNet
from adjax.nn.vgg import VGGFeatures
from adjax.weights import WeightsError, merge, read_state_dict, resnet_from_torch, vgg_from_torch


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _shapes(net, size):
    x = jnp.zeros((2, size, size, 3))
    variables = jax.eval_shape(net.init, jax.random.key(0), x)
    return variables, jax.eval_shape(net.apply, variables, x)


def test_adaptive_pool_uses_pytorch_bins():
    x = np.random.default_rng(0).normal(size=(1, 5, 7, 2)).astype(np.float32)
    out = np.asarray(adaptive_avg_pool(jnp.asarray(x), 3))
    for i in range(3):
        for j in range(3):
            rows = slice(i * 5 // 3, -(-(i + 1) * 5 // 3))
            cols = slice(j * 7 // 3, -(-(j + 1) * 7 // 3))
            np.testing.assert_allclose(out[0, i, j], x[0, rows, cols].mean((0, 1)), rtol=1e-5)


def test_nchw_view_is_pytorchs_view():
    x = np.arange(2 * 4 * 4 * 8, dtype=np.float32).reshape(2, 4, 4, 8)
    expected = x.transpose(0, 3, 1, 2).reshape(2, 2, 8, 8).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(nchw_view(jnp.asarray(x), 8), expected)


@pytest.mark.parametrize("layout,size", [("mvtec", 120), ("mnist", 28)])
def test_decoders_reach_the_input_size(layout, size):
    variables, out = _shapes_decoder(DECODERS[layout])
    assert out.shape == (2, size, size, 3)


def _shapes_decoder(layers):
    decoder = TransposedConvDecoder(layers)
    x = jnp.zeros((2, 8, 8, 16))
    variables = jax.eval_shape(functools.partial(decoder.init, train=False), jax.random.key(0), x)
    return variables, jax.eval_shape(functools.partial(decoder.apply, train=False), variables, x)


def test_backbone_parameter_counts():
    """torchvision's ResNet-18 / ResNet-50 (11,689,512 / 25,557,032 parameters) without the
    1000-way classifier; VGG-11 features[:4]."""
    assert _count(_shapes(ResNet(18), 64)[0]["params"]) == 11_689_512 - 513_000
    assert _count(_shapes(ResNet(50), 64)[0]["params"]) == 25_557_032 - 2_049_000
    # SE after the stem and each stage, ratio 4: 2 C^2 / 4 for C = 64, 64, 128, 256, 512.
    assert _count(_shapes(ResNet(18, se_ratio=4), 64)[0]["params"]) == 11_176_512 + 176_128
    assert _count(_shapes(VGGFeatures(4), 32)[0]["params"]) == 1_792 + 73_856


def test_piade_thesis_and_code_shapes():
    variables, out = _shapes(PIADE(), 120)
    params = variables["params"]
    # SE-ResNet-18 -> 512 x 4 x 4; pools 8/4/2/1 x 64 channels = 5,440 values = 680 capsules.
    assert params["routing"]["weights"].shape == (680, 2, 64, 8)
    assert out["reconstruction"].shape == (2, 120, 120, 3) and out["vectors"].shape == (2, 2, 64)
    # (512 + 512) x 4 x 4 viewed as 256 x 8 x 8 feed the decoder.
    assert params["decoder"]["deconv1"]["conv"]["kernel"].shape == (3, 3, 16, 256)
    code = PIADE(depth=50, se_ratio=16, pyramid="channel", levels=(1, 2, 4, 8))
    params = _shapes(code, 120)[0]["params"]
    assert params["routing"]["weights"].shape == (480, 2, 64, 8)  # 3,840 / 8
    assert _count(params["decoder"]) == 114_931  # the code's decoder2(640) in PyTorch


def test_pyramid_ae_shapes():
    variables, out = _shapes(PyramidAE(), 120)
    params = variables["params"]
    assert [params[f"branch{i}"]["reduce"]["kernel"].shape[-1] for i in range(1, 5)] == \
        [512, 256, 170, 85]
    assert params["upsampler"]["fc2"]["kernel"].shape == (128, 512 * 4 * 4)  # 512 mf^2, mf 4
    assert params["decoder"]["deconv1"]["conv"]["kernel"].shape == (3, 3, 16, 1024)
    assert out["reconstruction"].shape == (2, 120, 120, 3) and out["codes"].shape == (2, 4, 8)
    assert _shapes(PyramidAE(decoder="mnist"), 28)[1]["reconstruction"].shape == (2, 28, 28, 3)


def test_select_vector_decodes_the_given_or_longest():
    vectors = jnp.asarray([[[3.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 2.0]]])
    z, index = select_vector(vectors, None)
    assert index.tolist() == [0, 1] and z.tolist() == [[3.0, 0.0], [0.0, 2.0]]
    z, index = select_vector(vectors, jnp.zeros(2, jnp.int32))  # the thesis's training choice
    assert z.tolist() == [[3.0, 0.0], [1.0, 0.0]]


# ----------------------------------------------------------------------------- weight import


def _torch_vgg11(rng):
    """A torchvision vgg11 state dict: names and shapes only, random values."""
    sd, cin, i = {}, 3, 0
    for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
        if v == "M":
            i += 1
            continue
        sd[f"features.{i}.weight"] = rng.normal(size=(v, cin, 3, 3)).astype(np.float32)
        sd[f"features.{i}.bias"] = rng.normal(size=(v,)).astype(np.float32)
        cin, i = v, i + 2
    sd["classifier.0.weight"] = np.zeros((4096, 25088), np.float32)[:1]  # ignored
    return sd


def test_vgg_import_matches_an_nchw_convolution(tmp_path):
    sd = _torch_vgg11(np.random.default_rng(0))
    np.savez(tmp_path / "vgg11.npz", **sd)
    loaded = read_state_dict(tmp_path / "vgg11.npz")
    net = VGGFeatures(4)
    x = jax.random.uniform(jax.random.key(0), (1, 16, 16, 3))
    params = vgg_from_torch(loaded, net.init(jax.random.key(1), x))
    ours = net.apply(params, x)

    def conv(x, i):  # PyTorch's layout and convolution, NCHW / OIHW
        y = jax.lax.conv_general_dilated(x, sd[f"features.{i}.weight"], (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return y + sd[f"features.{i}.bias"][None, :, None, None]

    y = jax.nn.relu(conv(jnp.transpose(x, (0, 3, 1, 2)), 0))
    y = jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
    np.testing.assert_allclose(ours, jnp.transpose(conv(y, 3), (0, 2, 3, 1)), rtol=1e-4,
                               atol=1e-4)
    sd["features.3.weight"] = sd["features.3.weight"][:, :32]
    with pytest.raises(WeightsError, match=r"features.3.weight has shape \(128, 32, 3, 3\)"):
        vgg_from_torch(sd, net.init(jax.random.key(1), x))
    del sd["features.0.bias"]
    with pytest.raises(WeightsError, match="no entry features.0.bias"):
        vgg_from_torch(sd, net.init(jax.random.key(1), x))


def _torch_resnet18(rng):
    """A torchvision resnet18 state dict: names and shapes only, random values."""
    sd = {}

    def bn(prefix, c):
        for name in ("weight", "bias", "running_mean", "running_var"):
            sd[f"{prefix}.{name}"] = rng.uniform(0.5, 1.5, (c,)).astype(np.float32)
        sd[f"{prefix}.num_batches_tracked"] = np.array(1)

    sd["conv1.weight"] = rng.normal(size=(64, 3, 7, 7)).astype(np.float32)
    bn("bn1", 64)
    cin = 64
    for layer, c in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            p = f"layer{layer}.{block}"
            sd[f"{p}.conv1.weight"] = rng.normal(size=(c, cin, 3, 3)).astype(np.float32)
            bn(f"{p}.bn1", c)
            sd[f"{p}.conv2.weight"] = rng.normal(size=(c, c, 3, 3)).astype(np.float32)
            bn(f"{p}.bn2", c)
            if block == 0 and layer > 1:
                sd[f"{p}.downsample.0.weight"] = rng.normal(size=(c, cin, 1, 1)).astype(
                    np.float32)
                bn(f"{p}.downsample.1", c)
            cin = c
    sd["fc.weight"] = np.zeros((1000, 512), np.float32)
    sd["fc.bias"] = np.zeros((1000,), np.float32)
    return sd


def test_resnet_import_fills_every_layer():
    sd = _torch_resnet18(np.random.default_rng(0))
    shapes = _shapes(ResNet(18, se_ratio=4), 32)[0]
    like = jax.tree.map(lambda a: jnp.full(a.shape, 7.0, a.dtype), shapes)
    imported = resnet_from_torch(sd, shapes)  # on the host, from shapes alone
    assert "se3" not in imported["params"]  # torchvision has no SE layers: not imported
    filled = {k for k in sd if not k.startswith("fc") and "num_batches" not in k}
    assert len(jax.tree.leaves(imported)) == len(filled)
    loaded = merge(like, imported)  # as in init: the SE layers keep their initialisation
    p, s = loaded["params"], loaded["batch_stats"]
    np.testing.assert_array_equal(p["conv1"]["kernel"], sd["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(p["layer3_0"]["downsample_conv"]["kernel"],
                                  sd["layer3.0.downsample.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(p["layer4_1"]["bn2"]["scale"], sd["layer4.1.bn2.weight"])
    np.testing.assert_array_equal(s["layer2_0"]["downsample_bn"]["var"],
                                  sd["layer2.0.downsample.1.running_var"])
    np.testing.assert_array_equal(p["se3"]["fc1"]["kernel"], like["params"]["se3"]["fc1"]["kernel"])
    sd["layer1.0.conv1.weight"] = sd["layer1.0.conv1.weight"][:, :, :1]
    with pytest.raises(WeightsError, match="layer1.0.conv1.weight has shape"):
        resnet_from_torch(sd, shapes)
    del sd["layer1.0.conv1.weight"]
    with pytest.raises(WeightsError, match="no entry for params/layer1_0/conv1/kernel"):
        resnet_from_torch(sd, shapes)
    sd["layer9.0.conv1.weight"] = sd["conv1.weight"]
    with pytest.raises(WeightsError, match="layer9.0.conv1.weight has no counterpart"):
        resnet_from_torch(sd, shapes)


# ----------------------------------------------------------------------------- the method


def test_perceptual_term_needs_weights():
    with pytest.raises(ValueError, match="vgg_weights"):
        build(load_config("piade", "mvtec"))


# rbg keys: XLA on CPU compiles their initialisers several times faster than threefry's.
_KEY = jax.random.key(0, impl="rbg")


def _images(n=2, size=64):
    return jnp.asarray(np.random.default_rng(0).integers(0, 256, (n, size, size, 3), np.uint8))


def test_piade_step_and_score(tmp_path):
    np.savez(tmp_path / "vgg11.npz", **_torch_vgg11(np.random.default_rng(0)))
    cfg = load_config("piade", "quick")
    cfg.model.update(width=0.125, levels=(2, 1), upsample_widths=(8, 8), upsample_channels=64)
    cfg.loss.update(perceptual=1.0, vgg_weights=str(tmp_path / "vgg11.npz"))
    cfg.score.update(perceptual=1.0, reduce="mean")
    method = build(cfg)
    images = _images()
    state = method.init(_KEY, {"image": images}, method.pretrained())
    x = images / 255.0

    @jax.jit  # one compile, not one per operation
    def forward_and_terms(state, x):
        recon, _ = method._forward(state.params, state.batch_stats, x, train=True)
        return recon, method.terms(state, x, recon, cfg.loss)

    recon, expected = forward_and_terms(state, x)
    np.testing.assert_allclose(expected["mse"],
                               np.mean((np.asarray(recon) - np.asarray(x)) ** 2, axis=(1, 2, 3)),
                               rtol=1e-5)
    state, metrics = jax.jit(method.train_step)(state, {"image": images}, jax.random.key(1))
    assert float(metrics["loss"]) == pytest.approx(
        float(jnp.mean(expected["mse"] + expected["perceptual"] - expected["ssim"])), rel=1e-4)

    @jax.jit
    def predict_and_terms(state, images):
        x = images / 255.0
        recon, _ = method._forward(state.params, state.batch_stats, x, train=False)
        return method.predict(state, images), method.terms(state, x, recon, cfg.score)

    pred, terms = predict_and_terms(state, images)
    assert float(terms["perceptual"].min()) > 0 and float(terms["ssim"].max()) <= 1
    np.testing.assert_allclose(pred.score, terms["mse"] + terms["perceptual"] - terms["ssim"],
                               rtol=1e-5)
    assert pred.anomaly_map.shape == (2, 64, 64)
    info = method.describe(state)
    assert info["perceptual"] == str(tmp_path / "vgg11.npz")
    assert info["backbone"].startswith("random")


def test_pyramid_ae_trains():
    cfg = load_config("pyramid_ae", "quick")
    cfg.model.update(width=0.125, branch_channels=4, hidden=8)
    method = build(cfg)
    images = _images()
    state = method.init(_KEY, {"image": images})
    x = images / 255.0
    recon, _ = jax.jit(lambda s, x: method._forward(s.params, s.batch_stats, x, train=True))(
        state, x)
    new, metrics = jax.jit(method.train_step)(state, {"image": images}, jax.random.key(1))
    # MSE only (no perceptual, no SSIM term in the pyramidal AE's quick loss).
    assert float(metrics["loss"]) == pytest.approx(float(jnp.mean((recon - x) ** 2)), rel=1e-4)
    changed = [not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(new.batch_stats), jax.tree.leaves(state.batch_stats),
                   strict=True)]
    assert all(changed)
