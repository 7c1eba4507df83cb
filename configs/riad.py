r"""RIAD, reconstruction by inpainting (Zavrtanik et al. 2021), the baseline of seed 001's
Table 5.6: a U-Net inpaints 3 complementary grid-masked copies per grid size, loss
MSE + MSGMS + (1 - SSIM), anomaly map 1 - MSGMS mean-filtered (adjax/methods/riad.py).

Variants:

* `thesis` (default): 256 x 256 input, grid sizes 2, 4, 8, 16 (the thesis's text; its Fig. 2.9
  shows 8, 16, 32), U-Net widths 64-512, loss weights 1, 1, 1, a 21 x 21 mean filter; Adam lr
  1e-4, weight decay 1e-5, batch 4, 300 epochs of a ~220-image category (the public RIAD
  implementation's defaults).
* `quick`: the embedded data (`tiles`) at 64 px, U-Net widths 8-64, lr 1e-3, a 5 x 5 mean
  filter. Measured on the 2-core CPU (shared with other jobs): image AUROC 0.807, pixel AUROC
  0.952, 299 s of training.

  adjax train --config=configs/riad.py:quick --workdir=runs/riad-quick
  adjax eval --workdir=runs/riad-quick

Decisions (the thesis gives no RIAD setting): the U-Net is seed 001's (`adjax.models.unet`:
four pooled levels, bilinear upsampling, concatenated skips) with 3 sigmoid outputs on [0, 1]
images, where RIAD's has five levels and transposed convs; lambda_MSGMS = lambda_SSIM = 1 and
s_f = 21 as the published code (which smooths with a Gaussian of sigma 7 instead); the masks
at test time come from a fixed key (`masks.test_seed`); the image score is the map's maximum.
"""

import ml_collections

from adjax import config as common

VARIANTS = ("thesis", "quick")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """RIAD config; `arg` is one of thesis, quick."""
    variant = common.parse_variant(arg, VARIANTS, default="thesis")
    cfg = common.base_config("riad", variant)
    cfg.data = common.data_config(image_size=256)
    cfg.model = ml_collections.ConfigDict(dict(widths=(64, 128, 256, 512), dtype="float32"))
    cfg.masks = ml_collections.ConfigDict(dict(sizes=(2, 4, 8, 16), test_seed=0))
    cfg.loss = ml_collections.ConfigDict(dict(mse=1.0, msgms=1.0, ssim=1.0))
    cfg.score = ml_collections.ConfigDict(dict(mean_filter=21))
    cfg.optim = ml_collections.ConfigDict(dict(lr=1e-4, weight_decay=1e-5))
    cfg.train = common.train_config(steps=16_500, batch_size=4, steps_per_call=50,
                                    checkpoint_every=1650, log_every=500)
    cfg.eval = common.eval_config(batch_size=8)
    if variant == "quick":
        cfg.data = common.embedded_data_config(image_size=64)
        cfg.model.widths = (8, 16, 32, 64)
        cfg.score.mean_filter = 5
        cfg.optim.lr = 1e-3
        cfg.train = common.train_config(steps=300, batch_size=8, steps_per_call=50,
                                        checkpoint_every=300, log_every=50)
    return cfg
