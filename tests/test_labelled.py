"""Labelled image sets: the one-class and imbalanced protocols, seeding, balance, the per-class
80/20 split, and the TFDS path on small fake data sets prepared in a temporary folder."""

import numpy as np
import pytest
from PIL import Image

from adjax.data import datasets, labelled
from adjax.data.layouts import DataError


def _cfg(**overrides):
    return labelled.data_config(**{"name": "digits", "normal_class": 3, **overrides})


def _digits_counts():
    from sklearn.datasets import load_digits

    return np.bincount(load_digits().target)


def test_one_class_digits():
    cfg = _cfg()
    train, val = datasets.train_and_validation(cfg, seed=1)
    test = datasets.test(cfg)
    n3 = _digits_counts()[3]
    n_test3 = round(0.2 * n3)
    assert len(train) + len(val) == n3 - n_test3
    assert len(val) == len(train) + len(val) - int(0.9 * (len(train) + len(val)))
    assert train.labels.sum() == val.labels.sum() == 0
    assert set(train.defects) == {"3"}
    assert len(test) == sum(round(0.2 * n) for n in _digits_counts())  # the whole test part
    assert (test.labels == [d != "3" for d in test.defects]).all()
    assert test.images.shape[1:] == (28, 28, 3) and test.images.dtype == np.uint8
    assert (test.images[..., 0] == test.images[..., 2]).all()  # grey replicated
    assert test.masks.shape == (len(test), 28, 28) and not test.masks.any()
    assert datasets.dataset_name(cfg) == "digits" and cfg.category == "3"


def test_imbalanced_counts_seeding_and_balance():
    cfg = _cfg(protocol="imbalanced", anomaly_fraction=0.1, balanced_test=True)
    train, val = datasets.train_and_validation(cfg, seed=1)
    n_normal = _digits_counts()[3] - round(0.2 * _digits_counts()[3])
    assert train.labels.sum() == round(0.1 * n_normal)
    assert {d for d, y in zip(train.defects, train.labels, strict=True) if y} <= \
        {str(c) for c in range(10)} - {"3"}
    assert val.labels.sum() == 0  # validation (thresholds) holds normal images only
    again, val_again = datasets.train_and_validation(cfg, seed=1)
    assert again.paths == train.paths and val_again.paths == val.paths
    other_run, _ = datasets.train_and_validation(cfg, seed=2)  # the run seed moves val only
    assert {p for p, y in zip(other_run.paths, other_run.labels, strict=True) if y} == \
        {p for p, y in zip(train.paths, train.labels, strict=True) if y}
    cfg.split_seed = 5
    reseeded, _ = datasets.train_and_validation(cfg, seed=1)
    assert reseeded.paths != train.paths
    test = datasets.test(cfg)
    assert test.labels.sum() == (test.labels == 0).sum()  # balanced
    assert datasets.test(cfg).paths == test.paths


def test_per_class_holdout_is_80_20():
    labels = np.repeat(np.arange(5), 72)  # COIL-100: 72 views per object
    held = labelled.per_class_holdout(labels, 0.2, seed=0)
    assert (np.bincount(labels[held]) == 14).all() and (np.bincount(labels[~held]) == 58).all()
    assert (held == labelled.per_class_holdout(labels, 0.2, seed=0)).all()


def test_bad_settings_fail_clearly():
    with pytest.raises(ValueError, match="config.data.name"):
        datasets.test(_cfg(name="svhn"))
    with pytest.raises(ValueError, match="normal_class 12"):
        datasets.test(_cfg(normal_class=12))
    with pytest.raises(ValueError, match="protocol"):
        datasets.train_and_validation(_cfg(protocol="supervised"), seed=0)


# ----------------------------------------------------------------------------- TFDS


def _prepare(data_dir, name, version, features, splits):
    """Prepares a fake TFDS set under the real set's name (array_record, no TensorFlow)."""
    import tensorflow_datasets as tfds

    class Fake(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version(version)

        def _info(self):
            return tfds.core.DatasetInfo(builder=self,
                                         features=tfds.features.FeaturesDict(features))

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(rows) for split, rows in splits.items()}

        def _generate_examples(self, rows):
            yield from enumerate(rows)

    Fake.name = name
    Fake(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


def _mnist_rows(n, seed):
    rng = np.random.default_rng(seed)
    return [{"image": Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)),
             "label": i % 10} for i in range(n)]


def test_tfds_mnist(tmp_path):
    import tensorflow_datasets as tfds

    features = {"image": tfds.features.Image(shape=(28, 28, 1)),
                "label": tfds.features.ClassLabel(num_classes=10)}
    _prepare(tmp_path / "tfds", "mnist", "3.0.1", features,
             {"train": _mnist_rows(100, 0), "test": _mnist_rows(40, 1)})
    cfg = _cfg(name="mnist", tfds_dir=str(tmp_path / "tfds"), cache_dir=str(tmp_path / "c"),
               protocol="imbalanced", anomaly_fraction=0.1, balanced_test=True)
    train, val = datasets.train_and_validation(cfg, seed=0)
    assert len(train) + len(val) == 10 + 1 and train.labels.sum() == 1
    test = datasets.test(cfg)
    assert len(test) == 8 and test.labels.sum() == 4
    assert list(tmp_path.joinpath("c").glob("tfds-mnist-3.0.1-*.npz"))  # decoded once, cached
    again = datasets.test(cfg)
    np.testing.assert_array_equal(again.images, test.images)
    with pytest.raises(DataError, match="not prepared"):
        datasets.test(_cfg(name="kmnist", tfds_dir=str(tmp_path / "tfds")))


def test_tfds_coil100_is_split_per_object(tmp_path):
    import tensorflow_datasets as tfds

    rng = np.random.default_rng(0)
    features = {"image": tfds.features.Image(shape=(128, 128, 3)),
                "angle_label": tfds.features.ClassLabel(names=[str(a) for a in range(0, 360, 5)]),
                "object_id": tfds.features.ClassLabel(names=[f"obj{i}" for i in range(1, 101)]),
                "angle": np.int64}
    rows = [{"image": Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)),
             "angle_label": str(a), "object_id": f"obj{o}", "angle": a}
            for o in (1, 2, 3) for a in range(0, 50, 5)]
    _prepare(tmp_path / "tfds", "coil100", "2.0.0", features, {"train": rows})
    cfg = _cfg(name="coil100", normal_class=1, tfds_dir=str(tmp_path / "tfds"), image_size=32)
    train, val = datasets.train_and_validation(cfg, seed=0)
    test = datasets.test(cfg)
    assert len(train) + len(val) == 8  # 80% of the object's 10 views
    assert len(test) == 3 * 2 and (test.labels == 0).sum() == 2
    assert test.images.shape[1:] == (32, 32, 3) and set(test.defects) == {"0", "1", "2"}
    assert datasets.dataset_name(cfg) == "coil100" and cfg.category == "1"


def test_records_to_arrays_reads_names():
    source = [{"image": np.full((2, 2, 1), i, np.uint8), "object_id": f"obj{i + 1}".encode()}
              for i in range(3)]

    class Source(list):
        def __getitems__(self, indices):
            return [self[i] for i in indices]

    images, labels = labelled.records_to_arrays(Source(source), "object_id")
    assert images.shape == (3, 2, 2, 1) and labels.tolist() == [0, 1, 2]


def test_fashion_mnist_records_under_the_papers_name():
    assert datasets.dataset_name(_cfg(name="fmnist")) == "fashion_mnist"
