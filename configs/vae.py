r"""The VAE of seed 001 (Ferreira 2023, Sec. 4.2.1): 4 x [Conv k4 s2 p1, BN, ReLU], dropout
0.3, Linear + BN + ReLU, mu / log-variance heads (latent 256); decoder 2 x Linear and
4 x [bilinear x2, Conv k3 p1] ending in a sigmoid. Loss MSE_SUM + 0.1 KL_SUM (eq. 4.10). See
adjax/models/vae.py and adjax/methods/vae.py.

Variants:

* `thesis` (default): 256 x 256 input, latent 256, alpha 0.1, MSE; batch 64, lr 1e-3, 50 epochs
  (`train.steps` = 50 epochs of a 30,000-image set at batch 64; set it for your data).
* `quick`: the embedded data (`tiles`, 128 px), narrow widths, the map smoothed and its
  maximum as the image score (the embedded defects cover 0.3-5% of an image). Measured on
  the shared 2-core CPU: image AUROC 0.940, pixel AUROC 0.979, 92 s of training.

  adjax train --config=configs/vae.py:quick --workdir=runs/vae-quick
  adjax eval --workdir=runs/vae-quick

Decisions for what the thesis leaves unspecified (its Sec. 7 list):

* optimiser: Adam (betas 0.9, 0.999), no weight decay; seed 42.
* channel widths (figures lost): encoder 32, 64, 128, 256 (the decoder mirrors them), the
  Linear before the heads and the decoder's first Linear 512 wide.
* the heads give the log-variance (the thesis: "the variance"), for a stable exp.
* inference decodes z = mu (the thesis samples z in training and does not say for testing).
* anomaly map: the squared error averaged over channels; the image score (not used in the
  thesis, which has no image-level metric) is the map's maximum (`quick`) or mean (`thesis`).
* MSE_SUM / KL_SUM are summed per image and averaged over the batch.
"""

import ml_collections

from adjax import config as common

VARIANTS = ("thesis", "quick")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Seed-001 VAE config; `arg` is one of thesis, quick."""
    variant = common.parse_variant(arg, VARIANTS, default="thesis")
    cfg = common.base_config("vae", variant)
    cfg.data = common.data_config(image_size=256)
    cfg.model = ml_collections.ConfigDict(dict(
        widths=(32, 64, 128, 256), latent=256, hidden=512, dropout=0.3,
        dtype="float32",  # computation dtype: float32 or bfloat16 (params float32)
    ))
    cfg.loss = ml_collections.ConfigDict(dict(reconstruction="mse", kl_weight=0.1))
    cfg.score = ml_collections.ConfigDict(dict(smooth_sigma=0.0, reduce="mean"))
    cfg.optim = ml_collections.ConfigDict(dict(lr=1e-3, weight_decay=0.0))
    # 50 epochs of 30,000 images (the Fig. 5.5 subset) at batch 64.
    cfg.train = common.train_config(steps=23_450, batch_size=64, steps_per_call=50,
                                    checkpoint_every=2345, log_every=500)
    cfg.eval = common.eval_config(batch_size=32)
    if variant == "quick":
        cfg.data = common.embedded_data_config()
        cfg.model.update(widths=(16, 32, 64, 64), hidden=256)
        cfg.score.update(smooth_sigma=2.0, reduce="max")
        cfg.train = common.train_config(steps=300, batch_size=16, steps_per_call=50,
                                        checkpoint_every=300, log_every=50)
        cfg.eval.batch_size = 16
    return cfg
