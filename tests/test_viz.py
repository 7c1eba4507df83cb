"""Tests for adjax.viz: curve and overlay PNGs, the worst/best selection, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from adjax import metrics, viz

N, SIZE = 10, 32


@pytest.fixture(scope="module")
def data():
    """10 random 32x32 test images, 5 anomalous with a square defect, and noisy maps."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.array([0, 1] * (N // 2))
    masks = np.zeros((N, SIZE, SIZE), np.uint8)
    for i in np.flatnonzero(labels):
        r, c = rng.integers(2, SIZE - 12, 2)
        masks[i, r:r + 8, c:c + 8] = 1
    maps = rng.random((N, SIZE, SIZE)).astype(np.float32) + 0.8 * masks
    scores = maps.reshape(N, -1).max(axis=1).astype(np.float64)
    result = metrics.compute(scores, labels, maps, masks, with_curves=True)
    return images, maps, masks, scores, labels, result


def _png_size(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()  # decodes the whole file: fails on a truncated PNG
        return im.size


def _no_temporaries(folder):
    assert not [p for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


def test_curves_written_and_decodable(data, tmp_path):
    result = data[-1]
    assert set(result["curves"]) == {"image_roc", "image_pr", "pixel_roc", "pixel_pr", "pro"}
    paths = viz.save_curves(result["curves"], tmp_path / "figs", title="toy", fpr_limit=0.3)
    assert [p.name for p in paths] == ["roc.png", "pr.png", "pro.png"]
    for p in paths:
        assert p.is_file()
        w, h = _png_size(p)
        assert 300 <= w <= 2000 and 300 <= h <= 2000
    _no_temporaries(tmp_path / "figs")


def test_absent_and_undefined_curves_are_skipped(data, tmp_path):
    curves = data[-1]["curves"]
    only_image = {k: curves[k] for k in ("image_roc", "image_pr")}
    assert [p.name for p in viz.save_curves(only_image, tmp_path / "a")] == ["roc.png", "pr.png"]
    only_pro = {"pro": curves["pro"]}
    assert [p.name for p in viz.save_curves(only_pro, tmp_path / "b")] == ["pro.png"]
    assert viz.save_curves({}, tmp_path / "c") == []
    assert not (tmp_path / "c").exists()
    # No normal images: compute returns an image ROC of NaN FPRs; it is not drawn.
    undefined = metrics.compute(np.arange(4.0), np.ones(4), with_curves=True)["curves"]
    assert np.isnan(undefined["image_roc"]["fpr"]).all()
    assert [p.name for p in viz.save_curves(undefined, tmp_path / "d")] == ["pr.png"]


def test_curve_areas_match_metrics(data):
    """The legend areas, recomputed from the full curves, equal the exact metrics."""
    result = data[-1]
    c = result["curves"]
    for level in ("image", "pixel"):
        fpr = np.insert(c[f"{level}_roc"]["fpr"], 0, 0.0)
        tpr = np.insert(c[f"{level}_roc"]["tpr"], 0, 0.0)
        if fpr.size < 1000:  # not thinned by curve_points: the area must be the metric
            assert viz._trapezoid(fpr, tpr) == pytest.approx(result[f"{level}_auroc"], abs=1e-9)
    x, y = np.insert(c["pro"]["fpr"], 0, 0.0), np.insert(c["pro"]["pro"], 0, 0.0)
    cx, cy = viz._cut_at(x, y, 0.3)
    assert cx[-1] == pytest.approx(0.3) and (np.diff(cx) >= 0).all()
    # Thinned to 1000 points and float32 PRO: close to the exact AU-PRO, not equal.
    assert viz._trapezoid(cx, cy) / 0.3 == pytest.approx(result["aupro"], abs=2e-3)


def test_pick_worst_and_best_hand_made():
    #                   0    1    2    3    4    5    6    7    8    9
    scores = np.array([0.1, 0.9, 0.5, 0.2, 0.8, 0.3, 0.7, 0.6, 0.4, 0.05])
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    # anomalous by score: 9 (.05), 3 (.2), 5 (.3), 7 (.6), 1 (.9)
    # normal by score:    0 (.1), 8 (.4), 2 (.5), 6 (.7), 4 (.8)
    worst, best = viz.pick_worst_and_best(scores, labels, 4)
    assert worst.tolist() == [9, 3, 4, 6]  # missed lowest first, then false alarms highest
    assert best.tolist() == [1, 7, 0, 8]  # caught highest first, then quiet normals lowest
    assert worst.dtype == np.int64 and best.dtype == np.int64
    # Odd n: the anomalous class gets ceil(n / 2).
    worst, best = viz.pick_worst_and_best(scores, labels, 3)
    assert worst.tolist() == [9, 3, 4] and best.tolist() == [1, 7, 0]
    # Disjoint: 10 images, n = 6 leaves only 4 for best.
    worst, best = viz.pick_worst_and_best(scores, labels, 6)
    assert worst.tolist() == [9, 3, 5, 4, 6, 2]
    assert best.tolist() == [1, 7, 0, 8]
    assert not set(worst) & set(best)
    assert [len(a) for a in viz.pick_worst_and_best(scores, labels, 0)] == [0, 0]


def test_pick_fills_from_other_class_and_breaks_ties_by_index():
    scores = np.array([0.5, 0.5, 0.5, 0.9, 0.1])
    labels = np.array([0, 0, 0, 0, 1])  # a single anomalous image
    worst, best = viz.pick_worst_and_best(scores, labels, 3)
    assert worst.tolist() == [4, 3, 0]  # 1 anomalous, then normals: highest, ties by index
    assert best.tolist() == [1, 2]  # remaining normals, lowest first, ties by index
    worst, best = viz.pick_worst_and_best(np.array([0.3, 0.1]), np.array([0, 0]), 2)
    assert worst.tolist() == [0, 1] and best.tolist() == []
    with pytest.raises(ValueError, match="NaN"):
        viz.pick_worst_and_best([np.nan, 1.0], [0, 1], 1)
    with pytest.raises(ValueError, match="labels"):
        viz.pick_worst_and_best([0.0, 1.0], [0, 2], 1)


def test_overlays_written(data, tmp_path):
    images, maps, masks, scores, labels, _ = data
    names = [f"{'crack' if y else 'good'}/sub dir/{i:03d}.png" for i, y in enumerate(labels)]
    paths = viz.save_overlays(images, maps, masks, scores, labels, tmp_path, n=2, names=names)
    worst, best = viz.pick_worst_and_best(scores, labels, 2)
    expected = [f"worst_{r:02d}_{viz._safe_name(names[i])}.png" for r, i in enumerate(worst)]
    expected += [f"best_{r:02d}_{viz._safe_name(names[i])}.png" for r, i in enumerate(best)]
    assert [p.name for p in paths] == expected
    assert paths[0].name.startswith("worst_00_") and "/" not in paths[0].name
    assert " " not in "".join(p.name for p in paths)
    assert not [p for p in paths if p.name.endswith(".png.png")]
    for p in paths:
        w, h = _png_size(p)
        assert 400 <= w <= 2000 and 200 <= h <= 2000
    _no_temporaries(tmp_path)
    assert sorted(tmp_path.iterdir()) == sorted(paths)


def test_overlays_default_names_and_no_masks(data, tmp_path):
    images, maps, _, scores, labels, _ = data
    paths = viz.save_overlays(images[..., :1], maps, None, scores, labels, tmp_path, n=1)
    worst, best = viz.pick_worst_and_best(scores, labels, 1)
    assert [p.name for p in paths] == [f"worst_00_{worst[0]:04d}.png",
                                       f"best_00_{best[0]:04d}.png"]
    with pytest.raises(ValueError, match="names"):
        viz.save_overlays(images, maps, None, scores, labels, tmp_path, names=["a"])


def test_safe_name():
    assert viz._safe_name("a/b c\\d:e.png") == "a_b_c_d_e"
    assert viz._safe_name("crack/000.JPG") == "crack_000"
    assert viz._safe_name("v1.2_x") == "v1.2_x"
    assert viz._safe_name("../..") == "image"
    assert viz._safe_name(".hidden") == "hidden"
    assert viz._safe_name("x" * 100 + "end", max_len=10) == "xxxxxxxend"


def test_save_all(data, tmp_path):
    images, maps, masks, scores, labels, result = data
    paths = viz.save_all(result, images, maps, masks, scores, labels, tmp_path, n=1,
                         title="toy", fpr_limit=0.2)
    assert [p.name for p in paths[:3]] == ["roc.png", "pr.png", "pro.png"]
    assert len(paths) == 5 and all(p.is_file() for p in paths)
    _no_temporaries(tmp_path)
    with pytest.raises(TypeError, match="bogus"):
        viz.save_all(result, images, maps, masks, scores, labels, tmp_path, bogus=1)
    with pytest.raises(ValueError, match="with_curves"):
        viz.save_all({}, images, maps, masks, scores, labels, tmp_path)


def test_failed_write_leaves_no_temporary(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    fig = Figure()
    monkeypatch.setattr(fig, "savefig", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        viz._write_png(fig, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_legends_show_the_exact_metrics_of_the_record(data):
    result = data[-1]
    labels = {}
    for name, figure in (("roc", viz._roc_figure(result["curves"], "t", result)),
                         ("pr", viz._pr_figure(result["curves"], "t", result)),
                         ("pro", viz._pro_figure(result["curves"], "t", 0.3, result))):
        labels[name] = " ".join(t.get_text() for t in figure.axes[0].get_legend().get_texts())
    assert f"pixel: AP {result['pixel_ap']:.4f} (exact)" in labels["pr"]
    assert f"image: AUROC {result['image_auroc']:.4f} (exact)" in labels["roc"]
    assert f"AU-PRO@0.3 {result['aupro_0.3']:.4f} (exact)" in labels["pro"]
