"""Many runs, one program: a benchmark matrix (categories x seeds) trained together.

`adjax train --runs=categories=all,seeds=0-4 --workdir=W ...` trains every (category, seed)
pair of the matrix in one compiled program: the runs' states are stacked on a leading run axis
and the trainer's step is `vmap`ped over it (`adjax.runtime.make_chunk(runs=...)`). Each run
keeps its own training split (pools of different sizes are padded and sampled within their
true length), its own PRNG stream (from its seed, as when it trains alone) and its own
calibration, so it ends where it would have alone (up to the float rounding of batched
kernels). The run axis is sharded over the local devices that divide it.

Each run has a work directory of its own, `W/<category>-seed<seed>/`, with its config,
checkpoints and metrics as a single run's, so `adjax eval --workdir=W` (every run, one record
each) and `adjax eval --workdir=W/<run>` work unchanged; `W/matrix.json` lists the runs.
Memory decides how many runs share a program (`config.train.runs_per_program`, 0: as many as
fit); the trainer says how many it packs and why.
"""

import json
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from adjax import config as config_lib
from adjax import files, methods, runtime
from adjax.data import datasets
from adjax.data.layouts import DataError
from adjax.train import (
    MetricsLog,
    OpenRun,
    Progress,
    TrainingError,
    first_bad,
    first_state,
    note_cpu_schedule,
    open_run,
    save_parameters,
    train_key,
    workdir_lock,
)

MATRIX_FILE = "matrix.json"
# Share of the free device memory the runs of one program may take.
_MEMORY_SHARE = 0.8


def parse_runs(spec: str) -> dict[str, list[str]]:
    """`categories=tiles,disc,seeds=0-4` -> {"categories": ["tiles", "disc"], "seeds":
    ["0", "1", "2", "3", "4"]}: a token with "=" starts a key, the tokens after it (until the
    next key) are its values; `a-b` in seeds is a range."""
    out: dict[str, list[str]] = {}
    key = None
    for token in filter(None, spec.split(",")):
        if "=" in token:
            key, token = token.split("=", 1)
            if key not in ("categories", "seeds"):
                raise ValueError(f"--runs takes categories= and seeds=, not {key}=.")
            out[key] = []
        if key is None:
            raise ValueError(f"--runs must start with categories= or seeds=, got {spec!r}.")
        out[key].append(token)
    seeds = []
    for token in out.get("seeds", []):
        match = re.fullmatch(r"(\d+)-(\d+)", token)
        if match:
            seeds += [str(s) for s in range(int(match[1]), int(match[2]) + 1)]
        elif token.isdigit():
            seeds.append(token)
        else:
            raise ValueError(f"--runs: seeds are numbers or ranges a-b, got {token!r}.")
    if "seeds" in out:
        out["seeds"] = seeds
    return out


def expand(config: ml_collections.ConfigDict, spec: str) -> list[tuple[str, int]]:
    """The (category, seed) pairs of `spec` for `config`'s data set; `categories=all` is every
    category folder under the root. Categories that do not exist stop with one sentence naming
    them, before any work."""
    parsed = parse_runs(spec)
    present = datasets.categories(config.data)
    wanted = parsed.get("categories", [config.data.category])
    if wanted == ["all"]:
        wanted = present
    for category in wanted:
        config_lib.path_component(category, "a --runs category")
    missing = [c for c in wanted if c not in present]
    if missing:
        raise DataError(f"--runs names categories that are not under {config.data.root}: "
                        f"{', '.join(missing)} (there: {', '.join(present) or 'none'}).")
    seeds = [int(s) for s in parsed.get("seeds", [str(config.seed)])]
    return [(c, s) for c in wanted for s in seeds]


def run_config(config: ml_collections.ConfigDict, category: str,
               seed: int) -> ml_collections.ConfigDict:
    """`config` for one run of the matrix."""
    out = ml_collections.ConfigDict(config.to_dict())
    out.data.category, out.seed = category, seed
    return out


def run_name(category: str, seed: int) -> str:
    return f"{category}-seed{seed}"


def read_matrix(workdir) -> list[Any] | None:
    """The run work directories of a matrix work directory, or None for a single run's."""
    path = files.path(workdir) / MATRIX_FILE
    if not path.exists():
        return None
    entries = json.loads(files.read_text(path, "matrix file"))["runs"]
    return [files.path(workdir) / e["workdir"] for e in entries]


def _stack(trees: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _unstack(tree: Any, n: int) -> list[Any]:
    return [jax.tree.map(lambda a, i=i: a[i], tree) for i in range(n)]


def _tree_bytes(tree: Any) -> int:
    return int(sum(np.prod(a.shape) * np.dtype(a.dtype).itemsize
                   for a in jax.tree.leaves(tree)))


def _free_bytes(device: jax.Device) -> int | None:
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    if device.platform == "cpu":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return None


def runs_per_program(method, config, state, pools, n_runs: int, devices, log) -> int:
    """How many runs share one compiled program: `config.train.runs_per_program`, or as many
    as fit in the free memory of the devices (one run's state, images and the compiled step's
    working memory, measured by compiling one step of one run)."""
    fixed = config.train.runs_per_program
    if fixed:
        return min(fixed, n_runs)
    one_step = ml_collections.ConfigDict(config.to_dict())
    one_step.train.loop = "host"  # the chunk's compiled function is then one step
    step = runtime.make_chunk(method, one_step, None, 1).compiled
    analysis = step.lower(state, pools, train_key(config)).compile().memory_analysis()
    work = int(getattr(analysis, "temp_size_in_bytes", 0) or 0) if analysis else 0
    per_run = _tree_bytes(state) * 2 + _tree_bytes(pools["train"]) + work  # state + optimiser
    free = _free_bytes(devices[0])
    if free is None:
        log(f"adjax: {n_runs} runs in one program (the device does not report its memory)")
        return n_runs
    fit = max(1, int(_MEMORY_SHARE * free * len(devices) // per_run))
    packed = min(fit, n_runs)
    log(f"adjax: {n_runs} runs; {packed} per program: one run needs about "
        f"{per_run / 2**20:.0f} MiB (state, images, working memory) and "
        f"{len(devices)} x {devices[0].platform} device(s) have {free / 2**30:.1f} GiB free each")
    return packed


def train_matrix(config: ml_collections.ConfigDict, workdir: str | os.PathLike, spec: str, *,
                 devices: Sequence[jax.Device] | None = None,
                 log: Callable[[str], None] = print,
                 clock: Callable[[], float] | None = None) -> list[Any]:
    """Trains the matrix `spec` (see `parse_runs`) of `config` in `workdir`, resuming where its
    runs' checkpoints are; returns the runs' final states in matrix order."""
    import time

    config_lib.validate(config)
    method = methods.build(config)
    if not method.trains_on_splits:
        raise TrainingError(f"{config.method} streams its data from the host and trains one run "
                            f"at a time; drop --runs.")
    pairs = expand(config, spec)
    workdir = files.ensure_folder(workdir, "work directory")
    with workdir_lock(workdir, log):
        if runtime.is_primary():
            files.write_json(workdir / MATRIX_FILE, {
                "runs": [{"category": c, "seed": s, "workdir": run_name(c, s)}
                         for c, s in pairs],
                "config": json.loads(config.to_json_best_effort())})
        runs: list[OpenRun] = []
        try:
            for category, seed in pairs:
                folder = files.ensure_folder(workdir / run_name(category, seed),
                                             "work directory")
                runs.append(open_run(method, run_config(config, category, seed), folder, log))
            starts = {r.start for r in runs}
            if len(starts) > 1:
                listing = ", ".join(f"{r.workdir.name} at {r.start}" for r in runs)
                raise TrainingError(f"the runs of {workdir} stopped at different steps "
                                    f"({listing}); resume them one by one with --workdir.")
            return _train_runs(method, config, runs, devices or jax.devices(), log,
                               clock or time.monotonic)
        finally:
            for run in runs:
                run.checkpoints.close()


def _padded_pool(runs: Sequence[OpenRun]) -> dict[str, np.ndarray]:
    """The runs' training splits padded to the longest, stacked, with their true lengths."""
    size = max(len(r.train_split) for r in runs)

    def pad(a):
        return np.concatenate([a, np.repeat(a[:1], size - len(a), axis=0)]) \
            if len(a) < size else a

    return {"image": np.stack([pad(r.train_split.images) for r in runs]),
            "label": np.stack([pad(r.train_split.labels) for r in runs]),
            "length": np.asarray([len(r.train_split) for r in runs], np.int32)}


def _train_runs(method, config, runs: list[OpenRun], devices, log, clock) -> list[Any]:
    note_cpu_schedule(config, devices[0].platform, log)
    pool = runtime.place_pools({"image": runs[0].train_split.images,
                                "label": runs[0].train_split.labels},
                               method.extra_pools(), jax.sharding.Mesh(devices[:1], ("data",)))
    shapes = jax.eval_shape(method.init, jax.random.key(0), pool["train"])
    size = runs_per_program(method, config, shapes, pool, len(runs), devices, log)
    states = []
    for start in range(0, len(runs), size):
        states += _train_group(method, config, runs[start:start + size], devices, log, clock)
    return states


def _train_group(method, config, runs, devices, log, clock) -> list[Any]:
    n = len(runs)
    width = max(d for d in range(1, min(n, len(devices)) + 1) if n % d == 0)
    mesh = jax.sharding.Mesh(np.asarray(devices[:width]), ("runs",))
    by_run, replicated = NamedSharding(mesh, P("runs")), NamedSharding(mesh, P())
    one = jax.sharding.SingleDeviceSharding(devices[0])
    where = f"{width} {devices[0].platform} device(s) for {n} runs"
    singles = []
    for run in runs:
        train_pool = runtime.place_pools({"image": run.train_split.images,
                                          "label": run.train_split.labels}, {},
                                         jax.sharding.Mesh(devices[:1], ("data",)))["train"]
        state = first_state(method, run, train_pool, one, log, where)
        save_parameters(method, state, run.workdir, lambda _: None)
        singles.append(state)
    state = jax.device_put(_stack(singles), by_run)
    padded = _padded_pool(runs)
    pools = {"train": {k: runtime.put_global(v, by_run) for k, v in padded.items()}}
    pools |= {k: {k: runtime.put_global(v, replicated)} for k, v in method.extra_pools().items()}
    keys = jax.device_put(jnp.stack([train_key(r.config) for r in runs]), by_run)
    logs = [MetricsLog(r.workdir / "metrics.jsonl", r.start or 0) for r in runs]
    start = runs[0].start or 0
    tcfg = config.train
    if start != tcfg.steps:
        progress = Progress(config, start, log, clock)
        state = _loop(method, config, state, pools, keys, runs, logs, progress, n)
    finals = []
    for run, single in zip(runs, _unstack(state, n), strict=True):
        if start != tcfg.steps:
            val = {"image": jnp.asarray(run.val_split.images)}
            single = method.calibrate(jax.device_put(single, one), val)
            run.checkpoints.save(tcfg.steps, single)
        finals.append(single)
    return finals


def _loop(method, config, state, pools, keys, runs, logs, progress, n):
    tcfg = config.train
    chunks: dict[int, Callable] = {}
    step = int(jnp.ravel(state.step)[0])
    while step < tcfg.steps:
        length = min(tcfg.steps_per_call, tcfg.steps - step)
        if length not in chunks:
            chunks[length] = runtime.make_chunk(method, config, None, length, runs=n)
        first = step
        state, history = chunks[length](
            state, pools, keys,
            on_step=lambda s, m: progress.update(s, lambda: float(jnp.mean(m["loss"]))))
        history = {k: np.asarray(v, np.float64) for k, v in history.items()}  # [length, n]
        step += length
        for i, run in enumerate(runs):
            bad = first_bad({k: v[:, i] for k, v in history.items()})
            if bad is not None:
                j, name, value = bad
                last = run.checkpoints.latest_step()
                raise TrainingError(
                    f"{name} became {value} at step {first + j + 1} in the run "
                    f"{run.workdir.name} (the first such step); "
                    + (f"the last good checkpoints are at step {last}."
                       if last is not None else "no checkpoint had been written yet."))
        now = progress.clock()
        for i, log in enumerate(logs):
            log.append({"step": step, "steps": length,
                        **{k: float(v[:, i].mean()) for k, v in history.items()},
                        "steps_per_s": progress.rate(step, now),
                        "elapsed_s": now - progress.began})
        if not chunks[length].per_step:
            progress.update(step, lambda h=history: float(h["loss"].mean()))
        if step < tcfg.steps and step // tcfg.checkpoint_every > first // tcfg.checkpoint_every:
            for run, single in zip(runs, _unstack(state, n), strict=True):
                run.checkpoints.save(step, single)
    return state
