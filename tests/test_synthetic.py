"""Tests for the procedural MVTec-AD-style data set (adjax.data.synthetic)."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from adjax.data import synthetic
from adjax.data.synthetic import CATEGORIES, DEFECT_TYPES, write_dataset

SIZE = 64
SEED = 3
N_TRAIN, N_GOOD, N_PER_DEFECT = 6, 16, 4
PARAMS = dict(
    seed=SEED,
    image_size=SIZE,
    n_train=N_TRAIN,
    n_test_good=N_GOOD,
    n_test_per_defect=N_PER_DEFECT,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("synthetic") / "data"
    returned = write_dataset(out, **PARAMS)
    assert returned == out
    return out


def _names(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _load(path: pathlib.Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _stems(n: int) -> list[str]:
    return [f"{i:03d}" for i in range(n)]


def test_layout_and_counts_match_mvtec(root):
    assert _names(root) == sorted([*CATEGORIES, "README.txt"])
    readme = (root / "README.txt").read_text()
    assert f"seed: {SEED}" in readme and f"image_size: {SIZE}" in readme
    for cat in CATEGORIES:
        assert _names(root / cat) == ["ground_truth", "test", "train"]
        assert _names(root / cat / "train") == ["good"]
        assert _names(root / cat / "test") == sorted(["good", *DEFECT_TYPES])
        # Normal images have no ground-truth folder at all, as in MVTec AD.
        assert _names(root / cat / "ground_truth") == sorted(DEFECT_TYPES)
        assert _names(root / cat / "train" / "good") == [f"{s}.png" for s in _stems(N_TRAIN)]
        assert _names(root / cat / "test" / "good") == [f"{s}.png" for s in _stems(N_GOOD)]
        for defect in DEFECT_TYPES:
            stems = _stems(N_PER_DEFECT)
            assert _names(root / cat / "test" / defect) == [f"{s}.png" for s in stems]
            assert _names(root / cat / "ground_truth" / defect) == [f"{s}_mask.png" for s in stems]


def test_images_are_rgb_and_masks_binary_single_channel(root):
    for path in root.glob("*/t*/*/*.png"):  # train/... and test/...
        with Image.open(path) as im:
            assert (im.format, im.mode, im.size) == ("PNG", "RGB", (SIZE, SIZE)), path
    for path in root.glob("*/ground_truth/*/*_mask.png"):
        with Image.open(path) as im:
            assert (im.format, im.mode, im.size) == ("PNG", "L", (SIZE, SIZE)), path
            assert set(np.unique(np.asarray(im))) <= {0, 255}, path


def test_same_seed_gives_identical_bytes(root, tmp_path):
    # Fewer images and one category: every image has its own stream, so the shared ones must
    # still be byte-identical to the full data set's.
    params = {**PARAMS, "n_train": 2, "n_test_good": 1, "n_test_per_defect": 1}
    again = write_dataset(tmp_path / "again", **params, categories=("disc",))
    files = sorted(p.relative_to(again) for p in again.glob("disc/**/*.png"))
    assert len(files) == 2 + 1 + 2 * len(DEFECT_TYPES)
    for rel in files:
        assert (again / rel).read_bytes() == (root / rel).read_bytes(), rel


def test_different_seed_gives_different_images(root, tmp_path):
    params = {**PARAMS, "seed": SEED + 1, "n_train": 2, "n_test_good": 0, "n_test_per_defect": 0}
    other = write_dataset(tmp_path / "other", **params)
    for cat in CATEGORIES:
        for name in ("000.png", "001.png"):
            a = _load(root / cat / "train" / "good" / name).astype(int)
            b = _load(other / cat / "train" / "good" / name).astype(int)
            assert np.abs(a - b).mean() > 2.0


def test_defect_masks_nonempty_and_within_area_bounds(root):
    for path in root.glob("*/ground_truth/*/*_mask.png"):
        frac = (_load(path) > 0).mean()
        assert synthetic.MIN_DEFECT_FRACTION <= frac <= synthetic.MAX_DEFECT_FRACTION, path


def test_mask_is_exactly_the_changed_region(root):
    """The defect changes nothing outside its mask, and clearly changes what is inside."""
    for cat in CATEGORIES:
        for k, defect in enumerate(DEFECT_TYPES):
            for i in range(N_PER_DEFECT):
                rng = synthetic._rng(SEED, cat, 2 + k, i)
                clean, image, mask = synthetic._sample(cat, defect, rng, SIZE)
                # The written files are exactly this rendering.
                np.testing.assert_array_equal(
                    _load(root / cat / "test" / defect / f"{i:03d}.png"), image
                )
                mask_file = root / cat / "ground_truth" / defect / f"{i:03d}_mask.png"
                np.testing.assert_array_equal(_load(mask_file) > 0, mask)

                diff = np.abs(image.astype(int) - clean.astype(int)).max(axis=-1)
                assert not diff[~mask].any(), (cat, defect, i)
                assert diff[mask].mean() >= 10, (cat, defect, i, diff[mask].mean())
                assert (diff[mask] > 0).mean() >= 0.8, (cat, defect, i)


def test_defect_pixels_stand_out_from_their_surroundings(root):
    """File-only check: inside a mask the colour differs from a ring just outside it."""
    from scipy import ndimage

    for path in root.glob("*/ground_truth/*/*_mask.png"):
        mask = _load(path) > 0
        rim = ndimage.binary_dilation(mask, iterations=2) & ~mask
        image_path = path.parents[2] / "test" / path.parent.name / path.name.replace("_mask", "")
        image = _load(image_path).astype(float)
        gap = np.abs(image[mask].mean(axis=0) - image[rim].mean(axis=0)).max()
        assert gap >= 5, (path, gap)


def test_mean_brightness_is_not_a_good_detector(root):
    for cat in CATEGORIES:
        scores, labels = [], []
        for folder in sorted((root / cat / "test").iterdir()):
            for path in sorted(folder.glob("*.png")):
                scores.append(_load(path).mean())
                labels.append(folder.name != "good")
        auc = roc_auc_score(labels, scores)
        assert max(auc, 1 - auc) < 0.9, (cat, auc)


def test_unknown_category_raises_value_error_naming_it(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="'carpet'"):
        write_dataset(out, image_size=SIZE, categories=("tiles", "carpet"))
    assert not out.exists()  # rejected before anything was written


def test_invalid_sizes_and_counts_raise(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        write_dataset(tmp_path / "a", image_size=8)
    with pytest.raises(ValueError, match="n_train"):
        write_dataset(tmp_path / "b", image_size=SIZE, n_train=-1)
    with pytest.raises(ValueError, match="seed"):
        write_dataset(tmp_path / "c", image_size=SIZE, seed=-1)


def test_rewrite_replaces_stale_files_but_not_foreign_ones(tmp_path):
    out = tmp_path / "data"
    small = dict(image_size=32, n_test_good=1, n_test_per_defect=1)
    write_dataset(out, **small, n_train=3, categories="tiles")
    write_dataset(out, **small, n_train=1, categories="tiles")
    assert _names(out / "tiles" / "train" / "good") == ["000.png"]

    foreign = tmp_path / "foreign"
    (foreign / "tiles").mkdir(parents=True)
    (foreign / "tiles" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        write_dataset(foreign, **small, n_train=1, categories="tiles")
    assert (foreign / "tiles" / "mine.txt").read_text() == "keep me"
