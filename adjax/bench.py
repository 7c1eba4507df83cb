"""The timing protocol: how fast a config's method trains and predicts, as a `bench` record.

  adjax bench --config=configs/efficientad.py:s --batch_sizes=1,16,64,256 \
      --precision=fp32,bf16 --results_dir=results/bench

No data set is needed: the images are random uint8 arrays of the config's size, made once and
kept on the device (the same array for every timed call). Every clock is read after
`jax.block_until_ready`; compilation is timed apart (lowering and XLA compilation separately)
and never inside a timed call, and warm-up calls come before timed ones.

Measured, for each precision:

- training: the trainer's own compiled chunk (`adjax.train.make_chunk`, `steps_per_call` steps
  per call) on the trainer's mesh, median over `repeats` calls;
- latency at batch 1 as the MVTec AD 2 protocol: a uint8 image on the host -> `device_put` ->
  jitted `predict` -> anomaly map and score back on the host as numpy, `latency_runs` times;
- throughput on one device at each batch size, data and outputs left on the device: the median
  of single blocked calls, and a pipelined figure (`repeats` calls dispatched, then one wait);
- parameters, analytic FLOPs per image (`adjax.flops`), achieved TFLOP/s and its share of the
  device's datasheet peak, peak device memory where the runtime reports it.

`fp32` means float32 activations *and* float32 matmul/conv precision (no TF32 on NVIDIA GPUs);
`bf16` means bfloat16 activations with float32 parameters (`config.model.dtype`), the float32
remainder (losses, map normalisation) again at full float32 precision.
`run_peer` times anomalib's PyTorch EfficientAD under the same protocol.
"""

import copy
import platform
import re
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from adjax import methods, results
from adjax import train as trainer
from adjax.flops import count_flops

PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}
# Random training images kept on the device; the method's init takes statistics over them.
_POOL_IMAGES = 8

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


# -- the protocol, shared by adjax and its peers -----------------------------------------------


def _timed(call: Callable[[], Any], warmup: int, runs: int) -> list[float]:
    """Seconds per call of `call` after `warmup` untimed calls; `call` must return only once its
    work is done (blocked or synchronised)."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def _pipelined(dispatch: Callable[[], Any], wait: Callable[[list[Any]], Any], runs: int) -> float:
    """Seconds per call when `runs` calls are dispatched back to back and waited for once."""
    start = time.perf_counter()
    wait([dispatch() for _ in range(runs)])
    return (time.perf_counter() - start) / runs


def _inference_fields(latencies: list[float], per_call: dict[int, list[float]],
                      pipelined: dict[int, float], flops_per_image: int | None,
                      peak: float | None) -> dict[str, Any]:
    rates = {b: b / statistics.median(times) for b, times in per_call.items()}
    best = max(rates, key=rates.get)
    achieved = (rates[best] * flops_per_image / 1e12) if flops_per_image else None
    return {
        "latency_ms_b1": 1e3 * statistics.median(latencies),
        "latency_ms_b1_p90": 1e3 * float(np.percentile(latencies, 90)),
        "images_per_s": rates[best], "batch": best,
        "images_per_s_by_batch": {str(b): r for b, r in rates.items()},
        "images_per_s_pipelined_by_batch": {str(b): b / t for b, t in pipelined.items()},
        "gflops_per_image": flops_per_image / 1e9 if flops_per_image else None,
        "achieved_tflop_per_s": achieved,
        "peak_tflop_per_s": peak,
        "peak_fraction": achieved / peak if achieved and peak else None,
    }


def _check_args(batch_sizes, precisions, repeats, warmup, latency_runs) -> None:
    if not batch_sizes or any(int(b) != b or b < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes must be positive integers, got {list(batch_sizes)}.")
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise ValueError(f"unknown precision {unknown[0] if unknown else '(none)'}; choose from "
                         f"{', '.join(PRECISIONS)}.")
    if repeats < 1 or warmup < 1 or latency_runs < 1:
        raise ValueError("repeats, warmup and latency_runs must be at least 1.")


# -- adjax -------------------------------------------------------------------------------------


def run(config: ml_collections.ConfigDict, *, batch_sizes: Sequence[int] = (1, 16, 64),
        precisions: Sequence[str] = ("fp32",), train_chunk: int | None = None,
        repeats: int = 10, warmup: int = 2, latency_runs: int = 100,
        results_dir: str | None = None) -> list[dict[str, Any]]:
    """Times `config`'s method and returns one `bench` record per precision (written to
    `results_dir` when given).

    `train_chunk` overrides `config.train.steps_per_call` (steps per compiled training call);
    `repeats` is the number of timed training chunks and timed inference calls per batch size,
    `warmup` the untimed calls before them, `latency_runs` the timed batch-1 round trips.
    """
    _check_args(batch_sizes, precisions, repeats, warmup, latency_runs)
    records = []
    for precision in precisions:
        cfg = copy.deepcopy(config)
        cfg.unlock()
        cfg.model.dtype = PRECISIONS[precision]
        if train_chunk is not None:
            cfg.train.steps_per_call = train_chunk
        print(f"adjax bench: {cfg.method}:{cfg.get('variant', '')} {precision}", flush=True)
        # 'float32' keeps float32 matmuls and convolutions at full precision (no TF32).
        with jax.default_matmul_precision("float32"):
            fields = _measure(cfg, sorted(set(batch_sizes)), repeats, warmup, latency_runs,
                              precision)
        record = results.make_record(
            "bench", method=cfg.method, variant=cfg.get("variant", ""), dataset="random",
            category="", image_size=cfg.data.image_size, metrics={}, config=cfg.to_dict(),
            bench=fields, notes=_NOTES)
        if results_dir is not None:
            path = results.write(record, results_dir)
            print(f"adjax bench: wrote {path}", flush=True)
        records.append(record)
    return records


_NOTES = {
    "data": "random uint8 images of the config's size, on the device (no data set)",
    "train": "the trainer's compiled chunk (make_chunk) on the trainer's mesh; rates are the "
             "median over timed chunks, each waited for; compile excluded (lower_s, compile_s: "
             "the chunk on accelerators, its jitted step on CPU)",
    "latency": "batch 1, host uint8 -> device_put -> jitted predict -> map and score as numpy "
               "on the host; median and 90th percentile",
    "throughput": "one device, data and outputs on the device; images_per_s: median of single "
                  "blocked calls; pipelined: calls dispatched back to back, one wait",
    "flops": "analytic (adjax.flops): convolutions and matmuls, 2 per multiply-accumulate, of "
             "predict at batch 1",
    "peak_bytes": "device 0's high-water mark since the process started (null where the runtime "
                  "reports none, e.g. CPU)",
}


def _measure(cfg, batch_sizes, repeats, warmup, latency_runs, precision) -> dict[str, Any]:
    method = methods.build(cfg)
    size, tcfg = cfg.data.image_size, cfg.train
    rng = np.random.default_rng(cfg.seed)
    mesh = trainer.make_mesh(tcfg.batch_size)
    replicated = NamedSharding(mesh, P())
    n = max(tcfg.batch_size, _POOL_IMAGES)
    train_split = _random_split(rng, n, size)
    # The trainer's pools: the training split (normal images, label 0) and the extra pools.
    pools = {"train": {k: trainer.put_global(v, replicated) for k, v in train_split.items()}}
    pools |= {k: {k: trainer.put_global(v, replicated)} for k, v in method.extra_pools().items()}
    k_init, k_train = jax.random.split(jax.random.key(cfg.seed))
    state = jax.jit(method.init, out_shardings=replicated)(k_init, pools["train"])

    state, train_fields = _time_training(method, cfg, state, pools, k_train, mesh, warmup, repeats)
    state = jax.jit(method.calibrate)(state, {"image": pools["train"]["image"]})
    device = jax.devices()[0]
    state = jax.device_put(state, device)
    predict = jax.jit(method.predict)

    host = rng.integers(0, 256, (1, size, size, 3), np.uint8)

    def round_trip():
        out = predict(state, jax.device_put(host, device))
        return np.asarray(out.anomaly_map), np.asarray(out.score)

    per_call, pipelined, lower_s, compile_s = {}, {}, {}, {}
    for b in batch_sizes:
        images = jax.device_put(rng.integers(0, 256, (b, size, size, 3), np.uint8), device)
        lower_s[str(b)], compile_s[str(b)], _ = _compile(predict, state, images)
        per_call[b] = _timed(lambda x=images: jax.block_until_ready(predict(state, x)),
                             warmup, repeats)
        pipelined[b] = _pipelined(lambda x=images: predict(state, x), jax.block_until_ready,
                                  repeats)
    latencies = _timed(round_trip, warmup, latency_runs)

    flops = flops_per_image(cfg)
    params = method.describe(state)["params"]
    stats = device.memory_stats() or {}
    return {
        **train_fields,
        **_inference_fields(latencies, per_call, pipelined, flops,
                            peak_tflops(device.device_kind, precision)),
        "predict_lower_s": lower_s, "predict_compile_s": compile_s,
        "peak_bytes": stats.get("peak_bytes_in_use"),
        "params": sum(params.values()) if isinstance(params, dict) else int(params),
        "params_by_net": params if isinstance(params, dict) else None,
        "precision": precision, "tf32": False, "matmul_precision": "float32",
        "inference_devices": 1, "repeats": repeats, "warmup": warmup,
        "latency_runs": latency_runs,
        # With a persistent compilation cache, compile_s may be a cache load.
        "compilation_cache": bool(jax.config.jax_compilation_cache_dir
                                  and getattr(jax.config, "jax_enable_compilation_cache", True)),
    }


def _compile(jitted, *args) -> tuple[float, float, Any]:
    """Seconds to lower and to compile `jitted` for `args`, and the compiled executable. Later
    calls of `jitted` with arguments of the same kind reuse the executable."""
    start = time.perf_counter()
    lowered = jitted.lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    return lowered_at - start, time.perf_counter() - lowered_at, compiled


def _time_training(method, cfg, state, pools, key, mesh, warmup, repeats):
    """Compiles and times the trainer's chunk; returns the trained state and the fields."""
    tcfg = cfg.train
    length = tcfg.steps_per_call
    chunk = trainer.make_chunk(method, cfg, NamedSharding(mesh, P("data")), length)
    # `compiled` is what XLA compiles: the scanned chunk on accelerators, the one step that the
    # CPU host loop calls (see make_chunk).
    lower_s, compile_s, _ = _compile(chunk.compiled, state, pools, key)

    def call():
        nonlocal state
        state, metrics = chunk(state, pools, key)
        jax.block_until_ready((state, metrics))

    seconds = statistics.median(_timed(call, warmup, repeats))
    steps_per_s = length / seconds
    return state, {
        "train_steps_per_s": steps_per_s,
        "train_images_per_s": steps_per_s * tcfg.batch_size,
        "train_batch": tcfg.batch_size, "train_chunk": length, "train_devices": mesh.size,
        "lower_s": lower_s, "compile_s": compile_s,
    }


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
    return "\n".join([
        f"{record['method']}:{record['variant']}  {b.get('precision', '?')} "
        f"(TF32 {'on' if b.get('tf32') else 'off'})  {record['image_size']} px  on "
        f"{env.get('device_count', '?')} x {env.get('device_kind', '?')}  [{record['source']}]",
        f"  train       {num('train_steps_per_s')} steps/s = {num('train_images_per_s')} "
        f"images/s (batch {b.get('train_batch')}, {b.get('train_chunk')} steps per call)",
        f"  latency b1  {num('latency_ms_b1')} ms median, {num('latency_ms_b1_p90')} ms p90 "
        f"(host -> device -> host)",
        f"  throughput  {rates}  best {num('images_per_s')} images/s at batch {b.get('batch')}",
        f"  model       {num('params', scale=1e-6)} M params, {num('gflops_per_image')} "
        f"GFLOP/image; {num('achieved_tflop_per_s')} TFLOP/s achieved{share}",
        f"  compile     train {num('lower_s')} s lower + {num('compile_s')} s compile; "
        f"peak memory {num('peak_bytes', scale=2**-30, unit=' GiB')}",
    ])


# -- peers -------------------------------------------------------------------------------------


def run_peer(config: ml_collections.ConfigDict, *, peer: str = "anomalib",
             batch_sizes: Sequence[int] = (1, 16, 64), precisions: Sequence[str] = ("fp32",),
             repeats: int = 10, warmup: int = 2, latency_runs: int = 100,
             results_dir: str | None = None) -> list[dict[str, Any]]:
    """Times a peer implementation of `config`'s method under the same protocol as `run`;
    one `bench` record per precision.

    The only peer is anomalib's PyTorch EfficientAD (`EfficientAdModel`), on CUDA when PyTorch
    sees a GPU: batch-1 latency host -> device -> host, throughput at `batch_sizes`, and its
    training step at batch 1 (anomalib trains at batch 1 only). No compile step is timed (eager
    PyTorch). Needs `pip install torch anomalib`.
    """
    if peer != "anomalib":
        raise ValueError(f"unknown peer {peer!r}; the only peer is anomalib.")
    _check_args(batch_sizes, precisions, repeats, warmup, latency_runs)
    try:
        import anomalib
        import torch
        from anomalib.models.image.efficient_ad import torch_model
    except ImportError as err:
        raise ImportError(f"timing the anomalib peer needs PyTorch and anomalib, which are not "
                          f"installed ({err}): pip install torch anomalib") from err
    m = config.model
    if config.method != "efficientad" or m.size not in ("s", "m") or m.width != 1.0:
        raise ValueError("the anomalib peer times EfficientAD S or M at the reference width "
                         "(config.model.width = 1.0) only.")
    records = []
    for precision in precisions:
        fields = _measure_anomalib(torch, torch_model, config, sorted(set(batch_sizes)),
                                   precision, repeats, warmup, latency_runs)
        record = results.make_record(
            "bench", method="efficientad", variant=config.get("variant", m.size),
            dataset="random", category="", image_size=config.data.image_size, metrics={},
            config=config.to_dict(), source=f"anomalib {anomalib.__version__}",
            env=_torch_environment(torch, anomalib), bench=fields,
            notes={**_NOTES, "flops": "analytic, of adjax's EfficientAD of the same size"})
        if results_dir is not None:
            results.write(record, results_dir)
        records.append(record)
    return records


def _torch_environment(torch, anomalib) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {"platform": "gpu" if cuda else "cpu",
            "device_kind": torch.cuda.get_device_name(0) if cuda else platform.processor(),
            "device_count": torch.cuda.device_count() if cuda else 1, "process_count": 1,
            "torch": torch.__version__, "anomalib": anomalib.__version__,
            "python": platform.python_version(), "adjax": results.git_commit()}


def _measure_anomalib(torch, torch_model, config, batch_sizes, precision, repeats, warmup,
                      latency_runs) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    # The same float32 rule as adjax: no TF32.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    def sync(*_):
        if cuda:
            torch.cuda.synchronize()

    size_enum = torch_model.EfficientAdModelSize
    model = torch_model.EfficientAdModel(
        teacher_out_channels=config.model.out_channels,
        model_size=size_enum.M if config.model.size == "m" else size_enum.S).to(device)
    with torch.no_grad():  # set statistics, so that the normalisation steps run as in use
        model.mean_std["mean"].zero_()
        model.mean_std["std"].fill_(1.0)
        for name, q in model.quantiles.items():
            q.fill_(1.0 if name.startswith("qb") else 0.0)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    size = config.data.image_size
    rng = np.random.default_rng(config.seed)

    def to_input(images):  # uint8 NHWC on the device -> float NCHW in [0, 1], as adjax's predict
        return images.permute(0, 3, 1, 2).float().div(255.0)

    def predict(images):
        with torch.inference_mode(), autocast():
            out = model(to_input(images))
        amap = out.anomaly_map if hasattr(out, "anomaly_map") else out["anomaly_map"]
        score = (out.pred_score if hasattr(out, "pred_score")
                 else torch.amax(amap, dim=(-2, -1)))
        return amap, score

    def random_images(n):
        return torch.from_numpy(rng.integers(0, 256, (n, size, size, 3), np.uint8))

    # Training at batch 1 with anomalib's optimiser (Adam 1e-4, weight decay 1e-5); the
    # penalty batch is random images too.
    model.train()
    optimizer = torch.optim.Adam([*model.student.parameters(), *model.ae.parameters()],
                                 lr=1e-4, weight_decay=1e-5)
    image, penalty = random_images(1).to(device), random_images(1).to(device)

    def train_step():
        with autocast():
            losses = model(batch=to_input(image), batch_imagenet=to_input(penalty))
        optimizer.zero_grad()
        sum(losses).backward()
        optimizer.step()
        sync()

    steps_per_s = 1.0 / statistics.median(_timed(train_step, warmup, repeats))
    model.eval()

    host = random_images(1).numpy()

    def round_trip():
        amap, score = predict(torch.from_numpy(host).to(device))
        return amap.float().cpu().numpy(), score.float().cpu().numpy()

    per_call, pipelined = {}, {}
    for b in batch_sizes:
        images = random_images(b).to(device)
        per_call[b] = _timed(lambda x=images: sync(predict(x)), warmup, repeats)
        pipelined[b] = _pipelined(lambda x=images: predict(x), sync, repeats)
    latencies = _timed(round_trip, warmup, latency_runs)

    flops = flops_per_image(config)
    kind = torch.cuda.get_device_name(0) if cuda else ""
    nets = {"teacher": model.teacher, "student": model.student, "autoencoder": model.ae}
    params = {k: sum(p.numel() for p in net.parameters()) for k, net in nets.items()}
    return {
        "train_steps_per_s": steps_per_s, "train_images_per_s": steps_per_s,
        "train_batch": 1, "train_chunk": 1, "train_devices": 1,
        **_inference_fields(latencies, per_call, pipelined, flops,
                            peak_tflops(kind, precision)),
        "lower_s": None, "compile_s": None,
        "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "params": sum(params.values()), "params_by_net": params,
        "precision": precision, "tf32": False, "matmul_precision": "float32",
        "inference_devices": 1, "repeats": repeats, "warmup": warmup,
        "latency_runs": latency_runs, "compilation_cache": False,
    }


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


def _random_split(rng: np.random.Generator, n: int, size: int) -> dict[str, np.ndarray]:
    """A training split of `n` random uint8 images, all labelled normal (0)."""
    return {"image": rng.integers(0, 256, (n, size, size, 3), np.uint8),
            "label": np.zeros(n, np.int32)}
