"""Many runs, one program: a matrix trains each run as it trains alone, one work directory per
run, and bad matrices stop before any work."""

import json

import jax
import numpy as np
import pytest
from conftest import load_config

from adjax import evaluate, matrix, methods, runtime
from adjax.data import datasets
from adjax.data.layouts import DataError
from adjax.data.synthetic import write_dataset
from adjax.train import train


@pytest.fixture(scope="module")
def two_categories(tmp_path_factory):
    """tiles (8 training images) and disc (6: its pool is padded in a matrix)."""
    root = write_dataset(tmp_path_factory.mktemp("matrix-data"), image_size=128, n_train=8,
                         n_test_good=2, n_test_per_defect=1)
    for path in sorted((root / "disc" / "train" / "good").glob("*.png"))[:2]:
        path.unlink()
    return root


def _config(root, tmp_path):
    cfg = load_config("efficientad", "quick")
    cfg.data.update(root=str(root), cache_dir=str(tmp_path / "cache"))
    cfg.model.update(width=0.0625, out_channels=8)
    cfg.train.update(steps=4, batch_size=2, steps_per_call=2, checkpoint_every=2, log_every=2)
    return cfg


def test_runs_spec_parses_lists_and_ranges():
    assert matrix.parse_runs("categories=tiles,disc,seeds=0-2") == {
        "categories": ["tiles", "disc"], "seeds": ["0", "1", "2"]}
    assert matrix.parse_runs("seeds=3,5") == {"seeds": ["3", "5"]}
    with pytest.raises(ValueError, match="categories= and seeds="):
        matrix.parse_runs("cats=tiles")


def test_missing_categories_are_named_before_any_work(two_categories, tmp_path):
    cfg = _config(two_categories, tmp_path)
    assert matrix.expand(cfg, "categories=all,seeds=0-1") == [
        ("disc", 0), ("disc", 1), ("tiles", 0), ("tiles", 1)]
    with pytest.raises(DataError, match=r"not under .*: bottle, cable \(there: disc, tiles\)"):
        matrix.train_matrix(cfg, tmp_path / "w", "categories=bottle,tiles,cable")
    assert not (tmp_path / "w").exists()


def _losses(workdir):
    return [json.loads(line)["loss"] for line in
            (workdir / "metrics.jsonl").read_text().splitlines()]


def test_a_matrix_trains_each_run_as_alone(two_categories, tmp_path):
    cfg = _config(two_categories, tmp_path)
    cfg.train.runs_per_program = 3  # four runs: three in one vmapped program, then one
    together = matrix.train_matrix(cfg, tmp_path / "m", "categories=tiles,disc,seeds=7,8",
                                   devices=jax.devices()[:2], log=lambda _: None)
    assert len(together) == 4
    order = [("tiles", 7), ("tiles", 8), ("disc", 7), ("disc", 8)]
    for (category, seed), state in zip(order, together, strict=True):
        if (category, seed) not in (("tiles", 7), ("disc", 8)):
            continue  # one run of each program and of each category (disc's pool is padded)
        alone = matrix.run_config(cfg, category, seed)
        single = train(alone, tmp_path / f"alone-{category}-{seed}", devices=jax.devices()[:1],
                       log=lambda _: None)
        # The same batches and keys: the per-chunk losses agree to float rounding (batched
        # convolutions sum in another order), and so do the weights, to a stated tolerance:
        # Adam turns a rounding-sized difference of a near-zero gradient into up to lr per
        # step for that weight, so the weights are compared by norm.
        losses = [_losses(tmp_path / "m" / f"{category}-seed{seed}"),
                  _losses(tmp_path / f"alone-{category}-{seed}")]
        np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(single.params),
                        strict=True):
            a, b = np.asarray(a), np.asarray(b)
            assert np.linalg.norm(a - b) <= 1e-3 * np.linalg.norm(b)
        np.testing.assert_allclose(state.quantiles, single.quantiles, rtol=1e-3)
    workdirs = matrix.read_matrix(tmp_path / "m")
    assert [w.name for w in workdirs] == ["tiles-seed7", "tiles-seed8", "disc-seed7",
                                          "disc-seed8"]
    records = [evaluate.evaluate(w, tmp_path / "results")[0] for w in workdirs[:2]]
    assert [(r["category"], r["config"]["seed"]) for r in records] == [("tiles", 7),
                                                                       ("tiles", 8)]


def test_memory_decides_how_many_runs_share_a_program(two_categories, tmp_path, monkeypatch):
    cfg = _config(two_categories, tmp_path)
    method = methods.build(cfg)
    split, _ = datasets.train_and_validation(cfg.data, cfg.seed)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
    pools = runtime.place_pools({"image": split.images, "label": split.labels}, {}, mesh)
    shapes = jax.eval_shape(method.init, jax.random.key(0), pools["train"])
    lines = []
    monkeypatch.setattr(matrix, "_free_bytes", lambda device: 10 * 2**30)
    assert matrix.runs_per_program(method, cfg, shapes, pools, 15, jax.devices()[:1],
                                   lines.append) == 15
    assert lines[0].startswith("adjax: 15 runs; 15 per program: one run needs about")
    monkeypatch.setattr(matrix, "_free_bytes", lambda device: 2**20)  # 1 MiB: one at a time
    assert matrix.runs_per_program(method, cfg, shapes, pools, 15, jax.devices()[:1],
                                   lines.append) == 1
