r"""EfficientAD (Batzner, Heckler, Koenig; WACV 2024): PDN student-teacher plus autoencoder, and
the seed-004 thesis's variants (EfficientAD + CDO on Real-IAD, its ablations) and the teacher's
distillation from WideResNet-101-2.

Variants:
- `s`, `m`: PDN-S / PDN-M with the reference schedule (70,000 steps at batch 1); `m` is also
  Table 5.6's "Student + Autoencoder" row and, beside `s`, Table 5.7.
- `quick`: a CPU-sized PDN-S (128 px, quarter width, 600 steps at batch 1) on the embedded data.
- `cdo-s`, `cdo-m`: the thesis's final system: no penalty, plus the CDO loss on noise patches
  (Eq. 5.1 with every coefficient 1; p = 0.4, 1-4 squares, half-sides in [H/40, H/10)).
- `ae-only`, `st-only`: Table 5.6's "Autoencoder" (no hard loss, map alpha = 0) and "Student"
  (no AE losses, alpha = 1) rows on PDN-M. The rows "with ImageNet penalty" are `st-only` and
  `m` with `--config.loss.penalty_dir=DIR` (a folder of ImageNet images).
- `distill-s`, `distill-m`: Algorithm 1: the PDN teacher regresses WideResNet-101-2's PatchCore
  features on ImageNet streamed from the host (60,000 steps at batch 16); see
  `adjax.methods.efficientad_distill`.

  adjax train --config=configs/efficientad.py:quick --workdir=runs/efficientad-quick
  adjax eval --workdir=runs/efficientad-quick

On a real category (users bring the data and the teacher):

  adjax weights import --from=teacher_small.pth --to=teachers/pdn_s.msgpack \
      --kind=efficientad_teacher_s
  adjax train --config=configs/efficientad.py:s --workdir=runs/ead-s-bottle \
      --config.data.root=/data/mvtec_ad --config.data.category=bottle \
      --config.model.teacher_path=teachers/pdn_s.msgpack
  adjax eval --workdir=runs/ead-s-bottle
  adjax train --config=configs/efficientad.py:cdo-m --workdir=runs/cdo-m-plastic_nut \
      --config.data.layout=real_iad --config.data.root=/data/Real-IAD \
      --config.data.category=plastic_nut --config.model.teacher_path=teachers/pdn_m.msgpack

Distilling a teacher (then `adjax weights import --from=runs/distill-s --kind=... --to=...`):

  adjax train --config=configs/efficientad.py:distill-s --workdir=runs/distill-s \
      --config.distill.imagenet=/data/imagenet/train \
      --config.distill.backbone=wide_resnet101_2-32ee1156.pth

The teacher is randomly initialised unless `--config.model.teacher_path` names a teacher file
(the Flax msgpack `adjax weights import` writes, or the published .pth itself); records name the
file and its sha256, or say that the teacher was random.

Where the thesis and the reference code differ (seed 004, section 7b), both are settings; the
default is named here:
- loss.hard_quantile: 0.999 (reference code; the thesis says 0.99).
- model.ae_dropout: 0.0 (reference code; the paper's table: 0.2).
- model.ae_bottleneck_1x1: False (reference: an 8x8 last encoder kernel at every size; True:
  kernel H/32, a 1x1 bottleneck at any size).
- synth.p, min_patches, square: 0.4, 1, True (the thesis; the CDO code: 1.0, 0, False).
- synth.noise: "uniform" (the CDO code; the thesis's "gaussian" has no stated parameters).
- loss.cdo_batch_scale: False (Eq. 4.9; the CDO code multiplies by the batch size).
The thesis leaves the coefficients of Eq. 5.1, alpha and the quantile levels unstated: they
default to 1, 0.5 and EfficientAD's 0.9 / 0.995. The CDO code skips the background for MVTec's
bottle, hazelnut, metal_nut, pill, screw, toothbrush and zipper (synth.skip_background=True).
"""

import ml_collections

from adjax import config as common

VARIANTS = ("s", "m", "quick", "cdo-s", "cdo-m", "ae-only", "st-only", "distill-s", "distill-m")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """EfficientAD config; `arg` is one of `VARIANTS`."""
    variant = common.parse_variant(arg, VARIANTS, default="s")
    if variant.startswith("distill-"):
        return _distill(variant)
    cfg = common.base_config("efficientad", variant)
    cfg.data = common.data_config()
    cfg.model = ml_collections.ConfigDict(
        dict(
            size="s" if variant in ("s", "quick", "cdo-s") else "m",
            out_channels=384,      # teacher width; the student has twice this
            width=1.0,             # hidden-width multiplier (1.0 = reference)
            padding=False,         # padded PDN convolutions (reference: only for pre-training)
            input_pad=0,           # reflect-pad the input by this many pixels (reference: 0)
            ae_dropout=0.0,        # reference code: none; the paper's table: 0.2
            ae_bottleneck_1x1=False,  # reference: 8x8 last encoder kernel; True: kernel H/32
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
            # Eq. 5.1: L = hard + penalty + AE + STAE (+ CDO), each with a coefficient.
            coeff_hard=1.0, coeff_penalty=1.0, coeff_ae=1.0, coeff_stae=1.0, coeff_cdo=0.0,
            cdo_gamma=2.0,         # focal exponent of the CDO weights (CDO code default)
            cdo_batch_scale=False,  # Eq. 4.9; True: x batch size as the CDO code
        )
    )
    cfg.synth = ml_collections.ConfigDict(  # noise patches of the CDO branch (coeff_cdo > 0)
        dict(p=0.4, min_patches=1, max_patches=4, square=True, noise="uniform",
             skip_background=False)
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
    if variant.startswith("cdo-"):
        cfg.loss.coeff_cdo = 1.0
    elif variant == "ae-only":
        cfg.loss.coeff_hard = 0.0
        cfg.map.alpha = 0.0
    elif variant == "st-only":
        cfg.loss.update(coeff_ae=0.0, coeff_stae=0.0)
        cfg.map.alpha = 1.0
    elif variant == "quick":
        cfg.data = common.embedded_data_config()
        # At 128 px the reference's unpadded PDN maps only the inner 96 x 96 pixels (a 24 x 24
        # map, padded by 4 cells of 0): the outer 12.5 % on each side would be blind. The
        # quick nets see the image reflect-padded by 16 px (160 px), so their 32 x 32 map
        # covers the whole 128 px image with unpadded, reference convolutions and no map
        # padding. (Padded convolutions, the other way, put the largest normal scores on the
        # border.) s and m keep the reference's input and border. The autoencoder's 8x8
        # bottleneck kernel needs 256 px: at 160 it takes kernel 5 (a 1x1 bottleneck).
        cfg.model.update(width=0.25, out_channels=96, input_pad=16, ae_bottleneck_1x1=True)
        cfg.map.pad = 0
        cfg.train = common.train_config(steps=600, batch_size=1, steps_per_call=50,
                                        checkpoint_every=200, log_every=100)
    return cfg


def _distill(variant: str) -> ml_collections.ConfigDict:
    """Algorithm 1 of the thesis / the reference's `pretraining.py`."""
    cfg = common.base_config("efficientad_distill", variant)
    # data.image_size is the PDN's input side; the rest of the block is unused (the images
    # stream from config.distill.imagenet).
    cfg.data = common.data_config(image_size=256)
    cfg.model = ml_collections.ConfigDict(
        dict(size=variant.removeprefix("distill-"), out_channels=384, width=1.0,
             dtype="float32")
    )
    cfg.distill = ml_collections.ConfigDict(
        dict(
            imagenet="",           # ImageNet's train folder (any tree of images)
            backbone="",           # WideResNet-101-2 ImageNet weights (.pth, .safetensors, .npz
                                   # or the msgpack of `adjax weights import`)
            extractor_size=512,    # the extractor's input side (64 x 64 features at 512)
            pre_dim=1024,          # PatchCore's per-layer dimension before the aggregation
            stats_images=10_000,   # images for each pass of the target channel mean / std
            grayscale=0.1,         # RandomGrayscale, the same draw for both inputs
            workers=8,             # decoding processes (0: in the training process)
            depth=101, width_per_group=128,  # the backbone (wide_resnet101_2)
            width=1.0,             # its stage-width multiplier (1.0: torchvision; tests shrink it)
        )
    )
    cfg.optim = ml_collections.ConfigDict(dict(lr=1e-4, weight_decay=1e-5))
    cfg.train = common.train_config(steps=60_000, batch_size=16, steps_per_call=50,
                                    checkpoint_every=10_000, log_every=500)
    cfg.eval = common.eval_config()
    return cfg
