"""The trainer: the scanned and the host loop agree, data parallelism gives the same result as
one device, resume is exact, a different config is refused, the sampler draws epochs without
replacement, and bad values stop before any work."""

import json
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import accelerators, assert_record_holds_the_runs_metrics, load_config
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from adjax import evaluate, predict, runtime
from adjax.config import ConfigError
from adjax.data.layouts import DataError, Sample
from adjax.data.loading import load_split
from adjax.methods.base import TrainState
from adjax.train import Progress, TrainingError, train, workdir_lock

LOOPS = ("host", "scan")


def _config(root, tmp_path, loop="host"):
    cfg = load_config("efficientad", "quick")
    cfg.data.root = str(root)
    cfg.data.cache_dir = str(tmp_path / "cache")
    cfg.model.width = 0.0625  # 8/16/16 hidden channels: the trainer is under test, not the model
    cfg.model.out_channels = 8
    cfg.train.update(steps=8, batch_size=4, steps_per_call=2, checkpoint_every=4, log_every=2,
                     loop=loop)
    return cfg


def _close(a, b, tol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def _steps(workdir):
    return [json.loads(line)["step"] for line in
            (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def references(synth_root, tmp_path_factory):
    """An uninterrupted run on one device for each loop, trained once for the module."""
    runs = {}
    for loop in LOOPS:
        tmp = tmp_path_factory.mktemp(f"ref-{loop}")
        cfg = _config(synth_root, tmp, loop)
        state = train(cfg, tmp / "work", devices=jax.devices()[:1], log=lambda _: None)
        runs[loop] = cfg, state, tmp / "work"
    return runs


@pytest.fixture(params=LOOPS)
def reference(request, references):
    """The reference run of each loop: the tests of what the loops do differently (sharding,
    resume, a run extended) run on both."""
    return references[request.param]


@pytest.fixture
def host_reference(references):
    """The host loop's reference run, for the tests of what happens after training."""
    return references["host"]


def test_four_devices_match_one(reference, tmp_path):
    cfg, state, _ = reference
    assert len(jax.devices()) == 4
    sharded = train(cfg, tmp_path / "work", devices=jax.devices(), log=lambda _: None)
    assert int(sharded.step) == cfg.train.steps
    _close(sharded.params, state.params, 1e-4)
    _close(sharded.quantiles, state.quantiles, 1e-4)


def test_resume_equals_uninterrupted(reference, tmp_path):
    cfg, state, _ = reference

    class Killed(Exception):
        pass

    def kill_at_6(step, metrics):
        if step == 6:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, tmp_path / "work", devices=jax.devices()[:1], on_chunk=kill_at_6,
              log=lambda _: None)
    assert _steps(tmp_path / "work") == [2, 4, 6]  # the last checkpoint is at step 4
    resumed = train(cfg, tmp_path / "work", devices=jax.devices()[:1], log=lambda _: None)
    assert _steps(tmp_path / "work") == [2, 4, 6, 8]  # step 6 was redone, logged once
    assert int(resumed.step) == cfg.train.steps
    _close(resumed.params, state.params, 1e-6)
    _close(resumed.opt_state, state.opt_state, 1e-6)


@pytest.mark.gpu
def test_the_accelerator_trains_as_the_cpu(synth_root, tmp_path):
    # The path GPUs and TPUs run (the scanned chunk, placed on the accelerator) against the
    # CPU's host loop, at full float32 matmul precision (no TF32).
    with jax.default_matmul_precision("highest"):
        states = {}
        for name, devices, loop in (("cpu", jax.devices("cpu")[:1], "host"),
                                    ("accelerator", accelerators()[:1], "auto")):
            cfg = _config(synth_root, tmp_path / name, loop)
            states[name] = train(cfg, tmp_path / name / "work", devices=devices,
                                 log=lambda _: None)
    assert states["accelerator"].params["student"]["params"]["Conv2d_0"]["conv"][
        "kernel"].devices() == set(accelerators()[:1])
    _close(jax.device_get(states["accelerator"].params), jax.device_get(states["cpu"].params),
           1e-3)


def test_scan_and_host_loop_agree(references):
    _close(references["scan"][1].params, references["host"][1].params, 1e-5)


def test_finished_run_restores_without_training(host_reference):
    cfg, state, workdir = host_reference
    steps_logged = _steps(workdir)
    again = train(cfg, workdir, devices=jax.devices()[:1], log=lambda _: None)
    assert _steps(workdir) == steps_logged
    _close(again.params, state.params, 0)


def test_a_different_config_is_refused_and_the_saved_one_kept(host_reference, tmp_path):
    cfg, _, workdir = host_reference
    saved = (workdir / "config.json").read_text()
    other = ml_collections.ConfigDict(cfg.to_dict())
    other.data.category = "disc"
    other.model.width = 0.125
    with pytest.raises(TrainingError, match=r"data.category: 'tiles' there, 'disc' now.*"
                                            r"model.width: 0.0625 there, 0.125 now"):
        train(other, workdir, devices=jax.devices()[:1], log=lambda _: None)
    assert (workdir / "config.json").read_text() == saved
    fewer = ml_collections.ConfigDict(cfg.to_dict())
    fewer.train.steps = 4
    with pytest.raises(TrainingError, match="checkpoint at step 8"):
        train(fewer, workdir, devices=jax.devices()[:1], log=lambda _: None)


def test_more_steps_extend_a_finished_run(reference, tmp_path):
    cfg, _, workdir = reference
    copy = tmp_path / "work"
    shutil.copytree(workdir, copy)
    longer = ml_collections.ConfigDict(cfg.to_dict())
    longer.train.steps = 10
    lines = []
    state = train(longer, copy, devices=jax.devices()[:1], log=lines.append)
    assert int(state.step) == 10
    assert _steps(copy) == [2, 4, 6, 8, 10]
    assert any("resuming" in line and "step 8" in line for line in lines)
    assert json.loads((copy / "config.json").read_text())["train"]["steps"] == 10


def test_evaluate_writes_the_metrics_of_its_maps(host_reference, tmp_path):
    cfg, _, workdir = host_reference
    record, path = evaluate.evaluate(workdir, tmp_path / "results", save_images=True)
    pictures = sorted(p.name for p in (workdir / "images").glob("*.png"))
    assert {"roc.png", "pr.png", "pro.png"} <= set(pictures)
    assert any(p.startswith("worst_") for p in pictures)
    assert path.is_file() and path.parent == tmp_path / "results"
    assert_record_holds_the_runs_metrics(record, workdir, ("image_auroc", "pixel_auroc",
                                                           "aupro_0.3", "image_ap", "pixel_ap"))
    assert record["dataset"] == "synth" and record["category"] == "tiles"
    assert "random" in record["notes"]["teacher"]
    assert record["run"]["test_images"] == 4 + 4 * 2 and record["run"]["steps"] == 8


def test_evaluate_registers_the_test_images_when_asked(host_reference, tmp_path):
    # seed 002's "R", asked for at evaluation (as `adjax eval --register` does): no retraining
    _, _, workdir = host_reference
    lines = []
    record, _ = evaluate.evaluate(workdir, tmp_path / "results", log=lines.append, register=True)
    assert record["config"]["eval"]["register"] is True
    note = record["notes"]["registration"]
    assert note["test_registered"] + note["test_unregistered"] == record["run"]["test_images"]
    assert note["validation_registered"] + note["validation_unregistered"] == \
        record["run"]["val_images"]
    assert len(note.get("test_unregistered_files", [])) == min(note["test_unregistered"], 10)
    assert any(line.startswith("adjax: registering 12 test images") for line in lines)


def test_evaluate_refuses_a_zero_fpr_limit(host_reference):
    _, _, workdir = host_reference
    with pytest.raises(evaluate.EvaluationError, match="fpr_limit"):
        evaluate.evaluate(workdir, fpr_limit=0.0)


def test_unfinished_run_is_not_evaluated(synth_root, tmp_path):
    cfg = _config(synth_root, tmp_path)

    def stop(step, metrics):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "work", devices=jax.devices()[:1], on_chunk=stop,
              log=lambda _: None)
    with pytest.raises(evaluate.EvaluationError, match="not finished"):
        evaluate.evaluate(tmp_path / "work")


@pytest.mark.parametrize("loop", LOOPS)
def test_nan_loss_names_the_first_bad_step(synth_root, tmp_path, loop):
    cfg = _config(synth_root, tmp_path, loop)
    cfg.optim.lr = 1e30  # step 1's loss is finite; its update makes step 2's overflow
    cfg.train.steps = 4
    with pytest.raises(TrainingError, match=r"loss\w* became (inf|nan) at step 2 \(the first "
                                            r"such step\); no checkpoint had been written yet"):
        train(cfg, tmp_path / "work", devices=jax.devices()[:1], log=lambda _: None)


@pytest.mark.parametrize("key, value", [("keep_checkpoints", 0), ("keep_checkpoints", -1),
                                        ("checkpoint_every", 0), ("batch_size", 0),
                                        ("steps", 0), ("log_seconds", 0.0)])
def test_bad_train_numbers_stop_before_any_work(tmp_path, key, value):
    cfg = _config(tmp_path / "missing-root", tmp_path)
    cfg.train[key] = value
    with pytest.raises(ConfigError, match=f"config.train.{key} must be"):
        train(cfg, tmp_path / "work")
    assert not (tmp_path / "work").exists()


def test_a_nan_in_the_config_is_refused(tmp_path):
    cfg = _config(tmp_path / "missing-root", tmp_path)
    cfg.optim.lr = float("nan")
    with pytest.raises(ConfigError, match="config.optim.lr must be a finite number"):
        train(cfg, tmp_path / "work")


def test_a_bad_eval_threshold_stops_training_before_any_work(tmp_path):
    cfg = _config(tmp_path / "missing-root", tmp_path)
    cfg.eval.threshold = "median"
    with pytest.raises(ConfigError, match="config.eval.threshold must be one of"):
        train(cfg, tmp_path / "work")


@pytest.mark.parametrize("category", ["../../x", "/etc", "a/b", ".."])
def test_a_category_is_one_folder_name(tmp_path, category):
    cfg = _config(tmp_path, tmp_path)
    cfg.data.category = category
    with pytest.raises(ConfigError, match="single folder name"):
        train(cfg, tmp_path / "work")


def test_a_second_trainer_in_the_workdir_stops_at_once(synth_root, tmp_path):
    cfg = _config(synth_root, tmp_path)
    (tmp_path / "work").mkdir()
    with workdir_lock(tmp_path / "work"), pytest.raises(TrainingError, match="another adjax"):
        train(cfg, tmp_path / "work")
    assert not (tmp_path / "work" / "config.json").exists()


def test_a_broken_test_split_stops_before_training(synth_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    mask = sorted((root / "tiles" / "ground_truth" / "hole").glob("*_mask.png"))[0]
    mask.unlink()
    cfg = _config(root, tmp_path)
    with pytest.raises(DataError, match="has no mask file"):
        train(cfg, tmp_path / "work", log=lambda _: None)
    assert not list((tmp_path / "work" / "checkpoints").iterdir())
    assert not (tmp_path / "work" / "metrics.jsonl").exists()


# -- the sampler -------------------------------------------------------------------------------


class _State(TrainState):
    pass


class _RecordingMethod:
    """Returns the labels of each batch as its metrics (labels = pool positions)."""

    def train_step(self, state, batch, rng):
        return state, {f"label{i}": batch["label"][i] for i in range(2)}


def test_each_epoch_draws_every_image_once():
    n, batch, epochs = 8, 2, 3
    cfg = ml_collections.ConfigDict({"train": {"batch_size": batch, "loop": "host"}})
    mesh = runtime.make_mesh(batch, jax.devices()[:1])
    pools = runtime.place_pools({"image": np.zeros((n, 1, 1, 3), np.uint8),
                                 "label": np.arange(n, dtype=np.int32)}, {}, mesh)
    chunk = runtime.make_chunk(_RecordingMethod(), cfg, NamedSharding(mesh, P("data")),
                               epochs * n // batch)
    state = _State(step=jnp.zeros((), jnp.int32), params={}, opt_state=())
    _, history = chunk(state, pools, jax.random.key(0))
    drawn = np.stack([history["label0"], history["label1"]], axis=1).reshape(epochs, n)
    for epoch in drawn:
        assert sorted(epoch) == list(range(n))
    assert len({tuple(e) for e in drawn}) == epochs  # a new order every epoch


# -- progress ------------------------------------------------------------------------------------


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_lines_come_by_steps_and_by_time_and_leave_out_the_compile():
    cfg = ml_collections.ConfigDict({"train": {"steps": 1000, "log_every": 500,
                                               "log_seconds": 30.0}})
    clock, lines = _Clock(), []
    progress = Progress(cfg, 0, lines.append, clock)
    clock.now = 40.0  # compiling and the first step
    progress.update(1, lambda: 1.0)
    assert lines[0].startswith("adjax: compiled and ran the first 1 step(s) in 40.0 s")
    assert lines[1].startswith("step 1/1000  loss 1.0000") and "steps/s" not in lines[1]
    for step in range(2, 12):  # 10 steps in 20 s: below both thresholds
        clock.now += 2.0
        progress.update(step, lambda: 0.5)
    assert len(lines) == 2
    for step in range(12, 17):  # the 30 s mark passes at step 16
        clock.now += 2.0
        progress.update(step, lambda: 0.5)
    assert len(lines) == 3
    assert lines[2] == "step 16/1000  loss 0.5000  0.5 steps/s  ETA 00:32:48"

    def waits(seconds):  # fetching the loss waits for the steps still queued on the device
        def loss():
            clock.now += seconds
            return 0.25
        return loss

    for step in range(17, 517):  # dispatched at once: no time passes until the loss is read
        progress.update(step, waits(0.0 if step < 516 else 249.5))
    # steps 2-516 took 30 + 249.5 s in all: the rate counts the wait, not the dispatches
    assert lines[3] == "step 516/1000  loss 0.2500  1.84 steps/s  ETA 00:04:23"


def test_predict_scores_new_images(host_reference, tmp_path, synth_root):
    cfg, _, workdir = host_reference
    pattern = str(synth_root / "tiles" / "test" / "*" / "000.png")
    out = predict.predict(workdir, pattern, tmp_path / "out")
    rows = (out / "scores.csv").read_text().splitlines()
    assert rows[0] == "image,name,score,anomalous,threshold,threshold_rule"
    assert len(rows) == 1 + 5  # good + four defects, one image each
    names = [row.split(",")[1] for row in rows[1:]]
    assert names == ["crack_000", "good_000", "hole_000", "scratch_000", "stain_000"]
    config, method, state = evaluate.load_run(workdir)
    image = load_split([Sample(synth_root / "tiles/test/hole/000.png", None, 0, "good")], 128)
    predicted = evaluate.predict_all(method, state, image.images, 1)
    maps, scores = predicted.anomaly_map, predicted.score
    np.testing.assert_allclose(np.load(out / "hole_000.npy"), maps[0], rtol=1e-5, atol=1e-6)
    assert float(rows[3].split(",")[2]) == pytest.approx(float(scores[0]), rel=1e-5)
    assert (out / "hole_000.png").is_file()
