"""Tests for adjax.metrics against scikit-learn and an independent NumPy AU-PRO.

Every metric is read from `compute`, the one entry point the library uses. Shapes are chosen so
that few compiled variants are needed (images: 512-bucket; pixels: 6x32x32 and one 32x256x256
set), keeping the file fast on 2 CPU cores.
"""

from __future__ import annotations

import bisect
import math

import jax
import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import (
    auc,
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
)

from adjax import metrics as M

TOL = 1e-6


# ------------------------------------------------------------------------------------------
# Independent references
# ------------------------------------------------------------------------------------------


def ref_f1_max(scores, labels):
    """Max over thresholds of 2PR/(P+R) from sklearn's precision_recall_curve."""
    p, r, t = precision_recall_curve(labels, scores)
    p, r = p[:-1], r[:-1]  # the last point (R=0, P=1) has no threshold
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return f1.max(), t[f1 == f1.max()]


def ref_trapezoid(x, y, x_max):
    """Trapezoid area up to x_max with a linearly interpolated last piece (official script)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    correction = 0.0
    if x_max not in x:
        ins = bisect.bisect(x, x_max)
        y_at = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_at + y[ins - 1]) * (x_max - x[ins - 1])
    keep = x <= x_max
    x, y = x[keep], y[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def ref_aupro(maps, masks, fpr_limit):
    """Plain MVTec AU-PRO: one pass per distinct threshold (clarity over speed)."""
    maps = np.asarray(maps, np.float64)
    regions = np.zeros(maps.shape, np.int64)
    n_regions = 0
    for i, gt in enumerate(masks):  # 8-connected components per image, numbered globally
        lab, n = ndimage.label(gt, np.ones((3, 3), int))
        regions[i] = np.where(lab > 0, lab + n_regions, 0)
        n_regions += n
    sizes = np.bincount(regions.ravel(), minlength=n_regions + 1)
    ok = regions == 0
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:  # descending thresholds, a pixel counts when score >= t
        detected = maps >= t
        fprs.append(np.count_nonzero(detected & ok) / np.count_nonzero(ok))
        hits = np.bincount(regions[detected], minlength=n_regions + 1)
        pros.append(float(np.mean(hits[1:] / sizes[1:])))
    fprs.append(1.0)
    pros.append(1.0)
    return ref_trapezoid(fprs, pros, fpr_limit) / fpr_limit


def aupro(maps, masks, fpr_limit):
    """`compute`'s AU-PRO, with image scores and labels made from the maps and masks."""
    maps, masks = np.asarray(maps), np.asarray(masks)
    return M.compute(maps.max(axis=(1, 2)), masks.any(axis=(1, 2)), maps, masks,
                     fpr_limit=fpr_limit)["aupro"]


def random_set(seed, n=6, size=32, levels=20, normal_images=2):
    """Images with random rectangles as defects and rounded (tie-heavy) maps."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    for i in range(normal_images, n):
        for _ in range(rng.integers(1, 4)):
            r, c = rng.integers(0, size - 6, 2)
            h, w = rng.integers(1, 7, 2)
            masks[i, r:r + h, c:c + w] = True
    maps = rng.random((n, size, size)) + masks * rng.uniform(0.2, 1.5)
    maps = (np.round(maps * levels) / levels).astype(np.float32)
    labels = masks.any(axis=(1, 2)).astype(int)
    scores = maps.max(axis=(1, 2)) + rng.normal(0, 0.05, n).astype(np.float32)
    return scores.astype(np.float32), labels, maps, masks


# ------------------------------------------------------------------------------------------
# Image metrics vs scikit-learn
# ------------------------------------------------------------------------------------------


def test_image_metrics_match_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for n in (2, 3, 4, 7, 50, 400):
        for levels in (1, 2, 5, 50, None):
            for _ in range(3):
                y = rng.random(n) < 0.4
                y[0], y[-1] = True, False  # both classes present
                s = rng.random(n)
                if levels is not None:
                    s = np.round(s * levels) / levels
                s = s.astype(np.float32)
                m = M.compute(s, y)
                assert abs(m["image_auroc"] - roc_auc_score(y, s)) < TOL
                assert abs(m["image_ap"] - average_precision_score(y, s)) < TOL
                f1, thresholds = ref_f1_max(s, y)
                assert abs(m["image_f1_max"] - f1) < TOL
                assert np.isclose(thresholds, m["image_f1_threshold"], rtol=0, atol=0).any()
                p, r, _ = precision_recall_curve(y, s)
                assert abs(m["pr_auc_trapezoid"] - auc(r, p)) < TOL


def test_tiny_sets():
    s, y = np.array([0.3, 0.7], np.float32), np.array([0, 1])
    m = M.compute(s, y)
    assert (m["image_auroc"], m["image_ap"], m["image_f1_max"]) == (1.0, 1.0, 1.0)
    assert M.f1_max(s, y) == (1.0, pytest.approx(0.7))
    s, y = np.array([0.5, 0.2, 0.5]), np.array([1, 0, 0])
    m = M.compute(s, y)
    assert m["image_auroc"] == pytest.approx(0.75, abs=1e-12) == roc_auc_score(y, s)
    assert m["image_ap"] == pytest.approx(0.5, abs=1e-9) == average_precision_score(y, s)
    p, r, _ = precision_recall_curve(y, s)
    assert m["pr_auc_trapezoid"] == pytest.approx(auc(r, p), abs=1e-9)
    # one class only: undefined, never 0.5
    m = M.compute([0.1, 0.2], [0, 0])
    assert math.isnan(m["image_auroc"]) and math.isnan(m["image_ap"])
    assert m["missing"]["image_auroc"] == "no anomalous images (image_labels are all 0)"
    m = M.compute([0.1, 0.2], [1, 1])
    assert math.isnan(m["image_auroc"]) and m["image_ap"] == 1.0
    assert m["missing"] == {"image_auroc": "no normal images (image_labels are all 1)"}


def test_float64_scores_that_float32_would_merge():
    # Distinct in float64, equal in float32: sklearn treats them as distinct thresholds.
    rng = np.random.default_rng(1)
    base = rng.choice([0.1, 0.2, 0.3], 300)
    s = base + rng.integers(0, 3, 300) * 1e-12
    y = rng.random(300) < 0.5
    assert np.unique(s.astype(np.float32)).size < np.unique(s).size
    m = M.compute(s, y)
    assert abs(m["image_auroc"] - roc_auc_score(y, s)) < 1e-12
    assert abs(m["image_ap"] - average_precision_score(y, s)) < 1e-7
    f1, thresholds = ref_f1_max(s, y)
    assert abs(m["image_f1_max"] - f1) < 1e-7
    assert m["image_f1_threshold"] in thresholds  # exact float64 threshold round-trips


def test_two_sum_total_is_compensated():
    x = np.full(1 << 16, 1e-8, np.float32)
    x[0] = 1.0
    hi, lo = jax.jit(M._two_sum_total)(x[None])
    exact = math.fsum(x.astype(np.float64))
    assert abs(float(hi[0]) + float(lo[0]) - exact) < 1e-12
    assert abs(float(np.cumsum(x)[-1]) - exact) > 1e-4  # a running float32 sum loses it all


# ------------------------------------------------------------------------------------------
# Pixel metrics and AU-PRO
# ------------------------------------------------------------------------------------------


def test_large_pixel_set_matches_sklearn_and_reference():
    # 32 maps of 256x256 = 2,097,152 pixels, 64 score levels (many ties).
    rng = np.random.default_rng(2)
    n, size = 32, 256
    masks = np.zeros((n, size, size), bool)
    for i in range(n // 2):
        r, c = rng.integers(0, size - 40, 2)
        masks[i, r:r + rng.integers(2, 40), c:c + rng.integers(2, 40)] = True
        masks[i, rng.integers(0, size), rng.integers(0, size)] = True  # one-pixel regions
    maps = (np.round((rng.random((n, size, size)) + 0.4 * masks) * 64) / 64).astype(np.float32)
    res = M.compute(maps.max(axis=(1, 2)), masks.any(axis=(1, 2)), maps, masks)
    flat_y, flat_s = masks.ravel(), maps.ravel()
    assert abs(res["pixel_auroc"] - roc_auc_score(flat_y, flat_s)) < TOL
    assert abs(res["pixel_ap"] - average_precision_score(flat_y, flat_s)) < TOL
    f1, thresholds = ref_f1_max(flat_s, flat_y)
    assert abs(res["pixel_f1_max"] - f1) < TOL
    assert np.isin(res["pixel_f1_threshold"], thresholds)
    assert abs(res["aupro"] - ref_aupro(maps, masks, 0.3)) < TOL
    assert res["counts"]["pixels"] == n * size * size


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aupro_matches_reference(seed):
    _, _, maps, masks = random_set(seed)
    for limit in (0.01, 0.05, 0.1, 0.3, 0.5, 1.0):
        assert abs(aupro(maps, masks, limit) - ref_aupro(maps, masks, limit)) < TOL


def test_compute_pixel_metrics_match_sklearn():
    scores, labels, maps, masks = random_set(3)
    res = M.compute(scores, labels, maps, masks, fpr_limit=0.05)
    assert abs(res["pixel_auroc"] - roc_auc_score(masks.ravel(), maps.ravel())) < TOL
    assert abs(res["pixel_ap"] - average_precision_score(masks.ravel(), maps.ravel())) < TOL
    assert abs(res["image_auroc"] - roc_auc_score(labels, scores)) < TOL
    assert abs(res["image_ap"] - average_precision_score(labels, scores)) < TOL
    assert res["aupro"] == res["aupro_0.05"]
    assert abs(res["aupro"] - ref_aupro(maps, masks, 0.05)) < TOL
    assert res["missing"] == {}


def test_one_region_by_hand():
    # 4x4 image, region = top-left 2x2; region scores .9 .9 .5 .5; normal: one .7, rest .1.
    # Curve (0,0) (0,.5) (1/12,.5) (1/12,1) (1,1): AU-PRO@0.3 = (0.3 - 0.5/12) / 0.3 = 31/36.
    mask = np.zeros((1, 4, 4), bool)
    mask[0, :2, :2] = True
    amap = np.full((1, 4, 4), 0.1, np.float32)
    amap[0, 0, :2] = 0.9
    amap[0, 1, :2] = 0.5
    amap[0, 3, 3] = 0.7
    assert aupro(amap, mask, 0.3) == pytest.approx(31 / 36, abs=1e-7)
    assert aupro(amap, mask, 1.0) == pytest.approx(ref_aupro(amap, mask, 1.0), abs=1e-7)


def test_regions_touching_at_a_corner_are_one_region():
    # A 2x2 and a 3x3 square that share only a corner: ONE 8-connected region of 13 pixels.
    mask = np.zeros((1, 12, 12), bool)
    mask[0, 2:4, 2:4] = True
    mask[0, 4:7, 4:7] = True
    _, n_regions = M.label_regions(mask)
    assert n_regions == 1
    amap = mask.astype(np.float32) * 0
    amap[0, 2:4, 2:4] = 1.0  # only the small square is detected
    # one region: PRO jumps to 4/13 at FPR 0  ->  (8/13 + 0.3 * 9/13) / 2
    assert aupro(amap, mask, 0.3) == pytest.approx((8 + 2.7) / 26, abs=1e-7)
    assert aupro(amap, mask, 0.3) == pytest.approx(ref_aupro(amap, mask, 0.3), abs=1e-7)
    # moved apart by one pixel they are two regions: PRO jumps to (1 + 0) / 2
    apart = np.zeros_like(mask)
    apart[0, 2:4, 2:4] = True
    apart[0, 5:8, 5:8] = True
    assert M.label_regions(apart)[1] == 2
    # PRO jumps to (1 + 0) / 2 at FPR 0, then rises linearly to 1 at FPR 1
    assert aupro(amap, apart, 0.3) == pytest.approx((0.5 + 0.65) / 2, abs=1e-7)


def test_aupro_never_exceeds_one():
    _, _, _, masks = random_set(4)
    perfect = masks.astype(np.float32)
    assert aupro(perfect, masks, 0.3) == 1.0
    rng = np.random.default_rng(4)
    separated = np.where(masks, 1.0 + rng.random(masks.shape), rng.random(masks.shape))
    assert aupro(separated.astype(np.float32), masks, 0.3) == 1.0
    for limit in (0.001, 0.3, 1.0):  # PRO is 1 from FPR 0 on, so is its area at every limit
        assert aupro(separated.astype(np.float32), masks, limit) == 1.0


# ------------------------------------------------------------------------------------------
# Edge cases
# ------------------------------------------------------------------------------------------


def test_no_anomalous_images():
    _, _, maps, _ = random_set(5)
    scores = maps.max(axis=(1, 2))
    res = M.compute(scores, np.zeros(6, int), maps, np.zeros(maps.shape, bool))
    for key in ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap",
                "pixel_f1_max", "aupro", "aupro_0.3", "pr_auc_trapezoid", "pro_thesis003"):
        assert math.isnan(res[key]), key
        assert "no anomalous" in res["missing"][key]


def test_all_pixels_normal_but_images_labelled():
    scores, labels, maps, _ = random_set(6)
    res = M.compute(scores, labels, maps, np.zeros(maps.shape, bool))
    assert abs(res["image_auroc"] - roc_auc_score(labels, scores)) < TOL
    assert "image_auroc" not in res["missing"]
    assert math.isnan(res["pixel_auroc"]) and math.isnan(res["aupro"])
    assert res["missing"]["aupro"] == "no anomalous pixels (gt_masks are all 0)"


def test_no_normal_pixels():
    scores, labels, maps, _ = random_set(7)
    res = M.compute(scores, labels, maps, np.ones(maps.shape, bool))
    assert math.isnan(res["pixel_auroc"]) and math.isnan(res["aupro"])
    assert "no normal pixels" in res["missing"]["aupro"]
    assert res["pixel_ap"] == 1.0  # AP is defined without negatives (as in sklearn)


def test_constant_scores_give_exactly_one_half():
    scores, labels, maps, masks = random_set(8)
    res = M.compute(np.zeros(6), labels, np.full(maps.shape, 0.25, np.float32), masks)
    assert res["image_auroc"] == 0.5 == roc_auc_score(labels, np.zeros(6))
    assert res["pixel_auroc"] == 0.5
    assert res["aupro"] == pytest.approx(0.15, abs=1e-7)  # the diagonal from (0,0) to (1,1)


def test_nan_raises_a_clear_error():
    scores, labels, maps, masks = random_set(9)
    bad = maps.copy()
    bad[3, 5, 7] = np.nan
    with pytest.raises(ValueError, match="anomaly_maps contains NaN at image 3"):
        M.compute(scores, labels, bad, masks)
    bad_scores = scores.copy()
    bad_scores[1] = np.nan
    with pytest.raises(ValueError, match="image_scores contains NaN at index 1"):
        M.compute(bad_scores, labels)
    with pytest.raises(ValueError, match="only 0 and 1"):
        M.compute(scores, labels * 2)
    with pytest.raises(ValueError, match="both anomaly_maps and gt_masks"):
        M.compute(scores, labels, maps)


# ------------------------------------------------------------------------------------------
# Chunking, compilation, curves
# ------------------------------------------------------------------------------------------


def test_chunked_equals_unchunked():
    scores, labels, maps, masks = random_set(10)
    full = M.compute(scores, labels, maps, masks)
    for chunk in (1500, 1536):  # 5 chunks, the last one padded; 4 full chunks (one bucket)
        part = M.compute(scores, labels, maps, masks, chunk_pixels=chunk)
        for key, value in full.items():
            if isinstance(value, float):
                assert part[key] == pytest.approx(value, abs=1e-12, rel=0), key
        assert part["pixel_f1_threshold"] == full["pixel_f1_threshold"]
    with pytest.raises(ValueError, match="chunk_pixels"):
        M.compute(scores, labels, maps, masks, chunk_pixels=1500, with_curves=True)


def test_bucketed_shapes_do_not_recompile():
    if not hasattr(M._rank_kernel, "_cache_size"):
        pytest.skip("jit cache size not exposed by this jax version")
    rng = np.random.default_rng(13)
    M.compute(rng.random(100).astype(np.float32), rng.random(100) < 0.5)
    before = M._rank_kernel._cache_size()
    for n in (101, 257, 300, 511):
        M.compute(rng.random(n).astype(np.float32), rng.random(n) < 0.5)
    assert M._rank_kernel._cache_size() == before
    assert [M._bucket(n) for n in (1, 512, 513, 700, 1024, 1025)] == [512, 512, 640, 768,
                                                                       1024, 1280]


def test_curves_are_consistent_with_the_metrics():
    scores, labels, maps, masks = random_set(14)
    res = M.compute(scores, labels, maps, masks, with_curves=True, curve_points=None)
    roc = res["curves"]["pixel_roc"]
    fpr, tpr = np.r_[0.0, roc["fpr"]], np.r_[0.0, roc["tpr"]]
    area = np.sum(0.5 * (tpr[1:] + tpr[:-1]) * np.diff(fpr))
    assert area == pytest.approx(res["pixel_auroc"], abs=1e-9)
    pro = res["curves"]["pro"]
    area = ref_trapezoid(np.r_[0.0, pro["fpr"], 1.0], np.r_[0.0, pro["pro"], 1.0], 0.3) / 0.3
    assert area == pytest.approx(res["aupro"], abs=1e-5)  # float32 cumsum curve: plots only
    assert np.all(np.diff(roc["thresholds"]) < 0)
    img = res["curves"]["image_pr"]
    assert img["recall"][-1] == 1.0
    assert len(roc["thresholds"]) == np.unique(maps).size == 40
    small = M.compute(scores, labels, maps, masks, with_curves=True, curve_points=25)
    kept = small["curves"]["pixel_roc"]["thresholds"]
    assert len(kept) == 25 and set(kept) <= set(roc["thresholds"])
    assert (kept[0], kept[-1]) == (roc["thresholds"][0], roc["thresholds"][-1])


def test_compat_keys():
    scores, labels, maps, masks = random_set(15)
    res = M.compute(scores, labels, maps, masks)
    # the seed-003 thesis' "PRO" is pixel AUROC over all test pixels (its VT-ADL test code)
    assert abs(res["pro_thesis003"] - roc_auc_score(masks.ravel(), maps.ravel())) < TOL
    p, r, _ = precision_recall_curve(labels, scores)
    assert res["pr_auc_trapezoid"] == pytest.approx(auc(r, p), abs=TOL)


# ------------------------------------------------------------------------------------------
# Thresholds and binary metrics
# ------------------------------------------------------------------------------------------


def test_threshold_from_validation():
    s = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert M.threshold_from_validation(s, "max") == 5.0
    assert M.threshold_from_validation(s, "quantile", q=0.5) == 3.0
    assert M.threshold_from_validation(s, "quantile", q=0.75) == 4.0
    assert M.threshold_from_validation(s, "k_sigma", k=2.0) == pytest.approx(3 + 2 * 2**0.5)
    # with labels, max/quantile/k_sigma use only the normal samples
    assert M.threshold_from_validation([1, 2, 3, 10], "max", val_labels=[0, 0, 0, 1]) == 3.0
    # F1: thresholds .8 -> 2/3, .4 -> 1/2, .35 -> 4/5, .1 -> 2/3
    val, lab = [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]
    assert M.threshold_from_validation(val, "f1", val_labels=lab) == pytest.approx(0.35)
    with pytest.raises(ValueError, match="at least one anomalous"):
        M.threshold_from_validation(val, "f1", val_labels=[0, 0, 0, 0])
    with pytest.raises(ValueError, match="unknown method"):
        M.threshold_from_validation(val, "median")


def test_binary_metrics_by_hand():
    s, y = [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]
    m = M.binary_metrics(s, y, 0.35)  # predictions 0 1 1 1: TP 2, FP 1, FN 0, TN 1
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 0, 1)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == 1.0
    assert m["f1"] == pytest.approx(0.8)
    assert m["iou"] == pytest.approx(2 / 3)
    assert m["accuracy"] == 0.75
    f1, thr = M.f1_max(s, y)
    assert M.binary_metrics(s, y, thr)["f1"] == pytest.approx(f1, abs=1e-7)
    masks = np.zeros((1, 2, 2), bool)
    masks[0, 0] = True
    pix = M.binary_metrics(np.array([[[0.9, 0.2], [0.8, 0.1]]]), masks, 0.5)
    assert pix["iou"] == pytest.approx(1 / 3)  # TP 1, FP 1, FN 1
