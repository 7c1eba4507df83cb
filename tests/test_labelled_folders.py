"""Labelled training folders (`config.data.labelled_train`: train/<defect> with ground_truth/)
on tiny generated MVTec-like trees."""

import pathlib
import re

import numpy as np
import pytest
from PIL import Image

from adjax.config import data_config
from adjax.data import datasets
from adjax.data.layouts import DataError, list_samples

W, H = 24, 16  # original image size (width × height)
S = 16  # loading size


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _image(path, seed):
    return _save(path, np.random.default_rng(seed).integers(0, 256, (H, W, 3), np.uint8))


def _block(path):
    """A mask with a 12×8 anomalous block at the centre."""
    mask = np.zeros((H, W), np.uint8)
    mask[4:12, 6:18] = 255
    return _save(path, mask)


@pytest.fixture
def tree(tmp_path):
    """root/part: train/{good (4), crack (2)}, test/{good (1), crack (2)}, ground_truth/crack
    with a mask for every crack image."""
    cat = tmp_path / "root" / "part"
    for i in range(4):
        _image(cat / "train" / "good" / f"{i:03d}.png", i)
    for stem in ("t0", "t1"):
        _image(cat / "train" / "crack" / f"{stem}.png", 10)
        _block(cat / "ground_truth" / "crack" / f"{stem}_mask.png")
    _image(cat / "test" / "good" / "000.png", 20)
    for stem in ("000", "001"):
        _image(cat / "test" / "crack" / f"{stem}.png", 21)
        _block(cat / "ground_truth" / "crack" / f"{stem}_mask.png")
    return tmp_path / "root"


def _cfg(tree, **overrides):
    return data_config(root=str(tree), category="part", image_size=S, val_fraction=0.25,
                       cache_dir=str(tree.parent / "cache"), **overrides)


# ----------------------------------------------------------------------------- folders


def test_labelled_train_lists_the_defect_folders_with_their_masks(tree):
    plain = list_samples("mvtec_ad", tree, "part", "train")
    assert [s.label for s in plain] == [0] * 4
    samples = list_samples("mvtec_ad", tree, "part", "train", anomalous_train=True)
    assert samples[:4] == plain
    gt = tree / "part" / "ground_truth" / "crack"
    assert [(s.image.name, s.label, s.defect, s.mask) for s in samples[4:]] == [
        ("t0.png", 1, "crack", gt / "t0_mask.png"), ("t1.png", 1, "crack", gt / "t1_mask.png")]
    # The test split is the same with or without the labelled training folders.
    assert (list_samples("mvtec_ad", tree, "part", "test", anomalous_train=True)
            == list_samples("mvtec_ad", tree, "part", "test"))


def test_the_trainer_gets_them_in_training_and_never_in_validation(tree):
    train0, val0 = datasets.train_and_validation(_cfg(tree), seed=0)
    assert train0.labels.sum() == 0 and len(train0) + len(val0) == 4
    cfg = _cfg(tree, labelled_train=True)
    train, val = datasets.train_and_validation(cfg, seed=0)
    assert val.paths == val0.paths and val.labels.sum() == 0 and not val.masks.any()
    anomalous = train.take(train.labels == 1)
    assert [pathlib.Path(p).parts[-2:] for p in anomalous.paths] == [("crack", "t0.png"),
                                                                     ("crack", "t1.png")]
    assert anomalous.defects == ("crack", "crack")
    assert anomalous.masks.reshape(2, -1).any(axis=1).all() and not train0.masks.any()
    assert train.take(train.labels == 0).paths == train0.paths
    assert datasets.test(cfg).paths == datasets.test(_cfg(tree)).paths


def test_labelled_train_and_supervised_fraction_both_add_to_training(tree):
    cfg = _cfg(tree, labelled_train=True)
    cfg.supervised_fraction = 0.5
    train, val = datasets.train_and_validation(cfg, seed=0)
    moved = [p for p in train.paths if "/test/" in p]
    assert train.labels.sum() == 3 and len(moved) == 1 and val.labels.sum() == 0
    assert moved[0] not in datasets.test(cfg).paths


def test_a_labelled_image_without_a_mask_is_named(tree):
    (tree / "part" / "ground_truth" / "crack" / "t1_mask.png").unlink()
    image = tree / "part" / "train" / "crack" / "t1.png"
    expected = tree / "part" / "ground_truth" / "crack" / "t1_mask.png"
    with pytest.raises(DataError, match=re.escape(f"train image {image} has no mask file "
                                                  f"(expected {expected}")):
        list_samples("mvtec_ad", tree, "part", "train", anomalous_train=True)


def test_a_stem_in_both_train_and_test_makes_the_mask_ambiguous(tree):
    twin = _image(tree / "part" / "train" / "crack" / "001.png", 3)
    test_image = tree / "part" / "test" / "crack" / "001.png"
    with pytest.raises(DataError, match=re.escape(f"{twin} and test image {test_image}")):
        list_samples("mvtec_ad", tree, "part", "train", anomalous_train=True)


@pytest.mark.parametrize("empty", [False, True])
def test_no_anomalous_training_folder_names_the_folder_and_the_key(tree, empty):
    for image in (tree / "part" / "train" / "crack").iterdir():
        image.unlink()
    if not empty:
        (tree / "part" / "train" / "crack").rmdir()
    folder = tree / "part" / "train"
    with pytest.raises(DataError, match=re.escape(f"train folder {folder} holds no anomalous")
                       + ".*config.data.labelled_train"):
        datasets.train_and_validation(_cfg(tree, labelled_train=True), seed=0)


@pytest.mark.parametrize("layout", ["folder", "real_iad"])
def test_layouts_without_defect_folders_refuse_the_key(tree, layout):
    cfg = _cfg(tree, labelled_train=True, layout=layout)
    with pytest.raises(DataError, match=f"config.data.labelled_train .*'{layout}' layout"):
        datasets.train_and_validation(cfg, seed=0)
    with pytest.raises(DataError, match="'folder' layout has no anomalous training folders"):
        list_samples("folder", tree / "part" / "train" / "good", None, "train",
                     anomalous_train=True)
