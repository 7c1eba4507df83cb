r"""EfficientAD (Batzner, Heckler, Koenig; WACV 2024): PDN student-teacher plus autoencoder.

Variants: `s` (PDN-S), `m` (PDN-M) with the reference schedule (70,000 steps at batch 1), and
`quick`, a CPU-sized PDN-S (128 px, quarter width, 600 steps at batch 1) on the embedded data.

  adjax train --config=configs/efficientad.py:quick --workdir=runs/efficientad-quick
  adjax eval --workdir=runs/efficientad-quick

On a real MVTec AD category (users bring the data):

  adjax train --config=configs/efficientad.py:s --workdir=runs/ead-s-bottle \
      --config.data.root=/data/mvtec_ad --config.data.category=bottle
  adjax eval --workdir=runs/ead-s-bottle

The teacher is randomly initialised unless `--config.model.teacher_path` names a teacher file
(a Flax msgpack of the PDN's params); runs with a random teacher are reported as such.
"""

import ml_collections

from adjax import config as common

VARIANTS = ("s", "m", "quick")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """EfficientAD config; `arg` is one of s, m, quick."""
    variant = common.parse_variant(arg, VARIANTS, default="s")
    cfg = common.base_config("efficientad", variant)
    cfg.data = common.data_config()
    cfg.model = ml_collections.ConfigDict(
        dict(
            size="m" if variant == "m" else "s",
            out_channels=384,      # teacher width; the student has twice this
            width=1.0,             # hidden-width multiplier (1.0 = reference)
            padding=False,         # padded PDN convolutions (reference: only for pre-training)
            input_pad=0,           # reflect-pad the input by this many pixels (reference: 0)
            ae_dropout=0.0,        # reference code: none; the paper's table: 0.2
            teacher_path="",       # empty: random teacher (reported as such)
            dtype="float32",       # computation dtype: float32 or bfloat16 (params stay float32)
        )
    )
    cfg.loss = ml_collections.ConfigDict(
        dict(
            hard_quantile=0.999,   # reference; the seed-004 thesis says 0.99
            penalty_dir="",        # folder of penalty images (ImageNet in the paper); empty: off
            penalty_grayscale=0.3,
            augment_factor=0.2,    # brightness/contrast/saturation factor U(1-f, 1+f), AE branch
        )
    )
    cfg.map = ml_collections.ConfigDict(
        dict(alpha=0.5,            # weight of the student-teacher map in the fused map
             q_a=0.9, q_b=0.995,   # validation quantiles mapped to 0 and 0.1
             pad=4)                # zero padding of the feature-level map before resizing
    )
    cfg.optim = ml_collections.ConfigDict(
        dict(lr=1e-4, weight_decay=1e-5, lr_drop_at=0.95, lr_drop=0.1)
    )
    cfg.train = common.train_config(steps=70_000, batch_size=1, steps_per_call=100,
                                    checkpoint_every=5_000, log_every=1_000)
    cfg.eval = common.eval_config()
    if variant == "quick":
        cfg.data = common.embedded_data_config()
        # At 128 px the reference's unpadded PDN maps only the inner 96 x 96 pixels (a 24 x 24
        # map, padded by 4 cells of 0): the outer 12.5 % on each side would be blind. The
        # quick nets see the image reflect-padded by 16 px (160 px), so their 32 x 32 map
        # covers the whole 128 px image with unpadded, reference convolutions and no map
        # padding. (Padded convolutions, the other way, put the largest normal scores on the
        # border.) s and m keep the reference's input and border.
        cfg.model.update(width=0.25, out_channels=96, input_pad=16)
        cfg.map.pad = 0
        cfg.train = common.train_config(steps=600, batch_size=1, steps_per_call=50,
                                        checkpoint_every=200, log_every=100)
    return cfg
