"""The splits a run uses, from its `config.data` block: train, validation and test."""

import os
import pathlib

import ml_collections

from adjax.data.layouts import list_samples
from adjax.data.loading import Split, load_split, split_validation


def cache_dir(cfg: ml_collections.ConfigDict) -> pathlib.Path:
    """Where decoded arrays are cached: config.data.cache_dir, $ADJAX_CACHE or ~/.cache/adjax."""
    if cfg.cache_dir:
        return pathlib.Path(cfg.cache_dir)
    return pathlib.Path(os.environ.get("ADJAX_CACHE", pathlib.Path.home() / ".cache" / "adjax"))


def _load(cfg: ml_collections.ConfigDict, split: str) -> Split:
    if not cfg.root:
        raise ValueError("config.data.root is empty: point it at the data set's folder.")
    samples = list_samples(cfg.layout, cfg.root, cfg.category or None, split)
    return load_split(samples, cfg.image_size, cache_dir(cfg))


def train_and_validation(cfg: ml_collections.ConfigDict, seed: int) -> tuple[Split, Split]:
    """The normal training images, with `cfg.val_fraction` of them held out for calibration."""
    if cfg.layout == "labelled":  # one-class / imbalanced protocols over labelled image sets
        from adjax.data import labelled

        return labelled.train_and_validation(cfg, seed)
    return split_validation(_load(cfg, "train"), cfg.val_fraction, seed)


def test(cfg: ml_collections.ConfigDict) -> Split:
    """The test split with labels, masks and defect types."""
    if cfg.layout == "labelled":
        from adjax.data import labelled

        return labelled.test(cfg)
    return _load(cfg, "test")


def dataset_name(cfg: ml_collections.ConfigDict) -> str:
    """The data set's name in results records: config.data.name, else the layout."""
    if cfg.layout == "labelled":
        from adjax.data import labelled

        return labelled.canonical_name(cfg.name)
    return cfg.name or cfg.layout
