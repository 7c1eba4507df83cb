"""Tests of adjax.data.layouts and adjax.data.loading on small generated datasets."""

import os
import re

import numpy as np
import pytest
from PIL import Image

from adjax.data import loading
from adjax.data.layouts import LAYOUTS, DataError, Sample, list_samples
from adjax.data.loading import Split, load_folder, load_split, split_validation

W, H = 40, 32  # original image size (width × height)
S = 16  # output size


def _rgb(seed, w=W, h=H):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array)
    if mode is not None:
        img = img.convert(mode)
    img.save(path)
    return path


def _block_mask(value, w=W, h=H):
    """A mask with a 10×8 anomalous block holding ``value`` (255 or 1)."""
    m = np.zeros((h, w), dtype=np.uint8)
    m[8:16, 10:20] = value
    return m


@pytest.fixture
def mvtec(tmp_path):
    """An MVTec-like tree: root/bottle/{train/good, test/{good,crack,scratch}, ground_truth}."""
    cat = tmp_path / "mvtec" / "bottle"
    for i in range(3):
        _save(cat / "train" / "good" / f"{i:03d}.png", _rgb(i))
    # A grayscale and an RGBA training image.
    _save(cat / "train" / "good" / "003.png", _rgb(3)[..., 0])
    _save(cat / "train" / "good" / "004.png", _rgb(4), mode="RGBA")
    (cat / "train" / "good" / "notes.txt").write_text("not an image")
    _save(cat / "test" / "good" / "000.png", _rgb(10))
    _save(cat / "test" / "crack" / "000.png", _rgb(11))
    _save(cat / "test" / "crack" / "001.png", _rgb(12)[..., 1])  # grayscale anomalous
    _save(cat / "ground_truth" / "crack" / "000_mask.png", _block_mask(255))
    _save(cat / "ground_truth" / "crack" / "001_mask.png", _block_mask(1))  # 0/1 mask
    _save(cat / "test" / "scratch" / "000.png", _rgb(13))
    _save(cat / "ground_truth" / "scratch" / "000_mask.png", _block_mask(255))
    return tmp_path / "mvtec"


# ----------------------------------------------------------------------------- layouts


def test_mvtec_listing(mvtec):
    train = list_samples("mvtec_ad", mvtec, "bottle", "train")
    assert [s.image.name for s in train] == [f"{i:03d}.png" for i in range(5)]
    assert all(s.label == 0 and s.mask is None and s.defect == "good" for s in train)

    test = list_samples("mvtec_ad", mvtec, "bottle", "test")
    assert [(s.defect, s.image.name, s.label) for s in test] == [
        ("crack", "000.png", 1),
        ("crack", "001.png", 1),
        ("good", "000.png", 0),
        ("scratch", "000.png", 1),
    ]
    assert test[0].mask == mvtec / "bottle" / "ground_truth" / "crack" / "000_mask.png"
    assert test[2].mask is None
    # MPDD has the same layout.
    assert list_samples("mpdd", mvtec, "bottle", "test") == test


def test_mvtec_loading(mvtec):
    test = load_split(list_samples("mvtec_ad", mvtec, "bottle", "test"), S)
    assert test.images.shape == (4, S, S, 3) and test.images.dtype == np.uint8
    assert test.masks.shape == (4, S, S) and test.masks.dtype == np.uint8
    assert test.labels.dtype == np.int32
    np.testing.assert_array_equal(test.labels, [1, 1, 0, 1])
    assert test.defects == ("crack", "crack", "good", "scratch")
    assert test.paths[0].endswith(os.path.join("crack", "000.png"))
    # Masks are binarised whether stored as 0/255 or 0/1, and resized with nearest neighbour.
    assert set(np.unique(test.masks)) == {0, 1}
    expected = np.asarray(Image.fromarray(_block_mask(255)).resize((S, S), Image.NEAREST)) > 0
    for i in (0, 1, 3):
        np.testing.assert_array_equal(test.masks[i], expected)
    assert test.masks[2].sum() == 0
    # Grayscale is replicated to three equal channels.
    gray = test.images[1]
    np.testing.assert_array_equal(gray[..., 0], gray[..., 1])
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
    # RGB images are resized bilinearly, exactly as PIL does it.
    ref = Image.open(mvtec / "bottle" / "test" / "crack" / "000.png").convert("RGB")
    np.testing.assert_array_equal(test.images[0], np.asarray(ref.resize((S, S), Image.BILINEAR)))

    train = load_split(list_samples("mvtec_ad", mvtec, "bottle", "train"), S)
    assert train.images.shape == (5, S, S, 3)
    # The RGBA image loses its alpha channel and keeps its colours.
    rgba = np.asarray(Image.fromarray(_rgb(4)).resize((S, S), Image.BILINEAR))
    np.testing.assert_array_equal(train.images[4], rgba)
    gray_train = np.asarray(Image.fromarray(_rgb(3)[..., 0]).resize((S, S), Image.BILINEAR))
    np.testing.assert_array_equal(train.images[3], np.stack([gray_train] * 3, axis=-1))


def test_16bit_grayscale_is_scaled(tmp_path):
    arr = np.full((H, W), 65535, dtype=np.uint16)
    arr[:, : W // 2] = 257 * 100
    _save(tmp_path / "imgs" / "a.png", arr)
    assert Image.open(tmp_path / "imgs" / "a.png").mode.startswith("I")
    images = load_folder(tmp_path / "imgs", W)
    assert images.shape == (1, W, W, 3)
    assert images[0, 0, 0].tolist() == [100, 100, 100]
    assert images[0, 0, -1].tolist() == [255, 255, 255]


def test_btad(tmp_path):
    prod = tmp_path / "BTech" / "01"
    for i in range(3):
        _save(prod / "train" / "ok" / f"{i:04d}.bmp", _rgb(i))
    _save(prod / "test" / "ok" / "0000.bmp", _rgb(5))
    _save(prod / "test" / "ko" / "0001.bmp", _rgb(6))
    _save(prod / "test" / "ko" / "0000.bmp", _rgb(7))
    _save(prod / "ground_truth" / "ko" / "0000.png", _block_mask(255))
    _save(prod / "ground_truth" / "ko" / "0001.bmp", _block_mask(255))  # product-03 style

    train = list_samples("btad", prod.parent, "01", "train")
    assert [s.image.name for s in train] == ["0000.bmp", "0001.bmp", "0002.bmp"]
    assert {(s.label, s.defect) for s in train} == {(0, "good")}
    test = list_samples("btad", prod.parent, "01", "test")
    assert [(s.defect, s.label, s.image.name) for s in test] == [
        ("good", 0, "0000.bmp"),
        ("ko", 1, "0000.bmp"),
        ("ko", 1, "0001.bmp"),
    ]
    assert test[1].mask.name == "0000.png" and test[2].mask.name == "0001.bmp"

    split = load_split(test, S)
    np.testing.assert_array_equal(split.labels, [0, 1, 1])
    assert split.masks[0].sum() == 0 and split.masks[1].sum() > 0 and split.masks[2].sum() > 0
    assert split.images.shape == (3, S, S, 3)


def test_visa(tmp_path):
    cat = tmp_path / "VisA_pytorch" / "1cls" / "candle"
    for i in range(2):
        _save(cat / "train" / "good" / f"{i:04d}.JPG", _rgb(i))
    _save(cat / "test" / "good" / "0100.JPG", _rgb(3))
    _save(cat / "test" / "bad" / "0200.JPG", _rgb(4))
    _save(cat / "ground_truth" / "bad" / "0200.png", _block_mask(255))
    train = list_samples("visa", cat.parent, "candle", "train")
    assert [s.image.name for s in train] == ["0000.JPG", "0001.JPG"]
    test = list_samples("visa", cat.parent, "candle", "test")
    assert [(s.defect, s.label, s.image.name, s.mask and s.mask.name) for s in test] == [
        ("bad", 1, "0200.JPG", "0200.png"), ("good", 0, "0100.JPG", None)]
    (cat / "ground_truth" / "bad" / "0200.png").unlink()
    with pytest.raises(DataError, match="0200.JPG has no mask file"):
        list_samples("visa", cat.parent, "candle", "test")


def test_plain_folder(tmp_path):
    folder = tmp_path / "penalty"
    _save(folder / "b.JPG", _rgb(1))
    _save(folder / "a.png", _rgb(0))
    _save(folder / "sub" / "c.png", _rgb(2))  # not recursive
    _save(folder / "._a.png", _rgb(0))  # hidden AppleDouble-style file is skipped
    samples = list_samples("folder", folder, None, "train")
    assert [s.image.name for s in samples] == ["a.png", "b.JPG"]
    assert [s.image.name for s in list_samples("folder", tmp_path, "penalty", "train")] == [
        "a.png",
        "b.JPG",
    ]
    images = load_folder(folder, S)
    assert images.shape == (2, S, S, 3) and images.dtype == np.uint8
    with pytest.raises(DataError, match="training only"):
        list_samples("folder", folder, None, "test")


# ----------------------------------------------------------------------------- errors


def test_unknown_layout_and_split(mvtec):
    known = "mvtec_ad, mpdd, btad, visa"
    with pytest.raises(DataError, match=f"unknown dataset layout 'loco'.*{known}"):
        list_samples("loco", mvtec, "bottle", "train")
    assert LAYOUTS == ("mvtec_ad", "mpdd", "btad", "visa", "folder")
    with pytest.raises(DataError, match="unknown split 'val'"):
        list_samples("mvtec_ad", mvtec, "bottle", "val")
    with pytest.raises(DataError, match="needs a category"):
        list_samples("mvtec_ad", mvtec, None, "train")


def test_missing_folders(mvtec, tmp_path):
    with pytest.raises(DataError, match=re.escape(f"root folder {tmp_path / 'nope'} does not")):
        list_samples("mvtec_ad", tmp_path / "nope", "bottle", "train")
    with pytest.raises(DataError, match=re.escape(f"folder {mvtec / 'cable'} does not exist")):
        list_samples("mvtec_ad", mvtec, "cable", "train")
    (mvtec / "grid" / "test").mkdir(parents=True)
    missing = mvtec / "grid" / "train" / "good"
    with pytest.raises(DataError, match=re.escape(f"category folder {missing} does not exist")):
        list_samples("mvtec_ad", mvtec, "grid", "train")
    with pytest.raises(DataError, match="holds no defect folders"):
        list_samples("mvtec_ad", mvtec, "grid", "test")
    missing.mkdir(parents=True)
    with pytest.raises(DataError, match=re.escape(f"{missing} holds no images")):
        list_samples("mvtec_ad", mvtec, "grid", "train")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'x'} does not exist")):
        list_samples("folder", tmp_path / "x", None, "train")


def test_missing_mask(mvtec):
    gt = mvtec / "bottle" / "ground_truth" / "scratch" / "000_mask.png"
    gt.unlink()
    with pytest.raises(DataError, match=re.escape(f"(expected {gt} or")):
        list_samples("mvtec_ad", mvtec, "bottle", "test")
    samples = list_samples("mvtec_ad", mvtec, "bottle", "test", allow_missing_masks=True)
    assert samples[-1].mask is None and samples[-1].label == 1


def test_undecodable_image(mvtec):
    bad = mvtec / "bottle" / "train" / "good" / "001.png"
    bad.write_bytes(b"this is not a png at all")
    samples = list_samples("mvtec_ad", mvtec, "bottle", "train")
    with pytest.raises(DataError, match=re.escape(f"could not decode image {bad}: ")):
        load_split(samples, S)


def test_mask_size_mismatch(mvtec):
    gt = mvtec / "bottle" / "ground_truth" / "crack" / "001_mask.png"
    _save(gt, _block_mask(255, w=W, h=H - 2))
    image = mvtec / "bottle" / "test" / "crack" / "001.png"
    msg = f"mask {gt} is {W}×{H - 2} but its image {image} is {W}×{H}"
    with pytest.raises(DataError, match=re.escape(msg)):
        load_split(list_samples("mvtec_ad", mvtec, "bottle", "test"), S)


def test_empty_samples():
    with pytest.raises(DataError, match="empty list of samples"):
        load_split([], S)


# ----------------------------------------------------------------------------- cache


def _boom(*args, **kwargs):
    raise AssertionError("decoded although the cache should have been used")


def test_cache_hit_and_invalidation(mvtec, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    samples = list_samples("mvtec_ad", mvtec, "bottle", "test")
    first = load_split(samples, S, cache_dir=cache)
    files = sorted(os.listdir(cache))
    assert len(files) == 1 and files[0].endswith(".npz")

    with monkeypatch.context() as m:
        m.setattr(loading, "_load_sample", _boom)
        second = load_split(samples, S, cache_dir=cache)
        # Another image size is a different cache entry, so it must decode.
        with pytest.raises(AssertionError, match="decoded although"):
            load_split(samples, S + 1, cache_dir=cache)
    for field in ("images", "masks", "labels"):
        np.testing.assert_array_equal(getattr(first, field), getattr(second, field))
    assert first.defects == second.defects and first.paths == second.paths

    # Changing an image (new content and mtime) invalidates the cache.
    changed = samples[0].image
    _save(changed, _rgb(99))
    st = os.stat(changed)
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    with monkeypatch.context() as m:
        m.setattr(loading, "_load_sample", _boom)
        with pytest.raises(AssertionError, match="decoded although"):
            load_split(samples, S, cache_dir=cache)
    third = load_split(samples, S, cache_dir=cache)
    assert not np.array_equal(third.images[0], first.images[0])
    np.testing.assert_array_equal(third.images[1:], first.images[1:])

    # Only complete cache files remain: no temporary or hidden files.
    files = sorted(os.listdir(cache))
    assert len(files) == 2
    assert all(f.endswith(".npz") and not f.startswith(".") for f in files)


def test_damaged_cache_is_rebuilt(mvtec, tmp_path):
    cache = tmp_path / "cache"
    samples = list_samples("mvtec_ad", mvtec, "bottle", "train")
    first = load_split(samples, S, cache_dir=cache)
    (path,) = cache.iterdir()
    path.write_bytes(b"truncated")
    again = load_split(samples, S, cache_dir=cache)
    np.testing.assert_array_equal(first.images, again.images)
    assert path.stat().st_size > 100


def test_failed_write_leaves_no_temp_file(mvtec, tmp_path, monkeypatch):
    cache = tmp_path / "cache"

    def failing_savez(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(loading.np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        load_split(list_samples("mvtec_ad", mvtec, "bottle", "train"), S, cache_dir=cache)
    assert os.listdir(cache) == []


# ----------------------------------------------------------------------------- validation split


def _fake_split(n):
    return Split(
        images=np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1).repeat(3, axis=-1),
        masks=np.zeros((n, 1, 1), dtype=np.uint8),
        labels=np.zeros(n, dtype=np.int32),
        defects=("good",) * n,
        paths=tuple(f"/d/{i:03d}.png" for i in range(n)),
    )


@pytest.mark.parametrize("n", [2, 3, 10, 209])
def test_split_validation(n):
    full = _fake_split(n)
    rest, val = split_validation(full)
    assert len(val) >= 1 and len(rest) >= 1 and len(rest) + len(val) == n
    assert set(rest.paths).isdisjoint(val.paths)
    assert set(rest.paths) | set(val.paths) == set(full.paths)
    assert len(rest) == max(1, min(int(0.9 * n), n - 1))  # EfficientAD: train_size = int(0.9 N)
    assert list(rest.paths) == sorted(rest.paths)
    np.testing.assert_array_equal(rest.images[:, 0, 0, 0], [int(p[3:6]) for p in rest.paths])
    rest2, val2 = split_validation(full)
    assert rest2.paths == rest.paths and val2.paths == val.paths
    if n >= 10:
        _, other = split_validation(full, seed=0)
        assert other.paths != val.paths


def test_split_validation_sizes_and_errors():
    _, val = split_validation(_fake_split(209))
    assert len(val) == 21
    with pytest.raises(DataError):
        split_validation(_fake_split(1))
    with pytest.raises(ValueError):
        split_validation(_fake_split(10), fraction=1.0)


def test_take():
    s = _fake_split(5)
    sub = s.take(np.array([4, 0]))
    assert sub.paths == ("/d/004.png", "/d/000.png")
    assert sub.images[:, 0, 0, 0].tolist() == [4, 0]
    assert len(s.take([])) == 0
    assert s.take(np.array([True, False, True, False, False])).paths == s.take([0, 2]).paths


def test_sample_is_frozen(tmp_path):
    s = Sample(tmp_path / "a.png", None, 0, "good")
    with pytest.raises(AttributeError):
        s.label = 1


def test_the_data_set_name_follows_the_root(tmp_path):
    import ml_collections

    from adjax.config import data_config
    from adjax.data import datasets, synthetic

    def name(**kw) -> str:
        return datasets.dataset_name(ml_collections.ConfigDict(data_config(**kw)))

    assert name(root="embedded") == "synth"
    assert name(root=str(tmp_path), layout="btad") == "btad"  # the user's own data
    synthetic.write_dataset(tmp_path / "copy", image_size=32, n_train=1, n_test_good=0,
                            n_test_per_defect=0, categories=("tiles",))
    assert name(root=str(tmp_path / "copy")) == "synth"  # `adjax data synth` wrote it
    assert name(root=str(tmp_path), name="parts") == "parts"  # set by the user


def test_the_embedded_data_set_is_written_once_to_the_cache(tmp_path):
    from adjax.data import synthetic

    lines = []
    root = synthetic.embedded_root(tmp_path, lines.append)
    assert root == tmp_path / f"embedded-v{synthetic.EMBEDDED_VERSION}"
    assert synthetic.is_synthetic(root) and len(lines) == 1
    assert len(list((root / "tiles" / "train" / "good").glob("*.png"))) == 120
    assert synthetic.embedded_root(tmp_path, lines.append) == root and len(lines) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
