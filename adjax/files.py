"""Every file adjax writes goes through here: whole or not at all, and readable as the umask says.

A local file is written to a temporary name in its own folder, then renamed over the final
name, so a reader (or a crash) never sees half a file. `tempfile.mkstemp` creates files as 0600
whatever the umask; results, caches and configs are meant to be shared (a group's results
folder), so the finished file gets the mode an ordinary `open(..., "w")` would have given it.

Work directories and results folders may also be buckets (`gs://`, `s3://`, ...): `path` gives
etils' `epath.Path` for a URL, the path library orbax writes checkpoints with (gs:// needs
`gcsfs` or TensorFlow installed, s3:// `s3fs`). An object store makes an object visible only
once it is whole, so there a file is written in place.
"""

import contextlib
import json
import os
import pathlib
import re
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, Any

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(p: str | os.PathLike) -> bool:
    """Whether `p` is a URL (a bucket) rather than a local path."""
    return bool(_URL.match(os.fspath(p)))


def path(p: str | os.PathLike) -> Any:
    """A local `pathlib.Path`, or etils' `epath.Path` for a URL such as gs://bucket/runs."""
    if is_remote(p):
        from etils import epath

        return epath.Path(os.fspath(p))
    return pathlib.Path(p)


def files_under(root: Any, suffix: str) -> Iterator[Any]:
    """Every file below `root` (recursively) whose name ends with `suffix`, in path order."""
    if not is_remote(root):
        yield from sorted(p for p in pathlib.Path(root).rglob(f"*{suffix}") if p.is_file())
        return
    found = []
    for folder, _, names in path(root).walk():
        found += [folder / name for name in names if name.endswith(suffix)]
    yield from sorted(found, key=str)


class OutputError(OSError):
    """A folder or file the user named cannot be written."""


def _umask_mode() -> int:
    # os.umask can only be read by setting it; set it straight back (same process, no threads
    # create files in between in adjax's own code).
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def ensure_folder(folder: str | os.PathLike, what: str = "output folder") -> Any:
    """Creates `folder` (and its parents) or raises OutputError naming it in one sentence."""
    folder = path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"the {what} {folder} cannot be created ({err.strerror or err}).") \
            from err
    if not is_remote(folder) and not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"the {what} {folder} is not writable.")
    return folder


def write_with(target: str | os.PathLike, write: Callable[[IO[Any]], None], *,
               binary: bool = False) -> Any:
    """Calls `write(f)` on a temporary file next to `target`, then renames it to `target` (on a
    bucket: writes the object itself)."""
    target = path(target)
    folder = ensure_folder(target.parent)
    if is_remote(target):
        with target.open("wb" if binary else "w") as f:
            write(f)
        return target
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as err:
        raise OutputError(f"{target} cannot be written ({err.strerror or err}).") from err
    try:
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
            write(f)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target


def write_text(target: str | os.PathLike, text: str) -> Any:
    """Writes `text` (UTF-8) to `target` atomically."""
    target = path(target)
    if target.is_dir():
        raise OutputError(f"{target} is a folder, not a file.")
    return write_with(target, lambda f: f.write(text))


def write_json(target: str | os.PathLike, obj: Any) -> Any:
    """Writes `obj` as indented JSON (no NaN) to `target` atomically."""
    return write_text(target, json.dumps(obj, indent=1, allow_nan=False) + "\n")


def read_text(source: str | os.PathLike, what: str = "file") -> str:
    """The UTF-8 text of `source`, or an OSError-free one-sentence ValueError naming it."""
    path_ = path(source)
    try:
        return path_.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} {path_} is not UTF-8 text (byte {err.start}).") from err
    except IsADirectoryError as err:
        raise ValueError(f"{what} {path_} is a folder, not a file.") from err
    except OSError as err:
        raise ValueError(f"{what} {path_} cannot be read ({err.strerror or err}).") from err
