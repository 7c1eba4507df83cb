"""Checkpoint -> anomaly maps and scores on the test split -> metrics -> a results record.

Decision thresholds for the thresholded metrics (F1, precision, recall, IoU, accuracy) are
chosen on the held-out validation images, never on the test set; the F1-max figures are the
oracle (test-set-optimal) values and are named as such.
"""

import json
import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from adjax import methods, metrics, results
from adjax.checkpoint import Checkpoints
from adjax.data import datasets


class EvaluationError(RuntimeError):
    """The work directory cannot be evaluated (no config, no finished training)."""


def load_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The config a run was trained with (`<workdir>/config.json`)."""
    path = pathlib.Path(workdir) / "config.json"
    if not path.is_file():
        raise EvaluationError(f"{path} does not exist: is {workdir} an adjax work directory?")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def restore(workdir: str | pathlib.Path, method: methods.Method,
            config: ml_collections.ConfigDict) -> Any:
    """The final, calibrated state of a finished training run."""
    checkpoints = Checkpoints(pathlib.Path(workdir) / "checkpoints", config.train.keep_checkpoints)
    try:
        step = checkpoints.latest_step()
        if step != config.train.steps:
            raise EvaluationError(
                f"training in {workdir} is not finished (last checkpoint: step {step} of "
                f"{config.train.steps}); run `adjax train` with the same work directory first.")
        size = config.data.image_size
        train = {"image": jax.ShapeDtypeStruct((1, size, size, 3), jnp.uint8),
                 "label": jax.ShapeDtypeStruct((1,), jnp.int32)}
        like = jax.eval_shape(method.init, jax.random.key(0), train)
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        like = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                            like)
        return checkpoints.restore(step, like)
    finally:
        checkpoints.close()


def predict_all(method: methods.Method, state: Any, images: np.ndarray,
                batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Maps [N, H, W] and scores [N] for all images, in fixed-size batches (one compile)."""
    predict = jax.jit(method.predict)
    maps, scores = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        n = len(batch)
        if n < batch_size:  # pad the last batch so that it reuses the compiled shape
            batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - n, axis=0)])
        out = predict(state, batch)
        maps.append(np.asarray(out.anomaly_map[:n]))
        scores.append(np.asarray(out.score[:n]))
    return np.concatenate(maps), np.concatenate(scores)


def thresholded(test_scores, test_labels, val_scores, how: str, q: float, k: float,
                prefix: str) -> dict[str, float]:
    """F1, precision, recall, IoU and accuracy on test at a threshold chosen on validation."""
    threshold = metrics.threshold_from_validation(val_scores, how, q=q, k=k)
    out = metrics.binary_metrics(test_scores, test_labels, threshold)
    keys = ("f1", "precision", "recall", "iou", "accuracy", "threshold")
    return {f"{prefix}_{key}_val_{how}": out[key] for key in keys}


def _save_images(folder: pathlib.Path, computed, test, maps, scores, fpr_limit) -> None:
    from adjax import viz  # matplotlib is only imported when pictures are asked for

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    names = [f"{defect}_{pathlib.Path(p).stem}" for defect, p in zip(test.defects, test.paths,
                                                                       strict=True)]
    viz.save_all(computed, test.images, maps, test.masks, scores, test.labels, folder,
                 fpr_limit=fpr_limit, names=names)


def evaluate(workdir: str | pathlib.Path, results_dir: str | pathlib.Path | None = None,
             fpr_limit: float | None = None,
             save_images: bool = False) -> tuple[dict[str, Any], pathlib.Path]:
    """Scores the test split of a trained run and writes an `eval` results record.

    Returns the record and its path (default folder: `<workdir>/results`). With `save_images`,
    the ROC, PR and PRO curves and overlays of the worst and best test images are drawn as PNG
    into `<workdir>/images` (emptied of earlier PNGs first).
    """
    workdir = pathlib.Path(workdir)
    config = load_config(workdir)
    method = methods.build(config)
    try:
        state = restore(workdir, method, config)
    except (AttributeError, KeyError) as err:  # a config key this adjax expects is absent
        raise EvaluationError(
            f"{workdir}/config.json lacks the key {str(err).strip(chr(34))} that this version of "
            f"adjax needs (was it written by an older one?); train again in a new work "
            f"directory.") from err
    test = datasets.test(config.data)
    _, val = datasets.train_and_validation(config.data, config.seed)
    batch = config.eval.batch_size
    maps, scores = predict_all(method, state, test.images, batch)
    val_maps, val_scores = predict_all(method, state, val.images, batch)
    fpr_limit = fpr_limit or config.eval.fpr_limit
    computed = metrics.compute(scores, test.labels, maps, test.masks, fpr_limit=fpr_limit,
                               with_curves=save_images)
    if save_images:
        _save_images(workdir / "images", computed, test, maps, scores, fpr_limit)
    how, q, k = config.eval.threshold, config.eval.threshold_q, config.eval.threshold_k
    computed |= thresholded(scores, test.labels, val_scores, how, q, k, "image")
    computed |= thresholded(maps, test.masks, val_maps, how, q, k, "pixel")
    numbers = {key: (None if math.isnan(v) else v) for key, v in computed.items()
               if isinstance(v, float | int) and not isinstance(v, bool)}
    info = method.describe(state)
    record = results.make_record(
        "eval", method=config.method, variant=config.get("variant", ""),
        dataset=datasets.dataset_name(config.data), category=config.data.category or "",
        image_size=config.data.image_size, metrics=numbers, config=config.to_dict(),
        notes={"missing": computed["missing"], "oracle": "image_f1_max and pixel_f1_max are "
               "test-set-optimal (oracle) figures; *_val_* metrics use thresholds chosen on "
               "validation images", **{k: v for k, v in info.items() if k != "params"}},
        run={"workdir": str(workdir.absolute()), "counts": computed["counts"],
             "params": info.get("params", {}), "test_images": len(test),
             "val_images": len(val)})
    path = results.write(record, results_dir or workdir / "results")
    return record, path
