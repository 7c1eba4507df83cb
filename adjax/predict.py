"""`adjax predict`: a trained model scores any images, with or without ground truth.

For every image (a folder's images, or those a glob pattern names) it writes the anomaly map
as `<name>.npy` (float32 at the run's image size) and `<name>.png` (the image beside the map
overlaid), and one `scores.csv` with the image score and the decision at the threshold the
run's config chooses on its own validation images (`config.eval.threshold`), the threshold
itself on every row.
"""

import csv
import glob
import io
import pathlib
from collections.abc import Callable

import numpy as np

from adjax import evaluate, files, metrics
from adjax.data import datasets
from adjax.data.layouts import IMAGE_EXTENSIONS, DataError, Sample
from adjax.data.loading import load_split


def image_paths(images: str) -> list[pathlib.Path]:
    """The image files of a folder (directly inside it, by name) or of a glob pattern."""
    folder = pathlib.Path(images)
    found = sorted(folder.iterdir()) if folder.is_dir() else \
        sorted(pathlib.Path(p) for p in glob.glob(images, recursive=True))
    paths = [p for p in found if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
             and not p.name.startswith(".")]
    if not paths:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in or matching {images}.")
    return paths


def _names(paths: list[pathlib.Path]) -> list[str]:
    """File stems, made unique with the parent folder's name where two images share one."""
    stems = [p.stem for p in paths]
    return [f"{p.parent.name}_{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]


def predict(workdir: str | pathlib.Path, images: str, out: str | pathlib.Path | None = None,
            log: Callable[[str], None] | None = None) -> pathlib.Path:
    """Scores `images` (a folder or a glob pattern) with the finished run in `workdir`; writes
    the maps and `scores.csv` into `out` (default `<workdir>/predictions`) and returns it."""
    workdir = files.path(workdir)
    config, method, state = evaluate.load_run(workdir)
    paths = image_paths(images)
    out = files.ensure_folder(out or workdir / "predictions", "predictions folder")
    split = load_split([Sample(p, None, 0, "good") for p in paths], config.data.image_size,
                       log=log)
    _, val = datasets.train_and_validation(config.data, config.seed, log=log)
    if log is not None:
        log(f"adjax: scoring {len(paths)} images (and {len(val)} validation images for the "
            f"threshold)")
    batch = config.eval.batch_size
    predicted = evaluate.predict_all(method, state, split.images, batch)
    maps, scores = predicted.anomaly_map, predicted.score
    val_scores = evaluate.predict_all(method, state, val.images, batch).score
    e = config.eval
    threshold = metrics.threshold_from_validation(val_scores, e.threshold, q=e.threshold_q,
                                                  k=e.threshold_k)
    anomalous = scores >= threshold
    names = _names(paths)
    for name, amap in zip(names, maps, strict=True):
        files.write_with(out / f"{name}.npy", lambda f, m=amap: np.save(f, m.astype(np.float32)),
                         binary=True)
    from adjax import viz  # matplotlib only when pictures are drawn

    viz.save_maps(split.images, maps, scores, anomalous, names, out)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["image", "name", "score", "anomalous", "threshold", "threshold_rule"])
    rule = {"quantile": f"quantile {e.threshold_q}", "k_sigma": f"mean + {e.threshold_k} sd",
            "max": "max"}[e.threshold] + " of the validation scores"
    for path, name, score, flag in zip(paths, names, scores, anomalous, strict=True):
        writer.writerow([str(path), name, f"{float(score):.8g}", int(flag), f"{threshold:.8g}",
                         rule])
    files.write_text(out / "scores.csv", table.getvalue())
    return out
