"""The trainer: data parallelism gives the same result as one device; resume is exact."""

import jax
import numpy as np
import pytest
from conftest import load_config

from adjax import evaluate
from adjax.train import TrainingError, train


def _config(root, tmp_path):
    cfg = load_config("efficientad", "quick")
    cfg.data.root = str(root)
    cfg.data.cache_dir = str(tmp_path / "cache")
    cfg.model.width = 0.0625  # 8/16/16 hidden channels: the trainer is under test, not the model
    cfg.model.out_channels = 8
    cfg.train.update(steps=6, batch_size=4, steps_per_call=2, checkpoint_every=2, log_every=2)
    return cfg


def _close(a, b, tol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


@pytest.fixture(scope="module")
def reference(synth_root, tmp_path_factory):
    """An uninterrupted run on one device."""
    tmp = tmp_path_factory.mktemp("ref")
    cfg = _config(synth_root, tmp)
    state = train(cfg, tmp / "work", devices=jax.devices()[:1])
    return cfg, state, tmp / "work"


def test_four_devices_match_one(reference, tmp_path):
    cfg, state, _ = reference
    assert len(jax.devices()) == 4
    sharded = train(cfg, tmp_path / "work", devices=jax.devices())
    assert int(sharded.step) == cfg.train.steps
    _close(sharded.params, state.params, 1e-4)
    _close(sharded.quantiles, state.quantiles, 1e-4)


def test_resume_equals_uninterrupted(reference, tmp_path):
    cfg, state, _ = reference

    class Killed(Exception):
        pass

    def kill_at_4(step, metrics):
        if step == 4:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, tmp_path / "work", devices=jax.devices()[:1], on_chunk=kill_at_4)
    lines = (tmp_path / "work" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # two chunks of two steps ran before the "kill"
    resumed = train(cfg, tmp_path / "work", devices=jax.devices()[:1])
    assert int(resumed.step) == cfg.train.steps
    _close(resumed.params, state.params, 1e-6)
    _close(resumed.opt_state, state.opt_state, 1e-6)


def test_finished_run_restores_without_training(reference):
    cfg, state, workdir = reference
    steps_logged = len((workdir / "metrics.jsonl").read_text().splitlines())
    again = train(cfg, workdir, devices=jax.devices()[:1])
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == steps_logged
    _close(again.params, state.params, 0)


def test_evaluate_writes_a_record(reference, tmp_path):
    cfg, _, workdir = reference
    record, path = evaluate.evaluate(workdir, tmp_path / "results", save_images=True)
    pictures = sorted(p.name for p in (workdir / "images").glob("*.png"))
    assert {"roc.png", "pr.png", "pro.png"} <= set(pictures)
    assert any(p.startswith("worst_") for p in pictures)
    assert path.is_file() and path.parent == tmp_path / "results"
    m = record["metrics"]
    for key in ("image_auroc", "pixel_auroc", "aupro_0.3", "image_ap", "pixel_ap",
                "image_f1_max", "pixel_f1_max", "image_f1_val_quantile",
                "pixel_iou_val_quantile"):
        assert 0.0 <= m[key] <= 1.0, key
    assert record["dataset"] == "synth" and record["category"] == "tiles"
    assert "random" in record["notes"]["teacher"]
    assert record["run"]["test_images"] == 4 + 4 * 2


def test_unfinished_run_is_not_evaluated(synth_root, tmp_path):
    cfg = _config(synth_root, tmp_path)

    def stop(step, metrics):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "work", devices=jax.devices()[:1], on_chunk=stop)
    with pytest.raises(evaluate.EvaluationError, match="not finished"):
        evaluate.evaluate(tmp_path / "work")


def test_nan_loss_stops_with_a_clear_error(synth_root, tmp_path):
    cfg = _config(synth_root, tmp_path)
    cfg.optim.lr = float("nan")
    cfg.train.steps = 4
    with pytest.raises(TrainingError, match="became nan"):
        train(cfg, tmp_path / "work", devices=jax.devices()[:1])
