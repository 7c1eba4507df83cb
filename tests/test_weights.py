"""The weight importer without PyTorch: state dicts the tests write with the published key names
and shapes (the reference code's and anomalib's EfficientAD teachers, torchvision's backbones),
read from .npz and .safetensors, converted, written as msgpack and loaded back; and every way a
file can fail to fit, each one sentence naming the file or the key."""

import os
import subprocess
import sys

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from adjax import weights
from adjax.methods import build
from adjax.methods.base import count_params
from adjax.models.pdn import PDN
from adjax.nn.resnet import ResNet
from adjax.weights import WeightsError

safetensors_numpy = pytest.importorskip("safetensors.numpy")

# The reference code's nn.Sequential indices of the convolutions (get_pdn_small/medium).
SEQUENTIAL = {"s": (0, 3, 6, 8), "m": (0, 3, 6, 8, 10, 12)}


def _teacher_state_dict(size: str, naming: str, seed: int = 0) -> dict[str, np.ndarray]:
    """A published teacher's state dict: the real key names and shapes, random values."""
    rng = np.random.default_rng(seed)
    like = weights.shapes(f"efficientad_teacher_{size}")["params"]
    sd = {}
    for i, index in enumerate(SEQUENTIAL[size]):
        conv = like[f"Conv2d_{i}"]["conv"]
        kh, kw, cin, cout = conv["kernel"].shape
        prefix = str(index) if naming == "sequential" else f"conv{i + 1}"
        sd[f"{prefix}.weight"] = rng.normal(size=(cout, cin, kh, kw)).astype(np.float32)
        sd[f"{prefix}.bias"] = rng.normal(size=(cout,)).astype(np.float32)
    return sd


@pytest.mark.parametrize("size", ["s", "m"])
def test_both_published_teacher_namings_give_the_same_pdn(tmp_path, size):
    sequential = _teacher_state_dict(size, "sequential")
    named = _teacher_state_dict(size, "anomalib")
    np.savez(tmp_path / "teacher.npz", **sequential)
    safetensors_numpy.save_file(named, str(tmp_path / "teacher.safetensors"))
    a = weights.import_file(tmp_path / "teacher.npz", f"efficientad_teacher_{size}")
    b = weights.import_file(tmp_path / "teacher.safetensors", f"efficientad_teacher_{size}")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    last = len(SEQUENTIAL[size]) - 1
    np.testing.assert_array_equal(
        a["params"][f"Conv2d_{last}"]["conv"]["kernel"],
        sequential[f"{SEQUENTIAL[size][-1]}.weight"].transpose(2, 3, 1, 0))
    expected = {"s": 2_694_144, "m": 8_026_624}[size]
    assert count_params(a) == expected


def test_imported_teacher_computes_the_nchw_convolutions(tmp_path):
    sd = _teacher_state_dict("s", "sequential", seed=1)
    variables = weights.kind("efficientad_teacher_s").convert(sd, weights.shapes(
        "efficientad_teacher_s"))
    x = np.random.default_rng(2).normal(size=(1, 44, 44, 3)).astype(np.float32)
    ours = PDN("s", 384).apply(variables, x)

    def conv(y, i):  # PyTorch's layout and convolution, NCHW / OIHW, no padding
        y = jax.lax.conv_general_dilated(y, sd[f"{i}.weight"], (1, 1), "VALID",
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return y + sd[f"{i}.bias"][None, :, None, None]

    def pool(y):
        return jax.lax.reduce_window(y, 0.0, jax.lax.add, (1, 1, 2, 2), (1, 1, 2, 2),
                                     "VALID") / 4

    y = pool(jax.nn.relu(conv(jnp.transpose(x, (0, 3, 1, 2)), 0)))
    y = jax.nn.relu(conv(pool(jax.nn.relu(conv(y, 3))), 6))
    reference = jnp.transpose(conv(y, 8), (0, 2, 3, 1))
    np.testing.assert_allclose(ours, reference, rtol=2e-4, atol=2e-3)


@pytest.mark.parametrize("change, message", [
    (lambda sd: sd.pop("6.bias"), "no entry 6.bias"),
    (lambda sd: sd.update({"9.weight": sd["8.weight"]}), "9.weight has no counterpart"),
    (lambda sd: sd.update({"3.weight": sd["3.weight"][:, :64]}),
     r"3.weight has shape \(256, 64, 4, 4\) where the PDN-S expects \(256, 128, 4, 4\)"),
])
def test_a_teacher_that_does_not_fit_names_the_first_key_at_fault(change, message):
    sd = _teacher_state_dict("s", "sequential")
    change(sd)
    with pytest.raises(WeightsError, match=message):
        weights.kind("efficientad_teacher_s").convert(sd, weights.shapes("efficientad_teacher_s"))


def test_a_teacher_of_the_other_size_or_another_network_stops():
    medium = _teacher_state_dict("m", "anomalib")
    with pytest.raises(WeightsError, match="conv1.weight has shape"):
        weights.kind("efficientad_teacher_s").convert(medium,
                                                      weights.shapes("efficientad_teacher_s"))
    with pytest.raises(WeightsError, match=r"conv1.weight has shape \(128, 3, 4, 4\) where "
                                           r"the PDN-M expects \(256, 3, 4, 4\)"):
        weights.kind("efficientad_teacher_m").convert(_teacher_state_dict("s", "anomalib"),
                                                      weights.shapes("efficientad_teacher_m"))


@pytest.mark.parametrize("content, suffix, message", [
    (b"not a zip", ".npz", "is not a readable .npz"),
    (b"\x00\x01garbage", ".safetensors", "is not a readable .safetensors file"),
    (b"{}", ".json", "is none of"),
])
def test_unreadable_files_stop_with_one_sentence_naming_them(tmp_path, content, suffix, message):
    path = tmp_path / f"teacher{suffix}"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=message) as info:
        weights.read_state_dict(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="missing.pth does not exist"):
        weights.read_state_dict(tmp_path / "missing.pth")


def _vgg_state_dict(config) -> dict[str, np.ndarray]:
    sd, cin, i = {}, 3, 0
    for v in config:
        if v == "M":
            i += 1
            continue
        sd[f"features.{i}.weight"] = np.zeros((v, cin, 3, 3), np.float32)
        sd[f"features.{i}.bias"] = np.zeros((v,), np.float32)
        cin, i = v, i + 2
    sd["classifier.0.weight"] = np.zeros((1, 1), np.float32)  # not part of the trunk
    return sd


def test_vgg_kinds_have_torchvisions_feature_counts_and_refuse_each_other():
    from adjax.nn.vgg import VGG16, VGG19

    # torchvision's vgg16 / vgg19 (138,357,544 / 143,667,240) minus the classifier
    # (123,642,856 in both).
    for name, config, count in (("vgg16", VGG16, 14_714_688), ("vgg19", VGG19, 20_024_384)):
        variables = weights.kind(name).convert(_vgg_state_dict(config), weights.shapes(name))
        assert count_params(variables) == count
    with pytest.raises(WeightsError, match="no entry features.16.weight"):
        weights.kind("vgg19").convert(_vgg_state_dict(VGG16), weights.shapes("vgg19"))
    with pytest.raises(WeightsError, match="no entry features.17.weight"):  # vgg19: a pool
        weights.kind("vgg16").convert(_vgg_state_dict(VGG19), weights.shapes("vgg16"))


def test_a_full_trunk_msgpack_loads_into_a_truncated_trunk(tmp_path):
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    full = jax.eval_shape(ResNet(18).init, jax.random.key(0), x)
    full = jax.tree.map(lambda a: np.full(a.shape, 0.5, a.dtype), full)
    weights.write_flax(tmp_path / "r18.msgpack", full)
    truncated = jax.eval_shape(ResNet(18, returns=("layer2",)).init, jax.random.key(0), x)
    loaded = weights.load(tmp_path / "r18.msgpack", "resnet18", truncated, "backbone")
    assert "layer3_0" not in loaded["params"] and "layer2_1" in loaded["params"]
    # An EfficientAD teacher file is strict: a leaf the network lacks stops.
    with pytest.raises(WeightsError, match="r18.msgpack holds batch_stats/layer3_0"):
        weights.load(tmp_path / "r18.msgpack", "efficientad_teacher_s", truncated, "teacher")


def _import(source, out, kind="efficientad_teacher_s") -> subprocess.CompletedProcess:
    """`adjax weights import` as the user runs it."""
    return subprocess.run(
        [sys.executable, "-c", "from adjax.cli import run; run()", "weights", "import",
         f"--from={source}", f"--to={out}", f"--kind={kind}"],
        env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=120)


def test_cli_imports_a_teacher_that_the_config_accepts(tmp_path):
    source = tmp_path / "teacher_small.safetensors"
    safetensors_numpy.save_file(_teacher_state_dict("s", "sequential"), str(source))
    out = tmp_path / "teachers" / "pdn_s.msgpack"
    proc = _import(source, out)
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout
    assert "2,694,144 parameters" in printed and weights.sha256(out) in printed
    tree = flax.serialization.msgpack_restore(out.read_bytes())
    direct = weights.import_file(source, "efficientad_teacher_s")
    for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(direct), strict=True):
        np.testing.assert_array_equal(a, b)
    # The msgpack and the published file itself are both accepted as teacher_path.
    for path in (out, source):
        cfg = load_config("efficientad", "s")
        cfg.model.teacher_path = str(path)
        loaded = build(cfg).pretrained()
        np.testing.assert_array_equal(loaded["teacher"]["params"]["Conv2d_0"]["conv"]["bias"],
                                      direct["params"]["Conv2d_0"]["conv"]["bias"])
        assert bytes(loaded["sha256"]).hex() == weights.sha256(path)


def test_cli_refuses_a_wrong_file_in_one_sentence_and_writes_nothing(tmp_path):
    source = tmp_path / "resnet.npz"
    np.savez(source, **{"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)})
    out = tmp_path / "pdn_s.msgpack"
    proc = _import(source, out)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    err = proc.stderr.strip()
    assert err.count("\n") == 0 and "conv1.weight has shape (64, 3, 7, 7)" in err
    assert sorted(tmp_path.iterdir()) == [source]
