"""Procedural stand-in for MVTec AD, written in the MVTec AD on-disk layout.

Nothing can be downloaded in the environments this project runs in, so the quickstart and the
tests train on a small data set drawn here from a seeded random generator::

    <out>/<category>/train/good/000.png
    <out>/<category>/test/good/000.png
    <out>/<category>/test/<defect>/000.png
    <out>/<category>/ground_truth/<defect>/000_mask.png

Two categories mirror the two halves of MVTec AD: ``tiles`` is a texture (ceramic tiles and
grout) and ``disc`` an object (a metal washer with a key notch on a plain background). Normal
images vary in geometry, colour, lighting and grain; defective test images carry one defect of
a known kind whose ground-truth mask is exactly the set of pixels the defect was painted into.

The design goal is a data set that is easy for a patch-level detector but not for global image
statistics: the normal brightness spread (global gain, lighting gradient) is several times
larger than the shift a defect causes in the image mean, while every defect is locally unlike
any normal patch.

Only numpy, scipy.ndimage and Pillow are used; everything is vectorised, so the default call
takes a few seconds.
"""

from __future__ import annotations

import functools
import math
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from adjax import files

__all__ = ["CATEGORIES", "DEFECT_TYPES", "embedded_root", "is_synthetic", "write_dataset"]

CATEGORIES: tuple[str, ...] = ("tiles", "disc")
DEFECT_TYPES: tuple[str, ...] = ("scratch", "hole", "stain", "crack")

# Defect area bounds, as a fraction of the image. A drawn defect outside them is redrawn, so
# every mask in the data set lies within them whatever the image size.
MIN_DEFECT_FRACTION = 0.003
MAX_DEFECT_FRACTION = 0.05

# Paint weights below this are dropped (the pixel stays untouched), so the mask can be exactly
# "the pixels that were painted" without a faint halo that changes pixels outside it.
_ALPHA_FLOOR = 0.1
_MAX_DEFECT_TRIES = 200
_MIN_IMAGE_SIZE = 32
_README_HEADER = "adjax synthetic anomaly-detection data set"
# Bump when the generator's output changes: the embedded copy in the cache is then rewritten.
EMBEDDED_VERSION = 1
_SPLIT_TRAIN, _SPLIT_TEST_GOOD, _SPLIT_DEFECT0 = 0, 1, 2  # defect k: split 2 + k

_F32 = np.float32


@dataclass
class _Scene:
    """A rendered normal image plus what a defect painter needs to know about it."""

    image: np.ndarray  # (S, S, 3) float32, linear-ish intensities around [0, 1]
    surface: np.ndarray  # (S, S) float32 coverage of the surface that can carry a defect
    support: np.ndarray  # flat indices of pixels where a defect centre may be placed
    background: np.ndarray | None  # (S, S, 3) what is behind the object; None for textures
    gain: float  # global illumination, so painted colours are lit like the scene


# --------------------------------------------------------------------------------------------
# Small numeric helpers
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x); cached because every image of a size reuses them."""
    c = np.arange(size, dtype=_F32) + _F32(0.5)
    yy, xx = np.meshgrid(c, c, indexing="ij")
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def _fine_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Roughly unit-variance grain, blurred by ``sigma`` pixels (surface grain, grout sand).

    Uniform draws are cheaper than normal ones, and after the blur the grain is close to
    Gaussian anyway. The variance is estimated on a strided subsample, which is cheaper.
    """
    n = rng.random((size, size), dtype=_F32)
    n -= _F32(0.5)
    if sigma > 0:
        n = ndimage.gaussian_filter(n, sigma, mode="wrap", truncate=3.0)
    n *= _F32(1.0) / (n[::3, ::3].std() + _F32(1e-6))
    return n


@functools.lru_cache(maxsize=16)
def _upsampler(size: int, k: int) -> np.ndarray:
    """(size, k) smooth interpolation weights from a k-point control grid to ``size`` pixels."""
    pos = (np.arange(size) + 0.5) / size * (k - 1)
    w = np.exp(-0.5 * ((pos[:, None] - np.arange(k)[None, :]) / 0.7) ** 2)
    w /= w.sum(axis=1, keepdims=True)
    return w.astype(_F32)


def _low_noise(rng: np.random.Generator, size: int, k: int = 6) -> np.ndarray:
    """Unit-scale low-frequency mottling: a k x k random grid, smoothly upsampled.

    Two small matrix products instead of a wide Gaussian blur, which would cost far more.
    They go through einsum, not BLAS: BLAS may split such a product over threads (slow on a
    busy machine) and its rounding may depend on the thread count, which would break the
    byte-for-byte reproducibility of the files.
    """
    a = _upsampler(size, k)
    small = rng.standard_normal((k, k), dtype=_F32)
    n = np.einsum("ik,kj->ij", a, np.einsum("kl,jl->kj", small, a))
    return n / (n.std() + _F32(1e-6))


def _lighting(rng: np.random.Generator, size: int, strength: float) -> np.ndarray:
    """A linear illumination ramp across the image in a random direction (mean 1)."""
    yy, xx = _grid(size)
    ang = rng.uniform(0.0, 2.0 * math.pi)
    g = rng.uniform(0.0, strength)
    ramp = ((xx - size / 2) * math.cos(ang) + (yy - size / 2) * math.sin(ang)) / size
    return _F32(1.0) + _F32(g) * ramp


@functools.lru_cache(maxsize=8)
def _ones(size: int) -> np.ndarray:
    a = np.ones((size, size), _F32)
    a.setflags(write=False)
    return a


@functools.lru_cache(maxsize=8)
def _inner_support(size: int) -> np.ndarray:
    """Flat indices of all pixels at least 6% of the side away from the border."""
    margin = int(round(0.06 * size))
    inner = np.zeros((size, size), bool)
    inner[margin : size - margin, margin : size - margin] = True
    idx = np.flatnonzero(inner)
    idx.setflags(write=False)
    return idx


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Normal images
# --------------------------------------------------------------------------------------------


def _render_tiles(rng: np.random.Generator, size: int) -> _Scene:
    """Ceramic tiles and grout: a slightly rotated, shifted grid with per-image variation."""
    yy, xx = _grid(size)
    # Global gain first: its spread (about +-20%) is what keeps mean brightness from being
    # a usable anomaly score -- no defect moves the image mean by more than a few percent.
    gain = rng.uniform(0.8, 1.2)
    period_u = rng.uniform(0.12, 0.18) * size
    period_v = period_u * rng.uniform(0.94, 1.06)
    grout = max(1.0, rng.uniform(0.06, 0.11) * period_u)
    ang = math.radians(rng.normal(0.0, 1.5))
    ca, sa = _F32(math.cos(ang)), _F32(math.sin(ang))
    x, y = xx - _F32(size / 2), yy - _F32(size / 2)
    u = ca * x + sa * y + _F32(rng.uniform(0.0, period_u))
    v = -sa * x + ca * y + _F32(rng.uniform(0.0, period_v))

    iu, iv = np.floor(u / period_u), np.floor(v / period_v)
    fu, fv = u - iu * _F32(period_u), v - iv * _F32(period_v)
    # Distance to the nearest grout centre line; grout lines sit at the tile-cell boundaries.
    d = np.minimum(np.minimum(fu, period_u - fu), np.minimum(fv, period_v - fv))
    half = _F32(grout / 2)
    tile_cov = np.clip(d - half + _F32(0.5), 0.0, 1.0)  # 1-pixel antialiased edge
    bevel = np.clip((d - half) / _F32(rng.uniform(0.05, 0.1) * period_u), 0.0, 1.0)

    # Per-tile tint: real tiles from one batch differ a little in shade.
    iu_i = (iu - iu.min()).astype(np.intp)
    iv_i = (iv - iv.min()).astype(np.intp)
    nu, nv = int(iu_i.max()) + 1, int(iv_i.max()) + 1
    tint = rng.normal(0.0, 0.035, (nu * nv, 1)) + rng.normal(0.0, 0.012, (nu * nv, 3))
    base = np.array([0.76, 0.60, 0.46]) + rng.normal(0.0, 0.02, 3)
    tile_rgb = np.take((base * (1.0 + tint)).astype(_F32), iu_i * nv + iv_i, axis=0)

    # One grain field serves both the tile glaze and the grout sand: they never overlap.
    grain = _fine_noise(rng, size, rng.uniform(0.6, 1.2))
    light = _lighting(rng, size, 0.3)
    light *= _F32(gain)
    tile_shade = _F32(0.86) + _F32(0.14) * bevel
    tile_shade *= _F32(1.0) + _F32(rng.uniform(0.02, 0.05)) * grain
    tile_shade *= _F32(1.0) + _F32(0.03) * _low_noise(rng, size)
    tile_shade *= tile_cov * light
    grout_shade = _F32(1.0) + _F32(0.07) * grain
    grout_shade *= (_F32(1.0) - tile_cov) * light
    grout_rgb = (np.array([0.50, 0.48, 0.45]) + rng.normal(0.0, 0.02, 3)).astype(_F32)
    img = tile_rgb
    img *= tile_shade[..., None]
    img += grout_rgb * grout_shade[..., None]

    return _Scene(
        image=img,
        surface=_ones(size),
        support=_inner_support(size),
        background=None,
        gain=gain,
    )


def _render_disc(rng: np.random.Generator, size: int) -> _Scene:
    """A brushed-metal washer with a key notch, centred on a plain dark background."""
    yy, xx = _grid(size)
    gain = rng.uniform(0.8, 1.2)
    scale = rng.uniform(0.92, 1.08)
    r_out = 0.33 * size * scale
    r_in = r_out * rng.uniform(0.36, 0.42)
    cx, cy = size / 2 + np.clip(rng.normal(0.0, 0.02 * size, 2), -0.05 * size, 0.05 * size)

    # Background, over the whole image: cloth-like grain, mottling, lighting, drop shadow.
    light = _lighting(rng, size, 0.25)
    light *= _F32(gain)
    grain = _fine_noise(rng, size, 0.8)  # also reused for the metal (the areas are disjoint)
    bg_rgb = (np.array([0.17, 0.19, 0.23]) * (1.0 + rng.normal(0.0, 0.06, 3))).astype(_F32)
    bg_shade = _F32(1.0) + _F32(0.03) * grain
    bg_shade += _F32(0.05) * _low_noise(rng, size)
    bg_shade *= light
    # What a hole in the washer shows: the background, half in the washer's shadow.
    beneath = bg_rgb * (_F32(0.75) * bg_shade)[..., None]
    # Soft drop shadow: an analytically blurred, offset copy of the ring (no convolution).
    rs = np.hypot(xx - _F32(cx + 0.012 * size), yy - _F32(cy + 0.02 * size))
    blur = _F32(0.025 * size)
    shadow = np.clip((_F32(r_out) - rs) / blur + _F32(0.5), 0.0, 1.0)
    shadow *= np.clip((rs - _F32(r_in)) / blur + _F32(0.5), 0.0, 1.0)
    bg_shade *= _F32(1.0) - _F32(0.45) * shadow
    img = bg_rgb * bg_shade[..., None]

    # The washer, computed only inside its bounding box (about 45% of the image).
    y0, x0 = max(int(cy - r_out) - 2, 0), max(int(cx - r_out) - 2, 0)
    y1, x1 = min(int(cy + r_out) + 3, size), min(int(cx + r_out) + 3, size)
    box = np.s_[y0:y1, x0:x1]
    x, y = xx[box] - _F32(cx), yy[box] - _F32(cy)
    r = np.hypot(x, y)
    # The key notch makes orientation visible, so small rotations are real variation.
    phi = -math.pi / 2 + math.radians(rng.normal(0.0, 6.0))
    cp, sp = _F32(math.cos(phi)), _F32(math.sin(phi))
    notch = np.clip(_F32(0.06 * r_out + 0.5) - np.abs(y * cp - x * sp), 0.0, 1.0)
    notch *= np.clip(x * cp + y * sp - _F32(0.86 * r_out - 0.5), 0.0, 1.0)
    cov = np.clip(_F32(r_out + 0.5) - r, 0.0, 1.0)
    cov *= np.clip(r - _F32(r_in - 0.5), 0.0, 1.0)
    cov *= _F32(1.0) - notch

    # Brushed metal: concentric streaks (noise that depends on radius only), two anisotropic
    # highlight bands along the light direction, darker bevels and a turned groove.
    streaks = ndimage.gaussian_filter1d(rng.standard_normal(2 * size), 1.2)
    streaks = (streaks / (streaks.std() + 1e-6)).astype(_F32)
    ring_noise = streaks[np.minimum((r * 2).astype(np.intp), 2 * size - 1)]
    la = rng.uniform(-math.pi, math.pi)
    band_w = rng.uniform(0.25, 0.45)
    # sin(theta - la) from x / r and y / r, without an arctan2.
    sin_rel = (y * _F32(math.cos(la)) - x * _F32(math.sin(la))) / np.maximum(r, _F32(1e-3))
    spec = np.exp(_F32(-0.5 / band_w**2) * sin_rel * sin_rel)
    bevel = np.clip(np.minimum(_F32(r_out) - r, r - _F32(r_in)) / _F32(0.08 * r_out), 0.0, 1.0)
    r_groove = 0.5 * (r_out + r_in) * rng.uniform(0.96, 1.04)
    groove = np.exp(_F32(-0.5) * ((r - _F32(r_groove)) / _F32(max(0.6, 0.008 * size))) ** 2)
    metal_rgb = (np.array([0.60, 0.61, 0.63]) + rng.normal(0.0, 0.008, 3)).astype(_F32)
    shade = _F32(0.78) + _F32(0.22) * bevel
    shade *= _F32(1.0) + _F32(rng.uniform(0.15, 0.3)) * spec
    shade *= _F32(1.0) - _F32(0.25) * groove
    shade *= _F32(1.0) + _F32(0.035) * ring_noise
    shade *= _F32(1.0) + _F32(0.02) * grain[box]
    shade *= light[box]
    # Composite the washer over the background by its antialiased coverage.
    bg_box = img[box]
    bg_box += (metal_rgb * shade[..., None] - bg_box) * cov[..., None]

    surface = np.zeros((size, size), _F32)
    surface[box] = cov
    margin = 0.06 * r_out
    ok = (r > r_in + margin) & (r < r_out - margin) & (notch == 0)
    oy, ox = np.nonzero(ok)
    return _Scene(
        image=img,
        surface=surface,
        support=(oy + y0) * size + (ox + x0),
        background=beneath,
        gain=gain,
    )


_RENDERERS: dict[str, Callable[[np.random.Generator, int], _Scene]] = {
    "tiles": _render_tiles,
    "disc": _render_disc,
}


# --------------------------------------------------------------------------------------------
# Defects. Each painter returns (alpha, target): paint weight per pixel and the colour painted.
# --------------------------------------------------------------------------------------------


def _polyline_alpha(pts: np.ndarray, widths: np.ndarray, size: int) -> np.ndarray:
    """Antialiased coverage of a polyline with per-vertex width; pts are (x, y) pixel coords.

    Distances are computed only inside the polyline's bounding box, for all segments at once.
    """
    alpha = np.zeros((size, size), _F32)
    pad = float(widths.max()) / 2 + 1.0
    x0 = max(int(math.floor(pts[:, 0].min() - pad)), 0)
    x1 = min(int(math.ceil(pts[:, 0].max() + pad)), size)
    y0 = max(int(math.floor(pts[:, 1].min() - pad)), 0)
    y1 = min(int(math.ceil(pts[:, 1].max() + pad)), size)
    if x0 >= x1 or y0 >= y1:
        return alpha
    yy, xx = _grid(size)
    p = np.stack([xx[y0:y1, x0:x1], yy[y0:y1, x0:x1]], axis=-1).reshape(-1, 1, 2)
    a = pts[:-1][None].astype(_F32)
    ab = (pts[1:] - pts[:-1])[None].astype(_F32)
    denom = np.maximum((ab * ab).sum(-1), _F32(1e-9))
    t = np.clip(((p - a) * ab).sum(-1) / denom, 0.0, 1.0)
    dist = np.linalg.norm(p - (a + t[..., None] * ab), axis=-1)
    w = widths[:-1][None].astype(_F32) + t * (widths[1:] - widths[:-1])[None].astype(_F32)
    cov = np.clip(w / 2 - dist + _F32(0.5), 0.0, 1.0).max(axis=1)
    alpha[y0:y1, x0:x1] = cov.reshape(y1 - y0, x1 - x0)
    return alpha


def _blob_depth(rng, size: int, cx: float, cy: float, r0: float, pad: float) -> np.ndarray:
    """Approximate signed distance (pixels, > 0 inside) to an irregular star-shaped blob.

    Evaluated only within ``pad`` pixels of the blob's reach; elsewhere it is a large negative
    number, which every caller maps to "unpainted".
    """
    amps = rng.uniform(0.0, 0.16 / np.sqrt(np.arange(1, 5)))  # harmonics 2..5, decaying
    phases = rng.uniform(0.0, 2 * math.pi, 4)
    reach = r0 * (1.0 + amps.sum()) + pad + 1.0
    depth = np.full((size, size), -float(size), _F32)
    y0, x0 = max(int(cy - reach), 0), max(int(cx - reach), 0)
    y1, x1 = min(int(cy + reach) + 1, size), min(int(cx + reach) + 1, size)
    if y0 >= y1 or x0 >= x1:
        return depth
    yy, xx = _grid(size)
    x, y = xx[y0:y1, x0:x1] - _F32(cx), yy[y0:y1, x0:x1] - _F32(cy)
    theta = np.arctan2(y, x)
    boundary = np.ones_like(theta)
    for k in range(4):
        boundary += _F32(amps[k]) * np.cos(_F32(k + 2) * theta + _F32(phases[k]))
    depth[y0:y1, x0:x1] = _F32(r0) * boundary - np.hypot(x, y)
    return depth


def _paint_scratch(scene: _Scene, rng: np.random.Generator, size: int, cx: float, cy: float):
    """A thin, curved, tapered line, brighter or darker than the surface."""
    s = size / 256
    length = rng.uniform(0.25, 0.5) * size
    ang = rng.uniform(0.0, math.pi)
    d = np.array([math.cos(ang), math.sin(ang)])
    n = np.array([-d[1], d[0]])
    c = np.array([cx, cy])
    p0, p2 = c - d * length / 2, c + d * length / 2
    p1 = c + n * rng.uniform(-0.3, 0.3) * length
    t = np.linspace(0.0, 1.0, 16)[:, None]  # a gentle curve: 15 segments are smooth
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    width = max(1.0, rng.uniform(2.0, 4.0) * s)
    widths = width * (0.45 + 0.55 * np.sqrt(np.sin(math.pi * t[:, 0])))
    alpha = _polyline_alpha(pts, widths, size) * _F32(rng.uniform(0.55, 0.95))
    if rng.random() < 0.5:
        # Scraped to bare, shiny material: at least a third brighter than the surface, so the
        # line still shows on bright metal (it may saturate there, as in a real photograph).
        target = np.maximum(scene.image * _F32(1.35) + _F32(0.08), _F32(1.05 * scene.gain))
    else:
        target = scene.image * _F32(0.25)  # gouged, in shadow
    return alpha, target


def _paint_hole(scene: _Scene, rng: np.random.Generator, size: int, cx: float, cy: float):
    """A missing piece: the background on an object, a dark cavity in a texture."""
    r0 = rng.uniform(0.035, 0.075) * size
    depth = _blob_depth(rng, size, cx, cy, r0, pad=1.0)
    alpha = np.clip(depth + _F32(0.5), 0.0, 1.0)
    if scene.background is not None:
        return alpha, scene.background
    # Cavity: darkest in the middle, as a real pit is shadowed towards its floor.
    floor = np.clip(depth / _F32(0.4 * r0), 0.0, 1.0)
    k = rng.uniform(0.25, 0.4)
    target = scene.image * (_F32(k) - _F32(k - 0.08) * floor)[..., None]
    return alpha, target


_STAIN_COLOURS = np.array(
    [
        [0.55, 0.28, 0.10],  # rust
        [0.30, 0.18, 0.08],  # coffee
        [0.15, 0.22, 0.50],  # ink
        [0.10, 0.10, 0.09],  # oil
        [0.28, 0.42, 0.16],  # moss
        [0.55, 0.20, 0.35],  # wine
    ]
)


def _paint_stain(scene: _Scene, rng: np.random.Generator, size: int, cx: float, cy: float):
    """A soft-edged, mottled blob of a foreign colour; the mask covers its soft rim too."""
    r0 = rng.uniform(0.045, 0.1) * size
    soft = _F32(rng.uniform(0.25, 0.6) * r0)
    depth = _blob_depth(rng, size, cx, cy, r0, pad=float(soft))
    ramp = np.clip((depth + soft / 2) / soft, 0.0, 1.0)
    ramp = ramp * ramp * (_F32(3.0) - _F32(2.0) * ramp)  # smoothstep
    mottle = _F32(0.85) + _F32(0.15) * np.tanh(_low_noise(rng, size, 16))
    alpha = _F32(rng.uniform(0.5, 0.85)) * ramp * mottle
    colour = _STAIN_COLOURS[rng.integers(len(_STAIN_COLOURS))] * rng.uniform(0.85, 1.15)
    return alpha, (colour * scene.gain).astype(_F32)


def _random_walk(rng: np.random.Generator, start, heading, length, steps, wiggle):
    turns = heading + np.cumsum(rng.normal(0.0, wiggle, steps))
    step = length / steps
    moves = np.stack([np.cos(turns), np.sin(turns)], axis=1) * step
    return np.concatenate([np.asarray(start)[None], start + np.cumsum(moves, axis=0)])


def _paint_crack(scene: _Scene, rng: np.random.Generator, size: int, cx: float, cy: float):
    """A thin, dark, jagged polyline with one to three side branches."""
    s = size / 256
    length = rng.uniform(0.28, 0.5) * size
    steps = int(rng.integers(10, 17))
    trunk = _random_walk(rng, np.zeros(2), rng.uniform(0, 2 * math.pi), length, steps, 0.35)
    trunk += np.array([cx, cy]) - trunk.mean(axis=0)
    width = max(1.0, rng.uniform(1.6, 3.0) * s)
    taper = np.linspace(1.0, 0.5, len(trunk))
    alpha = _polyline_alpha(trunk, width * taper, size)
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(1, len(trunk) - 1))
        seg = trunk[k + 1] - trunk[k]
        heading = math.atan2(seg[1], seg[0]) + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
        b_len = length * rng.uniform(0.25, 0.55)
        b_steps = max(3, int(steps * b_len / length))
        branch = _random_walk(rng, trunk[k], heading, b_len, b_steps, 0.35)
        b_width = max(1.0, width * taper[k] * 0.75) * np.linspace(1.0, 0.5, len(branch))
        alpha = np.maximum(alpha, _polyline_alpha(branch, b_width, size))
    alpha *= _F32(rng.uniform(0.85, 1.0))
    return alpha, scene.image * _F32(rng.uniform(0.08, 0.3))


_PAINTERS = {
    "scratch": _paint_scratch,
    "hole": _paint_hole,
    "stain": _paint_stain,
    "crack": _paint_crack,
}


def _add_defect(scene: _Scene, kind: str, rng: np.random.Generator, size: int):
    """Paints one defect of ``kind``; returns (image, mask) with mask == painted pixels.

    Draws are repeated until the painted area lies within the defect-size bounds, so small
    images (where line widths are clamped to a pixel) and object edges cannot break them.
    """
    for _ in range(_MAX_DEFECT_TRIES):
        idx = int(scene.support[rng.integers(len(scene.support))])
        cy, cx = divmod(idx, size)
        cx, cy = cx + rng.uniform(0.0, 1.0), cy + rng.uniform(0.0, 1.0)
        alpha, target = _PAINTERS[kind](scene, rng, size, cx, cy)
        alpha = alpha * scene.surface  # defects live on the object, never on the background
        mask = alpha >= _ALPHA_FLOOR
        if MIN_DEFECT_FRACTION <= mask.mean() <= MAX_DEFECT_FRACTION:
            break
    else:  # pragma: no cover - the bounds are wide enough that this never happens
        raise RuntimeError(f"could not draw a {kind} defect within the size bounds")
    a = alpha[..., None]
    painted = scene.image * (_F32(1.0) - a) + target * a
    return np.where(mask[..., None], painted, scene.image), mask


def _sample(category: str, defect: str | None, rng: np.random.Generator, size: int):
    """Renders one image: (clean uint8, image uint8, mask bool or None)."""
    scene = _RENDERERS[category](rng, size)
    clean = _to_uint8(scene.image)
    if defect is None:
        return clean, clean, None
    image, mask = _add_defect(scene, defect, rng, size)
    return clean, _to_uint8(image), mask


def _rng(seed: int, category: str, split: int, index: int) -> np.random.Generator:
    # Keyed by the category's position in CATEGORIES (not in the caller's list), so writing a
    # subset of categories gives the same images as writing all of them.
    return np.random.default_rng([seed, CATEGORIES.index(category), split, index])


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _stem(i: int, n: int) -> str:
    """MVTec-style zero-padded file stem: 000, 001, ... (wider only past 1000 images)."""
    return f"{i:0{max(3, len(str(n - 1)))}d}"


def _save_png(array: np.ndarray, path: pathlib.Path) -> None:
    # uint8 (H, W) becomes mode "L", (H, W, 3) mode "RGB". Fast settings: grain barely
    # compresses anyway, so zlib level 1 with Huffman coding only (strategy 2) gives files
    # about 10% larger than the default level 6 in a fifth of the time.
    image = Image.fromarray(array)
    files.write_with(path, lambda f: image.save(f, format="PNG", compress_level=1,
                                                compress_type=2), binary=True)


def _readme(seed: int, image_size: int, counts: dict[str, int], categories: Sequence[str]) -> str:
    lines = [
        f"{_README_HEADER} (generated by adjax.data.synthetic.write_dataset).",
        "",
        "Procedurally drawn images in the MVTec AD layout; not real photographs.",
        "  tiles - texture: ceramic tiles and grout (varying period, grout, colour, lighting).",
        "  disc  - object: a metal washer with a key notch on a plain background.",
        "Defects: " + ", ".join(DEFECT_TYPES) + ". Masks (ground_truth/<defect>/NNN_mask.png)",
        "are 8-bit single-channel, 255 exactly on the pixels the defect was painted into.",
        "",
        f"seed: {seed}",
        f"image_size: {image_size}",
        *(f"{k}: {v}" for k, v in counts.items()),
        "categories: " + ", ".join(categories),
        "",
        "Regenerate with:",
        "  from adjax.data.synthetic import write_dataset",
        f"  write_dataset(out, seed={seed}, image_size={image_size}, "
        + ", ".join(f"{k}={v}" for k, v in counts.items())
        + f", categories={tuple(categories)!r})",
        "",
    ]
    return "\n".join(lines)


def _prepare_category_dir(root: pathlib.Path, category: str) -> pathlib.Path:
    """Returns an empty ``root/category``, replacing an old copy only if we wrote it."""
    cat_dir = root / category
    if cat_dir.exists() and any(cat_dir.iterdir()):
        readme = root / "README.txt"
        ours = readme.is_file() and readme.read_text(errors="replace").startswith(_README_HEADER)
        if not ours:
            raise FileExistsError(
                f"{cat_dir} exists and was not written by write_dataset; refusing to overwrite it."
            )
        # Stale files from a call with larger counts would otherwise corrupt the layout.
        shutil.rmtree(cat_dir)
    return cat_dir


def write_dataset(
    out: str | os.PathLike,
    *,
    seed: int = 0,
    image_size: int = 256,
    n_train: int = 120,
    n_test_good: int = 24,
    n_test_per_defect: int = 8,
    categories: Sequence[str] = CATEGORIES,
) -> pathlib.Path:
    """Writes the synthetic anomaly-detection data set in the MVTec AD layout.

    Layout, for every category::

        <out>/<category>/train/good/000.png              n_train normal images
        <out>/<category>/test/good/000.png               n_test_good normal images
        <out>/<category>/test/<defect>/000.png           n_test_per_defect per defect type
        <out>/<category>/ground_truth/<defect>/000_mask.png

    Images are 8-bit RGB PNGs of ``image_size`` x ``image_size``; masks are 8-bit single-channel
    PNGs of the same size holding 0 or 255, where 255 marks exactly the pixels the defect was
    painted into. A ``README.txt`` in ``out`` records the seed and the parameters.

    Every image is drawn from its own generator keyed by (seed, category, split, index), so the
    same arguments give byte-identical files, and each category's images do not depend on which
    other categories or how many images are written.

    Args:
      out: Root directory; created if needed. A category directory already there is replaced
        only if ``out/README.txt`` shows it was written by this function.
      seed: Non-negative seed of the random streams.
      image_size: Side of the square images in pixels (at least 32).
      n_train: Normal training images per category.
      n_test_good: Normal test images per category.
      n_test_per_defect: Defective test images per defect type and category.
      categories: Subset of ``CATEGORIES`` to write (a single name is accepted too).

    Returns:
      ``out`` as a ``pathlib.Path``.

    Raises:
      ValueError: an unknown category name, or an invalid seed, size or count.
      FileExistsError: a category directory exists that this function did not write.
    """
    # A bare string is one category name, not a sequence of one-letter names.
    categories = (categories,) if isinstance(categories, str) else tuple(categories)
    for cat in categories:
        if cat not in CATEGORIES:
            raise ValueError(f"Unknown category {cat!r}; expected one of {CATEGORIES}.")
    if int(image_size) != image_size or image_size < _MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be an integer >= {_MIN_IMAGE_SIZE}, got {image_size}.")
    counts = {
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_test_per_defect": n_test_per_defect,
    }
    for name, value in counts.items():
        if int(value) != value or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value}.")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}.")
    size, seed = int(image_size), int(seed)

    root = files.ensure_folder(out, "data set folder")
    cat_dirs = [_prepare_category_dir(root, cat) for cat in categories]
    files.write_text(root / "README.txt", _readme(seed, size, counts, categories))

    jobs: list[tuple[str, int, str | None, int, pathlib.Path, pathlib.Path | None]] = []
    for cat, cat_dir in zip(categories, cat_dirs, strict=True):
        # All folders exist even when a count is 0, as loaders may list them.
        for sub in ("train/good", "test/good"):
            (cat_dir / sub).mkdir(parents=True, exist_ok=True)
        for defect in DEFECT_TYPES:
            (cat_dir / "test" / defect).mkdir(parents=True, exist_ok=True)
            (cat_dir / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
        for split, n, sub in (
            (_SPLIT_TRAIN, n_train, "train"),
            (_SPLIT_TEST_GOOD, n_test_good, "test"),
        ):
            folder = cat_dir / sub / "good"
            jobs += [(cat, split, None, i, folder / f"{_stem(i, n)}.png", None) for i in range(n)]
        n = n_test_per_defect
        for k, defect in enumerate(DEFECT_TYPES):
            img_dir, mask_dir = cat_dir / "test" / defect, cat_dir / "ground_truth" / defect
            jobs += [
                (
                    cat,
                    _SPLIT_DEFECT0 + k,
                    defect,
                    i,
                    img_dir / f"{_stem(i, n)}.png",
                    mask_dir / f"{_stem(i, n)}_mask.png",
                )
                for i in range(n)
            ]

    def run(job) -> None:
        cat, split, defect, i, img_path, mask_path = job
        _, image, mask = _sample(cat, defect, _rng(seed, cat, split, i), size)
        _save_png(image, img_path)
        if mask_path is not None:
            _save_png(np.where(mask, 255, 0).astype(np.uint8), mask_path)

    # Every image has its own generator, so the work order cannot change the output; threads
    # help because numpy and Pillow's PNG encoder release the GIL for the heavy parts.
    workers = max(1, min(4, os.cpu_count() or 1))
    if workers == 1 or len(jobs) < 8:
        for job in jobs:
            run(job)
    else:
        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(run, jobs):  # iterating re-raises the first worker exception
                pass
    return root


def is_synthetic(root: str | os.PathLike) -> bool:
    """Whether `root` holds a data set written by `write_dataset` (its README.txt says so)."""
    readme = pathlib.Path(root) / "README.txt"
    try:
        return readme.read_text(errors="replace").startswith(_README_HEADER)
    except OSError:
        return False


def embedded_root(cache: str | os.PathLike,
                  log: Callable[[str], None] | None = None) -> pathlib.Path:
    """The embedded data set (`write_dataset`'s defaults) in the cache folder `cache`, written
    there on first use: into a temporary folder, then renamed, so that a crash or a second
    process never sees half of it."""
    root = pathlib.Path(cache) / f"embedded-v{EMBEDDED_VERSION}"
    if is_synthetic(root):
        return root
    if log is not None:
        log(f"adjax: writing the embedded data set to {root} (once; a few seconds)")
    parent = files.ensure_folder(root.parent, "cache folder")
    tmp = pathlib.Path(tempfile.mkdtemp(dir=parent, prefix=f".{root.name}."))
    try:
        write_dataset(tmp)
        try:
            os.rename(tmp, root)
        except OSError:  # another process finished first
            if not is_synthetic(root):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
