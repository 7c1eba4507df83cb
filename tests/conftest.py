"""Shared test setup: four simulated CPU devices (for the data-parallel tests), small data."""

import importlib.util
import pathlib

import jax
import numpy as np
import pytest

from adjax import xla

# Before JAX starts a backend: the XLA:CPU flags the command line sets too (adjax.xla).
xla.configure()

# Must run before any JAX computation: the trainer tests compare 1 device against 4.
jax.config.update("jax_num_cpu_devices", 4)
# XLA compiles dominate the suite's time on 2 cores; several tests build the same functions.
jax.config.update("jax_compilation_cache_dir", "/tmp/adjax-test-jax-cache")
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def accelerators() -> list[jax.Device]:
    """The GPUs or TPUs JAX sees (empty on a CPU-only machine)."""
    for platform in ("gpu", "tpu"):
        try:
            return jax.devices(platform)
        except RuntimeError:
            continue
    return []


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.gpu` tests run where an accelerator exists and are skipped elsewhere."""
    if accelerators():
        return
    skip = pytest.mark.skip(reason="needs a GPU or TPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def load_config(name: str, arg: str = ""):
    """`configs/<name>.py`'s get_config(arg), as `--config=configs/<name>.py:arg` loads it."""
    path = ROOT / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> pathlib.Path:
    """A small embedded data set (128 px, few images) shared by the whole session."""
    from adjax.data.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("synth"), image_size=128, n_train=12,
                         n_test_good=4, n_test_per_defect=2, categories=("tiles",))


def assert_record_holds_the_runs_metrics(record, workdir, keys=("image_auroc", "image_ap"),
                                         batch=3):
    """The record's metrics are those of the run's predictions on its test split (recomputed
    here with another prediction batch size, or the evaluator's own where a map depends on its
    batch), seed 001's reconstruction errors among them (their means over the test images)."""
    from adjax import evaluate, metrics
    from adjax.data import datasets

    config, method, state = evaluate.load_run(workdir)
    test = datasets.test(config.data)
    predicted = evaluate.predict_all(method, state, test.images, batch)
    maps, scores = predicted.anomaly_map, predicted.score
    expected = metrics.compute(scores, test.labels, maps, test.masks, fpr_limit=0.3)
    expected |= {k: float(np.mean(v)) for k, v in predicted.reconstruction.items()}
    for key in (*keys, *predicted.reconstruction):
        assert record["metrics"][key] == pytest.approx(expected[key], abs=1e-6), key
