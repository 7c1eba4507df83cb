"""The Real-IAD layout on a tiny tree in the published layout (category folders of OK/NG views,
JSON split files), and evaluation at the ground truth's original size."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from adjax import config as config_lib
from adjax.data import datasets, real_iad
from adjax.data.layouts import DataError
from adjax.evaluate import EvaluationError, at_original_size
from adjax.nn.layers import resize_bilinear

SIZE = (80, 60)  # width, height of the tree's images


def _image(path, value, size=SIZE):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def _mask(path, box, size=SIZE):
    m = np.zeros((size[1], size[0]), np.uint8)
    m[box[1]:box[3], box[0]:box[2]] = 255
    Image.fromarray(m).save(path)


@pytest.fixture()
def tree(tmp_path):
    """Real-IAD/realiad_1024/plastic_nut and realiad_jsons/plastic_nut.json: 3 normal samples x
    2 views for training; a normal sample, a pit sample whose C2 view shows no defect (no mask),
    and a missing-part sample, 2 views each, for testing."""
    root = tmp_path / "Real-IAD"
    cat = root / "realiad_1024" / "plastic_nut"

    def entry(kind, sample, view, defect=None, box=None):
        folder = f"OK/S{sample:04d}" if kind == "OK" else f"NG/{defect}/S{sample:04d}"
        name = f"plastic_nut_{sample:04d}_{kind}_C{view}_20230101"
        _image(cat / folder / f"{name}.jpg", 40 * view + sample)
        mask = None
        if box is not None:
            mask = f"{folder}/{name}.png"
            _mask(cat / mask, box)
        return {"category": "plastic_nut", "anomaly_class": "OK" if kind == "OK" else defect,
                "image_path": f"{folder}/{name}.jpg", "mask_path": mask}

    train = [entry("OK", s, v) for s in (1, 2, 3) for v in (1, 2)]
    test = [entry("OK", 4, v) for v in (1, 2)]
    test += [entry("NG", 5, 1, "PT", (10, 10, 20, 20)), entry("NG", 5, 2, "PT")]
    test += [entry("NG", 6, v, "QS", (0, 30, 40, 60)) for v in (1, 2)]
    split = {"meta": {"prefix": "plastic_nut", "normal_class": "OK"}, "train": train,
             "test": test}
    (root / "realiad_jsons").mkdir(parents=True)
    (root / "realiad_jsons" / "plastic_nut.json").write_text(json.dumps(split))
    return root


def test_splits_follow_the_json_with_views_as_images(tree):
    train = real_iad.list_samples(tree, "plastic_nut", "train")
    test = real_iad.list_samples(tree, "plastic_nut", "test")
    assert len(train) == 6 and not any(s.label for s in train)
    assert [s.label for s in test] == [0, 0, 1, 0, 1, 1]  # the C2 view of the pit: no mask
    assert [s.defect for s in test] == ["good", "good", "PT", "good", "QS", "QS"]
    assert real_iad.counts(test) == "3 normal, 3 anomalous (PT 1, QS 2)"
    assert test[2].mask.name == "plastic_nut_0005_NG_C1_20230101.png"


def test_the_layout_is_a_source_of_mvtec_style_splits(tree, tmp_path):
    cfg = config_lib.data_config(layout="real_iad", root=str(tree), category="plastic_nut",
                                 image_size=32, val_fraction=0.34, cache_dir=str(tmp_path / "c"))
    lines = []
    train, val = datasets.train_and_validation(cfg, 42, log=lines.append)
    assert (len(train), len(val)) == (3, 3) and train.images.shape[1:] == (32, 32, 3)
    test = datasets.test(cfg)
    assert test.labels.tolist() == [0, 0, 1, 0, 1, 1]
    assert test.masks[2].sum() > 0 and test.masks[3].sum() == 0
    assert any("Real-IAD plastic_nut (realiad_jsons) train: 6 normal, 0 anomalous" in line
               for line in lines)
    assert datasets.dataset_name(cfg) == "real_iad"
    masks = datasets.original_masks(cfg)
    assert [m.shape for m in masks] == [(60, 80)] * 6
    assert masks[2].sum() == 100 and masks[4].sum() == 30 * 40 and masks[0].sum() == 0


def test_anomalibs_nested_json_folder_is_found(tree):
    nested = tree / "realiad_jsons" / "realiad_jsons_sv"
    nested.mkdir()
    (tree / "realiad_jsons" / "plastic_nut.json").rename(nested / "plastic_nut.json")
    assert len(real_iad.list_samples(tree, "plastic_nut", "train", "realiad_jsons_sv")) == 6


def test_bad_trees_stop_with_one_sentence_naming_the_file(tree):
    path = tree / "realiad_jsons" / "plastic_nut.json"
    missing = tree / "realiad_1024/plastic_nut/NG/QS/S0006/plastic_nut_0006_NG_C1_20230101.png"
    missing.unlink()
    with pytest.raises(DataError, match=f"Real-IAD file {missing} named in {path} does not "
                                        f"exist"):
        real_iad.list_samples(tree, "plastic_nut", "test")
    path.write_text("{not json")
    with pytest.raises(DataError, match="cannot be read as JSON"):
        real_iad.list_samples(tree, "plastic_nut", "train")
    with pytest.raises(DataError, match="realiad_jsons/usb.json does not exist"):
        real_iad.list_samples(tree, "usb", "train")


def test_maps_are_resized_to_each_masks_own_size():
    maps = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    masks = [np.zeros((60, 80), np.uint8) for _ in range(3)]
    resized, stacked = at_original_size(maps, masks, "real_iad/plastic_nut")
    assert resized.shape == (3, 60, 80) and stacked.shape == (3, 60, 80)
    expected = resize_bilinear(jnp.asarray(maps)[..., None], (60, 80))[..., 0]
    np.testing.assert_allclose(resized, expected, rtol=1e-6)
    with pytest.raises(EvaluationError, match="one size, but real_iad/plastic_nut has 80x60"):
        at_original_size(maps, [*masks[:2], np.zeros((64, 64), np.uint8)],
                         "real_iad/plastic_nut")


def test_real_iad_folder_names_are_single_folders():
    cfg = config_lib.data_config(layout="real_iad")
    cfg.real_iad.json = "../elsewhere"
    full = config_lib.base_config("x", "y")
    full.data, full.train, full.eval = cfg, config_lib.train_config(), config_lib.eval_config()
    with pytest.raises(config_lib.ConfigError, match="config.data.real_iad.json must be a "
                                                     "single folder name"):
        config_lib.validate(full)
