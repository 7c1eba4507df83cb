"""EfficientAD's teacher distillation: PatchCore's features against the reference algorithm
written out step by step (unfold, resize the patches, adaptive pools), the host stream (grain),
and `adjax train` on a tiny ImageNet-like tree: it runs, resumes to the same weights, exports a
teacher that EfficientAD accepts, and refuses an empty folder or a missing backbone in one
sentence."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config
from PIL import Image

from adjax.data.layouts import DataError
from adjax.models import patchcore
from adjax.nn.layers import adaptive_pool_matrix, resize_bilinear

grain = pytest.importorskip("grain")


def _reference_embedding(features, pre_dim, out_dim):
    """The reference's steps in numpy: zero-padded 3x3 unfold flattened (C, 3, 3), later layers'
    patches resized to the first grid, per-layer adaptive pool, concatenation, final pool."""
    grid = features[0].shape[1:3]
    pooled = []
    for f in features:
        b, h, w, c = f.shape
        padded = np.pad(f, ((0, 0), (1, 1), (1, 1), (0, 0)))
        patches = np.stack([padded[:, dy:dy + h, dx:dx + w] for dy in range(3)
                            for dx in range(3)], axis=-1)  # [B, h, w, C, 9]
        flat = patches.reshape(b, h, w, c * 9)
        if (h, w) != grid:
            flat = np.asarray(resize_bilinear(jnp.asarray(flat), grid))
        pooled.append(flat @ adaptive_pool_matrix(c * 9, pre_dim))
    return np.concatenate(pooled, -1) @ adaptive_pool_matrix(len(features) * pre_dim, out_dim)


@pytest.mark.parametrize("channels, pre_dim, out_dim", [((16, 32), 48, 24), ((512, 1024), 1024,
                                                                            384)])
def test_patchcore_embedding_is_the_reference_algorithm(channels, pre_dim, out_dim):
    rng = np.random.default_rng(0)
    features = [rng.normal(size=(2, 8, 8, channels[0])).astype(np.float32),
                rng.normal(size=(2, 4, 4, channels[1])).astype(np.float32)]
    ours = patchcore.embed({"layer2": jnp.asarray(features[0]),
                            "layer3": jnp.asarray(features[1])}, ("layer2", "layer3"), pre_dim,
                           out_dim)
    assert ours.shape == (2, 8, 8, out_dim)
    np.testing.assert_allclose(ours, _reference_embedding(features, pre_dim, out_dim),
                               rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> pathlib.Path:
    """An ImageNet-like tree: two class folders of small JPEGs."""
    root = tmp_path_factory.mktemp("imagenet") / "train"
    rng = np.random.default_rng(0)
    for wnid in ("n01440764", "n01443537"):
        (root / wnid).mkdir(parents=True)
        for i in range(5):
            image = rng.integers(0, 256, (40 + 3 * i, 48, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / wnid / f"{wnid}_{i}.JPEG")
    return root


def test_stream_is_a_function_of_the_step_and_names_bad_folders(imagenet, tmp_path):
    from adjax.data import stream

    files = stream.image_files(imagenet)
    assert len(files) == 10
    sides = {"image": 16, "image_extractor": 32}
    it = stream.batches(files, sides, 3, seed=1, workers=1)
    first = [next(it) for _ in range(5)]  # 15 draws: every file once in each epoch of 10
    it.close()
    assert first[0]["image"].shape == (3, 16, 16, 3)
    assert first[0]["image_extractor"].shape == (3, 32, 32, 3)
    resumed = stream.batches(files, sides, 3, seed=1, start=3, workers=0)
    np.testing.assert_array_equal(next(resumed)["image"], first[3]["image"])
    resumed.close()
    (tmp_path / "empty" / "n0").mkdir(parents=True)
    with pytest.raises(DataError, match=r"empty holds no images"):
        stream.image_files(tmp_path / "empty")
    (tmp_path / "bad.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="could not decode image .*bad.JPEG"):
        stream.decode(str(tmp_path / "bad.JPEG"), sides)


def _config(imagenet, backbone, steps=4):
    cfg = load_config("efficientad", "distill-s")
    cfg.data.image_size = 32                      # PDN-S padded: 8 x 8 cells
    cfg.distill.update(imagenet=str(imagenet), backbone=str(backbone), extractor_size=64,
                       stats_images=4, workers=0, depth=18, width_per_group=64, width=0.25)
    cfg.train.update(steps=steps, batch_size=2, steps_per_call=2, checkpoint_every=2,
                     log_every=2)
    return cfg


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> pathlib.Path:
    """A quarter-width ResNet-18 trunk as the msgpack `adjax weights import` writes."""
    from adjax import weights
    from adjax.nn.resnet import ResNet

    variables = jax.jit(ResNet(18, 0.25).init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    path = tmp_path_factory.mktemp("backbone") / "resnet18.msgpack"
    weights.write_flax(path, jax.tree.map(np.asarray, variables))
    return path


@pytest.fixture(scope="module")
def trained(imagenet, backbone, tmp_path_factory):
    from adjax import train

    workdir = tmp_path_factory.mktemp("distill")
    train.train(_config(imagenet, backbone), workdir, log=lambda _: None)
    return workdir


def test_distillation_trains_and_exports_a_teacher(trained, tmp_path):
    from adjax import weights
    from adjax.methods import build
    from adjax.methods.efficientad_distill import exported_teacher

    lines = (trained / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4]
    assert all(np.isfinite(json.loads(line)["loss"]) for line in lines)
    teacher = exported_teacher(trained, "efficientad_teacher_s")
    path = weights.write_flax(tmp_path / "pdn_s.msgpack", teacher)
    cfg = load_config("efficientad", "s")
    cfg.model.teacher_path = str(path)
    loaded = build(cfg).pretrained()["teacher"]
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(teacher), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(weights.WeightsError, match="distilled in .* of shape"):
        exported_teacher(trained, "efficientad_teacher_m")


def test_distillation_resumes_to_the_same_teacher(trained, imagenet, backbone, tmp_path):
    from adjax import evaluate, train

    train.train(_config(imagenet, backbone, steps=2), tmp_path, log=lambda _: None)
    train.train(_config(imagenet, backbone, steps=4), tmp_path, log=lambda _: None)
    _, _, resumed = evaluate.load_run(tmp_path)
    _, _, whole = evaluate.load_run(trained)
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(whole.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(resumed.target_mean, whole.target_mean)
    with pytest.raises(evaluate.EvaluationError, match="has no test split; export its teacher"):
        evaluate.evaluate(trained)


def test_bad_distillation_input_stops_before_anything_is_written(imagenet, backbone, tmp_path):
    from adjax import train

    empty = tmp_path / "imagenet"
    (empty / "n0").mkdir(parents=True)
    with pytest.raises(DataError, match="imagenet folder .* holds no images"):
        train.train(_config(empty, backbone), tmp_path / "a", log=lambda _: None)
    with pytest.raises(FileNotFoundError, match="config.distill.backbone file .* does not exist"):
        train.train(_config(imagenet, tmp_path / "none.pth"), tmp_path / "b",
                    log=lambda _: None)
    # No config, checkpoint or metrics file (the trainer's empty checkpoints folder aside).
    assert not [p for p in (tmp_path / "a").rglob("*") if p.is_file()]
    assert not [p for p in (tmp_path / "b").rglob("*") if p.is_file()]
