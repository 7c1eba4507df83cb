r"""GANomaly (Akcay et al. 2018), the baseline of seed 001's Table 5.6: a DCGAN
encoder-decoder-encoder generator and a discriminator; loss weights adversarial 1, contextual
50, encoder 1; score the latent distance (adjax/methods/ganomaly.py).

Variants:

* `thesis` (default): the authors' defaults: 32 x 32 input, nz 100, ngf = ndf = 64, Adam lr
  2e-4 with betas (0.5, 0.999), batch 64, 15 epochs (`train.steps` for a ~220-image
  category; set it for your data).
* `quick`: the embedded data (`tiles`) at 64 px, nz 100, ngf = ndf = 16; the image score is
  the pixel map's maximum (`score.image=map_max`): the paper's latent distance stays near
  chance on the embedded data's small defects (image AUROC 0.56 measured with
  --config.score.image=latent; pixel AUROC 0.97). Measured on the 2-core CPU (shared with
  other jobs): image AUROC 0.695, pixel AUROC 0.968, 99 s of training.

  adjax train --config=configs/ganomaly.py:quick --workdir=runs/ganomaly-quick
  adjax eval --workdir=runs/ganomaly-quick

Decisions (the thesis gives no GANomaly setting, nor how it got a pixel map): the authors'
published defaults above; the pixel map is |x - G(x)| averaged over channels, smoothed by a
Gaussian (`score.smooth_sigma`; 0 in `thesis`); the discriminator is not re-initialised when
its loss collapses (the authors' `reinit_d`).
"""

import ml_collections

from adjax import config as common

VARIANTS = ("thesis", "quick")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """GANomaly config; `arg` is one of thesis, quick."""
    variant = common.parse_variant(arg, VARIANTS, default="thesis")
    cfg = common.base_config("ganomaly", variant)
    cfg.data = common.data_config(image_size=32)
    cfg.model = ml_collections.ConfigDict(dict(nz=100, ngf=64, ndf=64, dtype="float32"))
    cfg.loss = ml_collections.ConfigDict(dict(adversarial=1.0, contextual=50.0, encoder=1.0))
    cfg.score = ml_collections.ConfigDict(dict(image="latent", smooth_sigma=0.0))
    cfg.optim = ml_collections.ConfigDict(dict(lr=2e-4, b1=0.5, b2=0.999))
    cfg.train = common.train_config(steps=60, batch_size=64, steps_per_call=15,
                                    checkpoint_every=60, log_every=15)
    cfg.eval = common.eval_config(batch_size=64)
    if variant == "quick":
        cfg.data = common.embedded_data_config(image_size=64)
        cfg.model.update(ngf=16, ndf=16)
        cfg.score.update(image="map_max", smooth_sigma=2.0)
        cfg.train = common.train_config(steps=300, batch_size=16, steps_per_call=50,
                                        checkpoint_every=300, log_every=50)
    return cfg
