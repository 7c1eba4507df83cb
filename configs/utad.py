r"""Seed 001's unsupervised two-stage model (Ferreira 2023, Sec. 4.2.1, 5.4; adapted from UTAD,
Liu et al. 2021): the IE-Net with its pair discriminator, the impression fused with the VAE's
reconstruction (m = 0.8 VAE(x) + 0.2 IE(x)), the AdaIN Expert-Net with the VGG-19 perceptual
loss, and the error map of ResNet-18 features (product over layers) or VGG-19 features (sum)
(adjax/models/utad.py, adjax/methods/utad.py). Both networks train in one run: the IE-Net for
the first `ie.steps`, the Expert-Net for the rest. The VAE is a finished configs/vae.py run.

Variants:

* `thesis` (default): Table 5.6's row (Table 5.5 test 2): ResNet-18, product over layers, the
  per-image metrics at 0.3. 256 px. It needs ImageNet weights: torchvision's resnet18 and
  vgg19 state dicts (`adjax weights import` reads the same files):

  adjax train --config=configs/vae.py --workdir=runs/vae
  adjax train --config=configs/utad.py --workdir=runs/utad \
      --config.model.vae_workdir=runs/vae \
      --config.score.weights=resnet18-f37072fd.pth \
      --config.expert.vgg_weights=vgg19-dcbb9e9d.pth
  adjax eval --workdir=runs/utad

* `original`: Table 5.5 test 1: the original UTAD's map, VGG-19 features summed over layers,
  the per-image metrics at 0.5 (--config.score.weights=vgg19-dcbb9e9d.pth).
* Table 5.4's "L1" row (no perceptual loss): --config.expert.vgg=0.
* `quick`: the embedded data (`tiles`) at 64 px after the VAE's quick run, narrow widths, no
  perceptual loss and a randomly initialised ResNet-18 as the extractor (no ImageNet weights
  can be downloaded here; the record says so). Measured on the 2-core CPU (shared with other
  jobs): image AUROC 0.655, pixel AUROC 0.782, per-image pixel AUROC 0.751 (F1 0.056 at 0.3),
  335 s of training. Random features make a weak map: the same run scores 0.719 / 0.824 on
  layer1 alone, and twice the Expert-Net steps (1,200 in all) gave 0.543 / 0.739.

  adjax train --config=configs/vae.py:quick --workdir=runs/vae-quick
  adjax train --config=configs/utad.py:quick --workdir=runs/utad-quick \
      --config.model.vae_workdir=runs/vae-quick
  adjax eval --workdir=runs/utad-quick

Decisions for what the thesis leaves unspecified (its Sec. 7 list):

* optimiser: Adam (0.9, 0.999), no weight decay; seed 42; the thesis's learning rates (IE-Net
  1e-4, Expert-Net 1e-3) and batches (16 and 8: the Expert-Net takes the first 8 of each batch).
* epochs: 10 for the IE-Net (the thesis) and 10 for the Expert-Net (not stated), of 30,000
  images (the VAE's Fig. 5.5 subset): 18,750 + 37,500 steps. Set them for your data.
* lambda_1 = 1 and alpha = 0.5 (the thesis: lambda >= alpha, not far apart); the IE-Net's
  reconstruction term is eq. 4.6's MSE (the default) or the prose's L1
  (--config.ie.reconstruction=l1).
* widths: IE-Net inception blocks 64, 128, 256 (three pools); T 64 (doubling to 512) with FC
  512, 256, 128; Expert-Net MUNIT's: dim 64, style 8, MLP 256; the decoder upsamples by
  nearest x2 and a 5x5 conv (MUNIT's).
* the IE-Net head is per position (mu and sigma of E_M(x)'s shape), so z ~ N(mu, sigma^2) can
  stand in for E_M(x) in T; negatives pair each image with another image of the batch.
* loss terms as means, not sums (see adjax/methods/utad.py); L_VGG and the VGG-19 map on
  relu1_1, relu2_1, relu3_1, relu4_1 (AdaIN's layers); the ResNet-18 map on layer1-layer3.
* lambda^e_l: 1 for the product and 1/L for the sum; each layer's map is bilinearly resized to
  the image and divided by its maximum over the validation images (the normalisation into
  [0, 1] the thresholds need); at inference the x -> m direction gets the zero style (the mean
  of the N(0, I) it was trained with).
"""

import ml_collections

from adjax import config as common

VARIANTS = ("thesis", "original", "quick")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """UTAD config; `arg` is one of thesis, original, quick."""
    variant = common.parse_variant(arg, VARIANTS, default="thesis")
    cfg = common.base_config("utad", variant)
    cfg.data = common.data_config(image_size=256)
    cfg.model = ml_collections.ConfigDict(dict(
        ie_widths=(64, 128, 256), disc_width=64, disc_hidden=(512, 256, 128),
        dim=64, style_dim=8, mlp_hidden=256,
        vae_workdir="", vae_weight=0.8,  # eq. 4.11: m = w VAE(x) + (1 - w) IE(x)
        dtype="float32"))
    cfg.ie = ml_collections.ConfigDict(dict(
        steps=18_750, lr=1e-4, mse_weight=1.0, kl_weight=0.5,
        reconstruction="mse"))  # eq. 4.6; "l1": the prose's loss, which eq. 4.6 contradicts
    cfg.expert = ml_collections.ConfigDict(dict(
        batch_size=8, lr=1e-3, x=1.0, m=1.0, style=1.0, vgg=1.0,
        vgg_layers=(1, 6, 11, 20),  # torchvision VGG-19 features: relu1_1 ... relu4_1
        vgg_weights=""))            # torchvision VGG-19 state dict (.pth / .safetensors)
    cfg.score = ml_collections.ConfigDict(dict(
        extractor="resnet18", combine="product", layers=("layer1", "layer2", "layer3"),
        weights=""))                # torchvision state dict of the extractor
    cfg.train = common.train_config(steps=56_250, batch_size=16, steps_per_call=50,
                                    checkpoint_every=5_000, log_every=500)
    # Seed 001's per-image protocol at the thesis's threshold for this map.
    cfg.eval = common.eval_config(batch_size=8, per_image_threshold=0.3)
    if variant == "original":
        cfg.score.update(extractor="vgg19", combine="sum", layers=(1, 6, 11, 20))
        cfg.eval.per_image_threshold = 0.5
    if variant == "quick":
        cfg.data = common.embedded_data_config(image_size=64)
        cfg.model.update(ie_widths=(16, 32, 32), disc_width=8, disc_hidden=(64, 32, 16), dim=8,
                         mlp_hidden=64)
        cfg.expert.vgg = 0.0
        cfg.ie.steps = 300
        cfg.train = common.train_config(steps=600, batch_size=16, steps_per_call=50,
                                        checkpoint_every=600, log_every=100)
    return cfg
