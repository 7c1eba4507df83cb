"""Helpers shared by the method configs in `configs/`, and the checks every config passes.

A config file defines `get_config(arg)`; `arg` is the text after the colon in
`--config=configs/x.py:arg` and names a variant. Every method has a `quick` variant that trains
on the embedded data set on a CPU in a few minutes (each config's docstring gives the measured
time). `validate(config)` checks the blocks the trainer and the evaluator read before any work
is done, so that a bad value stops with one sentence naming its key.
"""

import math
import pathlib
from collections.abc import Sequence
from typing import Any

import ml_collections

# `config.data.root` of the quick configs: the embedded synthetic data set, written to the cache
# on first use (`adjax.data.synthetic.embedded_root`); `adjax data synth --out DIR` writes the
# same images where a user wants to look at them.
EMBEDDED = "embedded"

LOOPS = ("auto", "scan", "host")
THRESHOLDS = ("max", "quantile", "k_sigma", "optimal")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


def base_config(method: str, variant: str, seed: int = 42) -> ml_collections.ConfigDict:
    """The keys every config starts with: the method's registry name, the variant, the seed."""
    return ml_collections.ConfigDict(dict(method=method, variant=variant, seed=seed))


def data_config(**overrides) -> ml_collections.ConfigDict:
    """The `config.data` block: which data set, where, and how it is prepared.

    Keys: layout (mvtec_ad | mpdd | btad | visa | real_iad | folder | labelled), name (the data
    set's name in results records; empty: "synth" for the embedded data, else the layout), root
    (a folder, or "embedded"), category, image_size, val_fraction (the share of the normal
    training images held out for calibration), cache_dir (decoded arrays; empty means
    ~/.cache/adjax or $ADJAX_CACHE), real_iad (the real_iad layout's folders under root: json,
    the split files (realiad_jsons; realiad_jsons_sv, realiad_jsons_fuiad_0.1, ...), images
    (realiad_1024; realiad_512, realiad_raw, ...)), labelled_train (mvtec_ad, mpdd, btad, visa:
    the anomalous images of every train/<defect> folder, with masks in ground_truth/<defect>,
    join the training split, for the supervised methods; false: train/good only).
    """
    cfg = ml_collections.ConfigDict(
        dict(layout="mvtec_ad", name="", root="", category="", image_size=256, val_fraction=0.1,
             cache_dir="", real_iad=dict(json="realiad_jsons", images="realiad_1024"),
             labelled_train=False)
    )
    cfg.update(overrides)
    return cfg


def embedded_data_config(**overrides) -> ml_collections.ConfigDict:
    """`data_config` for the embedded data set (the quick configs): `tiles` at 128 px."""
    return data_config(**{"root": EMBEDDED, "category": "tiles", "image_size": 128,
                          **overrides})


def train_config(**overrides) -> ml_collections.ConfigDict:
    """The `config.train` block read by the trainer (`adjax.train`).

    Keys: steps, batch_size, steps_per_call (steps per compiled call), loop (how a call runs its
    steps: "scan" (one compiled `lax.scan`), "host" (a Python loop over one compiled step) or
    "auto": host on CPU, scan elsewhere), checkpoint_every, keep_checkpoints, log_every (steps
    between progress lines), log_seconds (at most this long between them) and runs_per_program
    (the runs of a matrix, `adjax train --runs=...`, that share one compiled program; 0: as many
    as fit in memory).
    """
    cfg = ml_collections.ConfigDict(
        dict(steps=1000, batch_size=8, steps_per_call=50, loop="auto", checkpoint_every=1000,
             keep_checkpoints=3, log_every=500, log_seconds=30.0, runs_per_program=0)
    )
    cfg.update(overrides)
    return cfg


def eval_config(**overrides) -> ml_collections.ConfigDict:
    """The `config.eval` block.

    Keys: batch_size (prediction), fpr_limit (AUPRO), threshold (how the decision threshold is
    chosen on validation images: max | quantile | k_sigma, or optimal: of those three the one
    with the best test accuracy, seed 002's rule), threshold_q, threshold_k,
    original_size (pixel metrics at each ground truth's own size, the protocol of the published
    MVTec AD numbers: maps resized bilinearly to the mask; false: at the training size),
    register (seed 002's "R": each test and validation image, with its mask, aligned to the
    first training image by an ORB + RANSAC homography before scoring; adjax.registration, the
    `registration` extra; images it cannot align are scored as they are and counted).
    """
    cfg = ml_collections.ConfigDict(dict(batch_size=16, fpr_limit=0.3, threshold="quantile",
                                         threshold_q=0.99, threshold_k=3.0, original_size=False,
                                         register=False))
    cfg.update(overrides)
    return cfg


def parse_variant(arg: str | None, known: tuple[str, ...], default: str) -> str:
    """Returns the variant named by `arg` (default when empty); a clear error when unknown."""
    variant = arg or default
    if variant not in known:
        raise ValueError(f"unknown config variant {variant!r}; choose one of {', '.join(known)}.")
    return variant


# -- checks --------------------------------------------------------------------------------------


def _number(block: ml_collections.ConfigDict, where: str, key: str, *, integer: bool,
            low: float, high: float = math.inf, low_open: bool = False) -> None:
    value = block.get(key)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (not integer or float(value).is_integer())
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        what = "an integer" if integer else "a finite number"
        bounds = "" if math.isinf(low) else f" {'>' if low_open else '>='} {low:g}"
        bounds += f" and <= {high:g}" if math.isfinite(high) else ""
        raise ConfigError(f"config.{where}.{key} must be {what}{bounds}, got {value!r}.")


def check_choice(key: str, value: Any, choices: Sequence[str]) -> None:
    """One sentence naming config key `key` (e.g. "config.score.reduce") when `value` is not
    one of `choices`."""
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}.")


def _choice(block: ml_collections.ConfigDict, where: str, key: str, choices) -> None:
    check_choice(f"config.{where}.{key}", block.get(key), choices)


def path_component(value: str, key: str) -> str:
    """`value` if it is one plain folder name (no separators, not '.' or '..'), else ConfigError:
    a category or data-set name must never lead outside the folder it names a part of."""
    if (not isinstance(value, str) or value in (".", "..") or "/" in value or "\\" in value
            or "\0" in value or pathlib.PurePath(value).is_absolute()):
        raise ConfigError(f"{key} must be a single folder name, got {value!r}.")
    return value


def _finite(block, where: str) -> None:
    for key, value in block.items():
        if isinstance(value, ml_collections.ConfigDict):
            _finite(value, f"{where}.{key}")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}.{key} must be a finite number, got {value}.")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks the `train`, `eval` and `data` blocks; raises ConfigError naming the first bad key.

    Method-specific keys are checked when the method is built (`adjax.methods.build`); every
    number anywhere in the config must be finite (a config is stored as JSON with the run).
    """
    _finite(config, "config")
    t = config.train
    for key in ("steps", "batch_size", "steps_per_call", "checkpoint_every", "keep_checkpoints",
                "log_every"):
        _number(t, "train", key, integer=True, low=1)
    _number(t, "train", "log_seconds", integer=False, low=0, low_open=True)
    _number(t, "train", "runs_per_program", integer=True, low=0)
    _choice(t, "train", "loop", LOOPS)
    e = config.eval
    _number(e, "eval", "batch_size", integer=True, low=1)
    _number(e, "eval", "fpr_limit", integer=False, low=0, high=1, low_open=True)
    _choice(e, "eval", "threshold", THRESHOLDS)
    _number(e, "eval", "threshold_q", integer=False, low=0, high=1)
    _number(e, "eval", "threshold_k", integer=False, low=-math.inf)
    d = config.data
    _number(d, "data", "image_size", integer=True, low=1)
    _number(d, "data", "val_fraction", integer=False, low=0, high=1, low_open=True)
    if d.val_fraction >= 1:
        raise ConfigError(f"config.data.val_fraction must be below 1, got {d.val_fraction}.")
    if d.get("category"):
        path_component(str(d.category), "config.data.category")
    if d.get("name"):
        path_component(d.name, "config.data.name")
    if d.get("layout") == "real_iad":
        for key in ("json", "images"):
            path_component(d.real_iad[key], f"config.data.real_iad.{key}")
