"""The timing protocol: how fast a config's method trains and predicts, as `bench` records.

  adjax bench --config=configs/efficientad.py:s --batch_sizes=1,16,64,256 \
      --precision=fp32,bf16 --results_dir=results/bench [--peer=anomalib]

No data set is needed: the images are random uint8 arrays of the config's size, made once and
kept on the device (the same array for every timed call). Every clock is read after the work is
done (`jax.block_until_ready`; a peer synchronises its own device); compilation is timed apart
(lowering and XLA compilation separately) and never inside a timed call, and warm-up calls come
before timed ones.

Measured, for each precision:

- training: the trainer's own compiled chunk (`adjax.runtime.make_chunk`, `steps_per_call`
  steps per call) on the trainer's mesh;
- latency at batch 1 as the MVTec AD 2 protocol: a uint8 image on the host -> `device_put` ->
  jitted `predict` -> anomaly map and score back on the host as numpy;
- throughput on one device at each batch size, data and outputs left on the device: single
  blocked calls, and a pipelined figure (`repeats` calls dispatched, then one wait);
- parameters, analytic FLOPs per image (`adjax.flops`), achieved TFLOP/s and its share of the
  device's datasheet peak, peak device memory where the runtime reports it.

Rounds: every measurement is taken in `rounds` rounds. With a peer (`adjax.peers`), each round
times adjax and then the peer, or the peer and then adjax (the order alternates from round to
round), so both sides see the same drift of a shared machine; each side's figures are taken over
all rounds, and each round gives one ratio peer/adjax (seconds for the same work; above 1 adjax
is faster) whose median and spread the records carry. The machine's load average is recorded at
the start and the end.

Equal work: a peer says which pools adjax must add to do its work (anomalib's training step
always runs its ImageNet-penalty batch, so adjax then draws a penalty batch from random images);
both records carry a `work` dict (what one timed training step does, precision, batch, image
size), and a run whose two `work` dicts disagree on what changes the amount of work stops.

`fp32` means float32 activations *and* float32 matmul/conv precision (no TF32 on NVIDIA GPUs);
`bf16` means bfloat16 activations with float32 parameters (`config.model.dtype`), the float32
remainder (losses, map normalisation) again at full float32 precision.
"""

import copy
import datetime
import os
import pathlib
import platform
import re
import shlex
import socket
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from adjax import methods, results, runtime
from adjax.flops import count_flops

PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}
# Random training images kept on the device (the pool each step draws its batch from).
_POOL_IMAGES = 8
# The `work` keys that change how much a training step computes: two sides timed against each
# other must agree on them. The teacher's weights (random or a file) and the wording of
# `train_step` are recorded but change no operation count.
WORK_KEYS = ("precision", "tf32", "batch", "image_size", "penalty", "ae_dropout")

# Peak dense (no sparsity) TFLOP/s per chip, from the vendors' datasheets: NVIDIA H100 Tensor
# Core GPU (SXM column), NVIDIA H200 (same compute as H100 SXM), NVIDIA A100 (SXM and PCIe list
# the same rates); Google Cloud TPU system architecture pages for v4, v5e, v5p and v6e (bf16
# per chip). NVIDIA quotes tensor-core rates with sparsity; these are the halved dense rates.
# "fp32" is the non-tensor-core float32 rate (what runs when TF32 is off).
_HOPPER = {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0}
_PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    (r"h100(?!.*(pcie|nvl))", _HOPPER),
    (r"h200(?!.*nvl)", _HOPPER),
    (r"a100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    (r"tpu v4", {"bf16": 275.0}),
    (r"tpu v5 ?(lite|e)", {"bf16": 197.0}),
    (r"tpu v5p?$", {"bf16": 459.0}),
    (r"tpu v6 ?(lite|e)", {"bf16": 918.0}),
)


def peak_tflops(device_kind: str, precision: str, tf32: bool = False) -> float | None:
    """The datasheet peak dense TFLOP/s of one chip for `precision`, or None when unknown
    (CPUs, unlisted devices, float32 on TPUs)."""
    mode = "tf32" if precision == "fp32" and tf32 else precision
    for pattern, rates in _PEAK_TFLOPS:
        if re.search(pattern, device_kind.lower()):
            return rates.get(mode)
    return None


# -- where, when and by which command ----------------------------------------------------------


def cpu_model() -> str:
    """The host CPU's model name (/proc/cpuinfo's "model name"; elsewhere the platform's word)."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def provenance(command: str | None = None) -> dict[str, Any]:
    """Host, CPU model and the command line that made a record (default: this process's)."""
    return {"host": socket.gethostname(), "cpu_model": cpu_model(),
            "command": command if command is not None else shlex.join(sys.argv)}


def load_average() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def default_results_dir(config: ml_collections.ConfigDict,
                        now: datetime.datetime | None = None) -> str:
    """`runs/bench/<method>-<variant>-<UTC time>`: a trial run's folder, never the committed
    `results/bench/` (which feeds the README's speed table)."""
    now = now or datetime.datetime.now(datetime.UTC)
    name = "-".join(p for p in (config.method, config.get("variant", "")) if p)
    return str(pathlib.Path("runs", "bench", f"{name}-{now:%Y%m%dT%H%M%SZ}"))


# -- what is timed: the interface shared by adjax and its peers --------------------------------


class Timed(Protocol):
    """One implementation under the clock, built and warm-up-free; every call returns only once
    its work is done, except `dispatch` (for the pipelined figure, waited for by `wait`)."""

    source: str        # "adjax", or the peer and its version ("anomalib 2.7.0")
    train_steps: int   # training steps per `train()` call

    def train(self) -> None: ...
    def infer(self, batch: int) -> None: ...            # device-resident images, blocked
    def dispatch(self, batch: int) -> Any: ...
    def wait(self, outputs: list[Any]) -> None: ...
    def round_trip(self) -> None: ...                   # batch 1: host -> device -> host
    def fields(self) -> dict[str, Any]: ...             # untimed facts (params, compile, memory)
    def work(self) -> dict[str, Any]: ...               # what one training step does (WORK_KEYS)
    def environment(self) -> dict[str, Any]: ...        # platform, device kind, versions


class Peer(Protocol):
    """A peer implementation of a method, timed beside adjax (see `adjax.peers`)."""

    name: str
    differences: tuple[str, ...]   # documented differences from adjax, for the records' notes

    def adjax_pools(self, config: ml_collections.ConfigDict) -> tuple[str, ...]:
        """Pools adjax must add (random images) so that its step does the peer's work."""
        ...

    def build(self, config: ml_collections.ConfigDict, *, precision: str,
              batch_sizes: Sequence[int], train_steps: int,
              log: Callable[[str], None]) -> Timed: ...


def schedule(rounds: int, sides: int) -> list[list[int]]:
    """The order of the sides in each round: as given in even rounds, reversed in odd ones."""
    return [list(range(sides))[::-1 if k % 2 else 1] for k in range(rounds)]


def interleave(subjects: Sequence[Timed], *, batch_sizes: Sequence[int], rounds: int,
               repeats: int, warmup: int, latency_runs: int,
               clock: Callable[[], float] = time.perf_counter,
               log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Times every subject in `rounds` alternating rounds (`schedule`), after `warmup` untimed
    calls of every kind; per subject, the seconds of each round:

    `train` [round] seconds per step (median of `repeats` calls); `latency` [round][run];
    `infer` {batch: [round][call]}; `pipelined` {batch: [round]} seconds per call.
    """
    timings = [{"train": [], "latency": [], "infer": {b: [] for b in batch_sizes},
                "pipelined": {b: [] for b in batch_sizes}} for _ in subjects]
    for s in subjects:
        log(f"adjax bench: warm-up of {s.source} ({warmup} untimed call(s) of each kind)")
        for _ in range(warmup):
            s.train()
            s.round_trip()
            for b in batch_sizes:
                s.infer(b)

    def each(call: Callable[[], Any], n: int) -> list[float]:
        times = []
        for _ in range(n):
            start = clock()
            call()
            times.append(clock() - start)
        return times

    for k, order in enumerate(schedule(rounds, len(subjects))):
        for i in order:
            s, t = subjects[i], timings[i]
            where = f"adjax bench: round {k + 1}/{rounds}, {s.source}: timing"
            log(f"{where} training ({repeats} call(s) of {s.train_steps} step(s))")
            t["train"].append(statistics.median(each(s.train, repeats)) / s.train_steps)
            log(f"{where} latency ({latency_runs} batch-1 round trips)")
            t["latency"].append(each(s.round_trip, latency_runs))
            for b in batch_sizes:
                log(f"{where} inference at batch {b} ({repeats} blocked + {repeats} pipelined "
                    f"call(s))")
                t["infer"][b].append(each(lambda b=b, s=s: s.infer(b), repeats))
                start = clock()
                s.wait([s.dispatch(b) for _ in range(repeats)])
                t["pipelined"][b].append((clock() - start) / repeats)
    return timings


def spread(values: Sequence[float]) -> dict[str, float]:
    """min, median and max of `values`."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def timing_fields(t: Mapping[str, Any], *, train_batch: int, train_steps: int,
                  flops_per_image: int | None, peak: float | None) -> dict[str, Any]:
    """The rate fields of a bench record from one subject's `interleave` timings."""
    step_s = statistics.median(t["train"])
    latencies = [x for r in t["latency"] for x in r]
    per_call = {b: statistics.median([x for r in rs for x in r]) for b, rs in t["infer"].items()}
    rates = {b: b / s for b, s in per_call.items()}
    best = max(rates, key=rates.get)
    achieved = (rates[best] * flops_per_image / 1e12) if flops_per_image else None
    return {
        "train_steps_per_s": 1.0 / step_s,
        "train_images_per_s": train_batch / step_s,
        "train_ms_per_step": {k: 1e3 * v for k, v in spread(t["train"]).items()},
        "train_batch": train_batch, "train_chunk": train_steps,
        "latency_ms_b1": 1e3 * statistics.median(latencies),
        "latency_ms_b1_p90": 1e3 * float(np.percentile(latencies, 90)),
        "latency_ms_b1_rounds": {k: 1e3 * v for k, v in
                                 spread([statistics.median(r) for r in t["latency"]]).items()},
        "images_per_s": rates[best], "batch": best,
        "images_per_s_by_batch": {str(b): r for b, r in rates.items()},
        "images_per_s_pipelined_by_batch": {str(b): b / statistics.median(s)
                                            for b, s in t["pipelined"].items()},
        "gflops_per_image": flops_per_image / 1e9 if flops_per_image else None,
        "achieved_tflop_per_s": achieved,
        "peak_tflop_per_s": peak,
        "peak_fraction": achieved / peak if achieved and peak else None,
        **({"matrix": t["matrix"]} if "matrix" in t else {}),
    }


def ratio_fields(adjax: Mapping[str, Any], peer: Mapping[str, Any],
                 peer_source: str) -> dict[str, Any]:
    """Round-by-round ratios peer/adjax of the seconds each side spent on the same work (above 1
    adjax is faster), with their median, min and max; the same fields go into both records."""

    def ratios(a: Sequence[float], p: Sequence[float]) -> list[float]:
        return [y / x for x, y in zip(a, p, strict=True)]

    def by_round(rounds_of_runs):
        return [statistics.median(r) for r in rounds_of_runs]

    fields: dict[str, Any] = {"vs_peer": peer_source}
    for name, a, p in (("train", adjax["train"], peer["train"]),
                       ("latency", by_round(adjax["latency"]), by_round(peer["latency"]))):
        r = ratios(a, p)
        s = spread(r)
        fields |= {f"peer_ratio_{name}": s["median"], f"peer_ratio_{name}_min": s["min"],
                   f"peer_ratio_{name}_max": s["max"], f"peer_ratio_{name}_by_round": r}
    fields["peer_ratio_infer_by_batch"] = {
        str(b): spread(ratios(by_round(adjax["infer"][b]), by_round(peer["infer"][b])))
        for b in adjax["infer"]}
    return fields


def check_same_work(a: Mapping[str, Any], b: Mapping[str, Any]) -> None:
    """Raises ValueError when two `work` dicts differ on a key that changes the work."""
    differ = [f"{k}: {a.get(k)!r} against {b.get(k)!r}" for k in WORK_KEYS
              if a.get(k) != b.get(k)]
    if differ:
        raise ValueError(f"the two sides would time different work ({'; '.join(differ)}).")


def _check_args(batch_sizes, precisions, rounds, repeats, warmup, latency_runs) -> None:
    if not batch_sizes or any(int(b) != b or b < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes must be positive integers, got {list(batch_sizes)}.")
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise ValueError(f"unknown precision {unknown[0] if unknown else '(none)'}; choose from "
                         f"{', '.join(PRECISIONS)}.")
    if min(rounds, repeats, warmup, latency_runs) < 1:
        raise ValueError("rounds, repeats, warmup and latency_runs must be at least 1.")


# -- adjax -------------------------------------------------------------------------------------


def run(config: ml_collections.ConfigDict, *, batch_sizes: Sequence[int] = (1, 16, 64),
        precisions: Sequence[str] = ("fp32",), train_chunk: int | None = None,
        rounds: int = 3, repeats: int = 5, warmup: int = 2, latency_runs: int = 30,
        results_dir: str | None = None, peer: Peer | None = None, command: str | None = None,
        matrix: int = 0, clock: Callable[[], float] = time.perf_counter,
        log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Times `config`'s method (and `peer`'s implementation of it, interleaved) and returns the
    `bench` records, per precision adjax's then the peer's (written to `results_dir` if given).

    `train_chunk` overrides `config.train.steps_per_call` (steps per compiled training call; a
    peer runs as many steps per call); each of `rounds` rounds times `repeats` training calls,
    `repeats` inference calls per batch size and `latency_runs` batch-1 round trips per side,
    after `warmup` untimed calls of each kind. `command` is recorded as the command line that
    produced the records (default: this process's). With `matrix` > 1, adjax's record also
    holds `time_matrix`'s figures for that many runs in one program.
    """
    _check_args(batch_sizes, precisions, rounds, repeats, warmup, latency_runs)
    batch_sizes = sorted(set(batch_sizes))
    records = []
    for precision in precisions:
        cfg = copy.deepcopy(config)
        cfg.unlock()
        cfg.model.dtype = PRECISIONS[precision]
        if train_chunk is not None:
            cfg.train.steps_per_call = train_chunk
        log(f"adjax bench: {cfg.method}:{cfg.get('variant', '')} {precision}, "
            f"{cfg.data.image_size} px, training batch {cfg.train.batch_size}")
        load_start = load_average()
        if load_start[0] > 0.5 and jax.devices()[0].platform == "cpu":
            log(f"adjax bench: the machine's load is {load_start[0]}: CPU timings will be noisy.")
        # 'float32' keeps float32 matmuls and convolutions at full precision (no TF32); tracing
        # and every call stay inside it, or jit would compile again for the other setting.
        with jax.default_matmul_precision("float32"):
            pools = peer.adjax_pools(cfg) if peer else ()
            subjects = [_Adjax(cfg, precision, batch_sizes, pools, log)]
            if peer:
                subjects.append(peer.build(cfg, precision=precision, batch_sizes=batch_sizes,
                                           train_steps=cfg.train.steps_per_call, log=log))
                check_same_work(subjects[0].work(), subjects[1].work())
            timings = interleave(subjects, batch_sizes=batch_sizes, rounds=rounds,
                                 repeats=repeats, warmup=warmup, latency_runs=latency_runs,
                                 clock=clock, log=log)
        shared = {"rounds": rounds, "repeats": repeats, "warmup": warmup,
                  "latency_runs": latency_runs, "load_avg_start": load_start,
                  "load_avg_end": load_average()}
        if peer:
            shared |= ratio_fields(timings[0], timings[1], subjects[1].source)
        flops = flops_per_image(cfg)
        if matrix > 1:
            with jax.default_matmul_precision("float32"):
                timings[0]["matrix"] = time_matrix(cfg, matrix, repeats=repeats, warmup=warmup,
                                                   clock=clock, log=log)
        for subject, t in zip(subjects, timings, strict=True):
            env = subject.environment() | provenance(command)
            fields = {**timing_fields(t, train_batch=cfg.train.batch_size,
                                      train_steps=subject.train_steps, flops_per_image=flops,
                                      peak=peak_tflops(env["device_kind"], precision)),
                      **subject.fields(), **shared, "work": subject.work()}
            notes = dict(_NOTES)
            if peer:
                notes["differences_from_peer"] = list(peer.differences)
            if subject.source != "adjax":
                notes["flops"] = "analytic, of adjax's implementation of the same model"
            record = results.make_record(
                "bench", method=cfg.method, variant=cfg.get("variant", ""), dataset="random",
                category="", image_size=cfg.data.image_size, metrics={}, config=cfg.to_dict(),
                source=subject.source, env=env, bench=fields, notes=notes)
            if results_dir is not None:
                log(f"adjax bench: wrote {results.write(record, results_dir)}")
            records.append(record)
    return records


_NOTES = {
    "data": "random uint8 images of the config's size, on the device (no data set)",
    "train": "adjax: the trainer's compiled chunk (runtime.make_chunk) on the trainer's mesh; "
             "a peer: its training step, as many steps per call; seconds per step are the "
             "median over a round's calls, rates the median over rounds; compile excluded "
             "(lower_s, compile_s: the chunk on accelerators, its jitted step on CPU)",
    "rounds": "each round times both sides one after the other, the order alternating from "
              "round to round; peer_ratio_*: the peer's seconds over adjax's for the same work, "
              "one per round (above 1 adjax is faster); load_avg_*: os.getloadavg()",
    "latency": "batch 1, host uint8 -> device -> predict -> map and score as numpy on the "
               "host; median and 90th percentile over every round's runs",
    "throughput": "one device, data and outputs on the device; images_per_s: median of single "
                  "blocked calls; pipelined: calls dispatched back to back, one wait",
    "flops": "analytic (adjax.flops): convolutions and matmuls, 2 per multiply-accumulate, of "
             "predict at batch 1",
    "peak_bytes": "device 0's high-water mark since the process started (null where the runtime "
                  "reports none, e.g. CPU)",
}


def _efficientad_work(cfg: ml_collections.ConfigDict, pools: Sequence[str]) -> dict[str, Any]:
    penalty = "penalty" in pools
    return {
        "penalty": penalty, "ae_dropout": float(cfg.model.ae_dropout),
        "teacher": "file" if cfg.model.teacher_path else "random",
        "train_step": "teacher (no gradient) on the image and its colour-jittered copy; student "
                      "on both" + (" and on the penalty image" if penalty else "") +
                      "; autoencoder on the jittered copy; hard student-teacher, autoencoder "
                      "and student-autoencoder losses" + (" + penalty" if penalty else "") +
                      "; gradients of student and autoencoder; Adam with L2 weight decay",
    }


# Method-specific facts of the `work` dict (the keys of WORK_KEYS a method has).
_METHOD_WORK: dict[str, Callable[[ml_collections.ConfigDict, Sequence[str]], dict[str, Any]]] = {
    "efficientad": _efficientad_work,
}


def work_of(cfg: ml_collections.ConfigDict, precision: str,
            pools: Mapping[str, str]) -> dict[str, Any]:
    """What one timed adjax training step does; `pools` maps each pool the step draws a batch
    from to where its images come from."""
    facts = _METHOD_WORK.get(cfg.method, lambda *_: {})(cfg, tuple(pools))
    return {"precision": precision, "tf32": False, "matmul_precision": "float32",
            "batch": cfg.train.batch_size, "image_size": cfg.data.image_size,
            "pools": dict(pools), **facts}


class _Adjax:
    """adjax's side: the trainer's chunk, and jitted predict on one device."""

    source = "adjax"

    def __init__(self, cfg, precision, batch_sizes, add_pools, log):
        self.precision = precision
        method = methods.build(cfg)
        size, batch = cfg.data.image_size, cfg.train.batch_size
        rng = np.random.default_rng(cfg.seed)
        mesh = runtime.make_mesh(batch, log=log)
        n = max(batch, _POOL_IMAGES)
        train = _random_split(rng, n, size, method.trains_on_masks)
        extra = method.extra_pools()
        sources = {"train": "random uint8"} | {k: "images of the config" for k in extra}
        for name in add_pools:
            if name not in extra:  # the peer's work needs it; adjax's config has none
                extra[name] = _random_split(rng, n, size)["image"]
                sources[name] = "random uint8 (added by bench to match the peer's work)"
        self.pools = runtime.place_pools(train, extra, mesh)
        self._work = work_of(cfg, precision, sources)
        k_init, self.key = jax.random.split(jax.random.key(cfg.seed))
        # Statistics over the first training batch only: their values do not change the timing.
        log("adjax bench: initialising the method")
        first = {k: v[:batch] for k, v in self.pools["train"].items()}
        state = jax.device_put(method.init(k_init, first, method.pretrained()),
                               NamedSharding(mesh, P()))

        log("adjax bench: compiling the training chunk")
        self.train_steps = cfg.train.steps_per_call
        self.chunk = runtime.make_chunk(method, cfg, NamedSharding(mesh, P("data")),
                                        self.train_steps)
        # `compiled` is what XLA compiles: the scanned chunk on accelerators, the one step that
        # the CPU host loop calls (see runtime.make_chunk).
        self.lower_s, self.compile_s, _ = _compile(self.chunk.compiled, state, self.pools,
                                                   self.key)
        self.device = jax.devices()[0]
        calibrated = method.calibrate(state, {"image": first["image"]})
        # A copy: training donates its state, whose buffers calibrate's output may share.
        self.predict_state = jax.device_put(jax.tree.map(jnp.array, calibrated), self.device)
        self.state = state
        self.predict = jax.jit(method.predict)
        self.images, self.predict_lower_s, self.predict_compile_s = {}, {}, {}
        for b in batch_sizes:
            log(f"adjax bench: compiling predict at batch {b}")
            self.images[b] = jax.device_put(rng.integers(0, 256, (b, size, size, 3), np.uint8),
                                            self.device)
            self.predict_lower_s[str(b)], self.predict_compile_s[str(b)], _ = _compile(
                self.predict, self.predict_state, self.images[b])
        self.host_image = rng.integers(0, 256, (1, size, size, 3), np.uint8)
        params = method.describe(self.predict_state)["params"]
        self.params = params if isinstance(params, dict) else {"all": int(params)}
        self.train_devices = mesh.size

    def train(self) -> None:
        self.state, metrics = self.chunk(self.state, self.pools, self.key)
        jax.block_until_ready((self.state, metrics))

    def dispatch(self, batch: int) -> Any:
        return self.predict(self.predict_state, self.images[batch])

    def wait(self, outputs: list[Any]) -> None:
        jax.block_until_ready(outputs)

    def infer(self, batch: int) -> None:
        self.wait(self.dispatch(batch))

    def round_trip(self) -> None:
        out = self.predict(self.predict_state, jax.device_put(self.host_image, self.device))
        np.asarray(out.anomaly_map), np.asarray(out.score)

    def work(self) -> dict[str, Any]:
        return self._work

    def environment(self) -> dict[str, Any]:
        # XLA_FLAGS change what XLA:CPU runs (adjax.xla); a record says which were set.
        return results.environment() | {"xla_flags": os.environ.get("XLA_FLAGS", "")}

    def fields(self) -> dict[str, Any]:
        stats = self.device.memory_stats() or {}
        return {
            "train_devices": self.train_devices, "lower_s": self.lower_s,
            "compile_s": self.compile_s, "predict_lower_s": self.predict_lower_s,
            "predict_compile_s": self.predict_compile_s,
            "peak_bytes": stats.get("peak_bytes_in_use"),
            "params": sum(self.params.values()), "params_by_net": self.params,
            "precision": self.precision, "tf32": False, "matmul_precision": "float32",
            "inference_devices": 1,
            # With a persistent compilation cache, compile_s may be a cache load.
            "compilation_cache": bool(jax.config.jax_compilation_cache_dir and getattr(
                jax.config, "jax_enable_compilation_cache", True)),
        }


def time_matrix(config: ml_collections.ConfigDict, runs: int, *, repeats: int, warmup: int,
                clock: Callable[[], float] = time.perf_counter,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Training images per second on one device of one run and of `runs` runs trained in one
    vmapped program (`adjax train --runs`), at batch 1 and at the config's batch: the gain a
    benchmark matrix gets from sharing a program. Medians over `repeats` chunks after
    `warmup`."""
    out = {}
    for batch in sorted({1, config.train.batch_size}):
        cfg = copy.deepcopy(config)
        cfg.unlock()
        cfg.train.batch_size = batch
        method = methods.build(cfg)
        rng = np.random.default_rng(cfg.seed)
        splits = [_random_split(rng, max(batch, _POOL_IMAGES), cfg.data.image_size,
                                method.trains_on_masks) for _ in range(runs)]
        one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
        states = [jax.device_put(method.init(jax.random.key(i), split), one)
                  for i, split in enumerate(splits)]
        steps = cfg.train.steps_per_call
        rates = {}
        for name, n in (("single", 1), ("matrix", runs)):
            log(f"adjax bench: compiling and timing {n} run(s) in one program at batch {batch}")
            chunk = runtime.make_chunk(method, cfg, None if n > 1 else
                                       NamedSharding(mesh, P("data")), steps, runs=n if n > 1
                                       else 0)
            pools = runtime.place_pools(splits[0], method.extra_pools(), mesh)
            state, key = jax.tree.map(jnp.array, states[0]), jax.random.key(0)
            if n > 1:
                state = jax.tree.map(lambda *a: jnp.stack(a), *states)
                pools["train"] = {k: jnp.stack([jnp.asarray(s[k]) for s in splits])
                                  for k in splits[0]}
                pools["train"]["length"] = jnp.full((n,), len(splits[0]["image"]), jnp.int32)
                key = jax.random.split(jax.random.key(0), n)
            seconds = []
            for i in range(warmup + repeats):
                start = clock()
                state, metrics = chunk(state, pools, key)
                jax.block_until_ready((state, metrics))
                if i >= warmup:
                    seconds.append(clock() - start)
            rates[name] = steps * batch * n / statistics.median(seconds)
        out[str(batch)] = {"single_images_per_s": rates["single"],
                           "matrix_images_per_s": rates["matrix"],
                           "gain": rates["matrix"] / rates["single"]}
    return {"runs": runs, "by_batch": out, "devices": 1}


def _compile(jitted, *args) -> tuple[float, float, Any]:
    """Seconds to lower and to compile `jitted` for `args`, and the compiled executable."""
    start = time.perf_counter()
    lowered = jitted.lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    return lowered_at - start, time.perf_counter() - lowered_at, compiled


# -- reading -----------------------------------------------------------------------------------


def format_summary(record: dict[str, Any]) -> str:
    """A bench record as a few readable lines (fields it lacks show as n/a)."""
    b, env = record["bench"], record["env"]

    def num(key, fmt=".3g", scale=1.0, unit=""):
        value = b.get(key)
        return "n/a" if value is None else f"{value * scale:{fmt}}{unit}"

    share = (f" = {b['peak_fraction']:.1%} of the {b['peak_tflop_per_s']:.4g} TFLOP/s peak"
             if b.get("peak_fraction") is not None else " (device peak unknown)")
    rates = "  ".join(f"b{k}: {v:.3g}/s" for k, v in b.get("images_per_s_by_batch", {}).items())
    device = env.get("device_kind", "?")
    if env.get("platform") == "cpu" and env.get("cpu_model"):
        device = env["cpu_model"]
    lines = [
        f"{record['method']}:{record['variant']}  {b.get('precision', '?')} "
        f"(TF32 {'on' if b.get('tf32') else 'off'})  {record['image_size']} px  on "
        f"{env.get('device_count', '?')} x {device}  [{record['source']}]",
        f"  train       {num('train_steps_per_s')} steps/s = {num('train_images_per_s')} "
        f"images/s (batch {b.get('train_batch')}, {b.get('train_chunk')} steps per call)",
        f"  latency b1  {num('latency_ms_b1')} ms median, {num('latency_ms_b1_p90')} ms p90 "
        f"(host -> device -> host)",
        f"  throughput  {rates}  best {num('images_per_s')} images/s at batch {b.get('batch')}",
        f"  model       {num('params', scale=1e-6)} M params, {num('gflops_per_image')} "
        f"GFLOP/image; {num('achieved_tflop_per_s')} TFLOP/s achieved{share}",
        f"  compile     train {num('lower_s')} s lower + {num('compile_s')} s compile; "
        f"peak memory {num('peak_bytes', scale=2**-30, unit=' GiB')}",
    ]
    if b.get("vs_peer"):
        lines.append(
            f"  vs {b['vs_peer']}  peer/adjax time: train {num('peer_ratio_train', '.2f')} "
            f"({num('peer_ratio_train_min', '.2f')}-{num('peer_ratio_train_max', '.2f')}), "
            f"latency {num('peer_ratio_latency', '.2f')} ({num('peer_ratio_latency_min', '.2f')}"
            f"-{num('peer_ratio_latency_max', '.2f')}) over {b.get('rounds')} rounds; load "
            f"{b.get('load_avg_start', ['?'])[0]} -> {b.get('load_avg_end', ['?'])[0]}")
    if b.get("matrix"):
        m = b["matrix"]
        lines += [f"  matrix      {m['runs']} runs in one program at batch {batch}: "
                  f"{r['matrix_images_per_s']:.3g} train images/s against "
                  f"{r['single_images_per_s']:.3g} for one run ({r['gain']:.2f}x)"
                  for batch, r in m["by_batch"].items()]
    return "\n".join(lines)


def flops_per_image(config: ml_collections.ConfigDict) -> int:
    """Analytic FLOPs (`adjax.flops.count_flops`) of the method's `predict` at batch 1 for
    `config`; the nets are only traced, never run, and no teacher file is read."""
    if config.model.get("teacher_path"):  # FLOPs do not depend on the weights
        config = copy.deepcopy(config)
        config.model.teacher_path = ""
    method = methods.build(config)
    size = config.data.image_size
    split = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                         _random_split(np.random.default_rng(0), 1, size))
    state = jax.eval_shape(method.init, jax.random.key(0), split)
    return count_flops(method.predict, state, split["image"])


def _random_split(rng: np.random.Generator, n: int, size: int,
                  masks: bool = False) -> dict[str, np.ndarray]:
    """A training split of `n` random uint8 images, all labelled normal (0); with `masks`
    (a supervised method), all labelled anomalous with random {0, 1} masks."""
    split = {"image": rng.integers(0, 256, (n, size, size, 3), np.uint8),
             "label": np.full(n, int(masks), np.int32)}
    if masks:
        split["mask"] = rng.integers(0, 2, (n, size, size), np.uint8)
    return split
