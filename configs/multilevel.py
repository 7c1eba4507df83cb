r"""Seed 001's multi-level patch model (Ferreira 2023, Sec. 4.1.2, 5.3): 33 x 33 patches
classified by their centre pixel from a VAE-style encoder's mean, variance and three levels of
features; loss MSE_SUM + KL_SUM + alpha BCE (adjax/models/multilevel.py,
adjax/methods/multilevel.py).

Supervised: `config.data.supervised_fraction` moves that share of each defect type's anomalous
test images (with masks) into training, as for configs/supervised_unet.py.

Your own labelled data, as for configs/supervised_unet.py: anomalous training images in
`<root>/<category>/train/<defect>/` beside `train/good/`, masks (images, or LabelMe polygon
annotations `<stem>_mask.json`) in `ground_truth/<defect>/`, and `--config.data.root=/data/parts
--config.data.category=door --config.data.labelled_train=true --config.data.supervised_fraction=0`.

Variants:

* `thesis` (default): Table 5.3 test 2 (alpha 0.001, I_size 256); batch 64 patches, lr 1e-3,
  10 epochs. Table 5.6's row is test 3: --config.data.image_size=512; tests 4 and 5:
  --config.loss.alpha=0.01 / 0.0001; test 1: --config.data.image_size=128.
* `quick`: the embedded data (`tiles`) at 64 px, half of its anomalous test images moved into
  training, narrow widths, 800 steps. Two departures from the thesis, both needed at this
  size: `patches.border="reflect"` (images reflect-padded by 16 px, so every pixel centres a
  patch: the thesis's valid pixels are only a quarter of a 64 px image, and the embedded
  defects often lie outside them) and alpha 1 (the classifier's BCE weighs as much as the
  reconstruction). Measured on the 2-core CPU (shared with other jobs): image AUROC 0.805,
  pixel AUROC 0.893, per-image pixel AUROC 0.797, 322 s of training. The thesis's border and
  alpha with 400 steps gave 0.562 / 0.784; the reflect border alone 0.643 / 0.797.

  adjax train --config=configs/multilevel.py:quick --workdir=runs/multilevel-quick
  adjax eval --workdir=runs/multilevel-quick

Decisions for what the thesis leaves unspecified: Adam, no weight decay, seed 42; widths (stem
and blocks 32, Linears 256, latent 64, SE reduction 4, aggregation 32 channels, MLP 256, 128,
64, 32); a 3x3 stem conv before the first block (whose residual add needs as many channels as
the block has); the aggregation taps blocks 2, 3, 4; the classifier sees sigma^2 as
exp(logvar); patches are drawn 1:1 from the anomalous and normal valid pixels of each batch of
images (`patches.per_step` patches; the "batch 64" of the thesis), one image size per model;
"10 epochs" is taken as 10 passes over 223 images' worth of balanced patches (train.steps);
border pixels of the map copy the nearest valid pixel; sums per patch, mean over patches.
"""

import ml_collections

from adjax import config as common

VARIANTS = ("thesis", "quick")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Multi-level patch model config; `arg` is one of thesis, quick."""
    variant = common.parse_variant(arg, VARIANTS, default="thesis")
    cfg = common.base_config("multilevel", variant)
    cfg.data = common.data_config(image_size=256, supervised_fraction=0.69, supervised_seed=0)
    cfg.model = ml_collections.ConfigDict(dict(
        width=32, hidden=256, latent=64, se_ratio=4, agg=32, mlp=(256, 128, 64, 32),
        dtype="float32"))
    cfg.patches = ml_collections.ConfigDict(dict(per_step=64, border="copy"))
    cfg.loss = ml_collections.ConfigDict(dict(alpha=0.001))
    cfg.optim = ml_collections.ConfigDict(dict(lr=1e-3, weight_decay=0.0))
    cfg.train = common.train_config(steps=20_000, batch_size=8, steps_per_call=50,
                                    checkpoint_every=2000, log_every=500)
    # Seed 001's per-image protocol beside the pooled metrics (threshold not stated: 0.5).
    cfg.eval = common.eval_config(batch_size=4, per_image_threshold=0.5)
    if variant == "quick":
        cfg.data = common.embedded_data_config(image_size=64, supervised_fraction=0.5,
                                               supervised_seed=0)
        cfg.model.update(width=8, hidden=64, latent=16, agg=8, mlp=(64, 32, 16, 8))
        cfg.patches.border = "reflect"
        cfg.loss.alpha = 1.0
        cfg.train = common.train_config(steps=800, batch_size=8, steps_per_call=50,
                                        checkpoint_every=800, log_every=100)
        cfg.eval.batch_size = 8
    return cfg
