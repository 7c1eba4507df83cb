r"""The pyramidal auto-encoder (Mishra 2021, ch. 4): ResNet-18 features, four pooled branches
with 8-D codes, a shared upsampler and a transposed-conv decoder; loss MSE + perceptual, score
the reconstruction error (see adjax/models/pyramid_ae.py and adjax/methods/piade.py).

Variants:

* `mvtec` (default): 120 x 120 input, ResNet-18 without max-pool (512 x 8 x 8), branches of
  512/256/170/85 channels, decoder 8 -> 15 -> 29 -> 60 -> 120 (Table 4.2); Adam lr 1e-4,
  weight decay 1e-4, batch 120, 600 epochs (Table 4.3; `train.steps` = 600 epochs of a
  ~240-image category), orthogonal init outside the backbone.
* `mnist`, `fmnist`: the one-class protocol on a TFDS set (config.data.tfds_dir), grey digits
  replicated to RGB at 28 x 28, the whole test split (Tables 4.4, 4.5); the stride-1 decoder of
  Table 4.2 (8 -> 28). Table 4.2 prints 64 input channels for it, which the feature sizes do
  not give: the concatenated 1,024 x 4 x 4 maps are viewed as 256 x 8 x 8.
* `quick`: a quarter-width network, MSE only, the image score the map's maximum, on the
  embedded data (~1 min on a CPU).

  adjax train --config=configs/pyramid_ae.py:quick --workdir=runs/pyramid-ae-quick
  adjax eval --workdir=runs/pyramid-ae-quick

Per-class MNIST table beside the published Table 4.5:

  for c in 0 1 2 3 4 5 6 7 8 9; do
    adjax train --config=configs/pyramid_ae.py:mnist --config.data.normal_class=$c \
        --config.data.tfds_dir=/data/tensorflow_datasets --workdir=runs/pyrae-mnist-$c \
        --config.loss.vgg_weights=vgg11.npz --config.model.backbone_weights=resnet18.npz &&
    adjax eval --workdir=runs/pyrae-mnist-$c --results_dir=results/adjax/pyrae-mnist
  done
  adjax tables --results=results --source=all --method=pyramidal_ae --dataset=mnist \
      --metrics=image_auroc

The perceptual term needs ImageNet VGG-11 weights (`config.loss.vgg_weights`, a torchvision
state dict); without them set --config.loss.perceptual=0. The ResNet-18 is ImageNet-pretrained
in the thesis (`config.model.backbone_weights`); without weights it starts from random
initialisation. Whether the thesis froze it is not stated: here it is trained. The thesis's
text says the last activation is a sigmoid, its Table 4.2 a tanh: tanh, as the table and the
authors' PIADE code.
"""

import ml_collections

from adjax import config as common
from adjax.data.labelled import data_config

VARIANTS = ("mvtec", "mnist", "fmnist", "quick")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Pyramidal auto-encoder config; `arg` is one of mvtec, mnist, fmnist, quick."""
    variant = common.parse_variant(arg, VARIANTS, default="mvtec")
    cfg = common.base_config("pyramidal_ae", variant)
    cfg.data = common.data_config(image_size=120)
    cfg.model = ml_collections.ConfigDict(dict(
        depth=18,                  # ResNet depth (no max-pool)
        width=1.0,                 # backbone width multiplier
        divisors=(1, 2, 3, 6),     # branch channels 512 / d
        code_dim=8,
        branch_channels=128,       # each upsampled branch: 512 mf^2 = 128 x h x h
        hidden=128,
        decoder="mvtec",           # mvtec: 8 -> 120; mnist: 8 -> 28 (Table 4.2)
        head_init="orthogonal",    # outside the backbone (thesis: orthogonal)
        backbone_weights="",       # torchvision ResNet-18 state dict; empty: random init
        dtype="float32",           # computation dtype: float32 or bfloat16 (params float32)
    ))
    cfg.loss = ml_collections.ConfigDict(dict(
        mse=1.0, perceptual=1.0, ssim=0.0,  # eq. 4.4, lambda = 1
        vgg_weights="", vgg_depth=4, vgg_normalize=False,
    ))
    cfg.score = ml_collections.ConfigDict(dict(
        mse=1.0, perceptual=0.0, ssim=0.0,  # eq. 4.3: the reconstruction error
        reduce="mean",
    ))
    cfg.optim = ml_collections.ConfigDict(dict(lr=1e-4, weight_decay=1e-4))
    cfg.train = common.train_config(steps=1200, batch_size=120, steps_per_call=20,
                                    checkpoint_every=300, log_every=100)
    cfg.eval = common.eval_config(batch_size=30)
    if variant in ("mnist", "fmnist"):
        cfg.data = data_config(name=variant, protocol="one_class", balanced_test=False,
                               image_size=28)
        cfg.model.decoder = "mnist"
        # 600 epochs of ~5,400 normal training images at batch 120.
        cfg.train.update(steps=27_000, checkpoint_every=3000, log_every=500)
        cfg.eval.batch_size = 100
    if variant == "quick":
        cfg.data = common.embedded_data_config(image_size=120)
        cfg.model.update(width=0.25, branch_channels=32, hidden=64)
        cfg.loss.perceptual = 0.0
        cfg.score.reduce = "max"  # the embedded defects cover 0.3-5% of an image
        cfg.optim.lr = 1e-3
        cfg.train = common.train_config(steps=100, batch_size=8, steps_per_call=25,
                                        checkpoint_every=100, log_every=25)
        cfg.eval.batch_size = 16
    return cfg
