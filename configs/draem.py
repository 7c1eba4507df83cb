r"""DRAEM: a reconstructive autoencoder and a discriminative U-Net trained on simulated anomalies
(Perlin-noise masks filled with augmented textures) drawn inside the compiled step; see
adjax/methods/draem.py, adjax/models/draem.py and adjax/synth/draem.py.

Variants:

* `paper` (default): the reference code (VitjanZ/DRAEM): 256 x 256, bases 128 / 64, batch 8,
  Adam 1e-4 over both networks, x0.2 at 80 % and 90 % of the steps, textures from DTD, score =
  max of the 21 x 21 mean-filtered map. `train.steps` is 700 epochs of a 240-image category
  at batch 8 (21,000); for another category use 700 x ceil(N / 8). adjax holds 10 % of the
  normal training images out for its validation thresholds (`data.val_fraction`); the
  reference trains on all of them.

  adjax train --config=configs/draem.py:paper --config.data.root=/data/mvtec_ad \
      --config.data.category=carpet --config.synth.textures=/data/dtd/images \
      --workdir=runs/draem-carpet
  adjax eval --workdir=runs/draem-carpet

* `line512`: seed 002 (line clearance): 512 x 512, batch 1, 3,000 epochs with x0.1 at epochs
  1,200 and 2,100, checkpoints kept at epochs 2,000, 2,250, 2,500, 2,750 and 3,000; the three
  training paths clean / Perlin / cutout; the thesis's blend (texture opacity U[0.1, 1]) and a
  random Perlin threshold; 20 % of the normal images held out for the thresholds, and the
  evaluator's "optimal" threshold rule. The steps assume 61 training images per view (80 % of
  the thesis's 76); for N images set `train.steps` = 3000 N and `train.checkpoint_every` =
  250 N. A per-view mask: `--config.score.mask=view_a.png --config.score.mask_timing=pre`.

  adjax train --config=configs/draem.py:line512 --config.data.root=/data/line \
      --config.data.category=A --config.synth.textures=/data/dtd/images --workdir=runs/draem-line-A

* `quick`: bases 8 / 8 at 128 px, 300 steps of batch 8 at lr 1e-3, procedural textures, a
  5 x 5 score filter, on the embedded data set (`tiles`). Measured 2026-12-02: image AUROC
  0.977, pixel AUROC 0.930, AUPRO 0.800 (500 steps gave 0.922 / 0.911); 136 s of training
  (157 s for the whole `adjax train`) on the idle 2-core CPU (its record in results/adjax).

  adjax train --config=configs/draem.py:quick --workdir=runs/draem-quick
  adjax eval --workdir=runs/draem-quick

* `cars-...`: seed 000's Table 4.2, one variant per row (`TABLE_4_2`): cars-default (DRAEM),
  cars-ssim-focused, cars-{invlpips,lpips}-{unfocused,focused}[-attention][-vae]; 256 x 256,
  batch 8, 700 epochs of the 3,871 training images, a constant lr 1e-4 (the author's code never
  steps its scheduler), attention and VAE together in the repository's order (VAE first;
  `--config.model.bottleneck="('attention','vae')"` gives the thesis's). The LPIPS rows need
  LPIPS-AlexNet's weights (the repository's torchmetrics SqueezeNet LPIPS is not in adjax):

  for v in cars-default cars-lpips-focused-attention-vae; do
    adjax train --config=configs/draem.py:$v --config.data.root=/data/cars \
        --config.data.category=car --config.synth.textures=/data/dtd/images \
        --config.loss.lpips_trunk=alexnet.pth --config.loss.lpips_lin=lpips_alex.pth \
        --workdir=runs/$v
    adjax eval --workdir=runs/$v
  done

Choices where the theses and the code differ (default first):

* blend (`synth.blend`): "code", texture opacity 1 - 0.8 U in (0.2, 1]; "thesis" (seed 002
  eq. 6), U[0.1, 1].
* Perlin threshold (`synth.threshold`, a (low, high) range): (0.5, 0.5), the code's fixed 0.5;
  seed 002 binarises "with a random threshold" of unstated range: `line512` draws U[0.3, 0.7]
  (an assumption).
* cutout (`synth.p_cutout`, `synth.cutout_size`): off; seed 002 gives neither the path
  probabilities nor the sizes: `line512` takes 1/3 each and sides of 10-30 % (assumptions).
* schedule (`optim.milestones`, `optim.gamma`): the code's (0.8, 0.9) x 0.2 per its
  MultiStepLR (the paper: x0.1 after 400 and 600 of 700 epochs, unverified); seed 002's
  (0.4, 0.7) x 0.1.
* input order of the discriminative network (`model.reconstruction_first`): the code's
  cat(reconstruction, image); False gives anomalib's order (for its weights).
* VAE noise at test time (`model.test_noise`): on, as seed 000's code; off is the usual VAE.
* textures (`synth.textures`): a folder of images (DTD's images/); empty: 64 procedural
  textures, which records name ("not DTD").
"""

import ml_collections

from adjax import config as common

# Seed 000's Table 4.2 (car damage), one variant per row: reconstruction loss, focused or not,
# bottleneck; "cars-default" is unmodified DRAEM.
TABLE_4_2 = (
    "cars-default", "cars-ssim-focused",
    "cars-invlpips-unfocused", "cars-invlpips-focused", "cars-invlpips-focused-attention",
    "cars-invlpips-focused-vae", "cars-invlpips-focused-attention-vae",
    "cars-lpips-unfocused", "cars-lpips-focused", "cars-lpips-focused-vae",
    "cars-lpips-focused-attention", "cars-lpips-focused-attention-vae",
)
VARIANTS = ("paper", "line512", "quick", *TABLE_4_2)
# Seed 000's training set: 4,301 car images, 90 % of them trained on (3,871), batch 8.
CARS_STEPS_PER_EPOCH = -(-3871 // 8)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """DRAEM config; `arg` is one of `VARIANTS`."""
    variant = common.parse_variant(arg, VARIANTS, default="paper")
    cfg = common.base_config("draem", variant)
    cfg.data = common.data_config(image_size=256)
    cfg.model = ml_collections.ConfigDict(dict(
        reconstructive_base=128,
        discriminative_base=64,
        bottleneck=(),             # seed 000: ("vae",), ("attention",), both in either order
        test_noise=True,           # the VAE's noise at test time too (seed 000's code)
        reconstruction_first=True,  # cat(reconstruction, image) as the reference
        dtype="float32",           # computation dtype: float32 or bfloat16 (params float32)
    ))
    cfg.synth = ml_collections.ConfigDict(dict(
        textures="",               # a folder of texture images (DTD images/); empty: procedural
        procedural_count=64,
        p_clean=0.5,               # no anomaly (the reference's 0.5)
        p_cutout=0.0,              # seed 002's white rectangles
        cutout_size=(0.1, 0.3),    # rectangle sides as fractions of the image's
        rotate_p=0.3,              # the normal image rotated by U(-90, 90)
        rotate_degrees=90.0,
        min_scale=0, max_scale=6,  # Perlin scales 2^0 .. 2^5 per axis
        noise_rotate=90.0,
        threshold=(0.5, 0.5),      # Perlin threshold drawn from U[low, high]
        augmenters=3,              # drawn without replacement out of 10
        blend="code",              # code: opacity (0.2, 1]; thesis: U[0.1, 1]
        focused=False,             # seed 000: no anomalies on blank (black) pixels
    ))
    cfg.loss = ml_collections.ConfigDict(dict(
        recon="ssim",              # seed 000: lpips, inv_lpips (1 - LPIPS)
        lpips_trunk="",            # torchvision alexnet state dict (.pth/.safetensors/.npz)
        lpips_lin="",              # the lpips package's weights/v0.1/alex.pth
        lpips_input="normalize",   # [0, 1] -> [-1, 1]; div255: seed 000's repository's quirk
        focal_gamma=2.0,
    ))
    cfg.optim = ml_collections.ConfigDict(dict(lr=1e-4, weight_decay=0.0,
                                               milestones=(0.8, 0.9), gamma=0.2))
    cfg.score = ml_collections.ConfigDict(dict(
        filter=21,                 # the image score's mean filter (the reference's 21 x 21)
        mask="",                   # seed 002's per-view mask (PNG at the training size)
        mask_timing="post",        # pre: mask input and reconstruction; post: zero the map
    ))
    cfg.train = common.train_config(steps=21_000, batch_size=8, steps_per_call=50,
                                    checkpoint_every=1000, log_every=500)
    cfg.eval = common.eval_config(batch_size=16)
    if variant == "line512":
        images_per_view = 61
        cfg.data.update(image_size=512, val_fraction=0.2)
        cfg.synth.update(p_clean=1 / 3, p_cutout=1 / 3, blend="thesis", threshold=(0.3, 0.7))
        cfg.optim.update(milestones=(0.4, 0.7), gamma=0.1)
        cfg.train = common.train_config(
            steps=3000 * images_per_view, batch_size=1, steps_per_call=50,
            checkpoint_every=250 * images_per_view, keep_checkpoints=5, log_every=1000)
        cfg.eval.update(batch_size=4, threshold="optimal")
    if variant in TABLE_4_2:
        words = variant.split("-")[1:]
        cfg.loss.recon = {"default": "ssim", "invlpips": "inv_lpips"}.get(words[0], words[0])
        cfg.synth.focused = "focused" in words
        # Attention and VAE together: the repository's default order, VAE first.
        cfg.model.bottleneck = tuple(b for b in ("vae", "attention") if b in words)
        # The author's LightningModule never steps its scheduler: a constant lr.
        cfg.optim.milestones = ()
        cfg.train.update(steps=700 * CARS_STEPS_PER_EPOCH, checkpoint_every=10_000)
    if variant == "quick":
        cfg.data = common.embedded_data_config(image_size=128)
        cfg.model.update(reconstructive_base=8, discriminative_base=8)
        cfg.optim.lr = 1e-3
        cfg.score.filter = 5  # the embedded defects are small beside a 21 x 21 window at 128 px
        cfg.train = common.train_config(steps=300, batch_size=8, steps_per_call=50,
                                        checkpoint_every=500, log_every=100)  # one, at the end
    return cfg
