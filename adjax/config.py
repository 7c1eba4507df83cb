"""Helpers shared by the method configs in `configs/`.

A config file defines `get_config(arg)`; `arg` is the text after the colon in
`--config=configs/x.py:arg` and names a variant. Every method has at least a `quick` variant that
trains on the embedded data (`adjax data synth`) on a CPU in about a minute.
"""

import ml_collections

# Where `adjax data synth --out data/synth` writes the embedded data set (the quick configs' root).
SYNTH_ROOT = "data/synth"


def base_config(method: str, variant: str, seed: int = 42) -> ml_collections.ConfigDict:
    """The keys every config starts with: the method's registry name, the variant, the seed."""
    return ml_collections.ConfigDict(dict(method=method, variant=variant, seed=seed))


def data_config(**overrides) -> ml_collections.ConfigDict:
    """The `config.data` block: which data set, where, and how it is prepared.

    Keys: layout (mvtec_ad | mpdd | btad | folder), name (the data set's name in results records;
    empty means the layout), root, category, image_size, val_fraction (the
    share of the normal training images held out for calibration), cache_dir (decoded arrays;
    empty means ~/.cache/adjax or $ADJAX_CACHE).
    """
    cfg = ml_collections.ConfigDict(
        dict(layout="mvtec_ad", name="", root="", category="", image_size=256, val_fraction=0.1,
             cache_dir="")
    )
    cfg.update(overrides)
    return cfg


def train_config(**overrides) -> ml_collections.ConfigDict:
    """The `config.train` block read by the trainer (`adjax.train`).

    Keys: steps, batch_size, steps_per_call (steps per compiled call, scanned), checkpoint_every,
    keep_checkpoints, log_every (steps between progress lines; a multiple of steps_per_call).
    """
    cfg = ml_collections.ConfigDict(
        dict(steps=1000, batch_size=8, steps_per_call=50, checkpoint_every=1000,
             keep_checkpoints=3, log_every=500)
    )
    cfg.update(overrides)
    return cfg


def eval_config(**overrides) -> ml_collections.ConfigDict:
    """The `config.eval` block.

    Keys: batch_size (prediction), fpr_limit (AUPRO), threshold (how the decision threshold is
    chosen on validation images: max | quantile | k_sigma), threshold_q, threshold_k.
    """
    cfg = ml_collections.ConfigDict(dict(batch_size=16, fpr_limit=0.3, threshold="quantile",
                                         threshold_q=0.99, threshold_k=3.0))
    cfg.update(overrides)
    return cfg


def parse_variant(arg: str | None, known: tuple[str, ...], default: str) -> str:
    """Returns the variant named by `arg` (default when empty); a clear error when unknown."""
    variant = arg or default
    if variant not in known:
        raise ValueError(f"unknown config variant {variant!r}; choose one of {', '.join(known)}.")
    return variant
