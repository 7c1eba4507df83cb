"""The results record: one JSON file per (run, method, data set, category).

A record is a JSON object with the fields of `_FIELDS` (schema, kind, method, variant, data set,
category, image size, metrics, env, config, created, source) and optionally `bench`, `notes` and
`run`; `validate` says what each must hold. Records are validated on write and on read, and
written to a temporary name, then renamed, so a crash never leaves half a file.
"""

import datetime
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import re
import socket
import subprocess
import uuid
from typing import Any

from adjax import files

SCHEMA = 1
KINDS = ("eval", "bench", "paper")
CREATED_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # ISO 8601, UTC, whole seconds: 2026-01-01T00:00:00Z
# field -> allowed types; None-able fields are listed in _OPTIONAL.
_FIELDS: dict[str, tuple[type, ...]] = {
    "schema": (int,), "kind": (str,), "method": (str,), "variant": (str,), "dataset": (str,),
    "category": (str,), "image_size": (int,), "metrics": (dict,), "env": (dict,),
    "config": (dict,), "created": (str,), "source": (str,),
}
_OPTIONAL: dict[str, tuple[type, ...]] = {"bench": (dict,), "notes": (str, dict, list),
                                          "run": (dict,)}
_CREATED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")

# Words of a metric name that make it no fraction: sizes and counts, times and rates, decision
# thresholds (scores) and reconstruction errors.
_RAW_WORDS = {"params", "gflops", "batch", "bytes", "s", "ms", "latency", "epochs", "threshold",
              "recon", "count"}

_PACKAGE = pathlib.Path(__file__).resolve().parent
_CPUINFO = pathlib.Path("/proc/cpuinfo")


class RecordError(ValueError):
    """A results record that does not follow the schema."""


def is_fraction(name: str) -> bool:
    """Whether metric `name` is a fraction in [0, 1] (validated so, printed in percent).

    A name is not a fraction when one of its `_`-separated words is in `_RAW_WORDS`: counts
    and sizes (`params`, `gflops_per_image`, `train_batch`, `peak_bytes`, `per_image_count`),
    times and rates (`compile_s`, `latency_ms_b1`, `images_per_s`, `train_s_per_100_epochs`),
    decision
    thresholds (`image_f1_threshold`, `image_threshold_val_quantile`: they are scores) and
    reconstruction errors (`recon_mse`).
    """
    return not _RAW_WORDS.intersection(name.split("_"))


def environment() -> dict[str, Any]:
    """Where and with what a measurement was made: platform, device kind and count, versions
    (`adjax` as `adjax_version()`), the host's name, its CPU model and its load averages over
    1, 5 and 15 minutes at the time of the call (None where the OS has none)."""
    import flax
    import jax

    device = jax.devices()[0]
    return {"platform": device.platform, "device_kind": device.device_kind,
            "device_count": jax.device_count(), "process_count": jax.process_count(),
            "jax": jax.__version__, "flax": flax.__version__, "python": platform.python_version(),
            "adjax": adjax_version(), "host": socket.gethostname(), "cpu": cpu_model(),
            "load": _load()}


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else `platform.processor()` or 'unknown'."""
    try:
        text = files.read_text(_CPUINFO)
    except ValueError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return platform.processor() or "unknown"


def _load() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except (AttributeError, OSError):  # no load averages on this OS
        return None


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=_PACKAGE, capture_output=True, text=True,
                          timeout=5, check=True).stdout.strip()


def _checkout() -> tuple[str, bool] | None:
    """(commit, dirty) of the git checkout adjax is imported from, or None when the package
    is not a checkout's own `adjax/` folder (an installed wheel, even inside someone's repo)."""
    try:
        top = _git("rev-parse", "--show-toplevel")
        if pathlib.Path(top).resolve() / "adjax" != _PACKAGE:
            return None
        commit = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit, bool(dirty)


def git_commit() -> str:
    """The adjax checkout's commit (with '+dirty' for local changes), or 'unknown'."""
    checkout = _checkout()
    if checkout is None:
        return "unknown"
    commit, dirty = checkout
    return commit + ("+dirty" if dirty else "")


def adjax_version() -> str:
    """The installed adjax version, with `+g<commit>` (and `.dirty` for local changes) when the
    package is imported from a git checkout: e.g. '0.1.0+g7e4196a....dirty'."""
    try:
        version = importlib.metadata.version("adjax")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
        version = "unknown"
    checkout = _checkout()
    if checkout is None:
        return version
    commit, dirty = checkout
    return f"{version}+g{commit}" + (".dirty" if dirty else "")


def make_record(kind: str, *, method: str, variant: str, dataset: str, category: str,
                image_size: int, metrics: dict[str, Any], config: dict[str, Any],
                source: str = "adjax", env: dict[str, Any] | None = None,
                **extra: Any) -> dict[str, Any]:
    """Builds and validates a record; `extra` holds the optional fields (bench, notes, run)."""
    record = {"schema": SCHEMA, "kind": kind, "method": method, "variant": variant,
              "dataset": dataset, "category": category, "image_size": image_size,
              "metrics": metrics, "env": env if env is not None else environment(),
              "config": config, "source": source,
              "created": datetime.datetime.now(datetime.UTC).strftime(CREATED_FORMAT),
              **extra}
    validate(record)
    return record


def validate(record: Any, where: str = "record") -> None:
    """Raises RecordError naming `where` and the field at fault.

    Beyond the types: `kind` is one of KINDS, every metric is a finite number or null and a
    fraction (`is_fraction`) lies in [0, 1], `created` is an ISO-8601 UTC time written as
    2026-01-01T00:00:00Z, and a bench record has `bench`.
    """
    if not isinstance(record, dict):
        raise RecordError(f"{where} is not a JSON object.")
    for field, types in _FIELDS.items():
        if field not in record:
            raise RecordError(f"{where} lacks the field {field!r}.")
        if not isinstance(record[field], types) or isinstance(record[field], bool):
            raise RecordError(f"{where}: field {field!r} must be {types[0].__name__}, "
                              f"got {type(record[field]).__name__}.")
    for field in record:
        if field not in _FIELDS and field not in _OPTIONAL:
            raise RecordError(f"{where} has an unknown field {field!r}.")
        if field in _OPTIONAL and not isinstance(record[field], _OPTIONAL[field]):
            raise RecordError(f"{where}: field {field!r} has the wrong type.")
    if record["schema"] != SCHEMA:
        raise RecordError(f"{where}: schema {record['schema']} is not {SCHEMA}.")
    if record["kind"] not in KINDS:
        raise RecordError(f"{where}: field 'kind' must be one of {', '.join(KINDS)}.")
    for name, value in record["metrics"].items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value):
            raise RecordError(f"{where}: metrics[{name!r}] must be a finite number or null.")
        if is_fraction(name) and not 0 <= value <= 1:
            raise RecordError(f"{where}: metrics[{name!r}] is {value}, but a fraction must lie "
                              f"in [0, 1].")
    if not _is_created(record["created"]):
        raise RecordError(f"{where}: field 'created' must be an ISO-8601 UTC time such as "
                          f"2026-01-01T00:00:00Z, got {record['created']!r}.")
    if record["kind"] == "bench" and "bench" not in record:
        raise RecordError(f"{where}: a bench record needs the field 'bench'.")


def _is_created(text: str) -> bool:
    if not _CREATED.fullmatch(text):
        return False
    try:  # the pattern lets month 13 or 25 o'clock through
        datetime.datetime.strptime(text, CREATED_FORMAT)
    except ValueError:
        return False
    return True


def is_record(obj: Any) -> bool:
    """Whether parsed JSON claims to be a results record: an object with 'schema' and 'kind'.

    Such an object is validated strictly; other JSON beside records (a work directory's
    config.json, checkpoint metadata) is not a record.
    """
    return isinstance(obj, dict) and "schema" in obj and "kind" in obj


def filename(record: dict[str, Any]) -> str:
    """A file name that sorts by kind, method, data set and category; a random suffix keeps two
    records created in the same second apart."""
    stamp = record["created"].replace(":", "").replace("-", "") + "-" + uuid.uuid4().hex[:6]
    parts = [record["kind"], record["method"], record["variant"], record["dataset"],
             record["category"], stamp]
    return "-".join(p.replace("/", "_").replace(" ", "_") for p in parts if p) + ".json"


def write(record: dict[str, Any], directory: str | os.PathLike) -> pathlib.Path:
    """Validates `record` and writes it atomically into `directory`; returns its path."""
    validate(record)
    path = files.path(directory) / filename(record)
    return files.write_text(path, json.dumps(record, indent=1, allow_nan=False) + "\n")


def _load_json(path: pathlib.Path) -> Any:
    try:
        text = files.read_text(path, what="results file")
    except ValueError as err:  # not UTF-8, a folder, unreadable: already one sentence
        raise RecordError(str(err)) from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RecordError(f"results file {path} is not JSON ({err.msg} at line {err.lineno}, "
                          f"column {err.colno}).") from err


def read(path: str | os.PathLike) -> dict[str, Any]:
    """Reads and validates one record; errors name the file."""
    path = files.path(path)
    record = _load_json(path)
    validate(record, where=f"results file {path}")
    return record


def read_all(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record under `directory` (recursively), in path order.

    `directory` may be a results folder or a folder of work directories (records in
    `<workdir>/results/`). Every `*.json` file is parsed; one whose object has 'schema' and
    'kind' (`is_record`) is a record and is validated strictly, other JSON (config.json,
    checkpoint metadata) is skipped. Hidden files and folders are skipped; a `*.json` file that
    is not UTF-8 JSON, a missing folder or a bad record raises a RecordError naming it.
    """
    root = files.path(directory)
    if not root.is_dir():
        raise RecordError(f"the results folder {root} "
                          + ("is a file, not a folder." if root.exists() else "does not exist."))
    out = []
    for path in files.files_under(root, ".json"):
        inside = str(path)[len(str(root)):].strip("/").split("/")
        if any(part.startswith(".") for part in inside):
            continue
        obj = _load_json(path)
        if is_record(obj):
            validate(obj, where=f"results file {path}")
            out.append(obj)
    return out
