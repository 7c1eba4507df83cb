"""List the samples of a dataset split from its folder layout, without decoding anything.

Supported layouts (see ``LAYOUTS``):

* ``mvtec_ad`` / ``mpdd``: ``<root>/<category>/train/good/*``, ``test/<defect>/*`` and masks at
  ``ground_truth/<defect>/<stem>_mask.png``.
* ``btad``: ``<root>/<product>/train/ok/*``, ``test/{ok,ko}/*`` and masks at
  ``ground_truth/ko/<stem>.{png,bmp,...}`` (BTAD masks carry the image's own stem, no suffix).
* ``visa``: VisA after its authors' ``prepare_data.py`` (the 1cls split): ``<root>/<category>/
  train/good/*.JPG``, ``test/{good,bad}/*`` and masks at ``ground_truth/bad/<stem>.png``.
* ``folder``: a plain folder of normal images, for training only.

Labelled training data (``anomalous_train``, ``config.data.labelled_train``): in the MVTec-like
layouts every folder of ``train/`` besides the normal one holds anomalous training images of that
defect, whose masks are found in ``ground_truth/<defect>/`` as for the test images. A mask may
be an image or a LabelMe annotation ``<stem><suffix>.json`` (``adjax.data.polygons``); an image
wins over a JSON file of the same stem.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

LAYOUTS = ("mvtec_ad", "mpdd", "btad", "visa", "folder")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Preference order when one stem has several mask files: PNG is the format every published
# layout uses, so it wins over a BMP/JPEG left next to it; a LabelMe polygon file (.json) comes
# last, so that a raster mask exported from it is the one read.
_MASK_EXTENSIONS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".json")

_SPLITS = ("train", "test")

_DISPLAY = {"mvtec_ad": "MVTec AD", "mpdd": "MPDD", "btad": "BTAD", "visa": "VisA",
            "folder": "image folder"}


class DataError(ValueError):
    """A dataset on disk does not have the expected layout or content."""


@dataclasses.dataclass(frozen=True)
class Sample:
    """One image of a split and where its ground truth lives.

    Attributes:
      image: the image file.
      mask: the mask file, or None for normal images (and for anomalous images without a mask
        when ``allow_missing_masks`` was set).
      label: 0 normal, 1 anomalous.
      defect: "good" for normal images; the defect folder name otherwise.
    """

    image: pathlib.Path
    mask: pathlib.Path | None
    label: int
    defect: str


def list_samples(
    layout: str,
    root: str | os.PathLike,
    category: str | None,
    split: str,
    *,
    allow_missing_masks: bool = False,
    anomalous_train: bool = False,
) -> list[Sample]:
    """Lists the samples of one split of a dataset, sorted by defect then file name (with
    ``anomalous_train``, the normal training images come first).

    Args:
      layout: one of ``LAYOUTS``.
      root: the dataset root (the folder holding the categories; for ``folder``, the images).
      category: the category / product folder (``bottle``, ``01``...); for ``folder`` an optional
        subfolder of ``root``.
      split: ``"train"`` or ``"test"`` (``folder`` has only ``"train"``).
      allow_missing_masks: if False (default), an anomalous image without a mask file is an
        error, since pixel metrics would silently treat it as all-normal. If True, its
        ``Sample.mask`` is None instead.
      anomalous_train: for the train split of the MVTec-like layouts, also list every folder of
        ``train/`` besides the normal one as anomalous images of that defect, with their masks
        from ``ground_truth/<defect>/`` (ignored for the test split).

    Returns:
      The samples, in a deterministic order.

    Raises:
      DataError: unknown layout or split, missing folder, a folder without images, a missing
        mask, or (``anomalous_train``) no anomalous training image or an image stem found in
        both ``train/<defect>/`` and ``test/<defect>/``, whose mask would be ambiguous.
    """
    if layout not in LAYOUTS:
        known = ", ".join(LAYOUTS)
        raise DataError(f"unknown dataset layout {layout!r}; known layouts are {known}")
    root = pathlib.Path(root)
    if anomalous_train and layout not in LABELLED_TRAIN_LAYOUTS:
        raise DataError(f"the {layout!r} layout has no anomalous training folders "
                        f"(train/<defect> with ground_truth/<defect>)")
    if layout == "folder":
        return _list_folder(root, category, split)
    if split not in _SPLITS:
        raise DataError(
            f"unknown split {split!r} for layout {layout!r}; expected one of {', '.join(_SPLITS)}"
        )
    name = _DISPLAY[layout]
    _require_dir(root, f"{name} root folder")
    if not category:
        raise DataError(f"the {layout!r} layout needs a category (a subfolder of {root})")
    cat_dir = root / category
    _require_dir(cat_dir, f"{name} category folder")
    return _list_split(cat_dir, split, layout, allow_missing_masks, anomalous_train)


@dataclasses.dataclass(frozen=True)
class _Spec:
    """How an MVTec-like layout names things."""

    normal: str       # the folder of normal images under train/ and test/
    mask_suffix: str  # mask file stem = image stem + this


_SPECS = {"mvtec_ad": _Spec("good", "_mask"), "mpdd": _Spec("good", "_mask"),
          "btad": _Spec("ok", ""), "visa": _Spec("good", "")}

# The layouts whose train/ may hold labelled anomalous folders (`anomalous_train`).
LABELLED_TRAIN_LAYOUTS = tuple(_SPECS)


def _list_split(cat_dir: pathlib.Path, split: str, layout: str, allow_missing: bool,
                anomalous_train: bool) -> list[Sample]:
    spec, name = _SPECS[layout], _DISPLAY[layout]
    split_dir = cat_dir / split
    if split == "train":
        folder = split_dir / spec.normal
        _require_dir(folder, f"{name} category folder")
        normal = [Sample(p, None, 0, "good") for p in _images_in(folder, name)]
        if not anomalous_train:
            return normal
        anomalous = [s for s in _list_defects(cat_dir, split, spec, name, allow_missing)
                     if s.label]
        if not anomalous:
            raise DataError(f"{name} train folder {split_dir} holds no anomalous images besides "
                            f"{spec.normal}/, but config.data.labelled_train asks for labelled "
                            f"training folders (train/<defect> with ground_truth/<defect>)")
        _refuse_shared_stems(cat_dir, anomalous, name)
        return normal + anomalous

    _require_dir(split_dir, f"{name} category folder")
    samples = _list_defects(cat_dir, split, spec, name, allow_missing)
    if not samples:
        raise DataError(
            f"{name} test folder {split_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)})"
        )
    return samples


def _list_defects(cat_dir: pathlib.Path, split: str, spec: _Spec, name: str,
                  allow_missing: bool) -> list[Sample]:
    """Every image of the folders of ``cat_dir/split``: the normal folder's as "good", the
    others' as anomalous with their masks from ``ground_truth/<defect>/``."""
    split_dir = cat_dir / split
    # Normal images are reported as "good" whatever the layout calls them; sorting by that
    # name keeps the defect-then-file-name order.
    defect_dirs = sorted((d for d in split_dir.iterdir() if d.is_dir() and not _hidden(d)),
                         key=lambda d: "good" if d.name == spec.normal else d.name)
    if not defect_dirs:
        raise DataError(f"{name} {split} folder {split_dir} holds no defect folders")
    samples = []
    for defect_dir in defect_dirs:
        images = _images_in(defect_dir, name, allow_empty=True)
        if defect_dir.name == spec.normal:
            samples.extend(Sample(p, None, 0, "good") for p in images)
            continue
        gt_dir = cat_dir / "ground_truth" / defect_dir.name
        masks = _mask_index(gt_dir)
        for image in images:
            mask = masks.get(image.stem + spec.mask_suffix)
            if mask is None and not allow_missing:
                expected = gt_dir / f"{image.stem}{spec.mask_suffix}.png"
                raise DataError(f"{name} anomalous {split} image {image} has no mask file "
                                f"(expected {expected} or that name with another image "
                                f"extension or .json for a LabelMe annotation)")
            samples.append(Sample(image, mask, 1, defect_dir.name))
    return samples


def _refuse_shared_stems(cat_dir: pathlib.Path, anomalous: list[Sample], name: str) -> None:
    """Raises DataError when an anomalous training image shares its stem with a test image of
    the same defect: both would read the one mask file of ``ground_truth/<defect>/``."""
    test_stems: dict[str, dict[str, pathlib.Path]] = {}
    for sample in anomalous:
        if sample.defect not in test_stems:
            test_dir = cat_dir / "test" / sample.defect
            found = _images_in(test_dir, name, allow_empty=True) if test_dir.is_dir() else []
            test_stems[sample.defect] = {p.stem: p for p in found}
        twin = test_stems[sample.defect].get(sample.image.stem)
        if twin is not None:
            gt_dir = cat_dir / "ground_truth" / sample.defect
            raise DataError(f"{name} training image {sample.image} and test image {twin} have "
                            f"the same name, so their mask in {gt_dir} would be ambiguous; "
                            f"rename one of them")


def _list_folder(root: pathlib.Path, category: str | None, split: str) -> list[Sample]:
    folder = root / category if category else root
    if split != "train":
        raise DataError(
            f"the 'folder' layout holds normal images for training only, so split {split!r} "
            f"of {folder} is not available"
        )
    _require_dir(folder, "image folder")
    return [Sample(p, None, 0, "good") for p in _images_in(folder, "image")]


def _require_dir(path: pathlib.Path, what: str) -> None:
    if not path.exists():
        raise DataError(f"{what} {path} does not exist")
    if not path.is_dir():
        raise DataError(f"{what} {path} is not a folder")


def _hidden(path: pathlib.Path) -> bool:
    # Skips dot-files such as macOS "._x.png" AppleDouble files, which carry an image extension
    # but are not images and would fail to decode.
    return path.name.startswith(".")


def _images_in(folder: pathlib.Path, name: str, allow_empty: bool = False) -> list[pathlib.Path]:
    """Image files directly inside ``folder`` (not recursive), sorted by file name."""
    images = sorted(
        (
            p
            for p in folder.iterdir()
            if p.suffix.lower() in IMAGE_EXTENSIONS and not _hidden(p) and p.is_file()
        ),
        key=lambda p: p.name,
    )
    if not images and not allow_empty:
        raise DataError(f"{name} folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return images


def _mask_index(gt_dir: pathlib.Path) -> dict[str, pathlib.Path]:
    """Maps mask file stems in ``gt_dir`` to their path; empty if the folder is missing."""
    if not gt_dir.is_dir():
        return {}
    rank = {ext: i for i, ext in enumerate(_MASK_EXTENSIONS)}
    best: dict[str, pathlib.Path] = {}
    for p in sorted(gt_dir.iterdir(), key=lambda p: p.name):
        ext = p.suffix.lower()
        if ext not in rank or _hidden(p) or not p.is_file():
            continue
        old = best.get(p.stem)
        if old is None or rank[ext] < rank[old.suffix.lower()]:
            best[p.stem] = p
    return best
