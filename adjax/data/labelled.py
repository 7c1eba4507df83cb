"""Labelled image sets under the one-class and imbalanced anomaly-detection protocols.

Data sets (`config.data.name`): `digits` (scikit-learn's built-in 8x8 digits, 1,797 images, no
download), `mnist`, `fmnist` (Fashion-MNIST; `fashion_mnist` also accepted), `kmnist`,
`cifar10` and `coil100`. The last five are read from a TFDS data directory the user has
prepared in the `array_record` format (`config.data.tfds_dir`; empty: TFDS's default
`~/tensorflow_datasets`); nothing is ever downloaded and TensorFlow is not needed.

Protocols (`config.data.protocol`), for the normal class `config.data.normal_class`:

* `one_class`: train on the normal class of the train split only; test on the test split with
  the normal class labelled 0 and every other class labelled 1.
* `imbalanced` (Mishra 2021, ch. 3): train on the whole normal class plus
  `round(anomaly_fraction * n_normal)` images drawn uniformly from the other classes, labelled 1
  (the thesis: 10% or 1%).

With `config.data.balanced_test` the test set keeps every normal test image and draws as many
anomalous ones uniformly from the other classes (the thesis's balanced test sets for ch. 3 and
for CIFAR-10 / COIL-100 in ch. 5); otherwise it is the whole test split. Sets without a test
split (COIL-100, digits) are split per class, `1 - test_fraction` : `test_fraction` (COIL-100:
80:20 after GPND, as the thesis). Every draw is seeded by `config.data.split_seed`, so the test
set does not depend on the run's seed; the validation images (`val_fraction` of the *normal*
training images, for calibration and thresholds) are drawn with the run's seed as for every
other layout and never include anomalies.

Splits come back as `adjax.data.loading.Split`: uint8 RGB images [N, S, S, 3] resized
(bilinear) to `config.data.image_size` (grey images replicated to three channels), all-zero
masks, labels 0/1, `defects` = the original class number as a string, and `paths` =
"<name>/<split>/<index>" naming the source record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import zipfile

import ml_collections
import numpy as np
from PIL import Image

from adjax.data.layouts import DataError
from adjax.data.loading import Split, _write_cache, cache_dir, split_validation

# config name -> (TFDS name, label feature, TFDS test split or "" when the set has none)
_TFDS = {
    "mnist": ("mnist", "label", "test"),
    "fashion_mnist": ("fashion_mnist", "label", "test"),
    "kmnist": ("kmnist", "label", "test"),
    "cifar10": ("cifar10", "label", "test"),
    "coil100": ("coil100", "object_id", ""),
}
_ALIASES = {"fmnist": "fashion_mnist"}
NAMES = ("digits", "mnist", "fmnist", "fashion_mnist", "kmnist", "cifar10", "coil100")
PROTOCOLS = ("one_class", "imbalanced")
_READ_CHUNK = 1024


@dataclasses.dataclass(frozen=True)
class LabelledSet:
    """A labelled data set at its native size: uint8 images [N, h, w, c], int labels [N]."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def canonical_name(name: str) -> str:
    """The data set's name in results records (`fmnist` -> `fashion_mnist`)."""
    if name not in NAMES:
        raise ValueError(f"config.data.name {name!r} is not a labelled data set; choose one of "
                         f"{', '.join(NAMES)}.")
    return _ALIASES.get(name, name)


# ----------------------------------------------------------------------------- sources


def load(cfg: ml_collections.ConfigDict) -> LabelledSet:
    """The data set `cfg.name` with a train and a test part (split per class if it has none)."""
    name = canonical_name(cfg.name)
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()  # bundled with scikit-learn: 8x8 grey levels 0..16
        images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
        return _holdout(name, images, digits.target, cfg.test_fraction, cfg.split_seed)
    tfds_name, label_key, test_split = _TFDS[name]
    data_dir = cfg.tfds_dir or None
    train_images, train_labels = read_tfds(tfds_name, "train", label_key, data_dir,
                                           cache_dir(cfg.cache_dir))
    if not test_split:
        return _holdout(name, train_images, train_labels, cfg.test_fraction, cfg.split_seed)
    test_images, test_labels = read_tfds(tfds_name, test_split, label_key, data_dir,
                                         cache_dir(cfg.cache_dir))
    return LabelledSet(name, train_images, train_labels, test_images, test_labels)


def read_tfds(name: str, split: str, label_key: str, data_dir: str | None,
              cache: pathlib.Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All images and labels of a prepared TFDS split, as arrays (cached as .npz in `cache`).

    Reads the `array_record` files through `tfds.builder(...).as_data_source()`: no
    TensorFlow, no download. Raises `DataError` when the set is not prepared in `data_dir`.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise DataError(f"reading the TFDS data set {name} needs tensorflow-datasets (without "
                        f"TensorFlow): pip install 'adjax[tfds]'.") from err
    builder = tfds.builder(name, data_dir=data_dir)
    where = data_dir or "TFDS's default data directory"
    if not builder.is_prepared():
        raise DataError(
            f"the TFDS data set {name} is not prepared in {where} (looked for "
            f"{builder.data_path}); adjax downloads nothing: prepare it there with `tfds build "
            f"{name} --data_dir=<dir> --file_format=array_record` and set "
            f"config.data.tfds_dir.")
    cache_path = None
    if cache is not None:
        where_id = hashlib.sha256(str(builder.data_path).encode()).hexdigest()[:12]
        cache_path = pathlib.Path(cache) / f"tfds-{name}-{builder.version}-{split}-{where_id}.npz"
        if cache_path.is_file():
            try:
                with np.load(cache_path) as f:
                    return f["images"], f["labels"]
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                pass  # a damaged cache is rebuilt
    try:
        source = builder.as_data_source(split=split)
    except NotImplementedError as err:  # prepared as tfrecord, which needs TensorFlow
        raise DataError(f"the TFDS data set {name} in {where} is not in the array_record format; "
                        f"prepare it again with --file_format=array_record.") from err
    images, labels = records_to_arrays(source, label_key)
    if cache_path is not None:
        _write_cache(cache_path, images=images, labels=labels)
    return images, labels


def records_to_arrays(source, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Stacks a random-access source of {"image": [h, w, c] uint8, label_key: ...} records.

    Labels may be integers or COIL-100-style names ("obj7" -> 6).
    """
    n = len(source)
    if n == 0:
        raise DataError("the TFDS split holds no records.")
    images, labels = [], []
    for start in range(0, n, _READ_CHUNK):
        indices = list(range(start, min(start + _READ_CHUNK, n)))
        for record in source.__getitems__(indices):
            images.append(np.asarray(record["image"], np.uint8))
            labels.append(_label(record[label_key]))
    return np.stack(images), np.asarray(labels, np.int64)


def _label(value) -> int:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):  # "obj7": 1-based object names
        return int(value.removeprefix("obj")) - 1
    return int(value)


def _holdout(name: str, images: np.ndarray, labels: np.ndarray, fraction: float,
             seed: int) -> LabelledSet:
    """A seeded per-class split: `fraction` of every class goes to test."""
    test = per_class_holdout(labels, fraction, seed)
    return LabelledSet(name, images[~test], labels[~test], images[test], labels[test])


def per_class_holdout(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean [N]: True for the `round(fraction * n_c)` images of every class c held out."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"config.data.test_fraction must be in (0, 1), got {fraction}.")
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        held[rng.permutation(members)[:int(round(fraction * len(members)))]] = True
    return held


# ----------------------------------------------------------------------------- protocols


def protocol_indices(train_labels: np.ndarray, normal_class: int, protocol: str,
                     anomaly_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the training part: (normal images, anomalies drawn for training).

    The anomalies are empty under `one_class`; under `imbalanced` they are
    `round(anomaly_fraction * n_normal)` images drawn without replacement from the other
    classes.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"config.data.protocol {protocol!r} is not one of "
                         f"{', '.join(PROTOCOLS)}.")
    normal = np.flatnonzero(train_labels == normal_class)
    if normal.size == 0:
        raise DataError(f"config.data.normal_class {normal_class} has no training images.")
    if protocol == "one_class":
        return normal, np.zeros(0, np.int64)
    if not 0.0 < anomaly_fraction < 1.0:
        raise ValueError(f"config.data.anomaly_fraction must be in (0, 1), got "
                         f"{anomaly_fraction}.")
    others = np.flatnonzero(train_labels != normal_class)
    n = int(round(anomaly_fraction * normal.size))
    drawn = np.random.default_rng([seed, 1]).choice(others, size=n, replace=False)
    return normal, np.sort(drawn)


def test_indices(test_labels: np.ndarray, normal_class: int, balanced: bool,
                 seed: int) -> np.ndarray:
    """Indices of the test images: all of them, or every normal image plus as many anomalies
    drawn without replacement from the other classes (`balanced`)."""
    if not balanced:
        return np.arange(len(test_labels))
    normal = np.flatnonzero(test_labels == normal_class)
    others = np.flatnonzero(test_labels != normal_class)
    if normal.size == 0:
        raise DataError(f"config.data.normal_class {normal_class} has no test images.")
    n = min(normal.size, others.size)
    drawn = np.random.default_rng([seed, 2]).choice(others, size=n, replace=False)
    return np.sort(np.concatenate([normal, drawn]))


def to_split(images: np.ndarray, classes: np.ndarray, normal_class: int, size: int,
             name: str, part: str, indices: np.ndarray) -> Split:
    """A `Split` of `images[indices]`: resized RGB uint8, label = class != normal_class."""
    chosen = _resize(images[indices], size)
    classes = classes[indices]
    return Split(images=chosen, masks=np.zeros(chosen.shape[:3], np.uint8),
                 labels=(classes != normal_class).astype(np.int32),
                 defects=tuple(str(int(c)) for c in classes),
                 paths=tuple(f"{name}/{part}/{int(i)}" for i in indices))


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, h, w, c] -> uint8 [N, size, size, 3]: bilinear (Pillow), grey replicated."""
    n, h, w, c = images.shape
    if (h, w) != (size, size):
        out = np.empty((n, size, size, c), np.uint8)
        for i, image in enumerate(images):
            pil = Image.fromarray(image[..., 0] if c == 1 else image)
            resized = np.asarray(pil.resize((size, size), Image.BILINEAR))
            out[i] = resized.reshape(size, size, c)
        images = out
    return np.repeat(images, 3, axis=-1) if c == 1 else images


def _check(cfg: ml_collections.ConfigDict, data: LabelledSet) -> None:
    classes = np.unique(data.train_labels)
    if cfg.normal_class not in classes:
        raise ValueError(f"config.data.normal_class {cfg.normal_class} is not a class of "
                         f"{data.name} (classes {classes.min()}..{classes.max()}).")


def train_and_validation(cfg: ml_collections.ConfigDict, seed: int) -> tuple[Split, Split]:
    """The training split of the protocol (normal images, plus labelled anomalies under
    `imbalanced`) and the validation split (`val_fraction` of the normal images, seed `seed`)."""
    data = load(cfg)
    _check(cfg, data)
    normal, anomalies = protocol_indices(data.train_labels, cfg.normal_class, cfg.protocol,
                                         cfg.anomaly_fraction, cfg.split_seed)

    def split(indices):
        return to_split(data.train_images, data.train_labels, cfg.normal_class,
                        cfg.image_size, data.name, "train", indices)

    train, val = split_validation(split(normal), cfg.val_fraction, seed)
    if anomalies.size:
        train = train.concat(split(anomalies))
    return train, val


def test(cfg: ml_collections.ConfigDict) -> Split:
    """The test split: normal class labelled 0, every other class 1 (balanced on request)."""
    data = load(cfg)
    _check(cfg, data)
    indices = test_indices(data.test_labels, cfg.normal_class, cfg.balanced_test,
                           cfg.split_seed)
    return to_split(data.test_images, data.test_labels, cfg.normal_class, cfg.image_size,
                    data.name, "test", indices)


def data_config(**overrides) -> ml_collections.ConfigDict:
    """The `config.data` block of a labelled-set run.

    Keys: layout ("labelled"), name, normal_class, category (the record's category: follows
    normal_class as a string), protocol, anomaly_fraction, balanced_test, test_fraction (sets
    without a test split), split_seed, tfds_dir, image_size, val_fraction, cache_dir.
    """
    cfg = ml_collections.ConfigDict(dict(
        layout="labelled", name="digits", root="", normal_class=0, protocol="one_class",
        anomaly_fraction=0.1, balanced_test=False, test_fraction=0.2, split_seed=0,
        tfds_dir="", image_size=28, val_fraction=0.1,
        cache_dir=""))
    cfg.category = cfg.get_ref("normal_class").to_str()
    cfg.update(overrides)
    return cfg
