"""`adjax analyze` (adjax.analyze): pair sets, distances against NumPy and scikit-image, the
files it writes, and its bad-input sentences."""

import json
import math
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import structural_similarity

from adjax import analyze
from adjax.data.layouts import DataError
from adjax.files import OutputError

ROOT = pathlib.Path(__file__).resolve().parents[1]
COUNTS = {"train/good": 6, "test/good": 3, "test/crack": 2, "test/hole": 4}


def _write_category(root: pathlib.Path, counts=COUNTS, size: int = 40) -> pathlib.Path:
    """An MVTec-layout category `cat` of random images (no masks: the analyses need none)."""
    rng = np.random.default_rng(0)
    for folder, n in counts.items():
        split, name = folder.split("/")
        path = root / "cat" / split / name
        path.mkdir(parents=True)
        for k in range(n):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path / f"{k:03d}.png")
    return root


@pytest.fixture(scope="module")
def category(tmp_path_factory) -> pathlib.Path:
    return _write_category(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def summary(category, tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis")
    os.environ.setdefault("ADJAX_CACHE", str(tmp_path_factory.mktemp("cache")))
    return analyze.analyze(category, "cat", out, image_size=32, seed=0), out


def _half(n: int) -> int:
    h = math.ceil(n / 2)
    return h * (n - 1) - h * (h - 1) // 2


@pytest.mark.parametrize("half", [False, True])
def test_pair_counts(half):
    defects = ["good"] * 3 + ["crack"] * 2 + ["hole"] * 4
    groups = analyze.group_pairs(defects, 6, half)
    within = _half if half else (lambda n: n * (n - 1) // 2)
    expected = {"train/good": within(6), "test/good": within(3), "test/crack": within(2),
                "test/hole": within(4), analyze.MERGED: within(6), analyze.CROSS: 6 * 6}
    assert {name: len(i) for name, (i, _) in groups.items()} == expected
    for name, (i, j) in groups.items():
        if name != analyze.CROSS:
            assert (i < j).all()
            assert len(set(zip(i.tolist(), j.tolist(), strict=True))) == len(i)
    merged = set(range(9, 15))  # the six anomalies after 6 train and 3 good images
    assert set(groups[analyze.CROSS][0].tolist()) == set(range(6))
    assert set(groups[analyze.CROSS][1].tolist()) == merged
    assert set(groups[analyze.MERGED][0].tolist()) | set(groups[analyze.MERGED][1].tolist()) \
        == merged


def test_half_pairs_follow_the_seed_loop():
    n = 7
    expected = [(i, j) for i in range(math.ceil(n / 2)) for j in range(i + 1, n)]
    i, j = analyze.pairs_within(n, half=True)
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == expected


def test_distances_match_numpy_and_scikit_image():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    images[3] = np.clip(images[2].astype(int) + rng.integers(-20, 20, (32, 32, 3)), 0, 255)
    i, j = np.array([0, 2, 1, 3, 0]), np.array([1, 3, 3, 3, 0])
    got = analyze.distances(images, i, j, block=2)  # three blocks, the last one padded
    for k, (a, b) in enumerate(zip(i, j, strict=True)):
        x, y = images[a] / 255.0, images[b] / 255.0
        assert got["mse"][k] == pytest.approx(np.mean((x - y) ** 2), rel=1e-5, abs=1e-7)
        ssim = np.mean([structural_similarity(images[a][..., c], images[b][..., c], win_size=5,
                                              data_range=255) for c in range(3)])
        assert got["ssim_distance"][k] == pytest.approx(1.0 - ssim, abs=2e-5)
    assert got["mse"][3] == 0.0 and got["mse"][4] == 0.0
    assert got["ssim_distance"][4] == pytest.approx(0.0, abs=1e-6)


def test_writes_the_figures_and_the_summary(summary):
    result, out = summary
    for name in ("distances.png", "pca.png", "tsne.png"):
        assert (out / name).stat().st_size > 0
    written = json.loads((out / "summary.json").read_text())
    assert written == result
    assert set(written) == {"groups", "images", "pca_explained_variance_ratio", "settings"}
    assert written["groups"]["train/good"]["mse"]["pairs"] == 15
    assert written["groups"][analyze.CROSS]["ssim_distance"]["pairs"] == 6 * 6
    assert written["images"] == COUNTS
    for stats in written["groups"]["test/hole"].values():
        assert set(stats) == {"pairs", "mean", "std", "median", "min", "max"}
        assert stats["min"] <= stats["median"] <= stats["max"]
    assert len(written["pca_explained_variance_ratio"]) == 2
    settings = written["settings"]
    assert settings["weights"] == {"init": "random (seed 0)"}
    assert settings["half_pairs"] is False and settings["tsne_perplexity"] == 10


def test_shared_pairs_are_the_same_in_every_set(summary):
    """A defect folder's pairs lie in the merged set too; both report the same values."""
    groups = summary[0]["groups"]
    crack = groups["test/crack"]["mse"]  # one pair
    assert crack["pairs"] == 1
    assert groups[analyze.MERGED]["mse"]["min"] <= crack["mean"] <= \
        groups[analyze.MERGED]["mse"]["max"]


@pytest.mark.parametrize("case, expected", [
    ("root", "MVTec AD root folder {tmp}/nowhere does not exist"),
    ("category", "MVTec AD category folder {tmp}/data/dog does not exist"),
    ("empty", "MVTec AD folder {tmp}/data/cat/train/good holds no images"),
    ("out", "the output folder {tmp}/file/out cannot be created"),
    ("weights", "weights file {tmp}/resnet18.pth does not exist"),
    ("image_size", "--image_size 8 is below 16 pixels"),
    ("layout", "--layout 'folder' is not one of mvtec_ad, mpdd, btad, visa"),
])
def test_bad_input_is_one_sentence(tmp_path, case, expected):
    data = _write_category(tmp_path / "data", {"train/good": 2, "test/good": 2}, size=8)
    (tmp_path / "file").write_text("")
    root, category, out, kwargs = data, "cat", tmp_path / "out", {}
    if case == "root":
        root = tmp_path / "nowhere"
    elif case == "category":
        category = "dog"
    elif case == "empty":
        for p in (data / "cat" / "train" / "good").iterdir():
            p.unlink()
    elif case == "out":
        out = tmp_path / "file" / "out"
    elif case == "weights":
        kwargs["weights"] = str(tmp_path / "resnet18.pth")
    elif case == "image_size":
        kwargs["image_size"] = 8
    elif case == "layout":
        kwargs["layout"] = "folder"
    with pytest.raises((DataError, OutputError, FileNotFoundError),
                       match="^" + re.escape(expected.format(tmp=tmp_path))):
        analyze.analyze(root, category, out, **kwargs)
    assert not list((tmp_path / "out").glob("*"))


def test_command_reports_bad_input_in_one_sentence(tmp_path):
    env = {**os.environ, "ADJAX_CACHE": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", "from adjax.cli import run; run()", "analyze",
         f"--root={tmp_path}/nowhere", "--category=cat", f"--out={tmp_path}/out"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (f"adjax analyze: error: MVTec AD root folder "
                                   f"{tmp_path}/nowhere does not exist")


def test_weights_from_a_msgpack_file(tmp_path):
    """--weights reads `adjax weights import`'s msgpack (shapes only are initialised)."""
    from adjax import weights

    variables = analyze.resnet_variables(28, 3, None)
    path = weights.write_flax(tmp_path / "resnet18.msgpack", variables)
    loaded = analyze.resnet_variables(28, 0, str(path))
    np.testing.assert_array_equal(loaded["params"]["conv1"]["kernel"],
                                  variables["params"]["conv1"]["kernel"])
    np.testing.assert_array_equal(loaded["batch_stats"]["layer4_1"]["bn2"]["var"],
                                  variables["batch_stats"]["layer4_1"]["bn2"]["var"])
