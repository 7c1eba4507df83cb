"""The timing protocol on a tiny EfficientAD: the records it writes, not the speed of this CPU."""

import math
import sys

import jax
import jax.numpy as jnp
import pytest
from conftest import load_config

from adjax import bench, methods, results
from adjax.flops import count_flops

BATCH_SIZES = (1, 2)


def _tiny_config():
    cfg = load_config("efficientad", "quick")
    cfg.model.width = 0.0625  # 8/16/16 hidden channels
    cfg.model.out_channels = 8
    cfg.data.image_size = 128
    cfg.train.steps_per_call = 2
    return cfg


@pytest.fixture(scope="module")
def benched(tmp_path_factory):
    """One run over both precisions; records and the folder they were written to."""
    out = tmp_path_factory.mktemp("bench")
    config = _tiny_config()
    # XLA's optimisation passes dominate the time here; the records do not depend on them.
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        records = bench.run(config, batch_sizes=BATCH_SIZES, precisions=("fp32", "bf16"),
                            repeats=2, warmup=1, latency_runs=5, results_dir=str(out))
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)
    return config, records, out


def test_records_are_written_atomically_and_validate(benched):
    _, records, out = benched
    assert [r["bench"]["precision"] for r in records] == ["fp32", "bf16"]
    files = sorted(out.iterdir())
    assert len(files) == 2 and not any(f.name.startswith(".") for f in files)  # no temp files
    assert sorted(r["created"] for r in results.read_all(out)) == sorted(
        r["created"] for r in records)
    for record in records:
        results.validate(record)
        assert record["kind"] == "bench" and record["source"] == "adjax"
        assert record["method"] == "efficientad" and record["variant"] == "quick"
        assert record["image_size"] == 128
        assert record["env"]["platform"] == "cpu" and record["env"]["device_count"] == 4


def test_rates_and_latencies_are_sensible(benched):
    for record in (r["bench"] for r in benched[1]):
        assert record["train_steps_per_s"] > 0
        assert record["train_images_per_s"] == pytest.approx(record["train_steps_per_s"] * 1)
        assert record["train_batch"] == 1 and record["train_chunk"] == 2
        assert 0 < record["latency_ms_b1"] <= record["latency_ms_b1_p90"]
        by_batch = record["images_per_s_by_batch"]
        assert set(by_batch) == {"1", "2"} and all(v > 0 for v in by_batch.values())
        assert record["images_per_s"] == max(by_batch.values())
        assert by_batch[str(record["batch"])] == record["images_per_s"]
        assert all(v > 0 for v in record["images_per_s_pipelined_by_batch"].values())
        assert record["lower_s"] > 0 and record["compile_s"] > 0
        assert set(record["predict_compile_s"]) == {"1", "2"}
        assert all(v > 0 for v in record["predict_lower_s"].values())
        # CPU: no memory statistics and no datasheet peak.
        assert record["peak_bytes"] is None
        assert record["peak_tflop_per_s"] is None and record["peak_fraction"] is None
        achieved = record["images_per_s"] * record["gflops_per_image"] / 1e3
        assert record["achieved_tflop_per_s"] == pytest.approx(achieved)


def test_params_flops_and_precision(benched):
    config, records, _ = benched
    method = methods.build(config)
    x = jax.ShapeDtypeStruct((1, 128, 128, 3), jnp.float32)
    nets = (method.teacher_net, method.student_net, method.autoencoder_net)
    real = sum(math.prod(leaf.shape) for net in nets
               for leaf in jax.tree.leaves(jax.eval_shape(net.init, jax.random.key(0), x)))
    image = jax.ShapeDtypeStruct((1, 128, 128, 3), jnp.uint8)
    train = {"image": image, "label": jax.ShapeDtypeStruct((1,), jnp.int32)}
    state = jax.eval_shape(method.init, jax.random.key(0), train)
    flops = count_flops(method.predict, state, image)
    for record, dtype in zip(records, ("float32", "bfloat16"), strict=True):
        b = record["bench"]
        assert b["params"] == real
        assert sum(b["params_by_net"].values()) == real
        assert b["gflops_per_image"] == pytest.approx(flops / 1e9)
        assert record["config"]["model"]["dtype"] == dtype
        assert b["tf32"] is False and b["matmul_precision"] == "float32"
    assert records[1]["bench"]["precision"] == "bf16"
    assert config.model.dtype == "float32"  # the caller's config is left alone


def test_format_summary(benched):
    text = bench.format_summary(benched[1][1])
    assert "bf16" in text and "images/s" in text and "ms" in text and "GFLOP" in text


def test_peak_table():
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", "fp32") == 67.0
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", "fp32", tf32=True) == 494.0
    assert bench.peak_tflops("NVIDIA H200", "bf16") == 989.0
    assert bench.peak_tflops("NVIDIA H100 PCIe", "bf16") is None  # not the SXM part
    assert bench.peak_tflops("NVIDIA A100-SXM4-80GB", "fp32") == 19.5
    assert bench.peak_tflops("TPU v5 lite", "bf16") == 197.0
    assert bench.peak_tflops("TPU v5", "bf16") == 459.0
    assert bench.peak_tflops("TPU v6 lite", "bf16") == 918.0
    assert bench.peak_tflops("TPU v4", "fp32") is None
    assert bench.peak_tflops("cpu", "fp32") is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="precision fp16"):
        bench.run(_tiny_config(), precisions=("fp16",))
    with pytest.raises(ValueError, match="batch sizes"):
        bench.run(_tiny_config(), batch_sizes=(0,))


def test_peer_without_anomalib_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "anomalib", None)  # importing it now fails
    with pytest.raises(ImportError, match="pip install torch anomalib"):
        bench.run_peer(load_config("efficientad", "s"))
