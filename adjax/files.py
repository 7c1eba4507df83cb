"""Every file adjax writes goes through here: whole or not at all, and readable as the umask says.

A file is written to a temporary name in its own folder, then renamed over the final name, so a
reader (or a crash) never sees half a file. `tempfile.mkstemp` creates files as 0600 whatever
the umask; results, caches and configs are meant to be shared (a group's results folder), so
the finished file gets the mode an ordinary `open(..., "w")` would have given it.
"""

import contextlib
import json
import os
import pathlib
import tempfile
from collections.abc import Callable
from typing import IO, Any


class OutputError(OSError):
    """A folder or file the user named cannot be written."""


def _umask_mode() -> int:
    # os.umask can only be read by setting it; set it straight back (same process, no threads
    # create files in between in adjax's own code).
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def ensure_folder(folder: str | os.PathLike, what: str = "output folder") -> pathlib.Path:
    """Creates `folder` (and its parents) or raises OutputError naming it in one sentence."""
    folder = pathlib.Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"the {what} {folder} cannot be created ({err.strerror or err}).") \
            from err
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"the {what} {folder} is not writable.")
    return folder


def write_with(path: str | os.PathLike, write: Callable[[IO[Any]], None], *,
               binary: bool = False) -> pathlib.Path:
    """Calls `write(f)` on a temporary file next to `path`, then renames it to `path`."""
    path = pathlib.Path(path)
    folder = ensure_folder(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise OutputError(f"{path} cannot be written ({err.strerror or err}).") from err
    try:
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
            write(f)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
    """Writes `text` (UTF-8) to `path` atomically."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder, not a file.")
    return write_with(path, lambda f: f.write(text))


def write_json(path: str | os.PathLike, obj: Any) -> pathlib.Path:
    """Writes `obj` as indented JSON (no NaN) to `path` atomically."""
    return write_text(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """The UTF-8 text of `path`, or an OSError-free one-sentence ValueError naming it."""
    path = pathlib.Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} {path} is not UTF-8 text (byte {err.start}).") from err
    except IsADirectoryError as err:
        raise ValueError(f"{what} {path} is a folder, not a file.") from err
    except OSError as err:
        raise ValueError(f"{what} {path} cannot be read ({err.strerror or err}).") from err
