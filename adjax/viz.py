"""PNG figures for ``adjax eval --save_images`` (metric curves and per-image overlays) and
``adjax analyze``.

Everything is drawn with matplotlib's object API (``Figure`` + the Agg canvas), so nothing here
touches pyplot's global state or needs a display, and the functions are safe to call from
several threads. Every PNG is written atomically: to a hidden temporary file in the target
folder, then renamed over the final name with ``os.replace``, so a reader never sees half a
file and an interrupted run leaves no partial PNG behind.

* ``save_curves`` -- ``roc.png``, ``pr.png`` and ``pro.png`` from the curves of
  ``adjax.metrics.compute(..., with_curves=True)["curves"]``.
* ``save_overlays`` -- one PNG per chosen test image (the worst and the best, see
  ``pick_worst_and_best``): the image with its ground-truth contour, and the image under the
  anomaly map as a heat overlay.
* ``save_all`` -- both.
* ``save_histograms``, ``save_scatter`` -- the figures of ``adjax analyze`` (distance
  histograms; PCA and t-SNE projections coloured by group).

The areas printed in the legends are recomputed from the plotted curve points. They match the
metrics of ``adjax.metrics`` when the curve holds every distinct threshold, and are close to
them when ``compute`` thinned the curve (``curve_points``) or, for PRO, because the PRO curve
comes from a float32 cumulative sum. The figures are for looking at; report the metrics.
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from adjax import files

__all__ = ["pick_worst_and_best", "save_all", "save_curves", "save_histograms", "save_overlays",
           "save_scatter"]

_DPI = 100
_IMAGE_COLOR = "tab:blue"
_PIXEL_COLOR = "tab:orange"


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _write_png(fig: Figure, path: pathlib.Path) -> pathlib.Path:
    """Renders ``fig`` to ``path`` atomically (see `adjax.files`)."""
    FigureCanvasAgg(fig)  # attach the Agg canvas: no pyplot, no display
    return files.write_with(path, lambda f: fig.savefig(f, format="png", dpi=_DPI), binary=True)


def _out_dir(out_dir: str | os.PathLike) -> pathlib.Path:
    return files.ensure_folder(out_dir, "pictures folder")


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_IMAGE_SUFFIX = re.compile(r"\.(png|jpe?g|bmp|tiff?)$", re.IGNORECASE)


def _safe_name(name: Any, max_len: int = 80) -> str:
    """A file-name fragment: runs of other characters than ``A-Za-z0-9._-`` become ``_``.

    An image-file extension (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.tif``, ``.tiff``) is
    dropped first, so a path gives ``..._000.png`` rather than ``..._000.png.png``. Leading
    dots and underscores are dropped (no hidden files); too long names keep their end (for a
    path, the folder and file name are the informative part).
    """
    s = _IMAGE_SUFFIX.sub("", str(name))
    s = _UNSAFE.sub("_", s).lstrip("._")
    if len(s) > max_len:
        s = s[-max_len:].lstrip("._")
    return s or "image"


# --------------------------------------------------------------------------------------------
# Curves
# --------------------------------------------------------------------------------------------


def _finite_curve(curves: Mapping[str, Any], key: str, x: str, y: str):
    """``(x, y)`` float64 arrays of ``curves[key]``, or None when absent, empty or undefined.

    A curve is undefined (NaN) when its metric is: e.g. no normal pixels makes every FPR NaN.
    """
    c = curves.get(key)
    if c is None:
        return None
    xs = np.asarray(c[x], dtype=np.float64).ravel()
    ys = np.asarray(c[y], dtype=np.float64).ravel()
    if xs.size == 0 or xs.shape != ys.shape or not (np.isfinite(xs).all()
                                                     and np.isfinite(ys).all()):
        return None
    return xs, ys


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) * 0.5))


def _cut_at(x: np.ndarray, y: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray]:
    """The part of a curve with non-decreasing ``x`` at or left of ``limit``.

    The segment that crosses ``limit`` is cut there by linear interpolation (as the official
    MVTec AD AU-PRO integration does).
    """
    k = int(np.searchsorted(x, limit, side="right"))  # points 0..k-1 have x <= limit
    xs, ys = x[:k], y[:k]
    if 0 < k < x.size:  # x[k-1] <= limit < x[k], so the segment has positive width
        t = (limit - x[k - 1]) / (x[k] - x[k - 1])
        xs = np.append(xs, limit)
        ys = np.append(ys, y[k - 1] + t * (y[k] - y[k - 1]))
    return xs, ys


def _new_axes(title: str, what: str, figsize=(6.0, 5.5)):
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(f"{title} — {what}" if title else what)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _value(exact: Mapping[str, Any] | None, key: str, plotted: float) -> tuple[float, str]:
    """The exact metric when the result holds it, else the plotted curve's own area."""
    if exact is not None and isinstance(exact.get(key), float) and np.isfinite(exact[key]):
        return exact[key], "exact"
    return plotted, "of the plotted curve"


def _roc_figure(curves, title: str, exact=None) -> Figure | None:
    drawn = []
    for key, name, color in (("image_roc", "image", _IMAGE_COLOR),
                             ("pixel_roc", "pixel", _PIXEL_COLOR)):
        c = _finite_curve(curves, key, "fpr", "tpr")
        if c is not None:
            # The stored curve starts at the highest threshold; ROC starts at (0, 0).
            drawn.append((name, color, np.insert(c[0], 0, 0.0), np.insert(c[1], 0, 0.0)))
    if not drawn:
        return None
    fig, ax = _new_axes(title, "ROC")
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.6", label="chance")
    for name, color, fpr, tpr in drawn:
        auroc, how = _value(exact, f"{name}_auroc", _trapezoid(fpr, tpr))
        ax.plot(fpr, tpr, color=color, lw=1.8, label=f"{name}: AUROC {auroc:.4f} ({how})")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="false positive rate",
           ylabel="true positive rate")
    ax.legend(loc="lower right", fontsize="small")
    return fig


def _pr_figure(curves, title: str, exact=None) -> Figure | None:
    drawn = []
    for key, name, color in (("image_pr", "image", _IMAGE_COLOR),
                             ("pixel_pr", "pixel", _PIXEL_COLOR)):
        c = _finite_curve(curves, key, "recall", "precision")
        if c is not None:
            drawn.append((name, color, *c))
    if not drawn:
        return None
    fig, ax = _new_axes(title, "precision-recall")
    for name, color, recall, precision in drawn:
        # Step-wise AP: precision P_k holds on (R_{k-1}, R_k], starting from R = 0. Drawn the
        # same way ("steps-pre"), so the area under the drawn line is the AP shown.
        r = np.insert(recall, 0, 0.0)
        p = np.insert(precision, 0, precision[0])
        ap, how = _value(exact, f"{name}_ap", float(np.sum(np.diff(r) * precision)))
        ax.plot(r, p, drawstyle="steps-pre", color=color, lw=1.8,
                label=f"{name}: AP {ap:.4f} ({how})")
        # At the lowest threshold everything is predicted anomalous: precision = prevalence.
        ax.axhline(precision[-1], ls=":", lw=1, color=color,
                   label=f"{name}: chance (prevalence {precision[-1]:.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
    ax.legend(loc="lower left", fontsize="small")
    return fig


def _pro_figure(curves, title: str, fpr_limit: float, exact=None) -> Figure | None:
    c = _finite_curve(curves, "pro", "fpr", "pro")
    if c is None:
        return None
    fpr, pro = np.insert(c[0], 0, 0.0), np.insert(c[1], 0, 0.0)  # the curve starts at (0, 0)
    cx, cy = _cut_at(fpr, pro, fpr_limit)
    area, how = _value(exact, f"aupro_{fpr_limit}", _trapezoid(cx, cy) / fpr_limit)
    fig, ax = _new_axes(title, "per-region overlap (PRO)")
    ax.fill_between(cx, cy, color=_PIXEL_COLOR, alpha=0.25, lw=0,
                    label=f"integrated: AU-PRO@{fpr_limit:g} {area:.4f} ({how})")
    ax.plot(fpr, pro, color=_PIXEL_COLOR, lw=1.8, label="PRO")
    ax.axvline(fpr_limit, color="0.3", ls="--", lw=1, label=f"FPR limit {fpr_limit:g}")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="false positive rate (normal pixels)",
           ylabel="PRO (mean fraction of each region detected)")
    ax.legend(loc="lower right", fontsize="small")
    return fig


def save_curves(curves: Mapping[str, Any], out_dir: str | os.PathLike, *, title: str = "",
                fpr_limit: float = 0.3,
                exact: Mapping[str, Any] | None = None) -> list[pathlib.Path]:
    """Writes ``roc.png``, ``pr.png`` and ``pro.png`` for the curves that are present.

    Args:
      curves: ``adjax.metrics.compute(..., with_curves=True)["curves"]``: any of
        ``image_roc`` / ``pixel_roc`` (``fpr``, ``tpr``), ``image_pr`` / ``pixel_pr``
        (``precision``, ``recall``) and ``pro`` (``fpr``, ``pro``), each ordered by decreasing
        threshold. A curve that is absent, empty or undefined (contains NaN, e.g. image ROC
        without normal images) is not drawn; a figure with nothing to draw is not written.
      out_dir: folder for the PNGs (created if needed). Existing files of the same name are
        replaced.
      title: prefix of each figure's title (e.g. the category).
      fpr_limit: AU-PRO integration limit in (0, 1]; drawn as a vertical line on ``pro.png``
        and the area up to it shaded.

    Returns:
      The paths written, in the order roc, pr, pro.

    Legends show AUROC, AP and AU-PRO@fpr_limit: the exact values of ``exact`` (the
    ``adjax.metrics.compute`` result, as its record holds them) when given, else recomputed from
    the plotted points (AUROC: trapezoid from (0, 0); AP: step-wise; AU-PRO: trapezoid up to
    ``fpr_limit``, divided by it), which a curve drawn from fewer points only approximates.
    """
    fpr_limit = float(fpr_limit)
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    figures = (("roc.png", _roc_figure(curves, title, exact)),
               ("pr.png", _pr_figure(curves, title, exact)),
               ("pro.png", _pro_figure(curves, title, fpr_limit, exact)))
    if all(fig is None for _, fig in figures):
        return []
    out = _out_dir(out_dir)
    return [_write_png(fig, out / name) for name, fig in figures if fig is not None]


def save_mean_roc(fpr, tpr, out_dir: str | os.PathLike, *, title: str = "",
                  auroc: float | None = None) -> pathlib.Path:
    """Writes ``mean_roc.png``: the per-image pixel ROC curves averaged over images
    (``adjax.metrics.per_image(..., curve_points=n)["per_image_mean_roc"]``), with the mean of
    the per-image AUROCs in the legend when given."""
    fig, ax = _new_axes(title, "mean per-image pixel ROC")
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.6", label="chance")
    label = "mean over images" + (f": mean AUROC {auroc:.4f}" if auroc is not None else "")
    ax.plot(fpr, tpr, color=_PIXEL_COLOR, lw=1.8, label=label)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="false positive rate",
           ylabel="true positive rate")
    ax.legend(loc="lower right", fontsize="small")
    return _write_png(fig, _out_dir(out_dir) / "mean_roc.png")


# --------------------------------------------------------------------------------------------
# Worst / best images
# --------------------------------------------------------------------------------------------


def _take(anomalous: np.ndarray, normal: np.ndarray, n: int) -> np.ndarray:
    """Up to ``n`` indices: ``ceil(n/2)`` from the front of ``anomalous``, the rest from the
    front of ``normal``; when one list runs short the other makes up the difference."""
    k_anom = min(-(-n // 2), anomalous.size)
    k_norm = min(n - k_anom, normal.size)
    k_anom = min(n - k_norm, anomalous.size)
    return np.concatenate([anomalous[:k_anom], normal[:k_norm]]).astype(np.int64)


def pick_worst_and_best(scores, labels, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` worst and ``n`` best scored test images, as int64 index arrays.

    Exact rule (higher score = more anomalous; ``labels`` 1 = anomalous):

    * **worst**: ``ceil(n/2)`` anomalous images with the *lowest* scores (missed anomalies),
      lowest first, followed by ``floor(n/2)`` normal images with the *highest* scores (false
      alarms), highest first. When a class has fewer images than its share, the other class
      fills the remaining places (so worst has ``min(n, N)`` entries).
    * **best**: the same rule on the images not already in worst: ``ceil(n/2)`` anomalous
      images with the *highest* scores, highest first, then ``floor(n/2)`` normal images with
      the *lowest* scores, lowest first, with the same filling. Worst and best never share an
      image, so best is shorter than ``n`` when there are fewer than ``2 n`` images.

    Equal scores are ordered by index (lower index first) in every list.

    Args:
      scores: [N] real, no NaN.
      labels: [N] {0, 1} or bool.
      n: how many images in each list, >= 0.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if not ((y == 0) | (y == 1)).all():
        raise ValueError("labels must contain only 0 and 1 (or booleans)")
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    anom = y == 1
    up = np.argsort(s, kind="stable")  # ascending score, ties by index
    down = np.argsort(-s, kind="stable")  # descending score, ties by index
    worst = _take(up[anom[up]], down[~anom[down]], n)
    free = np.ones(s.size, bool)
    free[worst] = False
    best = _take(down[anom[down] & free[down]], up[~anom[up] & free[up]], n)
    return worst, best


def _as_rgb(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise ValueError(f"each image must be [H, W, 3] (or grayscale), got {a.shape}")
    if a.dtype != np.uint8:  # floats are taken to be in [0, 1]
        a = np.clip(a.astype(np.float64), 0.0, 1.0)
    return a


def _map_range(maps: np.ndarray) -> tuple[float, float]:
    finite = maps[np.isfinite(maps)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _overlay_figure(image, amap, mask, norm: Normalize, title: str,
                    scale: str = "test-set scale") -> Figure:
    rgb = _as_rgb(image)
    h, w = rgb.shape[:2]
    # Maps and masks are stretched over the image, so they may have another resolution.
    extent = (-0.5, w - 0.5, h - 0.5, -0.5)
    fig = Figure(figsize=(8.6, 4.4), layout="constrained")
    ax_img, ax_map = fig.subplots(1, 2)
    ax_img.imshow(rgb, interpolation="nearest")
    ax_img.set_title("image + ground truth" if mask is not None else "image", fontsize="small")
    ax_map.imshow(rgb, interpolation="nearest")
    cmap = colormaps["jet"]
    ax_map.imshow(amap, cmap=cmap, norm=norm, alpha=0.5, extent=extent, interpolation="bilinear")
    ax_map.set_title(f"anomaly map ({scale})" + (" + ground truth" if mask is not None else ""),
                     fontsize="small")
    if mask is not None:
        m = np.asarray(mask, dtype=np.float64)
        if m.min() < 0.5 <= m.max():  # contour() of a constant mask draws nothing but warns
            mh, mw = m.shape
            xs = (np.arange(mw) + 0.5) * w / mw - 0.5
            ys = (np.arange(mh) + 0.5) * h / mh - 0.5
            for ax in (ax_img, ax_map):
                ax.contour(xs, ys, m, levels=[0.5], colors="lime", linewidths=1.5)
    for ax in (ax_img, ax_map):
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
    # The colour bar shows the colormap opaque (the overlay itself is at alpha 0.5).
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax_map, shrink=0.85,
                 label="anomaly score")
    fig.suptitle(title, fontsize="medium")
    return fig


def save_overlays(images, maps, masks, scores, labels, out_dir: str | os.PathLike, *,
                  n: int = 4, names: Sequence[Any] | None = None) -> list[pathlib.Path]:
    """One PNG per image among the ``n`` worst and ``n`` best (see ``pick_worst_and_best``).

    Each PNG shows the image with the ground-truth contour (lime) next to the image under the
    anomaly map as a "jet" heat overlay (alpha 0.5) with the same contour. The colour scale is
    the min..max of *all* ``maps`` (the whole test set), not of the image, so panels are
    comparable; a colour bar shows it. The title gives rank, name, label and score.

    Args:
      images: [N, H, W, 3] uint8 (grayscale [N, H, W] / [N, H, W, 1], or floats in [0, 1],
        are accepted too).
      maps: [N, h, w] real anomaly maps (stretched over the image if h, w differ from H, W).
      masks: [N, h, w] {0, 1} ground truth, or None to draw no contour.
      scores: [N] image scores (higher = more anomalous); labels: [N] {0, 1}.
      out_dir: folder for the PNGs (created if needed).
      n: images in each list.
      names: [N] names for titles and file names (e.g. ``f"{defect}_{stem}"``); default the
        index, zero-padded.

    Returns:
      The paths written: ``worst_00_<name>.png``, ... then ``best_00_<name>.png``, ..., each in
      the order of ``pick_worst_and_best``. ``<name>`` is sanitised to ``A-Za-z0-9._-``.
    """
    maps = np.asarray(maps)
    if maps.ndim == 4 and maps.shape[-1] == 1:
        maps = maps[..., 0]
    elif maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.ndim != 3:
        raise ValueError(f"maps must have shape [N, H, W], got {maps.shape}")
    count = maps.shape[0]
    if len(images) != count:
        raise ValueError(f"{len(images)} images but {count} maps")
    if masks is not None:
        masks = np.asarray(masks)
        if masks.ndim == 4 and masks.shape[-1] == 1:
            masks = masks[..., 0]
        elif masks.ndim == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        if masks.ndim != 3 or masks.shape[0] != count:
            raise ValueError(f"masks must have shape [{count}, H, W], got {masks.shape}")
    if names is None:
        width = max(4, len(str(max(count - 1, 0))))
        names = [f"{i:0{width}d}" for i in range(count)]
    elif len(names) != count:
        raise ValueError(f"{len(names)} names for {count} images")
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.size != count:
        raise ValueError(f"{s.size} scores for {count} images")
    worst, best = pick_worst_and_best(s, y, n)
    if worst.size + best.size == 0:
        return []
    lo, hi = _map_range(maps)
    norm = Normalize(vmin=lo, vmax=hi, clip=True)
    out = _out_dir(out_dir)
    paths = []
    for kind, picked in (("worst", worst), ("best", best)):
        for rank, i in enumerate(picked):
            what = "anomalous" if y[i] == 1 else "normal"
            title = f"{kind} #{rank}: {names[i]} — label {int(y[i])} ({what}), score {s[i]:.6g}"
            fig = _overlay_figure(images[i], maps[i], None if masks is None else masks[i], norm,
                                  title)
            path = out / f"{kind}_{rank:02d}_{_safe_name(names[i])}.png"
            paths.append(_write_png(fig, path))
    return paths


def save_maps(images, maps, scores, anomalous, names: Sequence[str],
              out_dir: str | os.PathLike) -> list[pathlib.Path]:
    """One PNG per image (`<name>.png`): the image beside the image under its anomaly map, on
    one colour scale for all the images, titled with the score and the decision."""
    maps = np.asarray(maps)
    lo, hi = _map_range(maps)
    norm = Normalize(vmin=lo, vmax=hi, clip=True)
    out = _out_dir(out_dir)
    paths = []
    for image, amap, score, flag, name in zip(images, maps, scores, anomalous, names,
                                              strict=True):
        title = f"{name}: score {float(score):.6g} ({'anomalous' if flag else 'normal'})"
        fig = _overlay_figure(image, amap, None, norm, title, scale="scale of these images")
        paths.append(_write_png(fig, out / f"{_safe_name(name)}.png"))
    return paths


def save_all(result: Mapping[str, Any], images, maps, masks, scores, labels,
             out_dir: str | os.PathLike, **kw: Any) -> list[pathlib.Path]:
    """``save_curves`` then ``save_overlays`` into ``out_dir``; returns all paths written.

    Args:
      result: ``adjax.metrics.compute(..., with_curves=True)`` (its ``"curves"`` are drawn).
      images, maps, masks, scores, labels, out_dir: as for ``save_overlays``.
      **kw: ``title`` and ``fpr_limit`` go to ``save_curves``; ``n`` and ``names`` to
        ``save_overlays``. Anything else is a TypeError.
    """
    curve_kw = {k: kw.pop(k) for k in ("title", "fpr_limit") if k in kw}
    overlay_kw = {k: kw.pop(k) for k in ("n", "names") if k in kw}
    if kw:
        raise TypeError(f"save_all() got unexpected keyword arguments: {sorted(kw)}")
    if "curves" not in result:
        raise ValueError("result has no 'curves': call adjax.metrics.compute(..., "
                         "with_curves=True)")
    paths = save_curves(result["curves"], out_dir, exact=result, **curve_kw)
    return paths + save_overlays(images, maps, masks, scores, labels, out_dir, **overlay_kw)


# --------------------------------------------------------------------------------------------
# Data-set analyses (adjax.analyze)
# --------------------------------------------------------------------------------------------


def save_histograms(groups: Mapping[str, Mapping[str, np.ndarray]], path: str | os.PathLike,
                    metric_names: Mapping[str, str], *, title: str = "",
                    bins: int = 20) -> pathlib.Path:
    """One panel per metric: each group's values as a step histogram of `bins` bins over the
    metric's common range, in percent of the group's values (as seed 000's figures)."""
    fig = Figure(figsize=(6.0 * len(metric_names), 5.0), layout="constrained")
    if title:
        fig.suptitle(title)
    for k, (metric, name) in enumerate(metric_names.items()):
        ax = fig.add_subplot(1, len(metric_names), k + 1)
        values = [np.asarray(g[metric]) for g in groups.values()]
        present = [v for v in values if len(v)]
        lo = min((v.min() for v in present), default=0.0)
        hi = max((v.max() for v in present), default=1.0)
        edges = np.linspace(lo, hi if hi > lo else lo + 1e-9, bins + 1)
        for label, v in zip(groups, values, strict=True):
            if len(v):
                ax.hist(v, edges, weights=np.full(len(v), 100.0 / len(v)), histtype="step",
                        label=f"{label} ({len(v)})")
        ax.set_xlabel(name)
        ax.set_ylabel("% of pairs")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    return _write_png(fig, pathlib.Path(path))


def save_scatter(points: np.ndarray, groups: Sequence[str], path: str | os.PathLike, *,
                 title: str = "") -> pathlib.Path:
    """A 2-D scatter of `points` [N, 2], coloured by each point's group name."""
    fig, ax = _new_axes("", title)
    names = list(dict.fromkeys(groups))
    colours = colormaps["tab10" if len(names) <= 10 else "tab20"]
    groups = np.asarray(groups, dtype=object)
    for k, name in enumerate(names):
        xy = points[groups == name]
        ax.scatter(xy[:, 0], xy[:, 1], s=12, color=colours(k % colours.N),
                   label=f"{name} ({len(xy)})")
    ax.legend(fontsize="small")
    return _write_png(fig, pathlib.Path(path))
