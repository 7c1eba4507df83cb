"""The results record: one JSON file per (run, method, data set, category).

Schema (DESIGN.md, "The results record"); records are validated on write and on read, and
written to a temporary name, then renamed, so a crash never leaves half a file.
"""

import datetime
import json
import math
import os
import pathlib
import platform
import subprocess
import uuid
from typing import Any

from adjax import files

SCHEMA = 1
KINDS = ("eval", "bench", "paper")
# field -> allowed types; None-able fields are listed in _OPTIONAL.
_FIELDS: dict[str, tuple[type, ...]] = {
    "schema": (int,), "kind": (str,), "method": (str,), "variant": (str,), "dataset": (str,),
    "category": (str,), "image_size": (int,), "metrics": (dict,), "env": (dict,),
    "config": (dict,), "created": (str,), "source": (str,),
}
_OPTIONAL: dict[str, tuple[type, ...]] = {"bench": (dict,), "notes": (str, dict, list),
                                          "run": (dict,)}


class RecordError(ValueError):
    """A results record that does not follow the schema."""


def environment() -> dict[str, Any]:
    """Where a measurement was made: platform, device kind and count, versions, git commit."""
    import flax
    import jax

    device = jax.devices()[0]
    return {"platform": device.platform, "device_kind": device.device_kind,
            "device_count": jax.device_count(), "process_count": jax.process_count(),
            "jax": jax.__version__, "flax": flax.__version__, "python": platform.python_version(),
            "adjax": git_commit()}


def git_commit() -> str:
    """The adjax checkout's commit (with '+dirty' for local changes), or 'unknown'."""
    here = pathlib.Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty.strip() else "")


def make_record(kind: str, *, method: str, variant: str, dataset: str, category: str,
                image_size: int, metrics: dict[str, Any], config: dict[str, Any],
                source: str = "adjax", env: dict[str, Any] | None = None,
                **extra: Any) -> dict[str, Any]:
    """Builds and validates a record; `extra` holds the optional fields (bench, notes, run)."""
    record = {"schema": SCHEMA, "kind": kind, "method": method, "variant": variant,
              "dataset": dataset, "category": category, "image_size": image_size,
              "metrics": metrics, "env": env if env is not None else environment(),
              "config": config, "source": source,
              "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
              **extra}
    validate(record)
    return record


def validate(record: Any, where: str = "record") -> None:
    """Raises RecordError naming `where` and the field at fault."""
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
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not math.isfinite(value)):
            raise RecordError(f"{where}: metrics[{name!r}] must be a finite number or null.")
    if record["kind"] == "bench" and "bench" not in record:
        raise RecordError(f"{where}: a bench record needs the field 'bench'.")


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
    path = pathlib.Path(directory) / filename(record)
    return files.write_text(path, json.dumps(record, indent=1, allow_nan=False) + "\n")


def read(path: str | os.PathLike) -> dict[str, Any]:
    """Reads and validates one record; errors name the file."""
    try:
        record = json.loads(pathlib.Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RecordError(f"results file {path} could not be read as JSON ({err}).") from err
    validate(record, where=f"results file {path}")
    return record


def read_all(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record in `directory` (recursively), in file-name order."""
    return [read(p) for p in sorted(pathlib.Path(directory).rglob("*.json"))
            if not p.name.startswith(".")]
