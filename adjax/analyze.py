"""Seed 000's data-set analyses (`adjax analyze`): how varied a category's images are.

* Pairwise distances: MSE and 1 - SSIM (scikit-image's uniform 5 x 5 window with sample
  statistics, per RGB channel and averaged; pixel values in [0, 1]) over the pairs of images
  within train/good, within test/good, within each defect folder, within all anomalous test
  images merged, and between train/good and the merged anomalies. Within a set every unordered
  pair i < j is used (n(n-1)/2); the cross set uses all n * m pairs. `half_pairs` reproduces the
  seed repository's loop, whose outer index stops at ceil(n/2) (pairs i < j with i < ceil(n/2)
  only, within a set; the cross set is complete either way). The distances come from one jitted
  function applied to fixed-size blocks of (i, j) index pairs; a pair shared by two sets (a
  defect folder and the merged anomalies) is computed once.
* Latent space: ResNet-18's global-average-pooled layer4 features (512-d) of every image,
  after torchvision's Resize(256) / CenterCrop(224) scaled to the analysis size and ImageNet
  normalisation, projected to 2-D with PCA and with t-SNE (scikit-learn; perplexity 30, or
  10 below 31 images, as the seed repository's small-set branch, capped at n - 1). The trunk
  is randomly initialised unless torchvision weights are given.

`analyze` writes distances.png, pca.png, tsne.png and summary.json (adjax.viz, adjax.files).
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adjax import files, viz
from adjax.data import augment
from adjax.data.layouts import DataError, list_samples
from adjax.data.loading import cache_dir, load_split
from adjax.nn.resnet import ResNet
from adjax.nn.ssim import ssim_map

LAYOUTS = ("mvtec_ad", "mpdd", "btad", "visa")
METRICS = ("mse", "ssim_distance")
SSIM_WINDOW = 5
MIN_IMAGE_SIZE = 16
CROSS = "train/good x anomalies"
MERGED = "anomalies"

Log = Callable[[str], None]


def pairs_within(n: int, half: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j), i < j, of a set of n images: all n(n-1)/2, or with `half` only those
    with i < ceil(n/2) (the seed repository's loop)."""
    i, j = np.triu_indices(n, k=1)
    if half:
        keep = i < math.ceil(n / 2)
        i, j = i[keep], j[keep]
    return i, j


def pairs_between(m: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """All m * n index pairs (i, j) between a set of m and a set of n images."""
    i, j = np.meshgrid(np.arange(m), np.arange(n), indexing="ij")
    return i.reshape(-1), j.reshape(-1)


def _pair_distances(images: jax.Array, i: jax.Array, j: jax.Array) -> tuple[jax.Array, jax.Array]:
    a, b = images[i], images[j]
    # The difference in integers: exactly zero for equal pixels whatever XLA fuses.
    diff = (a.astype(jnp.int32) - b.astype(jnp.int32)).astype(jnp.float32) / 255.0
    mse = jnp.mean(diff**2, axis=(1, 2, 3))
    a, b = augment.to_float(a), augment.to_float(b)
    ssim = jnp.mean(ssim_map(a, b, data_range=1.0, win_size=SSIM_WINDOW), axis=(1, 2, 3))
    return mse, 1.0 - ssim


def distances(images: np.ndarray, i: np.ndarray, j: np.ndarray,
              block: int = 32) -> dict[str, np.ndarray]:
    """MSE and 1 - SSIM of the uint8 [N, S, S, 3] `images` at the index pairs (i[k], j[k]),
    computed on the device in blocks of `block` pairs (the last one padded) by one compiled
    function."""
    n = len(i)
    if n == 0:
        return {metric: np.zeros(0, np.float32) for metric in METRICS}
    block = min(block, n)
    padded = -n % block
    i = np.concatenate([i, np.zeros(padded, i.dtype)]).reshape(-1, block)
    j = np.concatenate([j, np.zeros(padded, j.dtype)]).reshape(-1, block)
    fn = jax.jit(_pair_distances)
    x = jnp.asarray(images)
    out = [fn(x, bi, bj) for bi, bj in zip(i, j, strict=True)]
    return {metric: np.concatenate([np.asarray(o[k]) for o in out])[:n]
            for k, metric in enumerate(METRICS)}


def group_pairs(defects: list[str], n_train: int,
                half: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The index pairs of every distance set, into the images ordered train, then test (whose
    defect names are `defects`, "good" for normal images)."""
    defects_arr = np.asarray(defects, dtype=object)
    sets = {"train/good": np.arange(n_train)}
    for name in ["good", *sorted(set(defects) - {"good"})]:
        sets[f"test/{name}"] = n_train + np.flatnonzero(defects_arr == name)
    sets[MERGED] = n_train + np.flatnonzero(defects_arr != "good")
    groups = {}
    for name, idx in sets.items():
        a, b = pairs_within(len(idx), half)
        groups[name] = (idx[a], idx[b])
    a, b = pairs_between(n_train, len(sets[MERGED]))
    groups[CROSS] = (sets["train/good"][a], sets[MERGED][b])
    return groups


def group_distances(images: np.ndarray, groups: dict[str, tuple[np.ndarray, np.ndarray]],
                    block: int = 32) -> dict[str, dict[str, np.ndarray]]:
    """Distances of every group's pairs; each distinct pair is computed once."""
    n = len(images)
    keys = np.concatenate([i.astype(np.int64) * n + j for i, j in groups.values()])
    unique, inverse = np.unique(keys, return_inverse=True)
    values = distances(images, unique // n, unique % n, block)
    out, start = {}, 0
    for name, (i, _) in groups.items():
        idx = inverse[start:start + len(i)]
        out[name] = {metric: values[metric][idx] for metric in METRICS}
        start += len(i)
    return out


def describe(values: np.ndarray) -> dict[str, Any]:
    """Pair count, mean, std, median, min and max (None for no pairs)."""
    stats = {"pairs": len(values)}
    for name, fn in (("mean", np.mean), ("std", np.std), ("median", np.median),
                     ("min", np.min), ("max", np.max)):
        stats[name] = float(fn(values)) if len(values) else None
    return stats


def center_crop(size: int) -> tuple[int, int]:
    """(offset, side) of torchvision's CenterCrop(224) after Resize(256), scaled to `size`."""
    side = max(1, round(size * 224 / 256))
    return int(round((size - side) / 2.0)), side


def resnet_variables(crop: int, seed: int, weights_path: str | None) -> Any:
    """ResNet-18 variables: initialised with `seed`, or torchvision's from `weights_path` (a
    .pth/.safetensors state dict or the msgpack `adjax weights import --kind=resnet18` wrote)."""
    model, x = ResNet(18), jnp.zeros((1, crop, crop, 3))
    if weights_path is None:
        # An RBG key: XLA compiles its random initialisation in half the time of threefry's.
        return jax.jit(model.init)(jax.random.key(seed, impl="rbg"), x)
    from adjax import weights

    like = jax.eval_shape(model.init, jax.random.key(0), x)
    return jax.tree.map(jnp.asarray, weights.load(weights_path, "resnet18", like, "--weights"))


def features(images: np.ndarray, variables: Any, block: int = 32) -> np.ndarray:
    """[N, 512] ResNet-18 global-average-pooled features of uint8 [N, S, S, 3] images (centre
    crop, ImageNet normalisation), in fixed-size blocks by one compiled function."""
    offset, side = center_crop(images.shape[1])
    model = ResNet(18)

    @jax.jit
    def embed(v, x):
        x = x[:, offset:offset + side, offset:offset + side]
        x = augment.imagenet_normalize(augment.to_float(x))
        return jnp.mean(model.apply(v, x), axis=(1, 2))

    n = len(images)
    block = min(block, n)
    padded = np.concatenate([images, np.zeros((-n % block, *images.shape[1:]), np.uint8)])
    out = [np.asarray(embed(variables, padded[k:k + block]))
           for k in range(0, len(padded), block)]
    return np.concatenate(out)[:n]


def tsne_perplexity(n: int) -> float:
    """30, or 10 for fewer than 31 images (the seed repository's small-set branch), and below
    n (scikit-learn's requirement)."""
    return float(min(30 if n > 30 else 10, n - 1))


def project(feats: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """PCA 2-D (with its explained variance ratios) and t-SNE 2-D of `feats` (N >= 3); returns
    (pca, explained, tsne, perplexity)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    pca = PCA(n_components=2, random_state=seed)
    pca_xy = pca.fit_transform(feats)
    perplexity = tsne_perplexity(len(feats))
    tsne_xy = TSNE(n_components=2, perplexity=perplexity, random_state=seed,
                   init="pca").fit_transform(feats)
    return pca_xy, pca.explained_variance_ratio_, tsne_xy, perplexity


def _weights_note(path: str | None, seed: int) -> dict[str, Any]:
    if path is None:
        return {"init": f"random (seed {seed})"}
    from adjax import weights

    return {"file": str(path), "sha256": weights.sha256(path)}


def analyze(root: str | os.PathLike, category: str, out: str | os.PathLike, *,
            layout: str = "mvtec_ad", image_size: int = 256, weights: str | None = None,
            half_pairs: bool = False, seed: int = 42, block: int = 32,
            log: Log | None = None) -> dict[str, Any]:
    """Runs the analyses on one category and writes its figures and summary.json to `out`.

    Args:
      root: the data set root (the folder holding `category`).
      category: the category folder.
      out: the output folder (created).
      layout: a folder layout with train and test splits (`LAYOUTS`).
      image_size: the side the images are resized to (the thesis: 256).
      weights: torchvision ResNet-18 weights (.pth, .safetensors, or `adjax weights import`'s
        .msgpack); None: a random initialisation from `seed`.
      half_pairs: within a set, only the pairs of the seed repository's half loop.
      seed: t-SNE's and PCA's random state, and the ResNet initialisation's key.
      block: pairs (and images) per compiled call.
      log: called with a line before each long step.

    Returns:
      The summary written to summary.json.

    Raises:
      DataError: an unknown layout, a missing root or category, a folder without images, too
        few images, or an image size below `MIN_IMAGE_SIZE`.
      OutputError: `out` cannot be written.
      FileNotFoundError, WeightsError: a weights file that is missing or does not fit.
    """
    log = log or (lambda _: None)
    if layout not in LAYOUTS:
        raise DataError(f"--layout {layout!r} is not one of {', '.join(LAYOUTS)} (the analyses "
                        f"need train and test folders).")
    if image_size < MIN_IMAGE_SIZE:
        raise DataError(f"--image_size {image_size} is below {MIN_IMAGE_SIZE} pixels.")
    train_samples = list_samples(layout, root, category, "train")
    test_samples = list_samples(layout, root, category, "test", allow_missing_masks=True)
    if len(train_samples) + len(test_samples) < 3:
        raise DataError(f"category {category} of {root} holds fewer than 3 images, too few for "
                        f"PCA and t-SNE.")
    out = files.ensure_folder(out, "output folder")
    if weights is not None and not pathlib.Path(weights).is_file():
        raise FileNotFoundError(f"weights file {weights} does not exist.")

    cache = cache_dir()
    train = load_split(train_samples, image_size, cache, log=log)
    test = load_split(test_samples, image_size, cache, log=log)
    images = np.concatenate([train.images, test.images])
    _, side = center_crop(image_size)
    variables = resnet_variables(side, seed, weights)

    groups = group_pairs(list(test.defects), len(train), half_pairs)
    log(f"adjax analyze: MSE and 1-SSIM of {sum(len(i) for i, _ in groups.values())} pairs in "
        f"{len(groups)} sets")
    dists = group_distances(images, groups, block)
    log(f"adjax analyze: ResNet-18 features of {len(images)} images, PCA and t-SNE")
    feats = features(images, variables, block)
    pca_xy, explained, tsne_xy, perplexity = project(feats, seed)

    labels = ["train/good"] * len(train) + [f"test/{d}" for d in test.defects]
    viz.save_histograms(dists, out / "distances.png",
                        {"mse": "MSE", "ssim_distance": "1 - SSIM"},
                        title=f"{category}: pairwise distances")
    viz.save_scatter(pca_xy, labels, out / "pca.png",
                     title=f"{category}: PCA of ResNet-18 features "
                           f"({100 * explained.sum():.1f}% of the variance)")
    viz.save_scatter(tsne_xy, labels, out / "tsne.png",
                     title=f"{category}: t-SNE of ResNet-18 features (perplexity "
                           f"{perplexity:g})")
    summary = {
        "groups": {name: {metric: describe(v) for metric, v in d.items()}
                   for name, d in dists.items()},
        "images": {name: int(sum(1 for lab in labels if lab == name))
                   for name in dict.fromkeys(labels)},
        "pca_explained_variance_ratio": [float(v) for v in explained],
        "settings": {"root": str(root), "category": category, "layout": layout,
                     "image_size": image_size, "half_pairs": half_pairs, "seed": seed,
                     "mse": "mean squared difference of RGB values in [0, 1]",
                     "ssim": f"scikit-image default: uniform {SSIM_WINDOW}x{SSIM_WINDOW} window, "
                             f"sample covariance, per RGB channel and averaged",
                     "features": "ResNet-18 global-average-pooled layer4 (512-d), centre crop "
                                 f"{side} px, ImageNet normalisation",
                     "weights": _weights_note(weights, seed),
                     "tsne_perplexity": perplexity},
    }
    files.write_json(out / "summary.json", summary)
    return summary
