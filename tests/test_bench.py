"""The timing protocol on a tiny EfficientAD beside a fake peer: the records it writes, the work
matching and the interleaving schedule, not the speed of this CPU. No PyTorch needed."""

import datetime
import math
import sys

import jax
import jax.numpy as jnp
import pytest
from conftest import load_config

from adjax import bench, methods, peers, results
from adjax.flops import count_flops

BATCH_SIZES = (1, 2)
COMMAND = "adjax bench --config=configs/efficientad.py:quick --peer=fake"


def _tiny_config():
    cfg = load_config("efficientad", "quick")
    cfg.model.width = 0.0625  # 8/16/16 hidden channels
    cfg.model.out_channels = 8
    cfg.data.image_size = 128
    cfg.train.steps_per_call = 2
    return cfg


class FakeTimed:
    """A peer implementation whose calls cost `cost[kind]` seconds on an injected clock (or
    nothing on a real one); it logs every call."""

    def __init__(self, source, work, clock=None, cost=None, calls=None):
        self.source, self.train_steps, self._work = source, 2, work
        self.clock, self.cost = clock, cost or {}
        self.calls = calls if calls is not None else []

    def _spend(self, kind):
        self.calls.append((self.source, kind))
        if self.clock is not None:
            self.clock.now += self.cost[kind](len(self.calls))

    def train(self):
        self._spend("train")

    def infer(self, batch):
        self._spend(f"infer{batch}")

    def dispatch(self, batch):
        self._spend(f"dispatch{batch}")
        return batch

    def wait(self, outputs):
        self.calls.append((self.source, f"wait{len(outputs)}"))

    def round_trip(self):
        self._spend("round_trip")

    def work(self):
        return self._work

    def environment(self):
        return {"platform": "cpu", "device_kind": "fake", "device_count": 1, "fake": "1.0"}

    def fields(self):
        return {"params": 1, "precision": self._work["precision"], "lower_s": None,
                "compile_s": None}


class FakePeer:
    """A peer that, like anomalib, always runs a penalty batch."""

    name = "fake"
    differences = ("the fake peer computes nothing",)

    def adjax_pools(self, config):
        return ("penalty",)

    def build(self, config, *, precision, batch_sizes, train_steps, log):
        work = bench.work_of(config, precision, {"train": "random uint8",
                                                 "penalty": "random uint8"})
        return FakeTimed("fake 1.0", work)


@pytest.fixture(scope="module")
def benched(tmp_path_factory):
    """One run over both precisions beside the fake peer; the records and their folder."""
    out = tmp_path_factory.mktemp("bench")
    config = _tiny_config()
    lines = []
    # XLA's optimisation passes dominate the time here; the records do not depend on them.
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        records = bench.run(config, batch_sizes=BATCH_SIZES, precisions=("fp32", "bf16"),
                            rounds=2, repeats=2, warmup=1, latency_runs=3,
                            results_dir=str(out), peer=FakePeer(), command=COMMAND,
                            log=lines.append)
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)
    return config, records, out, lines


def _ours(records):
    return [r for r in records if r["source"] == "adjax"]


def test_records_are_written_atomically_and_validate(benched):
    _, records, out, _ = benched
    assert [(r["source"], r["bench"]["precision"]) for r in records] == [
        ("adjax", "fp32"), ("fake 1.0", "fp32"), ("adjax", "bf16"), ("fake 1.0", "bf16")]
    files = sorted(out.iterdir())
    assert len(files) == 4 and not any(f.name.startswith(".") for f in files)  # no temp files
    assert sorted(r["created"] for r in results.read_all(out)) == sorted(
        r["created"] for r in records)
    for record in records:
        results.validate(record)
        assert record["kind"] == "bench"
        assert record["method"] == "efficientad" and record["variant"] == "quick"
        assert record["image_size"] == 128
    for record in _ours(records):
        assert record["env"]["platform"] == "cpu" and record["env"]["device_count"] == 4
        assert isinstance(record["env"]["xla_flags"], str)


def test_rates_and_latencies_are_sensible(benched):
    for record in (r["bench"] for r in _ours(benched[1])):
        assert record["train_steps_per_s"] > 0
        assert record["train_images_per_s"] == pytest.approx(record["train_steps_per_s"] * 1)
        assert record["train_batch"] == 1 and record["train_chunk"] == 2
        ms = record["train_ms_per_step"]
        assert 0 < ms["min"] <= ms["median"] <= ms["max"]
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
    config, records, *_ = benched
    method = methods.build(config)
    side = 128 + 2 * config.model.input_pad  # the quick nets see the image reflect-padded
    x = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
    nets = (method.teacher_net, method.student_net, method.autoencoder_net)
    real = sum(math.prod(leaf.shape) for net in nets
               for leaf in jax.tree.leaves(jax.eval_shape(net.init, jax.random.key(0), x)))
    image = jax.ShapeDtypeStruct((1, 128, 128, 3), jnp.uint8)
    train = {"image": image, "label": jax.ShapeDtypeStruct((1,), jnp.int32)}
    state = jax.eval_shape(method.init, jax.random.key(0), train)
    flops = count_flops(method.predict, state, image)
    for record, dtype in zip(_ours(records), ("float32", "bfloat16"), strict=True):
        b = record["bench"]
        assert b["params"] == real
        assert sum(b["params_by_net"].values()) == real
        assert b["gflops_per_image"] == pytest.approx(flops / 1e9)
        assert record["config"]["model"]["dtype"] == dtype
        assert b["tf32"] is False and b["matmul_precision"] == "float32"
    assert config.model.dtype == "float32"  # the caller's config is left alone


def test_adjax_does_the_peers_work(benched):
    """The fake peer, like anomalib, always runs a penalty batch: adjax's config has no penalty
    folder, so bench adds a random penalty pool, and both records say which work was timed."""
    config, records, *_ = benched
    assert not config.loss.penalty_dir
    for ours, theirs in zip(records[::2], records[1::2], strict=True):
        work = ours["bench"]["work"]
        assert work["penalty"] is True and "penalty" in work["train_step"]
        assert "added by bench" in work["pools"]["penalty"]
        assert work["ae_dropout"] == 0.0 and work["teacher"] == "random"
        assert work["batch"] == 1 and work["image_size"] == 128
        assert work["precision"] == ours["bench"]["precision"] and work["tf32"] is False
        bench.check_same_work(work, theirs["bench"]["work"])
        assert ours["notes"]["differences_from_peer"] == ["the fake peer computes nothing"]


def test_records_carry_provenance_and_the_ratios(benched):
    for record in benched[1]:
        env, b = record["env"], record["bench"]
        assert env["command"] == COMMAND
        assert env["cpu_model"] and env["host"]
        assert len(b["load_avg_start"]) == len(b["load_avg_end"]) == 3
        assert b["rounds"] == 2 and b["vs_peer"] == "fake 1.0"
        for name in ("train", "latency"):
            assert len(b[f"peer_ratio_{name}_by_round"]) == 2
            assert b[f"peer_ratio_{name}_min"] <= b[f"peer_ratio_{name}"] <= \
                b[f"peer_ratio_{name}_max"]
        assert set(b["peer_ratio_infer_by_batch"]) == {"1", "2"}
    # Both records of a precision carry the same ratios.
    assert benched[1][0]["bench"]["peer_ratio_train"] == benched[1][1]["bench"]["peer_ratio_train"]


def test_says_what_it_is_doing_before_each_long_phase(benched):
    lines = benched[3]
    phases = ["initialising the method", "compiling the training chunk",
              "compiling predict at batch 1", "compiling predict at batch 2",
              "warm-up of adjax", "warm-up of fake 1.0", "round 1/2, adjax: timing training",
              "round 1/2, adjax: timing latency", "round 1/2, adjax: timing inference at batch 1",
              "round 1/2, adjax: timing inference at batch 2",
              "round 1/2, fake 1.0: timing training", "round 2/2, fake 1.0: timing training",
              "round 2/2, adjax: timing training", "wrote"]
    at = [next(i for i, line in enumerate(lines) if phase in line) for phase in phases]
    assert at == sorted(at), lines


def test_format_summary(benched):
    text = bench.format_summary(benched[1][2])
    assert "bf16" in text and "images/s" in text and "ms" in text and "GFLOP" in text
    assert "vs fake 1.0" in text and "rounds" in text


# -- the schedule, against fakes on an injected clock ------------------------------------------


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_schedule_alternates_the_order():
    assert bench.schedule(4, 2) == [[0, 1], [1, 0], [0, 1], [1, 0]]
    assert bench.schedule(2, 1) == [[0], [0]]


def test_interleave_times_alternating_rounds_after_warmup():
    clock, calls = Clock(), []
    work = {"precision": "fp32"}
    # adjax: 1 s per training call (2 steps) in every round; the peer's training calls get
    # slower as the call log grows (a drifting machine), its other calls cost 3x adjax's.
    ours = FakeTimed("adjax", work, clock, calls=calls, cost={
        "train": lambda n: 1.0, "round_trip": lambda n: 0.01, "infer1": lambda n: 0.02})
    theirs = FakeTimed("peer", work, clock, calls=calls, cost={
        "train": lambda n: 2.0 + n / 1000, "round_trip": lambda n: 0.03,
        "infer1": lambda n: 0.06})
    for fake in (ours, theirs):
        fake.cost["dispatch1"] = fake.cost["infer1"]
    t = bench.interleave([ours, theirs], batch_sizes=(1,), rounds=3, repeats=2, warmup=1,
                         latency_runs=4, clock=clock, log=lambda _: None)

    # Warm-up first (one call of each kind per side), untimed; then the rounds, the order
    # alternating: adjax, peer | peer, adjax | adjax, peer.
    assert calls[:3] == [("adjax", "train"), ("adjax", "round_trip"), ("adjax", "infer1")]
    assert calls[3:6] == [("peer", "train"), ("peer", "round_trip"), ("peer", "infer1")]
    per_side = 2 + 4 + 2 + 2 + 1  # train, round trips, infer, dispatch, wait
    blocks = [calls[6 + i * per_side: 6 + (i + 1) * per_side] for i in range(6)]
    assert [b[0][0] for b in blocks] == ["adjax", "peer", "peer", "adjax", "adjax", "peer"]
    assert all(len({who for who, _ in b}) == 1 for b in blocks)

    assert t[0]["train"] == pytest.approx([0.5, 0.5, 0.5])  # seconds per step
    assert [r == pytest.approx([0.01] * 4) for r in t[0]["latency"]] == [True] * 3
    assert [r == pytest.approx([0.06] * 2) for r in t[1]["infer"][1]] == [True] * 3
    assert t[1]["pipelined"][1] == pytest.approx([0.06] * 3)
    # The peer's training round medians drift: the call numbers in the log set them.
    train_calls = [i + 1 for i, c in enumerate(calls) if c == ("peer", "train")][1:]
    expected = [(2.0 + (a + b) / 2000) / 2 for a, b in zip(train_calls[::2], train_calls[1::2],
                                                            strict=True)]
    assert t[1]["train"] == pytest.approx(expected)

    fields = bench.ratio_fields(t[0], t[1], "peer 1")
    ratios = [e / 0.5 for e in expected]
    assert fields["peer_ratio_train_by_round"] == pytest.approx(ratios)
    assert fields["peer_ratio_train"] == pytest.approx(sorted(ratios)[1])
    assert fields["peer_ratio_train_min"] == pytest.approx(min(ratios))
    assert fields["peer_ratio_train_max"] == pytest.approx(max(ratios))
    assert fields["peer_ratio_latency"] == pytest.approx(3.0)
    assert fields["peer_ratio_infer_by_batch"]["1"]["median"] == pytest.approx(3.0)

    rates = bench.timing_fields(t[0], train_batch=1, train_steps=2, flops_per_image=None,
                                peak=None)
    assert rates["train_steps_per_s"] == pytest.approx(2.0)
    assert rates["latency_ms_b1"] == pytest.approx(10.0)
    assert rates["images_per_s_by_batch"] == {"1": pytest.approx(50.0)}


# -- the work-matching rules -------------------------------------------------------------------


def test_work_of_adjax_alone_has_no_penalty():
    work = bench.work_of(load_config("efficientad", "s"), "bf16", {"train": "random uint8"})
    assert work["penalty"] is False and "penalty" not in work["train_step"]
    assert (work["precision"], work["batch"], work["image_size"]) == ("bf16", 1, 256)
    assert work["teacher"] == "random" and work["ae_dropout"] == 0.0


def test_different_work_stops_the_comparison():
    config = load_config("efficientad", "s")
    ours = bench.work_of(config, "fp32", {"train": "random uint8"})
    theirs = bench.work_of(config, "fp32", {"train": "random uint8", "penalty": "random"})
    with pytest.raises(ValueError, match="penalty: False against True"):
        bench.check_same_work(ours, theirs)
    teacher_file = dict(theirs, teacher="file")  # weights change no operation count
    bench.check_same_work(theirs, teacher_file)


def test_anomalib_peer_rules_need_no_torch():
    peer = peers.AnomalibPeer()
    config = load_config("efficientad", "s")
    assert peer.adjax_pools(config) == ("penalty",)  # anomalib always runs its penalty batch
    config.loss.penalty_dir = "/images"
    assert peer.adjax_pools(config) == ()
    with pytest.raises(ValueError, match="reference width"):
        peer.adjax_pools(load_config("efficientad", "quick"))
    config.data.image_size = 128
    with pytest.raises(ValueError, match="256 px images only"):
        peer.adjax_pools(config)
    assert any("56x56" in d for d in peer.differences)


def test_peer_without_anomalib_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "anomalib", None)  # importing it now fails
    with pytest.raises(ImportError, match="pip install torch anomalib"):
        peers.get("anomalib")
    with pytest.raises(ValueError, match="unknown peer"):
        peers.get("onnx")


# -- small pieces ------------------------------------------------------------------------------


def test_default_results_dir_is_a_run_folder():
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    path = bench.default_results_dir(load_config("efficientad", "s"), when)
    assert path == "runs/bench/efficientad-s-20260102T030405Z"


def test_provenance_names_the_cpu():
    facts = bench.provenance()
    assert facts["cpu_model"] and facts["host"] and facts["command"]


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
    with pytest.raises(ValueError, match="rounds"):
        bench.run(_tiny_config(), rounds=0)


def test_matrix_mode_reports_the_gain_of_one_program():
    ticks = iter(range(10_000))  # each chunk takes one tick: the rate counts images per call
    config = _tiny_config()
    m = bench.time_matrix(config, 3, repeats=2, warmup=1, clock=lambda: next(ticks),
                          log=lambda _: None)
    assert m["runs"] == 3 and list(m["by_batch"]) == ["1"]  # the quick config trains at 1
    row = m["by_batch"]["1"]
    steps = config.train.steps_per_call
    assert row["single_images_per_s"] == steps * 1 and row["matrix_images_per_s"] == steps * 3
    assert row["gain"] == 3
