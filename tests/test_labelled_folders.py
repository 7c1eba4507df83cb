"""Labelled training folders (`config.data.labelled_train`: train/<defect> with ground_truth/)
and LabelMe polygon masks, on tiny generated MVTec-like trees."""

import dataclasses
import json
import pathlib
import re

import numpy as np
import pytest
from PIL import Image

from adjax.config import data_config
from adjax.data import datasets, loading
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


# ----------------------------------------------------------------------------- LabelMe masks


def _labelme(path, shapes, width=W, height=H):
    """Writes a LabelMe annotation with `shapes` [(shape_type, points)] and returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "version": "5.4.1", "flags": {}, "imagePath": "unused.png", "imageData": None,
        "imageHeight": height, "imageWidth": width,
        "shapes": [{"label": "crack", "points": points, "group_id": None, "shape_type": kind,
                    "flags": {}} for kind, points in shapes]}))
    return path


def _json_tree(tree, shapes, **size):
    """`tree` with t1's PNG mask replaced by a LabelMe annotation of `shapes`."""
    gt = tree / "part" / "ground_truth" / "crack"
    (gt / "t1_mask.png").unlink()
    return _labelme(gt / "t1_mask.json", shapes, **size)


def test_labelme_polygon_and_rectangle_are_rasterised(tree):
    # A right triangle with legs on x = 1 and y = 1 (vertices (1, 1), (11, 1), (1, 11)) and a
    # rectangle with corners (14, 3) and (21, 9), given in dragging order bottom-right first.
    _json_tree(tree, [("polygon", [[1, 1], [11, 1], [1, 11]]),
                      ("rectangle", [[21, 9], [14, 3]])])
    yy, xx = np.mgrid[:H, :W]
    triangle = (xx >= 1) & (yy >= 1) & (xx + yy <= 12)
    rectangle = (xx >= 14) & (xx <= 21) & (yy >= 3) & (yy <= 9)
    samples = list_samples("mvtec_ad", tree, "part", "train", anomalous_train=True)
    assert samples[-1].mask.suffix == ".json"
    np.testing.assert_array_equal(loading.original_mask(samples[-1]),
                                  (triangle | rectangle).astype(np.uint8))
    # Loading draws the same mask before resizing it as any mask image.
    _save(tree / "drawn.png", (triangle | rectangle).astype(np.uint8) * 255)
    drawn = dataclasses.replace(samples[-1], mask=tree / "drawn.png")
    np.testing.assert_array_equal(loading.load_split([samples[-1]], S).masks,
                                  loading.load_split([drawn], S).masks)


def test_labelme_circle_is_its_disc(tree):
    """Centre (12, 8), radius 4: Pillow's ellipse is the disc up to its one-pixel rim."""
    _json_tree(tree, [("circle", [[12, 8], [12, 12]])])
    sample = list_samples("mvtec_ad", tree, "part", "train", anomalous_train=True)[-1]
    yy, xx = np.mgrid[:H, :W]
    distance = np.hypot(xx - 12, yy - 8)
    mask = loading.original_mask(sample).astype(bool)
    assert mask[distance <= 3].all() and not mask[distance >= 5].any()


def test_a_png_mask_wins_over_a_json_of_the_same_stem(tree):
    gt = tree / "part" / "ground_truth" / "crack"
    _labelme(gt / "t1_mask.json", [("rectangle", [[0, 0], [3, 3]])])
    sample = list_samples("mvtec_ad", tree, "part", "train", anomalous_train=True)[-1]
    assert sample.mask == gt / "t1_mask.png"


@pytest.mark.parametrize("shapes, size, message", [
    ([("polygon", [[1, 1], [8, 1], [1, 8]])], dict(width=W + 2),
     f"is for a {W + 2}×{H} image, which does not match its image"),
    ([("line", [[1, 1], [8, 1]])], {}, "shape_type 'line', which has no area"),
    ([("polygon", [[1, 1], [8, 1]])], {}, "has 2 point\\(s\\), but a polygon needs at least 3"),
    ([("polygon", [[1, 1], [8, 1], [1, H + 1.5]])], {}, "more than 1 px outside"),
])
def test_bad_labelme_annotations_are_named(tree, shapes, size, message):
    path = _json_tree(tree, shapes, **size)
    sample = list_samples("mvtec_ad", tree, "part", "train", anomalous_train=True)[-1]
    with pytest.raises(DataError, match=re.escape(str(path)) + ".*" + message):
        loading.load_split([sample], S)


def test_malformed_labelme_json_is_named(tree):
    path = _json_tree(tree, [])
    path.write_text('{"imageHeight": 16, "imageWidth": 24, "shapes": [')
    sample = list_samples("mvtec_ad", tree, "part", "train", anomalous_train=True)[-1]
    with pytest.raises(DataError, match=re.escape(f"LabelMe annotation {path} is not valid JSON")):
        loading.original_mask(sample)
    path.write_text('{"imageWidth": 24, "shapes": []}')
    with pytest.raises(DataError, match=re.escape(f"{path} has no imageHeight")):
        loading.original_mask(sample)


# ----------------------------------------------------------------------------- supervised methods


@pytest.mark.parametrize("name", ["supervised_unet", "multilevel"])
def test_supervised_methods_accept_labelled_training_folders(name):
    from conftest import load_config

    from adjax.methods import build

    cfg = load_config(name, "quick")
    if name == "supervised_unet":
        cfg.model.inputs = "image"  # no VAE run needed
    cfg.data.supervised_fraction = 0.0
    cfg.data.labelled_train = True
    assert build(cfg).trains_on_masks
    cfg.data.labelled_train = False
    with pytest.raises(ValueError, match="config.data.supervised_fraction is 0 and "
                                         "config.data.labelled_train is false: .*train/<defect>"):
        build(cfg)
