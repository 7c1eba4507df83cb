r"""CapsNet anomaly detection (Mishra 2021, ch. 3): two class capsules, margin + reconstruction
loss, score |z_a| - |z_n| + MSE (see adjax/methods/capsnet.py).

Variants: `<set>[-standard][-1pct|-oneclass]` with <set> one of digits (scikit-learn's built-in
8x8 digits upsampled to 28x28, no download), mnist, fmnist, kmnist, cifar10, coil100; and
`quick` (the built-in digits, a narrower network, ~1 min on a CPU).

* `mnist`: the thesis's supervised-imbalanced protocol, the normal class plus 10% labelled
  anomalies, balanced test set; results variant `proposed-10pct` (Tables 3.3, 3.7).
* `mnist-1pct`: 1% anomalies (`proposed-1pct`). `mnist-standard[-1pct]`: the same training
  scored by Sabour's rule |z_a| - |z_n| (`standard-10pct`, the tables' "Standard" rows).
* `mnist-oneclass`: trained on the normal class only, tested on the whole test split.

  adjax train --config=configs/capsnet.py:quick --workdir=runs/capsnet-quick
  adjax eval --workdir=runs/capsnet-quick

On a TFDS set prepared (array_record) in a local folder; nothing is downloaded:

  adjax train --config=configs/capsnet.py:mnist --config.data.normal_class=3 \
      --config.data.tfds_dir=/data/tensorflow_datasets --workdir=runs/capsnet-mnist-3

The per-class table (a mean row; `--source=all` puts the published Tables 3.3 and 3.7, stored
under results/paper/seed003, beside it):

  for c in 0 1 2 3 4 5 6 7 8 9; do
    adjax train --config=configs/capsnet.py:mnist --config.data.normal_class=$c \
        --config.data.tfds_dir=/data/tensorflow_datasets --workdir=runs/capsnet-mnist-$c &&
    adjax eval --workdir=runs/capsnet-mnist-$c --results_dir=results/adjax/capsnet-mnist
  done
  adjax tables --results=results --source=all --method=capsnet --dataset=mnist \
      --metrics=image_auroc,image_accuracy

Records carry dataset = mnist | fashion_mnist | kmnist | cifar10 | coil100 | digits and
category = the normal class ("3"), and the variant names the thesis's rows, as its records do.
(The thesis does not say how its accuracy threshold was chosen; adjax reports accuracy at a
threshold set on normal validation images, `image_accuracy_val_*`, and the AUROC.)

Defaults the thesis leaves open, from Sabour et al. / their reference code: Conv 256@9x9,
primary capsules 32 x 8-D 9x9/2, 16-D class capsules, 3 routing iterations, margin m+ 0.9,
m- 0.1, lambda 0.5, reconstruction weight 0.0005 on the summed squared error, decoder
512-1024-H*W*C with sigmoid. From the thesis (Table 3.2): Adam, lr 1e-3, batch 32, 10 epochs
(`train.steps` is 10 epochs of the MNIST-like training split; set it for other sizes).
Another anomaly share (Fig. 3.11): --config.data.anomaly_fraction=0.05 --config.variant=
proposed-5pct.
"""

import ml_collections

from adjax import config as common
from adjax.data.labelled import data_config

SETS = ("digits", "mnist", "fmnist", "kmnist", "cifar10", "coil100")
PROTOCOLS = ("", "1pct", "standard", "standard-1pct", "oneclass")


VARIANTS = ("quick", *(f"{s}-{p}" if p else s for s in SETS for p in PROTOCOLS))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """CapsNet config; `arg` is `quick` or `<set>[-<protocol>]` (see the module docstring)."""
    variant = common.parse_variant(arg, VARIANTS, default="mnist")
    name, _, protocol = ("digits", "", "") if variant == "quick" else variant.partition("-")
    cfg = ml_collections.ConfigDict()
    cfg.method = "capsnet"
    cfg.seed = 42
    colour = name in ("cifar10", "coil100")
    one_class = protocol == "oneclass"
    fraction = 0.01 if protocol.endswith("1pct") else 0.1
    cfg.data = data_config(
        name=name, normal_class=0, protocol="one_class" if one_class else "imbalanced",
        anomaly_fraction=fraction, balanced_test=not one_class,
        image_size=32 if colour else 28)
    score = "standard" if protocol.startswith("standard") else "proposed"
    cfg.variant = "one-class" if one_class else f"{score}-{round(100 * fraction)}pct"
    cfg.model = ml_collections.ConfigDict(dict(
        num_capsules=2,            # class capsules: normal (0), anomalous (1)
        capsule_dim=16,
        conv_channels=256,         # Conv1 kernels, 9x9
        primary_types=32,          # primary capsule types (x primary_dim), 9x9 stride 2
        primary_dim=8,
        routing_iterations=3,      # not stated in the thesis; Sabour's and the authors' code
        stop_inner_gradient=False,  # True: route on stop_gradient(u_hat) but in the last pass
        decoder_widths=(512, 1024),
        decode="normal",           # normal: always z_n (thesis); label: Sabour's masking
        channels=3 if colour else 1,  # 1: the grey mean of RGB
        standardize=True,          # whole-training-set mean/std (thesis, MNIST/FMNIST)
        dtype="float32",           # computation dtype of Conv1 and the decoder (bfloat16)
    ))
    cfg.loss = ml_collections.ConfigDict(dict(
        m_plus=0.9, m_minus=0.1, lam=0.5,
        reconstruction_weight=0.0005,  # x sum of squared pixel errors (Sabour)
    ))
    cfg.score = ml_collections.ConfigDict(dict(kind=score))  # proposed | standard | reconstruction
    cfg.optim = ml_collections.ConfigDict(dict(lr=1e-3))
    # 10 epochs of ~5,900 images (a normal MNIST class + 10%) at batch 32.
    cfg.train = common.train_config(steps=1850, batch_size=32, steps_per_call=50,
                                    checkpoint_every=500, log_every=250)
    cfg.eval = common.eval_config(batch_size=64)
    if name == "coil100":  # 58 training images per object: more passes than 10 epochs
        cfg.train.update(steps=200, checkpoint_every=100, log_every=50)
    if name == "digits":   # ~150 training images per digit
        cfg.train.update(steps=400, checkpoint_every=200, log_every=100)
    if variant == "quick":
        cfg.variant = "quick"
        cfg.model.update(conv_channels=64, primary_types=8, decoder_widths=(256, 512))
        cfg.train = common.train_config(steps=100, batch_size=32, steps_per_call=25,
                                        checkpoint_every=100, log_every=25)
    return cfg
