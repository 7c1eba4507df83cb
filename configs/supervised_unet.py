r"""Seed 001's supervised U-Net (Ferreira 2023, Sec. 4.1.1, 5.2): four down and four up blocks
(3x3 conv + BN + ReLU, max-pool, bilinear upsampling, concatenated skips) on the image and the
residual of the seed-001 VAE, trained with BCE on anomalous images with masks
(adjax/methods/supervised_unet.py).

Supervised: it needs anomalous training images with masks. `config.data.supervised_fraction`
moves that share of each defect type's anomalous test images (with their masks) into training
and out of the test split (seeded by `config.data.supervised_seed`, the same for every run), as
the thesis splits its one labelled set 223 / 100 (a fraction of 0.69).

Your own labelled data: put the anomalous training images in `<root>/<category>/train/<defect>/`
beside the normal ones in `train/good/`, their masks in `ground_truth/<defect>/<stem>_mask.png`
(as for `test/<defect>/`; a LabelMe polygon annotation `<stem>_mask.json` is accepted too), and
train with `--config.data.root=/data/parts --config.data.category=door
--config.data.labelled_train=true --config.data.supervised_fraction=0` (or keep a fraction to
add test images too). Validation stays normal only.

Variants:

* `thesis` (default): Table 5.6's row (Table 5.2, test 2): BCE, Augmented(Original, Residual);
  batch 4, lr 1e-3; 256 x 256 input. Loss ablations: --config.loss.terms='("bce","dice")',
  '("bce","dice","iou")'; consistency (tests 5-8): --config.loss.consistency=1.0; inputs:
  --config.model.inputs=image | residual; no augmentation: --config.augment.enabled=false.
* `quick`: the embedded data (`tiles`) at 64 px, half of its anomalous test images moved into
  training, widths 8-64, after the VAE's quick run. Measured on the 2-core CPU (shared with
  other jobs): image AUROC 0.917, pixel AUROC 0.947; per image at 0.3: F1 0.396, IoU 0.335,
  pixel AUROC 0.879; 248 s of training.

  adjax train --config=configs/vae.py:quick --workdir=runs/vae-quick
  adjax train --config=configs/supervised_unet.py:quick --workdir=runs/unet-quick \
      --config.model.vae_workdir=runs/vae-quick
  adjax eval --workdir=runs/unet-quick

Decisions for what the thesis leaves unspecified: Adam, no weight decay, seed 42; widths 64,
128, 256, 512 with a 1,024-wide bottom block (the classic U-Net's); input 256 x 256 (the VAE's);
the residual is x - x_hat, signed; 100 epochs of 223 images (`train.steps` 5,575 at batch 4);
soft Dice and IoU with smoothing 1; consistency: the squared difference of the two maps under a
random flip / transposition, weight 1; augmentation: flips with probability 1/2 each,
saturation x U(0.7, 1.3), hue shifted by U(-0.05, 0.05) of a turn.
"""

import ml_collections

from adjax import config as common

VARIANTS = ("thesis", "quick")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Supervised U-Net config; `arg` is one of thesis, quick."""
    variant = common.parse_variant(arg, VARIANTS, default="thesis")
    cfg = common.base_config("supervised_unet", variant)
    cfg.data = common.data_config(image_size=256, supervised_fraction=0.69, supervised_seed=0)
    cfg.model = ml_collections.ConfigDict(dict(
        widths=(64, 128, 256, 512), inputs="image_residual", vae_workdir="",
        dtype="float32"))
    cfg.loss = ml_collections.ConfigDict(dict(terms=("bce",), consistency=0.0))
    cfg.augment = ml_collections.ConfigDict(dict(enabled=True, saturation=0.3, hue=0.05))
    cfg.optim = ml_collections.ConfigDict(dict(lr=1e-3, weight_decay=0.0))
    cfg.train = common.train_config(steps=5_575, batch_size=4, steps_per_call=25,
                                    checkpoint_every=1115, log_every=250)
    # Seed 001's per-image protocol beside the pooled metrics: the map thresholded at 0.3
    # (Table 5.2's caption) for per-image accuracy, F1 and IoU, and per-image pixel AUROC.
    cfg.eval = common.eval_config(batch_size=8, per_image_threshold=0.3)
    if variant == "quick":
        cfg.data = common.embedded_data_config(image_size=64, supervised_fraction=0.5,
                                               supervised_seed=0)
        cfg.model.widths = (8, 16, 32, 64)
        cfg.train = common.train_config(steps=800, batch_size=8, steps_per_call=50,
                                        checkpoint_every=800, log_every=100)
    return cfg
