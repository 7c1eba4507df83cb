"""Decode and resize a split's images and masks once, optionally caching the arrays on disk.

Images are decoded with Pillow, converted to RGB and resized to S×S with bilinear filtering
(what torchvision's ``Resize`` does on PIL images, the pre-processing of the PyTorch references).
Masks are resized with nearest neighbour and binarised to {0, 1}; a LabelMe polygon annotation
(`adjax.data.polygons`) is first drawn at its image's size.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import pathlib
import zipfile
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from adjax import files
from adjax.data import polygons
from adjax.data.layouts import DataError, Sample, list_samples

# Bump when the decoding or the file content changes, so old caches are not reused.
CACHE_VERSION = 1

_MAX_WORKERS = 8

# Modes whose pixels np.asarray returns as a single integer/float channel.
_SINGLE_CHANNEL = ("1", "L", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """Decoded arrays of one split.

    Attributes:
      images: uint8 [N, S, S, 3] RGB images.
      masks: uint8 [N, S, S] pixel labels in {0, 1} (all zero for normal images).
      labels: int32 [N], 0 normal, 1 anomalous.
      defects: the defect name of each image ("good" for normal ones).
      paths: the image file of each image.
    """

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    defects: tuple[str, ...]
    paths: tuple[str, ...]

    def __post_init__(self):
        n = len(self.images)
        if not (len(self.masks) == len(self.labels) == len(self.defects) == len(self.paths) == n):
            raise ValueError(
                f"Split fields have different lengths: images {n}, masks {len(self.masks)}, "
                f"labels {len(self.labels)}, defects {len(self.defects)}, paths {len(self.paths)}"
            )

    def __len__(self) -> int:
        return len(self.images)

    def take(self, idx) -> Split:
        """Returns the subset at the integer indices ``idx`` (a boolean mask is also accepted)."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        elif idx.size == 0:
            idx = idx.astype(np.int64)
        elif idx.dtype.kind not in "iu":
            raise TypeError(f"Split.take needs integer indices, got dtype {idx.dtype}")
        idx = idx.reshape(-1)
        return Split(
            images=self.images[idx],
            masks=self.masks[idx],
            labels=self.labels[idx],
            defects=tuple(self.defects[i] for i in idx),
            paths=tuple(self.paths[i] for i in idx),
        )

    def concat(self, other: Split) -> Split:
        """This split followed by `other`."""
        return Split(np.concatenate([self.images, other.images]),
                     np.concatenate([self.masks, other.masks]),
                     np.concatenate([self.labels, other.labels]),
                     self.defects + other.defects, self.paths + other.paths)


def cache_dir(configured: str = "") -> pathlib.Path:
    """Where decoded arrays are cached: `configured` (config.data.cache_dir), else $ADJAX_CACHE,
    else ~/.cache/adjax."""
    if configured:
        return pathlib.Path(configured)
    return pathlib.Path(os.environ.get("ADJAX_CACHE", pathlib.Path.home() / ".cache" / "adjax"))


def load_split(
    samples: Sequence[Sample],
    image_size: int,
    cache_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
) -> Split:
    """Decodes, converts to RGB and resizes every sample's image and mask to S×S.

    Args:
      samples: the samples, e.g. from ``list_samples``; the output keeps their order.
      image_size: S, the side of the square output.
      cache_dir: if given, the arrays are stored there as one ``.npz`` keyed by the files' paths,
        sizes and modification times and by ``image_size``; a later call with the same inputs
        reads it back without decoding. A changed file gives a new key.
      log: called with one line before images are decoded (not when they come from the cache).

    Returns:
      A ``Split`` with uint8 images [N, S, S, 3], uint8 masks [N, S, S] in {0, 1}, int32 labels.

    Raises:
      DataError: an empty sample list, a missing or undecodable file, or a mask whose size
        differs from its image.
    """
    samples = list(samples)
    if not samples:
        raise DataError("cannot load an empty list of samples")
    if int(image_size) != image_size or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    image_size = int(image_size)
    labels = np.asarray([s.label for s in samples], dtype=np.int32)
    defects = tuple(s.defect for s in samples)
    paths = tuple(str(s.image) for s in samples)

    cache_path = None
    if cache_dir is not None:
        cache_dir = pathlib.Path(cache_dir)
        key = _cache_key(samples, image_size)
        cache_path = cache_dir / f"split-{key}.npz"
        cached = _read_cache(cache_path, len(samples), image_size, paths)
        if cached is not None:
            images, masks = cached
            return Split(images, masks, labels, defects, paths)

    if log is not None:
        folder = os.path.commonpath([str(s.image.parent) for s in samples])
        log(f"adjax: decoding {len(samples)} images of {folder} at {image_size} px"
            + (" (cached for later runs)" if cache_path is not None else ""))
    images = np.empty((len(samples), image_size, image_size, 3), dtype=np.uint8)
    masks = np.empty((len(samples), image_size, image_size), dtype=np.uint8)
    # Pillow releases the GIL while decoding and resizing, so threads give a real speed-up.
    workers = max(1, min(_MAX_WORKERS, os.cpu_count() or 1, len(samples)))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        # map yields in input order, so the first failing sample (in order) is the one reported.
        results = pool.map(lambda s: _load_sample(s, image_size), samples)
        for i, (image, mask) in enumerate(results):
            images[i] = image
            masks[i] = mask

    if cache_path is not None:
        _write_cache(cache_path, images=images, masks=masks, paths=np.asarray(paths, dtype=str))
    return Split(images, masks, labels, defects, paths)


def split_validation(train: Split, fraction: float = 0.1, seed: int = 42) -> tuple[Split, Split]:
    """Splits off a random validation subset, as EfficientAD does (10% of train/good, seed 42).

    The reference computes ``train_size = int(0.9 * N)`` and gives the remaining images to
    validation; we do the same with ``int((1 - fraction) * N)``. The permutation comes from
    NumPy (not torch's ``randperm``), so the chosen images differ from the reference's while the
    sizes match. At least one image ends up on each side. Both subsets keep the input order.

    Args:
      train: the full training split (at least 2 images).
      fraction: the share of images for validation, in (0, 1).
      seed: seed of the permutation.

    Returns:
      ``(train_rest, val)``.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    n = len(train)
    if n < 2:
        raise DataError(f"cannot split a validation set off a training split of {n} image(s)")
    n_train = min(max(int((1.0 - fraction) * n), 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return train.take(np.sort(perm[:n_train])), train.take(np.sort(perm[n_train:]))


def load_folder(
    root: str | os.PathLike, image_size: int, cache_dir: str | os.PathLike | None = None
) -> np.ndarray:
    """Loads every image directly inside a plain folder as uint8 [N, S, S, 3].

    Used for image sets without labels, e.g. EfficientAD's penalty images.
    """
    return load_split(list_samples("folder", root, None, "train"), image_size, cache_dir).images


# ----------------------------------------------------------------------------- decoding


def original_mask(sample: Sample) -> np.ndarray:
    """{0, 1} uint8 [H, W] ground truth of `sample` at its image's own size (zeros for a
    normal image); of the image only the header, which gives its size, is read."""
    try:
        with Image.open(sample.image) as img:
            width, height = img.size
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"could not read image {sample.image}: {exc}") from exc
    if sample.mask is None:
        return np.zeros((height, width), np.uint8)
    return mask_pixels(sample, (width, height)).astype(np.uint8)


def mask_pixels(sample: Sample, image_wh: tuple[int, int]) -> np.ndarray:
    """Boolean [H, W]: the anomalous pixels of `sample`'s mask file (a mask image or a LabelMe
    annotation, `adjax.data.polygons`), whose size must be its image's (W, H) `image_wh`."""
    if polygons.is_annotation(sample.mask):
        return polygons.rasterise(sample.mask, sample.image, image_wh)
    with _open(sample.mask, "mask") as m:
        if m.size != image_wh:
            raise DataError(
                f"mask {sample.mask} is {m.size[0]}×{m.size[1]} but its image {sample.image} is "
                f"{image_wh[0]}×{image_wh[1]}"
            )
        return _mask_nonzero(m)


def _load_sample(sample: Sample, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Decodes one sample into an RGB image [S, S, 3] and a {0, 1} mask [S, S]."""
    with _open(sample.image, "image") as img:
        image_wh = img.size
        image = _to_rgb(img).resize((size, size), Image.BILINEAR)
        image = np.asarray(image, dtype=np.uint8)
    if sample.mask is None:
        return image, np.zeros((size, size), dtype=np.uint8)
    # Binarising before the nearest resize equals binarising after it (nearest only picks
    # source pixels) and avoids resizing odd modes such as RGB or 16-bit masks.
    mask = Image.fromarray(mask_pixels(sample, image_wh).astype(np.uint8) * 255)
    mask = np.asarray(mask.resize((size, size), Image.NEAREST)) > 0
    return image, mask.astype(np.uint8)


def _open(path: pathlib.Path, what: str) -> Image.Image:
    """Opens and fully decodes an image file (the caller closes it), or raises DataError."""
    img = None
    try:
        img = Image.open(path)
        img.load()  # Image.open is lazy; truncated or corrupt data only fails on load.
    except FileNotFoundError:
        raise DataError(f"{what} file {path} does not exist") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        if img is not None:
            img.close()
        raise DataError(f"could not decode {what} {path}: {exc}") from exc
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """Converts any mode to 8-bit RGB; grey is replicated, alpha is dropped (as .convert does)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I"):
        # Pillow's own I/I;16 -> RGB conversion clips at 255 instead of scaling, which turns a
        # 16-bit grey image almost white; map the 16-bit range onto 0..255 instead.
        arr = np.asarray(img).astype(np.float64)
        arr = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")  # a 2-D uint8 array gives mode L
    # Everything else (L, LA, P, PA, 1, RGBA, CMYK, YCbCr, F...) follows Image.convert("RGB"),
    # the conversion of the PyTorch reference loaders.
    return img.convert("RGB")


def _mask_nonzero(m: Image.Image) -> np.ndarray:
    """Boolean [H, W]: True where the mask marks an anomaly (any nonzero value)."""
    if m.mode in _SINGLE_CHANNEL:
        return np.asarray(m) > 0
    # Colour or palette masks: a pixel is anomalous if any colour channel is nonzero; alpha does
    # not count (convert("RGB") drops it).
    return np.asarray(m.convert("RGB")).max(axis=-1) > 0


# ----------------------------------------------------------------------------- cache


def _cache_key(samples: Sequence[Sample], image_size: int) -> str:
    entries = []
    for s in samples:
        entry = [_file_id(s.image, "image"), None, s.label, s.defect]
        if s.mask is not None:
            entry[1] = _file_id(s.mask, "mask")
        entries.append(entry)
    blob = json.dumps(
        {"version": CACHE_VERSION, "image_size": image_size, "samples": entries},
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def _file_id(path: pathlib.Path, what: str) -> list:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError(f"{what} file {path} does not exist") from None
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def _read_cache(
    path: pathlib.Path, n: int, size: int, paths: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Returns (images, masks) from a cache file, or None if it is absent or unusable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            images, masks, cached_paths = data["images"], data["masks"], data["paths"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        # A damaged cache is rebuilt (and overwritten) rather than failing the run.
        return None
    if (
        images.shape != (n, size, size, 3)
        or images.dtype != np.uint8
        or masks.shape != (n, size, size)
        or masks.dtype != np.uint8
        or tuple(cached_paths.tolist()) != paths
    ):
        return None
    return images, masks


def _write_cache(path: pathlib.Path, **arrays: np.ndarray) -> None:
    """Writes an uncompressed .npz atomically (see `adjax.files`)."""
    # A file object stops np.savez from appending ".npz" to the temporary name.
    files.write_with(path, lambda f: np.savez(f, **arrays), binary=True)
