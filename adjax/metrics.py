"""Exact, vectorised anomaly-detection metrics in JAX.

Everything adjax reports rests on this module, so every metric is *exact*: no threshold
sampling, no binning, ties handled the way scikit-learn and the official MVTec AD evaluation
handle them (all samples that share a score form one threshold).

Definitions (a sample is *positive* / anomalous when its label is 1; a prediction is positive
when ``score >= threshold``; thresholds are the distinct scores); ``compute`` reports each at
image level (``image_*``) and, given maps and masks, at pixel level (``pixel_*``):

* ``auroc`` -- area under the ROC curve (trapezoid over the exact curve), equal to
  ``sklearn.metrics.roc_auc_score``. Constant scores give exactly 0.5.
* ``ap`` -- step-wise average precision, ``sum_k (R_k - R_{k-1}) P_k`` over the distinct
  thresholds, equal to ``sklearn.metrics.average_precision_score`` (NOT a trapezoid).
* ``f1_max`` -- the maximum over thresholds of ``F1 = 2 TP / (2 TP + FP + FN)``, the same
  values as ``2 P R / (P + R)`` from ``sklearn.metrics.precision_recall_curve``; reported with
  its threshold (``*_f1_threshold``).
* ``pr_auc_trapezoid`` (images only) -- trapezoid area under the PR curve including the
  ``(R=0, P=1)`` end point, i.e. ``sklearn.metrics.auc(recall, precision)`` after
  ``precision_recall_curve``. Only for compatibility: it gives about 0.5+ to a constant
  detector. Prefer ``image_ap``.
* ``aupro`` -- the MVTec AD AU-PRO (Bergmann et al., official ``evaluate_experiment.py``):
  ground-truth regions are the 8-connected components of each mask (``scipy.ndimage.label``,
  3x3 ones, per image); at each distinct threshold ``t`` (scores sorted descending, a pixel
  counts as detected when ``score >= t``), ``PRO(t)`` is the mean over *all* regions of all
  images of the fraction of the region detected, and ``FPR(t)`` the fraction of *all* normal
  (mask 0) pixels with ``score >= t``. The curve ``(0,0), (FPR(t), PRO(t))..., (1,1)`` is
  integrated with the trapezoid rule up to ``fpr_limit``, the last segment cut by linear
  interpolation at exactly ``fpr_limit``, and divided by ``fpr_limit``.

How it is computed (one sort, no threshold loop):

1. Scores become uint32 sort keys whose ascending order is descending score order (a float32
   score is one word; a float64 score that float32 cannot hold exactly is two words, so ties are
   decided on the float64 values exactly as scikit-learn decides them). ``-0.0`` equals ``0.0``.
2. One ``lax.sort`` carries a float32 per-sample weight ``w``: ``0`` for a negative / normal
   pixel, ``> 0`` for a positive (``1`` for images, ``1 / region size`` for pixels) and ``-1``
   for padding.
3. Integer (int32) cumulative counts of positives and negatives, and a "last index of each
   distinct score" mask, give every sample the exact global counts at its own threshold:
   ``TP(>= s)``, ``FP(>= s)``, ``TP(> s)``, ``FP(> s)``.
4. Each metric is then a sum of non-negative per-sample terms (the rank-sum form of the curve
   areas), added with a compensated (two-float) pairwise sum and finished in float64 on the host:

   * AUROC ``= sum_{positives} (2 N - FP(>= s) - FP(> s)) / (2 P N)`` (integer terms);
   * AP ``= sum_{positives} TP(>= s) / (TP(>= s) + FP(>= s)) / P``;
   * AU-PRO: a pixel of region ``r`` adds ``1/|r|`` to every PRO point at or after its threshold,
     so its share of the trapezoid area is ``(1/|r|) * c(FP(> s), FP(>= s))`` with
     ``c = L - (a + b)/2`` for a segment ``[a, b]`` left of the limit ``L = fpr_limit * N_ok``,
     ``c = (L - a)^2 / (2 (b - a))`` for the segment that the limit cuts, and 0 beyond it. This
     is algebraically identical to the official cumulative-sum-then-trapezoid code, but needs no
     float cumulative sum of PRO weights (which would lose ~1e-6 over millions of pixels).

Precision achieved (float32 on the device, no ``jax_enable_x64``): counts are exact int32.
AUROC terms are exact integers while the number of negatives is below 2**23, and the compensated
sum adds them essentially exactly, so AUROC equals scikit-learn to ~1e-15 (measured 0 to 1e-11
on 2M to 33M pixels); beyond 2**23 negatives a term carries at most a 2**-24 relative rounding.
AP and the PR trapezoid carry one or two float32 roundings per (non-negative) term: |error| <=
~2e-7 worst case, measured ~5e-12. F1-max is recomputed in float64 from the integer counts at
the best threshold: exact, unless two thresholds' F1 differ by less than float32 resolution,
where the pick may cost <= 6e-8. AU-PRO carries the float32 rounding of ``1/|r|`` and of ``c``:
|error| <= ~3e-7 worst case, measured 2e-9 to 3e-8 against the float64 official algorithm. It is
clipped to [0, 1] as the official code clips PRO, so it can never exceed 1. All of this holds
for up to 2**30 - 1 samples per call. The tests check 1e-6 against scikit-learn and an
independent NumPy AU-PRO on up to ~2M pixels.

Shapes are padded to a bucketed length (``m * 2**k`` with ``m`` in 4..7, at least 512; padding
has weight -1 and so counts nowhere), so calls with slightly different sizes reuse one compiled
function. ``compute(..., chunk_pixels=n)`` bounds device memory for pixel metrics: each chunk is
sorted once, and the global counts of a chunk's pixels are the sum over chunks of binary-search
counts, which yields bit-identical per-pixel terms.

Missing metrics: when a metric is undefined (no anomalous images, no anomalous or no normal
pixels) ``compute`` reports it as ``nan`` and puts a one-sentence reason under
``result["missing"][key]``. It is never reported as 0.5 or 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from scipy import ndimage

__all__ = [
    "binary_metrics",
    "compute",
    "f1_max",
    "label_regions",
    "threshold_from_validation",
]

_MIN_BUCKET = 512
# Counts are int32 and the AUROC term 2N - FP(>=s) - FP(>s) must stay below 2**31.
_MAX_SAMPLES = 2**30 - 1
_PAD_WORD = np.uint32(0xFFFFFFFF)  # above every non-NaN score's key: padding sorts last
_PAD_WEIGHT = np.float32(-1.0)


# --------------------------------------------------------------------------------------------
# Host-side preparation
# --------------------------------------------------------------------------------------------


def _bucket(n: int) -> int:
    """Smallest ``m * 2**k >= n`` with ``m`` in 4..7 (at most 25% padding), at least 512."""
    n = max(int(n), _MIN_BUCKET)
    k = max(n.bit_length() - 3, 0)
    return -(-n // (1 << k)) << k


def _first_nan(a: np.ndarray) -> int | None:
    flat = np.isnan(a).reshape(a.shape[0], -1).any(axis=1) if a.ndim > 1 else np.isnan(a)
    idx = np.flatnonzero(flat)
    return int(idx[0]) if idx.size else None


def _scores(x: Any, name: str, per: str) -> np.ndarray:
    """Scores as float32 when that is lossless, else float64; NaN raises a ValueError."""
    a = np.asarray(x)
    if a.dtype == np.bool_ or np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float64)
    elif a.dtype not in (np.float32, np.float64):
        try:  # float16 / bfloat16 and friends are exact in float32
            a = a.astype(np.float32)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}") from err
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    bad = _first_nan(a)
    if bad is not None:
        raise ValueError(f"{name} contains NaN at {per} {bad}")
    if a.dtype == np.float64:
        a32 = a.astype(np.float32)
        if np.array_equal(a32, a):  # one sort word instead of two when nothing is lost
            a = a32
    return a


def _binary(x: Any, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    a = np.asarray(x)
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {shape}")
    if a.dtype != np.bool_:
        if not ((a == 0) | (a == 1)).all():
            raise ValueError(f"{name} must contain only 0 and 1 (or booleans)")
        a = a.astype(bool)
    return a


def _as_maps(x: Any, name: str) -> Any:
    """Accept [N, H, W], and [N, 1, H, W] / [N, H, W, 1] with a singleton channel."""
    a = np.asarray(x)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    elif a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 3:
        raise ValueError(f"{name} must have shape [N, H, W], got {a.shape}")
    return a


def _encode(a: np.ndarray) -> tuple[np.ndarray, ...]:
    """uint32 words whose ascending lexicographic order is the descending order of ``a``.

    The IEEE bit pattern is made order-preserving (flip all bits of negatives, set the sign bit
    of non-negatives) and then inverted, so that an ascending unsigned sort lists the highest
    score first. float64 is split into a (high, low) word pair.
    """
    a = np.ravel(a)
    a = a + a.dtype.type(0)  # -0.0 + 0.0 == +0.0: both zeros are one threshold (as in sklearn)
    if a.dtype == np.float32:
        b = a.view(np.uint32)
        return (np.where(b >> np.uint32(31), b, np.uint32(0x7FFFFFFF) - b),)
    b = a.view(np.uint64)
    d = np.where(b >> np.uint64(63), b, np.uint64(0x7FFFFFFFFFFFFFFF) - b)
    return (d >> np.uint64(32)).astype(np.uint32), (d & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def _decode(words: Sequence[Any]) -> np.ndarray:
    """Inverse of ``_encode``: uint32 word arrays (or scalars) back to float64 scores."""
    if len(words) == 1:
        d = np.asarray(words[0], dtype=np.uint32)
        b = np.where(d >> np.uint32(31), d, np.uint32(0x7FFFFFFF) - d).astype(np.uint32)
        return b.view(np.float32).astype(np.float64)
    d = (np.asarray(words[0], np.uint64) << np.uint64(32)) | np.asarray(words[1], np.uint64)
    b = np.where(d >> np.uint64(63), d, np.uint64(0x7FFFFFFFFFFFFFFF) - d).astype(np.uint64)
    return b.view(np.float64)


def _pad(words: tuple[np.ndarray, ...], w: np.ndarray, size: int):
    n = w.shape[0]
    if n == size:
        return words, w
    words = tuple(np.concatenate([k, np.full(size - n, _PAD_WORD)]) for k in words)
    return words, np.concatenate([w, np.full(size - n, _PAD_WEIGHT)])


# --------------------------------------------------------------------------------------------
# Device kernels (module level so that they compile once per bucketed shape)
# --------------------------------------------------------------------------------------------


class _Counts(NamedTuple):
    tp_ge: jax.Array  # positives with score >= this sample's score
    fp_ge: jax.Array  # negatives with score >= this sample's score
    tp_gt: jax.Array  # positives with score > this sample's score
    fp_gt: jax.Array  # negatives with score > this sample's score


def _sort_desc(words, w):
    out = lax.sort((*words, w), num_keys=len(words))
    return tuple(out[:-1]), out[-1]


def _last_of_group(words):
    """True at the last index of each run of equal keys (the point sklearn keeps)."""
    diff = words[0][1:] != words[0][:-1]
    for k in words[1:]:
        diff = diff | (k[1:] != k[:-1])
    return jnp.concatenate([diff, jnp.ones((1,), bool)])


def _self_counts(words, w) -> _Counts:
    """Exact counts at each sample's threshold, within one sorted array."""
    # Positives and negatives are stacked so that each scan below is one XLA op (compile time).
    cum = jnp.cumsum(jnp.stack([w > 0, w == 0]).astype(jnp.int32), axis=1)
    last = _last_of_group(words)[None]
    # Value at the last index of this sample's tie group.
    ge = lax.cummin(jnp.where(last, cum, jnp.iinfo(jnp.int32).max), axis=1, reverse=True)
    # Value at the last index of the previous tie group (0 if none).
    gt = lax.cummax(jnp.where(last, cum, 0), axis=1)
    gt = jnp.pad(gt[:, :-1], ((0, 0), (1, 0)))
    return _Counts(ge[0], ge[1], gt[0], gt[1])


def _lex_less(a, b, or_equal: bool):
    """Lexicographic ``a < b`` (or ``<=``) over tuples of uint32 words."""
    res = (a[-1] <= b[-1]) if or_equal else (a[-1] < b[-1])
    for x, y in zip(a[-2::-1], b[-2::-1], strict=True):
        res = (x < y) | ((x == y) & res)
    return res


def _search(sorted_words, queries, or_equal: bool):
    """Vectorised binary search: number of sorted keys ``<`` (or ``<=``) each query."""
    n = sorted_words[0].shape[0]
    lo = jnp.zeros(queries[0].shape, jnp.int32)
    hi = jnp.full(queries[0].shape, n, jnp.int32)

    def body(_, carry):
        lo, hi = carry
        mid = (lo + hi) // 2
        key = tuple(s[jnp.minimum(mid, n - 1)] for s in sorted_words)
        go_right = _lex_less(key, queries, or_equal)
        active = lo < hi
        return (jnp.where(active & go_right, mid + 1, lo), jnp.where(active & ~go_right, mid, hi))

    lo, _ = lax.fori_loop(0, n.bit_length(), body, (lo, hi))
    return lo


@jax.jit
def _add_cross_counts(acc: _Counts, q_words, b_words, b_w) -> _Counts:
    """``acc`` plus the counts that sorted chunk ``b`` contributes at each query's score."""
    zero = jnp.zeros((1,), jnp.int32)
    tpc = jnp.concatenate([zero, jnp.cumsum((b_w > 0).astype(jnp.int32))])
    fpc = jnp.concatenate([zero, jnp.cumsum((b_w == 0).astype(jnp.int32))])
    ge = _search(b_words, q_words, or_equal=True)  # keys <= query <=> scores >= query score
    gt = _search(b_words, q_words, or_equal=False)
    return _Counts(acc.tp_ge + tpc[ge], acc.fp_ge + fpc[ge], acc.tp_gt + tpc[gt],
                   acc.fp_gt + fpc[gt])


def _two_sum_total(x):
    """Compensated pairwise sums along the last axis of float32 ``x``, as (hi, lo) pairs.

    Knuth's TwoSum keeps the rounding error of every pairwise addition in ``lo``, so hi + lo is
    accurate to ~log2(n) * 2**-48 relative (a float32 sum/cumsum loses ~1e-5 over 2M terms).
    """
    hi, lo = x, jnp.zeros_like(x)
    while hi.shape[-1] > 1:
        if hi.shape[-1] % 2:
            pad = [(0, 0)] * (hi.ndim - 1) + [(0, 1)]
            hi, lo = jnp.pad(hi, pad), jnp.pad(lo, pad)
        half = hi.shape[-1] // 2  # add the two contiguous halves: a tree, memory-friendly
        a, b = hi[..., :half], hi[..., half:]
        s = a + b
        bv = s - a
        err = (a - (s - bv)) + (b - bv)
        hi, lo = s, lo[..., :half] + lo[..., half:] + err
    return hi[..., 0], lo[..., 0]


def _terms(words, w, c: _Counts, n_pos, n_neg, lam, *, pro: bool, trapz: bool):
    """Per-sample terms of every metric, summed; see the module docstring for the formulas."""
    f32 = jnp.float32
    pos = w > 0
    tp, fp = c.tp_ge.astype(f32), c.fp_ge.astype(f32)
    names, terms = ["auroc", "ap"], []
    # AUROC: twice the Mann-Whitney U, integer terms (exact in float32 below 2**24).
    terms.append(((n_neg - c.fp_ge) + (n_neg - c.fp_gt)).astype(f32))
    prec = tp / jnp.maximum(tp + fp, 1.0)  # every positive sample has tp + fp >= 1
    terms.append(prec)
    if trapz:
        tpg, fpg = c.tp_gt.astype(f32), c.fp_gt.astype(f32)
        prev = jnp.where(tpg + fpg > 0, tpg / jnp.maximum(tpg + fpg, 1.0), 1.0)  # (R=0, P=1)
        names.append("trapz")
        terms.append(0.5 * (prec + prev))
    if pro:
        a, b = c.fp_gt.astype(f32), fp
        full = lam - 0.5 * (a + b)  # segment [a, b] entirely left of the limit
        cut = 0.5 * (lam - a) * ((lam - a) / jnp.maximum(b - a, 1.0))  # segment cut at the limit
        names.append("pro")
        terms.append(w * jnp.where(b <= lam, full, jnp.where(a < lam, cut, 0.0)))
    # Only positives carry terms; one stacked compensated sum keeps the compiled graph small.
    hi, lo = _two_sum_total(jnp.where(pos[None], jnp.stack(terms), 0.0))
    out = {k: (hi[i], lo[i]) for i, k in enumerate(names)}
    # F1 = 2TP / (TP + FP + P); argmax takes the first = highest threshold among exact ties.
    f1 = jnp.where(w >= 0, 2.0 * tp / jnp.maximum(tp + fp + n_pos.astype(f32), 1.0), -1.0)
    best = jnp.argmax(f1)
    out["f1"] = f1[best]
    out["f1_counts"] = (c.tp_ge[best], c.fp_ge[best])  # the host recomputes F1 in float64
    out["f1_key"] = tuple(k[best] for k in words)
    return out


@partial(jax.jit, static_argnames=("pro", "trapz", "curves"))
def _rank_kernel(words, w, n_pos, n_neg, lam, *, pro: bool, trapz: bool, curves: bool):
    """Sort once, count, and sum every metric's terms (the unchunked path)."""
    words, w = _sort_desc(words, w)
    c = _self_counts(words, w)
    out = _terms(words, w, c, n_pos, n_neg, lam, pro=pro, trapz=trapz)
    if curves:
        proc = jnp.cumsum(jnp.where(w > 0, w, 0.0)) if pro else None  # for plotting only
        out["curve"] = dict(last=_last_of_group(words) & (w >= 0), words=words, tp=c.tp_ge,
                            fp=c.fp_ge, pro=proc)
    return out


_sort_kernel = jax.jit(_sort_desc)


@partial(jax.jit, static_argnames=("pro", "trapz"))
def _chunk_kernel(words, w, other: _Counts, n_pos, n_neg, lam, *, pro: bool, trapz: bool):
    """Terms of one sorted chunk, given the counts that all other chunks contribute."""
    own = _self_counts(words, w)
    c = _Counts(*(x + y for x, y in zip(own, other, strict=True)))
    return _terms(words, w, c, n_pos, n_neg, lam, pro=pro, trapz=trapz)


# --------------------------------------------------------------------------------------------
# Host driver
# --------------------------------------------------------------------------------------------


class _Ranked(NamedTuple):
    n_pos: int
    n_neg: int
    auroc: float
    ap: float
    f1: float
    f1_threshold: float
    trapz: float
    pro_area: float  # sum of region-weighted shares, in FP units (divide by regions * lam)
    lam: float
    curve: dict | None


def _fsum(pairs) -> float:
    return math.fsum(float(v) for p in pairs for v in p)


def _rank(words, w, *, lam: float = 0.0, pro: bool = False, trapz: bool = True,
          curves: bool = False, chunk: int | None = None) -> _Ranked:
    n = w.shape[0]
    if n > _MAX_SAMPLES:
        raise ValueError(f"at most {_MAX_SAMPLES} samples per call are supported, got {n}")
    n_pos, n_neg = int(np.count_nonzero(w > 0)), int(np.count_nonzero(w == 0))
    lam32 = np.float32(lam)
    args = (np.int32(n_pos), np.int32(n_neg), lam32)
    if chunk is None or n <= chunk:
        pw, pwt = _pad(words, w, _bucket(n))
        outs = [_rank_kernel(pw, pwt, *args, pro=pro, trapz=trapz, curves=curves)]
    else:
        if curves:
            raise ValueError("with_curves=True needs one global sort; it cannot be combined "
                             "with chunk_pixels")
        outs = _rank_chunked(words, w, args, chunk, pro=pro, trapz=trapz)
    outs = jax.device_get(outs)
    # Highest F1; among exact ties the highest threshold (smallest key), as in one global sort.
    best = min(outs, key=lambda o: (-float(o["f1"]), tuple(int(k) for k in o["f1_key"])))
    tp, fp = (int(v) for v in best["f1_counts"])
    return _Ranked(
        n_pos, n_neg,
        auroc=_fsum(o["auroc"] for o in outs),
        ap=_fsum(o["ap"] for o in outs),
        f1=2.0 * tp / (tp + fp + n_pos) if n_pos else math.nan,
        f1_threshold=float(_decode(best["f1_key"])),
        trapz=_fsum(o["trapz"] for o in outs) if trapz else math.nan,
        pro_area=_fsum(o["pro"] for o in outs) if pro else math.nan,
        lam=float(lam32),
        curve=outs[0].get("curve"),
    )


def _rank_chunked(words, w, args, chunk: int, *, pro: bool, trapz: bool) -> list[dict]:
    """Memory-bounded path: the device holds two chunks at a time; results are identical."""
    size = _bucket(chunk)
    starts = range(0, w.shape[0], chunk)
    # Pass 1: sort every chunk once; the sorted runs wait on the host.
    runs = []
    for s in starts:
        cw, cwt = _pad(tuple(k[s:s + chunk] for k in words), w[s:s + chunk], size)
        runs.append(jax.device_get(_sort_kernel(cw, cwt)))
    # Pass 2: a chunk's global counts are its own plus a binary search in every other run.
    outs = []
    for i, (qw, qwt) in enumerate(runs):
        zeros = jnp.zeros((size,), jnp.int32)
        acc = _Counts(zeros, zeros, zeros, zeros)
        for j, (bw, bwt) in enumerate(runs):
            if j != i:
                acc = _add_cross_counts(acc, qw, bw, bwt)
        outs.append(_chunk_kernel(qw, qwt, acc, *args, pro=pro, trapz=trapz))
    return outs


def _binary_inputs(scores, labels, name="scores"):
    s = _scores(scores, name, "index").ravel()
    y = _binary(labels, "labels").ravel()
    if y.shape != s.shape:
        raise ValueError(f"{name} and labels differ in size: {s.size} vs {y.size}")
    return _encode(s), y.astype(np.float32)  # weight 1 for a positive, 0 for a negative


def _image_metrics(r: _Ranked) -> dict[str, float]:
    nan = math.nan
    both = r.n_pos > 0 and r.n_neg > 0
    has_pos = r.n_pos > 0
    return {
        "auroc": min(r.auroc / (2.0 * r.n_pos * r.n_neg), 1.0) if both else nan,
        "ap": min(r.ap / r.n_pos, 1.0) if has_pos else nan,
        "f1_max": r.f1 if has_pos else nan,
        "f1_threshold": r.f1_threshold if has_pos else nan,
        "pr_auc_trapezoid": min(r.trapz / r.n_pos, 1.0) if has_pos else nan,
    }


# --------------------------------------------------------------------------------------------
# Public building blocks
# --------------------------------------------------------------------------------------------


def f1_max(scores, labels) -> tuple[float, float]:
    """``(best F1, its threshold)`` over all distinct thresholds (positive iff ``s >= t``).

    F1 at each threshold equals ``2PR/(P+R)`` from ``sklearn.metrics.precision_recall_curve``.
    Among thresholds with exactly equal F1 the highest is returned. NaN without positives.
    """
    words, w = _binary_inputs(scores, labels)
    # trapz=True: the kernel `compute` compiles for image scores, so no second compile
    m = _image_metrics(_rank(words, w, trapz=True))
    return m["f1_max"], m["f1_threshold"]


def label_regions(gt_masks) -> tuple[np.ndarray, int]:
    """8-connected ground-truth regions, labelled per image and numbered across images.

    Equivalent to ``scipy.ndimage.label(mask, np.ones((3, 3)))`` on every image (the official
    MVTec AD evaluation), done in one call with a structure that never links two images.

    Returns:
      ``(labels, n_regions)``: int32 labels of shape [N, H, W] (0 = normal pixel).
    """
    masks = _binary(_as_maps(gt_masks, "gt_masks"), "gt_masks")
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 3x3 ones within an image, nothing across images
    labels, n = ndimage.label(masks, structure=structure)
    return labels.astype(np.int32, copy=False), int(n)


def _pixel_inputs(anomaly_maps, gt_masks, n_images: int | None = None):
    maps = _scores(_as_maps(anomaly_maps, "anomaly_maps"), "anomaly_maps", "image")
    labels, n_regions = label_regions(gt_masks)
    if labels.shape != maps.shape:
        raise ValueError(f"gt_masks has shape {labels.shape}, anomaly_maps has {maps.shape}")
    if n_images is not None and maps.shape[0] != n_images:
        raise ValueError(f"{maps.shape[0]} anomaly maps for {n_images} image scores")
    sizes = np.bincount(labels.ravel(), minlength=n_regions + 1)
    # 1/|r| per region pixel (the PRO increment, normalised by the region count on the host);
    # 0 marks a normal pixel. Every region pixel has weight > 0, so it is also the positive flag.
    inv = np.zeros(n_regions + 1, np.float32)
    inv[1:] = 1.0 / sizes[1:]
    return _encode(maps), inv[labels.ravel()], n_regions, int(sizes[0])


def _check_limit(fpr_limit: float) -> float:
    fpr_limit = float(fpr_limit)
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    return fpr_limit


def _aupro_value(r: _Ranked, n_regions: int, n_ok: int) -> float:
    if n_regions == 0 or n_ok == 0:
        return math.nan
    return float(min(max(r.pro_area / (n_regions * r.lam), 0.0), 1.0))


# --------------------------------------------------------------------------------------------
# compute
# --------------------------------------------------------------------------------------------


def _curve_from(c: dict, n_pos: int, n_neg: int, n_regions: int, points: int | None):
    idx = np.flatnonzero(c["last"])
    if points is not None and idx.size > points:
        idx = idx[np.unique(np.linspace(0, idx.size - 1, points).round().astype(np.int64))]
    thr = _decode(tuple(wd[idx] for wd in c["words"]))
    tp, fp = c["tp"][idx].astype(np.float64), c["fp"][idx].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        roc = {"fpr": fp / n_neg, "tpr": tp / n_pos, "thresholds": thr}
        pr = {"precision": tp / (tp + fp), "recall": tp / n_pos, "thresholds": thr}
    curves = {"roc": roc, "pr": pr}
    if c.get("pro") is not None and n_regions:
        pro = np.minimum(c["pro"][idx].astype(np.float64) / n_regions, 1.0)
        curves["pro"] = {"fpr": roc["fpr"], "pro": pro, "thresholds": thr}
    return curves


def compute(image_scores, image_labels, anomaly_maps=None, gt_masks=None, *,
            fpr_limit: float = 0.3, with_curves: bool = False,
            chunk_pixels: int | None = None,
            curve_points: int | None = 1000) -> dict[str, Any]:
    """All image- and pixel-level metrics of one test set (one category).

    Args:
      image_scores: [N] real, higher = more anomalous.
      image_labels: [N] {0, 1} or bool.
      anomaly_maps: optional [N, H, W] real (a singleton channel axis is accepted).
      gt_masks: optional [N, H, W] {0, 1} or bool; pixel metrics need both maps and masks.
      fpr_limit: AU-PRO integration limit in (0, 1].
      with_curves: also return the curves under ``"curves"`` (costs nothing extra; not with
        ``chunk_pixels``).
      chunk_pixels: process the pixels in chunks of this many, holding at most two chunks on the
        device at a time; the result is the same as without chunking.
      curve_points: with ``with_curves``, keep at most this many points per curve, evenly spaced
        over the distinct thresholds (``None`` keeps every one).

    Returns:
      A dict of Python floats:

      * image level: ``image_auroc``, ``image_ap``, ``image_f1_max``, ``image_f1_threshold``,
        ``pr_auc_trapezoid`` (compat: the seed-003 thesis' image-level "PR-AUC", a trapezoid);
      * pixel level (when maps and masks are given): ``pixel_auroc``, ``pixel_ap``,
        ``pixel_f1_max``, ``pixel_f1_threshold``, ``aupro`` and the same value under
        ``f"aupro_{fpr_limit}"`` (e.g. ``"aupro_0.3"``), and ``pro_thesis003`` (compat: equal
        to ``pixel_auroc``; the seed-003 thesis' "PRO" column is pixel AUROC in its code);
      * ``"missing"``: ``{key: reason}`` for every metric that is undefined and therefore NaN
        (e.g. no anomalous image); empty when all are defined;
      * ``"counts"``: images, anomalous_images and, with pixels, pixels, anomalous_pixels,
        regions;
      * ``"curves"`` (only with ``with_curves``): ``{"image_roc", "image_pr", "pixel_roc",
        "pixel_pr", "pro"}``, each a dict of float64 arrays ordered by decreasing threshold, one
        point per distinct threshold (ROC: fpr, tpr; PR: precision, recall; PRO: fpr, pro; all
        with ``thresholds``). The PRO curve values come from a float32 cumulative sum and are
        meant for plots (~1e-6); the metrics above do not use them.
    """
    fpr_limit = _check_limit(fpr_limit)
    words, w = _binary_inputs(image_scores, image_labels, "image_scores")
    n_images = w.shape[0]
    res: dict[str, Any] = {}
    missing: dict[str, str] = {}
    r = _rank(words, w, trapz=True, curves=with_curves)
    img = _image_metrics(r)
    res.update(image_auroc=img["auroc"], image_ap=img["ap"], image_f1_max=img["f1_max"],
               image_f1_threshold=img["f1_threshold"], pr_auc_trapezoid=img["pr_auc_trapezoid"])
    if r.n_pos == 0:
        for k in ("image_auroc", "image_ap", "image_f1_max", "image_f1_threshold",
                  "pr_auc_trapezoid"):
            missing[k] = "no anomalous images (image_labels are all 0)"
    elif r.n_neg == 0:
        missing["image_auroc"] = "no normal images (image_labels are all 1)"
    counts = {"images": n_images, "anomalous_images": r.n_pos}
    curves = {}
    if with_curves:
        c = _curve_from(r.curve, r.n_pos, r.n_neg, 0, curve_points)
        curves.update(image_roc=c["roc"], image_pr=c["pr"])

    if (anomaly_maps is None) != (gt_masks is None):
        raise ValueError("pixel metrics need both anomaly_maps and gt_masks")
    if anomaly_maps is not None:
        pw, pwt, n_regions, n_ok = _pixel_inputs(anomaly_maps, gt_masks, n_images)
        pr = _rank(pw, pwt, lam=fpr_limit * n_ok, pro=True, trapz=False, curves=with_curves,
                   chunk=chunk_pixels)
        pix = _image_metrics(pr)
        au = _aupro_value(pr, n_regions, n_ok)
        res.update(pixel_auroc=pix["auroc"], pixel_ap=pix["ap"], pixel_f1_max=pix["f1_max"],
                   pixel_f1_threshold=pix["f1_threshold"], aupro=au)
        res[f"aupro_{fpr_limit}"] = au
        res["pro_thesis003"] = pix["auroc"]
        pixel_keys = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_f1_threshold", "aupro",
                      f"aupro_{fpr_limit}", "pro_thesis003")
        if pr.n_pos == 0:
            for k in pixel_keys:
                missing[k] = "no anomalous pixels (gt_masks are all 0)"
        elif pr.n_neg == 0:
            for k in ("pixel_auroc", "aupro", f"aupro_{fpr_limit}", "pro_thesis003"):
                missing[k] = "no normal pixels (gt_masks are all 1)"
        counts.update(pixels=int(pwt.shape[0]), anomalous_pixels=pr.n_pos, regions=n_regions)
        if with_curves:
            c = _curve_from(pr.curve, pr.n_pos, pr.n_neg, n_regions, curve_points)
            curves.update(pixel_roc=c["roc"], pixel_pr=c["pr"])
            if "pro" in c:
                curves["pro"] = c["pro"]
    res["missing"] = missing
    res["counts"] = counts
    if with_curves:
        res["curves"] = curves
    return res


# --------------------------------------------------------------------------------------------
# Thresholds
# --------------------------------------------------------------------------------------------


def threshold_from_validation(val_scores, method: str, *, q: float = 0.99, k: float = 3.0,
                              val_labels=None) -> float:
    """A decision threshold from validation scores (never from the test set).

    ``val_scores`` may have any shape (image scores or pixel maps); it is flattened. Methods:

    * ``"max"`` -- the largest normal score (no false positive on the validation set);
    * ``"quantile"`` -- the ``q``-quantile of the normal scores (``numpy.quantile``, linear);
    * ``"k_sigma"`` -- ``mean + k * std`` of the normal scores (population std, ddof=0);
    * ``"f1"`` -- the F1-optimal threshold (see ``f1_max``); needs ``val_labels`` with at least
      one anomaly, else ValueError.

    For the first three, when ``val_labels`` is given only the samples labelled 0 are used.
    A sample is predicted anomalous when ``score >= threshold``.
    """
    s = _scores(val_scores, "val_scores", "index").ravel().astype(np.float64)
    y = None if val_labels is None else _binary(val_labels, "val_labels").ravel()
    if y is not None and y.shape != s.shape:
        raise ValueError(f"val_scores and val_labels differ in size: {s.size} vs {y.size}")
    if method == "f1":
        if y is None or not y.any():
            raise ValueError("method 'f1' needs val_labels with at least one anomalous sample")
        return f1_max(s, y)[1]
    normal = s if y is None else s[~y]
    if normal.size == 0:
        raise ValueError("no normal validation samples (val_labels are all 1)")
    if method == "max":
        return float(normal.max())
    if method == "quantile":
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q}")
        return float(np.quantile(normal, q))
    if method == "k_sigma":
        return float(normal.mean() + k * normal.std())
    raise ValueError(f"unknown method {method!r}; use 'max', 'quantile', 'k_sigma' or 'f1'")


def binary_metrics(scores, labels, threshold: float) -> dict[str, float]:
    """Confusion-matrix metrics of the decision ``score >= threshold``.

    Returns ``tp, fp, fn, tn`` (counts), ``precision = TP/(TP+FP)``, ``recall = TP/(TP+FN)``,
    ``f1 = 2TP/(2TP+FP+FN)``, ``iou = TP/(TP+FP+FN)`` (the segmentation IoU for pixels),
    ``accuracy = (TP+TN)/all`` and ``threshold``. A ratio whose denominator is 0 is NaN.
    Works on any shape (image scores or pixel maps).
    """
    s = _scores(scores, "scores", "index").ravel()
    y = _binary(labels, "labels").ravel()
    if y.shape != s.shape:
        raise ValueError(f"scores and labels differ in size: {s.size} vs {y.size}")
    pred = s.astype(np.float64) >= float(threshold)  # compare in float64, not float32
    tp = int(np.count_nonzero(pred & y))
    fp = int(np.count_nonzero(pred & ~y))
    fn = int(np.count_nonzero(~pred & y))
    tn = int(y.size - tp - fp - fn)

    def ratio(a: int, b: int) -> float:
        return a / b if b else math.nan

    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
            "f1": ratio(2 * tp, 2 * tp + fp + fn), "iou": ratio(tp, tp + fp + fn),
            "accuracy": ratio(tp + tn, y.size), "threshold": float(threshold)}


def roc_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of the exact ROC curve of one set of scores, from (0, 0) to (1, 1), one
    point per distinct score (ties form one threshold)."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # the end of each tie group
    tps, fps = np.cumsum(y)[last], np.cumsum(1.0 - y)[last]
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]


def per_image(anomaly_maps, gt_masks, threshold: float,
              curve_points: int = 0) -> dict[str, Any]:
    """The per-image protocol of seed 001 (Ferreira 2023, eqs. 5.1-5.6): metrics of each
    image's pixels, then averaged over images.

    Over the images whose mask has at least one anomalous pixel (the thesis's test images all
    do; images without any are left out, as their pixel AUROC is undefined): the means of the
    pixel accuracy, F1 (Dice) and IoU of the decision ``map >= threshold`` (an image with no
    anomalous pixel predicted counts F1 = IoU = 0), and of the pixel AUROC (equal to
    ``roc_auc_score`` of the image's pixels; ties averaged). Returns ``per_image_accuracy``,
    ``per_image_f1``, ``per_image_iou``, ``per_image_pixel_auroc``, ``per_image_count`` (the
    images averaged) and ``per_image_threshold``; with ``curve_points`` also
    ``per_image_mean_roc``: {"fpr": a grid of that many points on [0, 1], "tpr": the images'
    ROC curves interpolated on it and averaged} (the thesis's Figs 5.6, 5.8, 5.14).
    """
    from scipy.stats import rankdata

    maps, masks = _as_maps(anomaly_maps, "anomaly_maps"), _binary(gt_masks, "gt_masks")
    if np.shape(maps) != masks.shape:
        raise ValueError(f"anomaly_maps {np.shape(maps)} and gt_masks {masks.shape} differ "
                         f"in shape.")
    out = {"accuracy": [], "f1": [], "iou": [], "pixel_auroc": []}
    grid = np.linspace(0.0, 1.0, max(curve_points, 2))
    tprs = []
    for amap, mask in zip(maps, masks, strict=True):
        y = mask.ravel()
        n_pos = int(y.sum())
        if n_pos == 0:
            continue
        b = binary_metrics(amap, mask, threshold)  # tp + fn > 0: f1 and iou are defined
        for key in ("accuracy", "f1", "iou"):
            out[key].append(b[key])
        n_neg = y.size - n_pos
        if n_neg:
            ranks = rankdata(np.asarray(amap, np.float64).ravel())
            out["pixel_auroc"].append((ranks[y].sum() - n_pos * (n_pos + 1) / 2)
                                      / (n_pos * n_neg))
            if curve_points:
                fpr, tpr = roc_points(np.asarray(amap, np.float64).ravel(), y)
                tprs.append(np.interp(grid, fpr, tpr))
    result = {f"per_image_{k}": float(np.mean(v)) if v else math.nan for k, v in out.items()}
    result |= {"per_image_count": len(out["f1"]), "per_image_threshold": float(threshold)}
    if curve_points and tprs:
        result["per_image_mean_roc"] = {"fpr": grid, "tpr": np.mean(tprs, axis=0)}
    return result
