"""Checkpoint -> anomaly maps and scores on the test split -> metrics -> a results record.

Decision thresholds for the thresholded metrics (F1, precision, recall, IoU, accuracy) are
chosen on the held-out validation images, never on the test set; the F1-max figures are the
oracle (test-set-optimal) values and are named as such.
"""

import dataclasses
import json
import math
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from adjax import files, methods, metrics, results
from adjax.checkpoint import Checkpoints
from adjax.config import path_component
from adjax.data import datasets
from adjax.data.loading import Split
from adjax.methods.base import map_batches
from adjax.nn.layers import resize_bilinear


class EvaluationError(RuntimeError):
    """The work directory cannot be evaluated (no config, no finished training)."""


def load_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The config a run was trained with (`<workdir>/config.json`)."""
    path = files.path(workdir) / "config.json"
    if not path.is_file():
        raise EvaluationError(f"{path} does not exist: is {workdir} an adjax work directory?")
    try:
        return ml_collections.ConfigDict(json.loads(files.read_text(path, "config file")))
    except json.JSONDecodeError as err:
        raise EvaluationError(f"config file {path} is not valid JSON ({err}).") from err


def restore(workdir: str | pathlib.Path, method: methods.Method,
            config: ml_collections.ConfigDict) -> Any:
    """The final, calibrated state of a finished training run."""
    checkpoints = Checkpoints(files.path(workdir) / "checkpoints", config.train.keep_checkpoints)
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
                batch_size: int) -> methods.Prediction:
    """The prediction (maps [N, H, W], scores [N], reconstruction errors [N]) for all images as
    numpy arrays, in fixed-size batches (one compile)."""
    return map_batches(jax.jit(lambda x: method.predict(state, x)), images, batch_size,
                       to_host=True)


def at_original_size(maps: np.ndarray, masks: list[np.ndarray], what: str) -> tuple[np.ndarray,
                                                                                     np.ndarray]:
    """(maps resized bilinearly to the ground truth's own size, the masks stacked): the
    protocol of the published MVTec AD numbers. The pixel metrics need one size, which every
    category of MVTec AD has; a test split of several sizes stops, naming two."""
    sizes = sorted({m.shape for m in masks})
    if len(sizes) > 1:
        raise EvaluationError(f"config.eval.original_size needs test images of one size, but "
                              f"{what} has {sizes[0][1]}x{sizes[0][0]} and "
                              f"{sizes[-1][1]}x{sizes[-1][0]} (among {len(sizes)} sizes).")
    resize = jax.jit(lambda m: resize_bilinear(m[..., None], sizes[0])[..., 0])
    return map_batches(resize, maps, 8, to_host=True), np.stack(masks)


# Seed 002's "optimal threshold" (§2.6): of these rules, the one with the highest test accuracy;
# ties go to the earlier (max is the most conservative).
OPTIMAL_RULES = ("max", "k_sigma", "quantile")


def thresholded(test_scores, test_labels, val_scores, how: str, q: float, k: float,
                prefix: str) -> dict[str, float | str]:
    """F1, precision, recall, IoU and accuracy on test at a threshold chosen on validation.

    `how` "optimal" computes the three validation thresholds of `OPTIMAL_RULES` and keeps the
    one with the best test accuracy (seed 002's rule: an oracle choice among three, named as
    such by `<prefix>_threshold_rule`, which says which one won).
    """
    best = None
    for rule in OPTIMAL_RULES if how == "optimal" else (how,):
        threshold = metrics.threshold_from_validation(val_scores, rule, q=q, k=k)
        out = metrics.binary_metrics(test_scores, test_labels, threshold)
        if best is None or out["accuracy"] > best[1]["accuracy"]:
            best = rule, out
    rule, out = best
    keys = ("f1", "precision", "recall", "iou", "accuracy", "threshold")
    result = {f"{prefix}_{key}_val_{how}": out[key] for key in keys}
    return result | ({f"{prefix}_threshold_rule": rule} if how == "optimal" else {})


def _save_images(folder: pathlib.Path, computed, test, maps, scores, fpr_limit) -> None:
    from adjax import viz  # matplotlib is only imported when pictures are asked for

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    names = [f"{defect}_{pathlib.Path(p).stem}" for defect, p in zip(test.defects, test.paths,
                                                                       strict=True)]
    viz.save_all(computed, test.images, maps, test.masks, scores, test.labels, folder,
                 fpr_limit=fpr_limit, names=names)


def training_time(workdir: pathlib.Path) -> dict[str, float]:
    """`train_s` (wall seconds of the training session that finished the run, compiling
    included) and `train_steps_per_s` (its rate after the first call), from the last line of
    `metrics.jsonl`; empty when the log lacks them."""
    path = workdir / "metrics.jsonl"
    lines = files.read_text(path, "metrics file").splitlines() if path.is_file() else []
    last = json.loads(lines[-1]) if lines else {}
    out = {"train_s": last.get("elapsed_s"), "train_steps_per_s": last.get("steps_per_s")}
    return {k: float(v) for k, v in out.items() if v is not None}


def load_run(workdir: str | pathlib.Path) -> tuple[ml_collections.ConfigDict, Any, Any]:
    """(config, method, final state) of a finished training run in `workdir`."""
    workdir = files.path(workdir)
    config = load_config(workdir)
    try:
        method = methods.build(config)
        state = restore(workdir, method, config)
    except (AttributeError, KeyError) as err:  # a config key this adjax expects is absent
        raise EvaluationError(
            f"{workdir}/config.json lacks the key {str(err).strip(chr(34))} that this version of "
            f"adjax needs (was it written by an older one?); train again in a new work "
            f"directory.") from err
    return config, method, state


def test_data_config(config: ml_collections.ConfigDict,
                     overrides: dict[str, str] | None) -> ml_collections.ConfigDict:
    """The run's `config.data` with `overrides` (root, category, layout, name) applied: a trained
    model scored on another data set or category."""
    data = ml_collections.ConfigDict(config.data.to_dict())
    for key, value in (overrides or {}).items():
        if key not in ("root", "category", "layout", "name"):
            raise EvaluationError(f"{key} cannot be changed at evaluation (root, category, "
                                  f"layout and name can).")
        if key in ("category", "name"):
            path_component(value, f"--{key}")
        data[key] = value
    return data


def register_splits(reference: np.ndarray, test: Split, val: Split,
                    log: Callable[[str], None] | None = None
                    ) -> tuple[Split, Split, dict[str, Any]]:
    """Seed 002's registration before scoring: the test images (with their masks) and the
    validation images aligned to `reference` (a training image). An image without enough
    matches is kept as it is; the returned note counts them and names the first few."""
    from adjax.registration import Registration

    align = Registration(reference)
    note: dict[str, Any] = {"reference": "the first training image"}
    aligned = []
    for name, split in (("test", test), ("validation", val)):
        if log is not None:
            log(f"adjax: registering {len(split)} {name} images to a training image")
        images, masks, ok = align(split.images, split.masks)
        aligned.append(dataclasses.replace(split, images=images, masks=masks))
        note[f"{name}_registered"] = int(ok.sum())
        note[f"{name}_unregistered"] = int((~ok).sum())
        if not ok.all():
            note[f"{name}_unregistered_files"] = [str(split.paths[i])
                                                  for i in np.flatnonzero(~ok)[:10]]
    return aligned[0], aligned[1], note


def evaluate(workdir: str | pathlib.Path, results_dir: str | pathlib.Path | None = None,
             fpr_limit: float | None = None, save_images: bool = False,
             data: dict[str, str] | None = None,
             log: Callable[[str], None] | None = None,
             register: bool | None = None) -> tuple[dict[str, Any], pathlib.Path]:
    """Scores the test split of a trained run and writes an `eval` results record.

    Returns the record and its path (default folder: `<workdir>/results`). `data` overrides the
    run's data set (root, category, layout, name) to score the model on another one; thresholds
    still come from the run's own validation images. With `save_images`, the ROC, PR and PRO
    curves and overlays of the worst and best test images are drawn as PNG into
    `<workdir>/images` (emptied of earlier PNGs first). `register` overrides
    `config.eval.register` (seed 002's registration before scoring; the record's config says
    which was used).
    """
    workdir = files.path(workdir)
    config, method, state = load_run(workdir)
    if not method.trains_on_splits:
        raise EvaluationError(f"{workdir} is a {config.method} run, which has no test split; "
                              f"export its teacher with `adjax weights import --from={workdir} "
                              f"--kind=efficientad_teacher_{config.model.size} --to=FILE`.")
    fpr_limit = config.eval.fpr_limit if fpr_limit is None else fpr_limit
    if not 0.0 < fpr_limit <= 1.0:
        raise EvaluationError(f"--fpr_limit must be in (0, 1], got {fpr_limit}.")
    test_data = test_data_config(config, data)
    test = datasets.test(test_data, log=log)
    train_split, val = datasets.train_and_validation(config.data, config.seed, log=log)
    registration = None
    if register is not None:
        config.eval.register = register
    if config.eval.get("register", False):
        test, val, registration = register_splits(train_split.images[0], test, val, log)
    batch = config.eval.batch_size
    if log is not None:
        log(f"adjax: scoring {len(test)} test and {len(val)} validation images")
    predicted = predict_all(method, state, test.images, batch)
    maps, scores = predicted.anomaly_map, predicted.score
    val_predicted = predict_all(method, state, val.images, batch)
    val_maps, val_scores = val_predicted.anomaly_map, val_predicted.score
    pixel_maps, masks = maps, test.masks  # the overlays stay at the training size
    if config.eval.get("original_size", False):
        pixel_maps, masks = at_original_size(maps, datasets.original_masks(test_data, log),
                                             f"{datasets.dataset_name(test_data)}/"
                                             f"{test_data.category or ''}")
    computed = metrics.compute(scores, test.labels, pixel_maps, masks, fpr_limit=fpr_limit,
                               with_curves=save_images)
    if save_images:
        _save_images(workdir / "images", computed, test, maps, scores, fpr_limit)
    how, q, k = config.eval.threshold, config.eval.threshold_q, config.eval.threshold_k
    computed |= thresholded(scores, test.labels, val_scores, how, q, k, "image")
    computed |= thresholded(pixel_maps, masks, val_maps, how, q, k, "pixel")
    if config.eval.get("per_image_threshold"):  # seed 001's protocol (supervised maps)
        computed |= metrics.per_image(pixel_maps, masks, config.eval.per_image_threshold,
                                      curve_points=101 if save_images else 0)
        if save_images and "per_image_mean_roc" in computed:
            from adjax import viz

            curve = computed.pop("per_image_mean_roc")
            viz.save_mean_roc(curve["fpr"], curve["tpr"], workdir / "images",
                              auroc=computed["per_image_pixel_auroc"])
    numbers = {key: (None if math.isnan(v) else v) for key, v in computed.items()
               if isinstance(v, float | int) and not isinstance(v, bool)}
    # Seed 001's reconstruction errors, averaged over the test images.
    numbers |= {key: float(np.mean(v)) for key, v in predicted.reconstruction.items()}
    numbers |= training_time(workdir)
    info = method.describe(state)
    notes = {"missing": computed["missing"], "oracle": "image_f1_max and pixel_f1_max are "
             "test-set-optimal (oracle) figures; *_val_* metrics use thresholds chosen on "
             "validation images", **{k: v for k, v in info.items() if k != "params"},
             **{k: v for k, v in computed.items() if k.endswith("_threshold_rule")}}
    if registration is not None:
        notes["registration"] = registration
    if data:
        notes["trained_on"] = (f"{datasets.dataset_name(config.data)}/"
                               f"{config.data.category or ''}")
    record = results.make_record(
        "eval", method=config.method, variant=config.get("variant", ""),
        dataset=datasets.dataset_name(test_data), category=test_data.category or "",
        image_size=config.data.image_size, metrics=numbers, config=config.to_dict(),
        notes=notes,
        run={"workdir": str(workdir if files.is_remote(workdir) else workdir.absolute()),
             "counts": computed["counts"],
             "params": info.get("params", {}), "test_images": len(test),
             "val_images": len(val), "steps": config.train.steps})
    path = results.write(record, results_dir or workdir / "results")
    return record, path
