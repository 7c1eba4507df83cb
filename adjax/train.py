"""The one trainer: every method trains here.

`train(config, workdir)` checks everything it can before any long work (the config's values,
the work directory, a checkpointed run's config, the training and test splits), then trains in
compiled chunks (`adjax.runtime`), checkpoints, and calibrates at the end. A work directory holds
one run: the config its checkpoints were made with (`config.json`), the checkpoints, the
per-chunk metrics (`metrics.jsonl`) and the parameter table (`parameters.txt`). Run again with
the same config, training resumes from the last checkpoint and ends where an uninterrupted run
ends; a config that differs in anything but the keys in `RESUMABLE` is refused.

A method whose data streams from the host (`Method.host_stream`, e.g. the EfficientAD teacher
distillation on ImageNet) has no training, validation or test split (`trains_on_splits` is
False): nothing is loaded onto the device, its batches are fed into the compiled chunks, the
next chunk's batches are prepared while the device runs the current one, and a resumed run
reads on from the stream's batch at the checkpoint's step.
"""

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import pathlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from adjax import config as config_lib
from adjax import files, methods, runtime
from adjax.checkpoint import Checkpoints
from adjax.data import datasets
from adjax.methods.base import parameter_table

# Keys a resumed run may change: they cannot alter the steps already taken (`train.steps` may
# only grow past the last checkpoint; what the evaluator reads is not used in training).
RESUMABLE = ("train.steps", "train.steps_per_call", "train.loop", "train.checkpoint_every",
             "train.keep_checkpoints", "train.log_every", "train.log_seconds",
             "train.runs_per_program", "data.cache_dir", "eval.",
             # DDAD's domain adaptation: the last da.steps steps; grown with train.steps, it
             # adds a phase after the steps taken.
             "da.steps")
# On a CPU, a schedule longer than this is one meant for an accelerator.
_CPU_SIZED_STEPS = 5_000


class TrainingError(RuntimeError):
    """Training cannot start or go on; the message says why in one sentence."""


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(saved: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple]:
    """Keys whose values differ between two configs (as dicts): {key: (saved, new)}; a key
    absent on one side shows as "(absent)"."""
    a, b = _flatten(saved), _flatten(new)
    return {k: (a.get(k, "(absent)"), b.get(k, "(absent)")) for k in sorted(a.keys() | b.keys())
            if a.get(k, "(absent)") != b.get(k, "(absent)")}


def check_resume(saved: Mapping[str, Any], config: ml_collections.ConfigDict, workdir,
                 last_step: int) -> None:
    """Refuses, in one sentence, to resume `saved`'s checkpoints with a different config."""
    new = json.loads(config.to_json_best_effort())
    changed = {k: v for k, v in config_differences(saved, new).items()
               if not any(k == r or (r.endswith(".") and k.startswith(r)) for r in RESUMABLE)}
    if changed:
        listing = "; ".join(f"{k}: {old!r} there, {value!r} now"
                            for k, (old, value) in list(changed.items())[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise TrainingError(
            f"{workdir} holds checkpoints (step {last_step}) of a run with another config "
            f"({listing}{more}); use a new --workdir, or the same config to resume.")
    if config.train.steps < last_step:
        raise TrainingError(
            f"config.train.steps is {config.train.steps}, but {workdir} already holds a "
            f"checkpoint at step {last_step}; use a new --workdir or at least {last_step} steps.")


@contextlib.contextmanager
def workdir_lock(workdir: pathlib.Path, log: Callable[[str], None] = print) -> Iterator[None]:
    """Holds an exclusive lock on the `workdir` folder itself (no lock file is left behind); a
    second trainer there stops at once. A bucket cannot be locked: there, one trainer per work
    directory is the user's to keep."""
    if not runtime.is_primary():  # process 0 of a multi-host program holds the lock
        yield
        return
    if files.is_remote(workdir):
        log(f"adjax: note: {workdir} is a bucket, which cannot be locked; run one trainer there")
        yield
        return
    fd = os.open(workdir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainingError(f"another adjax train is running in {workdir}; wait for it to "
                                f"finish or use another --workdir.") from None
        except OSError:  # e.g. a FUSE-mounted bucket without locks
            log(f"adjax: note: {workdir} cannot be locked; run one trainer there")
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class Progress:
    """Progress lines: every `log_every` steps and at least every `log_seconds` seconds.

    Rates and ETAs count from the end of the first call, so that compilation is not in them;
    the first line says how long compiling and the first call took.
    """

    def __init__(self, config: ml_collections.ConfigDict, start: int,
                 log: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic):
        self.total, self.every = config.train.steps, config.train.log_every
        self.seconds = config.train.log_seconds
        self.log, self.clock = log, clock
        self.began = clock()
        self.first: tuple[int, float] | None = None  # (step, time) at the end of the first call
        self.last_step, self.last_time = start, self.began

    def rate(self, step: int, now: float) -> float | None:
        """Steps per second since the first call, or None before a second one."""
        if self.first is None or step <= self.first[0] or now <= self.first[1]:
            return None
        return (step - self.first[0]) / (now - self.first[1])

    def update(self, step: int, loss: Callable[[], float]) -> None:
        """Called after each call (chunk or host step) with the step reached; `loss()` fetches
        the last loss only when a line is printed.

        A call returns when its work is dispatched, not done: the clock is read again after
        `loss()` has waited for the device, so that times and rates count finished steps.
        """
        if self.first is None:
            value = loss()
            self.first = (step, self.clock())
            self.log(f"adjax: compiled and ran the first {step - self.last_step} step(s) in "
                     f"{self.first[1] - self.began:.1f} s; training goes on")
        now = self.clock()
        due = (step - self.last_step >= self.every or now - self.last_time >= self.seconds
               or step == self.total)
        if not due:
            return
        value = loss()
        now = self.clock()
        rate = self.rate(step, now)
        speed = "" if rate is None else (
            f"  {rate:.3g} steps/s  ETA {_duration((self.total - step) / rate)}")
        self.log(f"step {step}/{self.total}  loss {value:.4f}{speed}")
        self.last_step, self.last_time = step, now


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    return (f"{days}d " if days else "") + time.strftime("%H:%M:%S", time.gmtime(rest))


def _say(message: str) -> None:
    print(message, flush=True)


def _quiet(message: str) -> None:
    del message


@dataclasses.dataclass
class OpenRun:
    """A run's work directory opened for training: checked against its checkpoints, its splits
    decoded and its test split checked, its config written."""

    config: ml_collections.ConfigDict
    workdir: Any
    checkpoints: Checkpoints
    start: int | None  # the step of the last checkpoint; None for a new run
    train_split: Any   # None for a method that streams its data from the host
    val_split: Any
    n_test: int
    pretrained: Any    # the method's pretrained weights (read for a new run only)

    @property
    def name(self) -> str:
        return f"{self.config.method}:{self.config.get('variant', '')}"

    @property
    def pools(self) -> dict[str, Any]:
        """The training split as the trainer's "train" pool (none for a streaming method);
        with its masks when it holds anomalous images (supervised methods)."""
        if self.train_split is None:
            return {}
        pool = {"image": self.train_split.images, "label": self.train_split.labels}
        if self.train_split.labels.any():
            pool["mask"] = self.train_split.masks
        return pool

    def where(self, devices: str) -> str:
        if self.train_split is None:
            return f"images streamed from the host, {devices}"
        return (f"{len(self.train_split)} images ({len(self.val_split)} held out for "
                f"calibration, {self.n_test} to test), {devices}")


def open_run(method, config: ml_collections.ConfigDict, workdir, log) -> OpenRun:
    """Opens `workdir` (an existing folder, locked by the caller) for `config`: checks it
    against its checkpoints, reads the splits (and checks the test split), reads the pretrained
    weights of a new run, and only then writes the config. The caller closes
    `run.checkpoints`."""
    checkpoints = Checkpoints(workdir / "checkpoints", config.train.keep_checkpoints)
    try:
        start = checkpoints.latest_step()
        saved_path = workdir / "config.json"
        if start is not None:
            saved = json.loads(files.read_text(saved_path, "config file")) \
                if saved_path.is_file() else {}
            check_resume(saved, config, workdir, start)
        train_split = val_split = None
        n_test = 0
        if method.trains_on_splits:
            train_split, val_split = datasets.train_and_validation(config.data, config.seed,
                                                                   log=log)
            n_test = datasets.check_test(config.data, log=log)
        # Pretrained weights (and a streaming method's data) are checked before anything is
        # written.
        pretrained = method.pretrained() if start is None else None
        if runtime.is_primary():
            files.write_json(saved_path, json.loads(config.to_json_best_effort()))
    except BaseException:
        checkpoints.close()
        raise
    return OpenRun(config, workdir, checkpoints, start, train_split, val_split, n_test,
                   pretrained)


def first_state(method, run: OpenRun, train_pool, sharding, log, devices: str) -> Any:
    """The run's state at its start: initialised (with its pretrained weights), or restored
    from its last checkpoint, on `sharding`."""
    k_init = jax.random.split(jax.random.key(run.config.seed))[0]
    if run.start is None:
        log(f"adjax: initialising {run.name} on {run.where(devices)}")
        return jax.device_put(method.init(k_init, train_pool, run.pretrained), sharding)
    like = jax.eval_shape(method.init, k_init, train_pool)
    like = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                        like)
    log(f"adjax: resuming {run.name} from the checkpoint at step {run.start} in {run.workdir}; "
        f"{run.where(devices)}")
    return run.checkpoints.restore(run.start, like)


def train_key(config: ml_collections.ConfigDict) -> jax.Array:
    """The run's training PRNG stream (the other half of its seed's split feeds `init`)."""
    return jax.random.split(jax.random.key(config.seed))[1]


def note_cpu_schedule(config: ml_collections.ConfigDict, platform: str, log) -> None:
    """Says so when a schedule sized for an accelerator is about to run on a CPU."""
    if platform == "cpu" and config.train.steps > _CPU_SIZED_STEPS:
        log(f"adjax: note: {config.train.steps:,} steps is a schedule sized for a GPU or TPU; "
            f"on this CPU it can take hours (the ETA follows the first steps). The `quick` "
            f"variant of each config is sized for a CPU.")


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
          devices: Sequence[jax.Device] | None = None,
          on_chunk: Callable[[int, dict[str, float]], None] | None = None,
          log: Callable[[str], None] = _say,
          clock: Callable[[], float] = time.monotonic) -> Any:
    """Trains `config`'s method in `workdir`, resuming from its last checkpoint; returns the
    final, calibrated state.

    `on_chunk(step, metrics)` is called after every compiled call with the step reached and the
    mean metrics since the last one (progress hooks, tests); `log` prints progress lines and
    `clock` times them.
    """
    config_lib.validate(config)
    method = methods.build(config)
    workdir = files.ensure_folder(workdir, "work directory")
    if not runtime.is_primary():
        log = _quiet  # the other processes of a multi-host program print nothing
    with workdir_lock(workdir, log):
        run = open_run(method, config, workdir, log)
        try:
            return _train(method, run, devices, on_chunk, log, clock)
        finally:
            run.checkpoints.close()


def _train(method, run: OpenRun, devices, on_chunk, log, clock):
    config, tcfg = run.config, run.config.train
    mesh = runtime.make_mesh(tcfg.batch_size, devices, log=log)
    replicated = NamedSharding(mesh, P())
    platform = mesh.devices.flat[0].platform
    note_cpu_schedule(config, platform, log)
    pools = runtime.place_pools(run.pools, method.extra_pools(), mesh)
    state = first_state(method, run, pools.get("train", {}), replicated, log,
                        f"{mesh.size} {platform} device(s)")
    save_parameters(method, state, run.workdir, log)
    metrics_log = MetricsLog(run.workdir / "metrics.jsonl", run.start or 0)
    if run.start != tcfg.steps:  # else: a finished run, already calibrated
        state = _run(method, config, state, pools, train_key(config), mesh, run.checkpoints,
                     run.workdir, metrics_log, on_chunk,
                     Progress(config, run.start or 0, log, clock))
        if run.val_split is not None:
            val = {"image": runtime.put_global(run.val_split.images, replicated)}
            state = method.calibrate(state, val)
        run.checkpoints.save(tcfg.steps, state)
    return state


def save_parameters(method, state, workdir: pathlib.Path, log) -> None:
    """Writes clu's parameter table to `parameters.txt` and logs the count per net."""
    if runtime.is_primary():
        files.write_text(workdir / "parameters.txt", parameter_table(state.params) + "\n")
    counts = method.describe(state)["params"]
    log("adjax: parameters " + ", ".join(f"{name} {n:,}" for name, n in counts.items())
        + f" (table: {workdir / 'parameters.txt'})")


class MetricsLog:
    """`metrics.jsonl`: one JSON line per compiled call. The lines of steps after `step` (redone
    after a resume) are dropped when it is opened; the file is rewritten whole (atomically) at
    each line, which also works in a bucket, where objects cannot be appended to."""

    def __init__(self, path, step: int):
        self.path = path
        lines = files.read_text(path, "metrics file").splitlines() if path.exists() else []
        self.lines = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        if len(self.lines) != len(lines):
            self._write()

    def append(self, entry: dict[str, Any]) -> None:
        self.lines.append(json.dumps(entry))
        self._write()

    def _write(self) -> None:
        if runtime.is_primary():
            files.write_text(self.path, "".join(line + "\n" for line in self.lines))


def first_bad(history: dict[str, np.ndarray]) -> tuple[int, str, float] | None:
    """(index, metric, value) of the first step with a non-finite metric, or None."""
    for i in range(len(next(iter(history.values())))):
        for name, values in history.items():
            if not math.isfinite(values[i]):
                return i, name, float(values[i])
    return None


def _run(method, config, state, pools, key, mesh, checkpoints, workdir, metrics_log, on_chunk,
         progress):
    stream = method.host_stream(int(state.step))
    try:
        return _chunks(method, config, state, pools, key, mesh, checkpoints, workdir,
                       metrics_log, on_chunk, progress, stream)
    finally:
        if stream is not None:
            stream.close()  # stops the decoding processes


def _chunks(method, config, state, pools, key, mesh, checkpoints, workdir, metrics_log,
            on_chunk, progress, stream):
    tcfg = config.train
    batch_sharding = NamedSharding(mesh, P("data"))
    chunks: dict[int, Callable] = {}
    step = int(state.step)

    def next_feed(at):
        length = min(tcfg.steps_per_call, tcfg.steps - at)
        return None if stream is None or length <= 0 else runtime.feed(stream, length, mesh)

    fed = next_feed(step)
    while step < tcfg.steps:
        length = min(tcfg.steps_per_call, tcfg.steps - step)
        if length not in chunks:  # a shorter last chunk compiles once more
            chunks[length] = runtime.make_chunk(method, config, batch_sharding, length)
        first = step
        state, history = chunks[length](
            state, pools, key, fed,
            on_step=lambda s, m: progress.update(s, lambda: float(m["loss"])))
        fed = next_feed(step + length)  # read while the device runs the dispatched chunk
        history = {k: np.asarray(v, np.float64) for k, v in history.items()}
        step += length
        bad = first_bad(history)
        if bad is not None:
            i, name, value = bad
            last = checkpoints.latest_step()
            raise TrainingError(
                f"{name} became {value} at step {first + i + 1} (the first such step); "
                + (f"the last good checkpoint is at step {last} in {workdir}."
                   if last is not None else "no checkpoint had been written yet."))
        means = {k: float(v.mean()) for k, v in history.items()}
        now = progress.clock()
        metrics_log.append({"step": step, "steps": length, **means,
                            "steps_per_s": progress.rate(step, now),
                            "elapsed_s": now - progress.began})
        if not chunks[length].per_step:
            progress.update(step, lambda m=means: m["loss"])
        if step < tcfg.steps and step // tcfg.checkpoint_every > first // \
                tcfg.checkpoint_every:
            checkpoints.save(step, state)
        if on_chunk is not None:
            on_chunk(step, means)
    return state
