"""Ground truth drawn as polygons: LabelMe annotation files (`.json`) rasterised to masks.

A LabelMe file holds `imageWidth`, `imageHeight` and a list of `shapes`, each with a `label`,
`points` ([[x, y], ...] in pixels) and a `shape_type`. Every shape marks anomalous pixels,
whatever its label; the mask is their union. The shapes adjax fills are drawn as LabelMe's own
`shape_to_mask` draws them (Pillow's ImageDraw, outline included):

* `polygon` (also a missing or null `shape_type`, as older LabelMe files have): at least 3
  points, filled;
* `rectangle`: two opposite corners (the box around all its points is filled);
* `circle`: the centre and a point on the circle.

Lines and points carry no area, so they are refused rather than silently dropped.
"""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np
from PIL import Image, ImageDraw

from adjax.data.layouts import DataError

# Fewest points each fillable shape needs; a circle takes exactly its two.
_MIN_POINTS = {"polygon": 3, "rectangle": 2, "circle": 2}

# Annotators click on the image's edge, which LabelMe may store a fraction of a pixel outside;
# a point further out than this means the annotation belongs to another image.
_OUTSIDE_TOLERANCE = 1.0


def is_annotation(path: pathlib.Path) -> bool:
    """Whether a mask file is a LabelMe annotation (rather than a mask image)."""
    return path.suffix.lower() == ".json"


def rasterise(path: pathlib.Path, image: pathlib.Path, image_size: tuple[int, int]) -> np.ndarray:
    """Boolean [H, W] mask of the LabelMe annotation `path` for `image` of size (W, H).

    Raises:
      DataError: one sentence naming `path`: not JSON, a missing key, a shape that cannot be
        filled or has too few points, a size other than the image's, or a point outside it.
    """
    data = _read(path)
    width, height = data["imageWidth"], data["imageHeight"]
    if (width, height) != tuple(image_size):
        raise DataError(f"LabelMe annotation {path} is for a {width}×{height} image, which does "
                        f"not match its image {image} ({image_size[0]}×{image_size[1]})")
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for index, shape in enumerate(data["shapes"]):
        kind, points = _shape(path, index, shape, width, height)
        _draw(draw, kind, points)
    return np.asarray(canvas) > 0


def _read(path: pathlib.Path) -> dict:
    """The annotation's top level, with positive integer imageWidth/imageHeight and a list of
    shapes."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"LabelMe annotation {path} is not valid JSON ({err})") from err
    except OSError as err:
        raise DataError(f"could not read LabelMe annotation {path} ({err})") from err
    if not isinstance(data, dict):
        raise DataError(f"LabelMe annotation {path} is not a JSON object")
    missing = [k for k in ("imageHeight", "imageWidth", "shapes") if k not in data]
    if missing:
        raise DataError(f"LabelMe annotation {path} has no {' or '.join(missing)}")
    for key in ("imageWidth", "imageHeight"):
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DataError(f"LabelMe annotation {path} has {key} {value!r}, not a positive "
                            f"integer")
    if not isinstance(data["shapes"], list):
        raise DataError(f"LabelMe annotation {path} has shapes that are not a list")
    return data


def _shape(path: pathlib.Path, index: int, shape, width: int,
           height: int) -> tuple[str, list[tuple[float, float]]]:
    """(shape_type, points) of shape `index`, checked: fillable, enough points, inside."""
    if not isinstance(shape, dict):
        raise DataError(f"shape {index} of LabelMe annotation {path} is not a JSON object")
    where = f"shape {index} ({shape.get('label')!r}) of LabelMe annotation {path}"
    kind = shape.get("shape_type") or "polygon"
    if kind not in _MIN_POINTS:
        raise DataError(f"{where} has shape_type {kind!r}, which has no area to fill; use "
                        f"polygon, rectangle or circle")
    points = shape.get("points")
    if not isinstance(points, list) or not all(_is_point(p) for p in points):
        raise DataError(f"{where} has points that are not a list of [x, y] numbers")
    need = _MIN_POINTS[kind]
    if len(points) < need or (kind == "circle" and len(points) != need):
        exactly = "exactly" if kind == "circle" else "at least"
        raise DataError(f"{where} has {len(points)} point(s), but a {kind} needs {exactly} "
                        f"{need}")
    tol = _OUTSIDE_TOLERANCE
    for x, y in points:
        if not (-tol <= x <= width + tol and -tol <= y <= height + tol):
            raise DataError(f"{where} has the point ({x:g}, {y:g}), more than {tol:g} px "
                            f"outside its {width}×{height} image")
    return kind, [(float(x), float(y)) for x, y in points]


def _is_point(p) -> bool:
    return (isinstance(p, list | tuple) and len(p) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                    for v in p))


def _draw(draw: ImageDraw.ImageDraw, kind: str, points: list[tuple[float, float]]) -> None:
    """Fills one checked shape with 1 (outline included), as LabelMe's shape_to_mask."""
    if kind == "circle":
        (cx, cy), (px, py) = points
        r = math.hypot(px - cx, py - cy)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=1, fill=1)
    elif kind == "rectangle":
        # Pillow needs the corners ordered; LabelMe stores them in the order they were dragged.
        xs, ys = [x for x, _ in points], [y for _, y in points]
        draw.rectangle([min(xs), min(ys), max(xs), max(ys)], outline=1, fill=1)
    else:
        draw.polygon(points, outline=1, fill=1)
