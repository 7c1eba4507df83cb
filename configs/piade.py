r"""PIADE, the Pyramidal Image Anomaly DEtector (Mishra 2021, ch. 5): SE-ResNet features, a
pooling pyramid routed into two 64-D capsules, a decoder; loss = score = MSE + perceptual - SSIM
(see adjax/methods/piade.py).

Variants:

* `mvtec` (default): the thesis. SE-ResNet-18 (SE ratio 4 after the stem and each stage),
  spatial pyramid 8/4/2/1 (680 capsules), first vector decoded in training and the longest at
  test, orthogonal init; Adam lr 1e-3, weight decay 1e-4, batch 120, 400 epochs (Table 5.1;
  `train.steps` = 400 epochs of a ~240-image category); 120 x 120 input.
* `code`: the authors' repository (pankajmishra000/PIADE): ResNet-50, SE ratio 16, channel
  pyramid (global pool, C/1, C/2, C/4, C/8: 480 capsules), always the longest vector, Kaiming
  init, batch 60, weight decay 1e-3.
* `cifar10`, `coil100`: the one-class protocol on a TFDS set (config.data.tfds_dir), balanced
  test sets, upsampled to 120 px (the thesis does not give CIFAR-10's resolution; the 8 -> 120
  decoder fixes it); COIL-100 split 80:20 per object (Table 5.2).
* `quick`: a quarter-width network, no perceptual term, the image score the map's maximum
  (`score.reduce`), on the embedded data (~1 min on a CPU).

  adjax train --config=configs/piade.py:quick --workdir=runs/piade-quick
  adjax eval --workdir=runs/piade-quick

On MVTec AD, with ImageNet weights (torchvision state dicts, .pth with the `torch-weights`
extra, or .npz):

  adjax train --config=configs/piade.py:mvtec --workdir=runs/piade-bottle \
      --config.data.root=/data/mvtec_ad --config.data.category=bottle \
      --config.model.backbone_weights=resnet18-f37072fd.pth \
      --config.loss.vgg_weights=vgg11-8a719046.pth
  adjax eval --workdir=runs/piade-bottle

Without VGG weights the perceptual term must be switched off (--config.loss.perceptual=0
--config.score.perceptual=0); without backbone weights the backbone starts from random
initialisation (recorded in the results). The per-class CIFAR-10 table (Table 5.3):

  for c in 0 1 2 3 4 5 6 7 8 9; do
    adjax train --config=configs/piade.py:cifar10 --config.data.normal_class=$c \
        --config.data.tfds_dir=/data/tensorflow_datasets --workdir=runs/piade-cifar10-$c \
        --config.loss.vgg_weights=vgg11.npz &&
    adjax eval --workdir=runs/piade-cifar10-$c --results_dir=results/adjax/piade-cifar10
  done
  adjax tables --results=results --source=all --method=piade --dataset=cifar10 \
      --metrics=image_auroc

Defaults the thesis leaves open: 3 routing iterations on detached predictions but the last,
squash with a = 1, ReLU after the pyramid's BN, the upsampler's hidden widths 128 and 512 (the
code's); the SSIM window (11 x 11 Gaussian, sigma 1.5, zero padding: pytorch_ssim's); images in
[0, 1] without ImageNet normalisation (the code's). MVTec images are resized to 120 x 120
(the code resizes to 156 and centre-crops 120).
"""

import ml_collections

from adjax import config as common
from adjax.data.labelled import data_config

VARIANTS = ("mvtec", "code", "cifar10", "coil100", "quick")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """PIADE config; `arg` is one of mvtec, code, cifar10, coil100, quick."""
    variant = common.parse_variant(arg, VARIANTS, default="mvtec")
    cfg = common.base_config("piade", variant)
    cfg.data = common.data_config(image_size=120)
    cfg.model = ml_collections.ConfigDict(dict(
        depth=18,                  # SE-ResNet depth: 18 (thesis) or 50 (code)
        width=1.0,                 # backbone width multiplier
        se_ratio=4,                # squeeze-and-excitation reduction (thesis 4, code 16)
        pyramid="spatial",         # spatial: pools `levels`; channel: GAP, C / `levels`
        levels=(8, 4, 2, 1),
        pyramid_channels=64,       # spatial pyramid: 1x1 conv width
        capsule_dim=8,
        num_vectors=2,             # instantiation vectors
        vector_dim=64,
        routing_iterations=3,
        stop_inner_gradient=True,  # the code routes on detached predictions
        upsample_widths=(128, 512),
        upsample_channels=512,     # the upsampled map: 512 x mf x mf
        decoder="mvtec",           # 8 -> 15 -> 29 -> 60 -> 120, tanh
        head_init="orthogonal",    # layers outside the backbone: orthogonal | kaiming
        decode="first",            # first: vector 1 in training, longest at test | longest
        backbone_weights="",       # torchvision ResNet state dict; empty: random init
        dtype="float32",           # computation dtype: float32 or bfloat16 (params float32)
    ))
    cfg.loss = ml_collections.ConfigDict(dict(
        mse=1.0, perceptual=1.0, ssim=1.0,  # weights; SSIM enters as -SSIM
        vgg_weights="",            # torchvision VGG-11 state dict (.pth / .npz)
        vgg_depth=4,               # torchvision vgg11().features[:4]
        vgg_normalize=False,       # ImageNet mean/std before VGG (the code: none)
    ))
    cfg.score = ml_collections.ConfigDict(dict(
        mse=1.0, perceptual=1.0, ssim=1.0,
        reduce="mean",             # mean: the weighted loss terms (thesis); max: the map's max
    ))
    cfg.optim = ml_collections.ConfigDict(dict(lr=1e-3, weight_decay=1e-4))
    cfg.train = common.train_config(steps=800, batch_size=120, steps_per_call=20,
                                    checkpoint_every=200, log_every=100)
    cfg.eval = common.eval_config(batch_size=30)
    if variant == "code":
        cfg.model.update(depth=50, se_ratio=16, pyramid="channel", levels=(1, 2, 4, 8),
                         head_init="kaiming", decode="longest")
        cfg.optim.weight_decay = 1e-3
        cfg.train.update(steps=1600, batch_size=60)
    if variant in ("cifar10", "coil100"):
        cfg.data = data_config(name=variant, protocol="one_class", balanced_test=True,
                               image_size=120)
        # 400 epochs: CIFAR-10 ~4,500 normal training images, COIL-100 ~52, at batch 120.
        cfg.train.update(steps=15_000 if variant == "cifar10" else 400,
                         checkpoint_every=1000 if variant == "cifar10" else 200)
    if variant == "quick":
        cfg.data = common.embedded_data_config(image_size=120)
        cfg.model.update(width=0.25, upsample_widths=(128, 128), upsample_channels=128)
        cfg.loss.perceptual = cfg.score.perceptual = 0.0
        cfg.score.reduce = "max"  # the embedded defects cover 0.3-5% of an image
        cfg.train = common.train_config(steps=100, batch_size=8, steps_per_call=25,
                                        checkpoint_every=100, log_every=25)
        cfg.eval.batch_size = 16
    return cfg
