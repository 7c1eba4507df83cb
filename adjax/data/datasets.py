"""The splits a run uses, from its `config.data` block: train, validation and test.

Every layout is a `Source` in `SOURCES`: the image-folder layouts of `adjax.data.layouts`
(MVTec AD, MPDD, BTAD, VisA, a plain folder), Real-IAD's JSON split files
(`adjax.data.real_iad`) and the labelled sets of `adjax.data.labelled`.
`config.data.root = "embedded"` names the embedded synthetic data set, written to the cache on
first use.
"""

import pathlib
from collections.abc import Callable
from typing import Protocol

import ml_collections
import numpy as np

from adjax.config import EMBEDDED
from adjax.data import labelled, real_iad, synthetic
from adjax.data.labelled import per_class_holdout
from adjax.data.layouts import LABELLED_TRAIN_LAYOUTS, LAYOUTS, DataError, Sample, list_samples
from adjax.data.loading import Split, cache_dir, load_split, original_mask, split_validation

Log = Callable[[str], None]


class Source(Protocol):
    """How one kind of data set gives its splits."""

    def train_and_validation(self, cfg: ml_collections.ConfigDict, seed: int,
                             log: Log | None) -> tuple[Split, Split]: ...
    def test(self, cfg: ml_collections.ConfigDict, log: Log | None) -> Split | None: ...
    def test_samples(self, cfg: ml_collections.ConfigDict,
                     log: Log | None) -> list[Sample] | None: ...
    def name(self, cfg: ml_collections.ConfigDict) -> str: ...


def root(cfg: ml_collections.ConfigDict, log: Log | None = None) -> pathlib.Path:
    """The data set's folder: `cfg.root`, or the embedded data set's copy in the cache."""
    if not cfg.root:
        raise DataError("config.data.root is empty: point it at the data set's folder (or "
                        "set it to 'embedded' for the embedded data set).")
    if cfg.root == EMBEDDED:
        return synthetic.embedded_root(cache_dir(cfg.cache_dir), log)
    return pathlib.Path(cfg.root)


def supervised_part(labels: np.ndarray, defects: tuple[str, ...], fraction: float,
                    seed: int) -> np.ndarray:
    """Boolean [N]: the anomalous test images moved into training for supervised methods
    (`config.data.supervised_fraction`): `round(fraction * n_d)` of the images of every defect
    type d, drawn with `seed` (not the run's seed, so that the test set is the same for every
    run)."""
    _, defect_ids = np.unique(np.asarray(defects), return_inverse=True)
    return per_class_holdout(defect_ids, fraction, seed) & (labels == 1)


def labelled_train(cfg: ml_collections.ConfigDict) -> bool:
    """`config.data.labelled_train`: whether the training split also holds the anomalous images
    of `train/<defect>` folders (with masks in `ground_truth/<defect>`); one sentence for a
    layout that has no such folders."""
    wanted = bool(cfg.get("labelled_train", False))
    if wanted and cfg.layout not in LABELLED_TRAIN_LAYOUTS:
        raise DataError(f"config.data.labelled_train reads train/<defect> folders, which the "
                        f"{cfg.layout!r} layout does not have; use one of "
                        f"{', '.join(LABELLED_TRAIN_LAYOUTS)} or set it to false.")
    return wanted


class ImageFolders:
    """The folder layouts: decoded once into the cache, then read from it.

    Supervised methods (seed 001's U-Net) get anomalous training images with masks in two ways,
    which may be combined: with `config.data.labelled_train` the anomalous images of the
    `train/<defect>` folders join the training split, and with `config.data.supervised_fraction`
    > 0 a share of the anomalous test images, with their masks, moves into the training split and
    out of the test split, as the thesis splits its one labelled set (223 train / 100 test). The
    validation images are drawn from the normal training images only.
    """

    def samples(self, cfg, split: str, log: Log | None) -> list[Sample]:
        """The files of one split, from the folder layout."""
        return list_samples(cfg.layout, root(cfg, log), cfg.category or None, split,
                            anomalous_train=labelled_train(cfg))

    def _load(self, cfg, split: str, log: Log | None) -> Split:
        return load_split(self.samples(cfg, split, log), cfg.image_size,
                          cache_dir(cfg.cache_dir), log=log)

    def _moved(self, cfg, full_test: Split) -> np.ndarray:
        """Which test images train the supervised methods (none unless configured)."""
        fraction = cfg.get("supervised_fraction", 0.0)
        if not fraction:
            return np.zeros(len(full_test), bool)
        if not 0.0 < fraction < 1.0:
            raise DataError(f"config.data.supervised_fraction must be in [0, 1), got {fraction}.")
        moved = supervised_part(full_test.labels, full_test.defects, fraction,
                                cfg.get("supervised_seed", 0))
        if not moved.any():
            raise DataError(f"config.data.supervised_fraction {fraction} moves no anomalous "
                            f"test image into training (the test split holds "
                            f"{int(full_test.labels.sum())}); raise it.")
        return moved

    def test_samples(self, cfg, log):
        if cfg.layout == "folder":
            return None
        samples = self.samples(cfg, "test", log)
        if not cfg.get("supervised_fraction", 0.0):
            return samples
        keep = ~self._moved(cfg, self._load(cfg, "test", log))
        return [s for s, k in zip(samples, keep, strict=True) if k]

    def train_and_validation(self, cfg, seed, log):
        full = self._load(cfg, "train", log)
        normal = full.labels == 0
        # Validation calibrates on normal images only; the whole split is passed on when it is
        # all normal, so that no copy of it is made.
        train, val = split_validation(full if normal.all() else full.take(normal),
                                      cfg.val_fraction, seed)
        if not normal.all():
            train = train.concat(full.take(~normal))
        if cfg.get("supervised_fraction", 0.0):
            if cfg.layout == "folder":
                raise DataError("config.data.supervised_fraction needs anomalous images with "
                                "masks, which the 'folder' layout does not have.")
            full_test = self._load(cfg, "test", log)
            train = train.concat(full_test.take(self._moved(cfg, full_test)))
        return train, val

    def test(self, cfg, log):
        if cfg.layout == "folder":
            return None
        full_test = self._load(cfg, "test", log)
        return full_test.take(~self._moved(cfg, full_test))

    def name(self, cfg):
        if cfg.name:
            return cfg.name
        if cfg.root == EMBEDDED or (cfg.root and synthetic.is_synthetic(cfg.root)):
            return "synth"
        return cfg.layout


class RealIAD(ImageFolders):
    """Real-IAD's folders and JSON split files (`adjax.data.real_iad`)."""

    def samples(self, cfg, split, log):
        found = real_iad.list_samples(root(cfg, log), cfg.category, split,
                                      cfg.real_iad.json, cfg.real_iad.images)
        if log is not None:
            log(f"adjax: Real-IAD {cfg.category} ({cfg.real_iad.json}) {split}: "
                f"{real_iad.counts(found)}")
        return found

    def name(self, cfg):
        return cfg.name or "real_iad"


class Labelled:
    """The one-class and imbalanced protocols over labelled sets (`adjax.data.labelled`)."""

    def train_and_validation(self, cfg, seed, log):
        return labelled.train_and_validation(cfg, seed)

    def test(self, cfg, log):
        return labelled.test(cfg)

    def test_samples(self, cfg, log):
        return None  # decoded from data-set files: no masks on disk

    def name(self, cfg):
        return labelled.canonical_name(cfg.name)


SOURCES: dict[str, Source] = {**{layout: ImageFolders() for layout in LAYOUTS},
                              "real_iad": RealIAD(), "labelled": Labelled()}


def _source(cfg: ml_collections.ConfigDict) -> Source:
    if cfg.layout not in SOURCES:
        raise DataError(f"config.data.layout {cfg.layout!r} is not one of "
                        f"{', '.join(SOURCES)}.")
    labelled_train(cfg)  # refused before any work for a layout without train/<defect> folders
    return SOURCES[cfg.layout]


def train_and_validation(cfg: ml_collections.ConfigDict, seed: int,
                         log: Log | None = None) -> tuple[Split, Split]:
    """The normal training images (plus labelled anomalies where the protocol has them), with
    `cfg.val_fraction` of the normal ones held out for calibration."""
    return _source(cfg).train_and_validation(cfg, seed, log)


def test(cfg: ml_collections.ConfigDict, log: Log | None = None) -> Split:
    """The test split with labels, masks and defect types."""
    split = _source(cfg).test(cfg, log)
    if split is None:
        raise DataError(f"the {cfg.layout!r} layout has no test split (it holds normal images "
                        f"only); score images with `adjax predict`, or evaluate on a data set "
                        f"with one (--root/--category of `adjax eval`).")
    return split


def check_test(cfg: ml_collections.ConfigDict, log: Log | None = None) -> int:
    """Lists and decodes the test split now (it is cached for the evaluation), so that a
    missing mask or an undecodable test image stops a run before training; returns its size
    (0 for a layout without one)."""
    split = _source(cfg).test(cfg, log)
    return 0 if split is None else len(split)


def categories(cfg: ml_collections.ConfigDict) -> list[str]:
    """The category folders under the data set's root (sorted; hidden folders skipped)."""
    if cfg.layout in ("labelled", "folder"):
        raise DataError(f"the {cfg.layout!r} layout has no category folders; name the "
                        f"categories of a matrix for a folder layout such as mvtec_ad.")
    folder = root(cfg)
    if not folder.is_dir():
        raise DataError(f"data root folder {folder} does not exist")
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def original_masks(cfg: ml_collections.ConfigDict, log: Log | None = None) -> list[np.ndarray]:
    """The test split's ground truth at each image's own size ({0, 1} uint8 [H_i, W_i]; zeros
    for normal images), in the order of `test(cfg)`."""
    samples = _source(cfg).test_samples(cfg, log)
    if samples is None:
        raise DataError(f"the {cfg.layout!r} layout has no ground-truth files at their original "
                        f"size; evaluate it with config.eval.original_size=false.")
    return [original_mask(s) for s in samples]


def dataset_name(cfg: ml_collections.ConfigDict) -> str:
    """The data set's name in results records: `config.data.name` if set; else "synth" for the
    embedded data set (or a copy written by `adjax data synth`), else the layout."""
    return _source(cfg).name(cfg)
