"""Checkpoints: one small wrapper over orbax's CheckpointManager (async, keep the last k).

orbax writes each step to a temporary folder and renames it when complete, so an interrupted
save never leaves a half-written checkpoint behind.
"""

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from adjax import files


class Checkpoints:
    """Save and restore a train state (any pytree of arrays) by step."""

    def __init__(self, directory: str | pathlib.Path, keep: int = 3):
        directory = files.path(directory)
        self._manager = ocp.CheckpointManager(
            directory if files.is_remote(directory) else directory.absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any) -> None:
        """Starts an asynchronous save of `state` at `step`."""
        self._manager.save(step, args=ocp.args.StandardSave(state))

    def restore(self, step: int, like: Any) -> Any:
        """Restores the state saved at `step` onto the shapes, dtypes and shardings of `like`
        (concrete arrays or `jax.ShapeDtypeStruct`s)."""
        target = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), like)
        return self._manager.restore(step, args=ocp.args.StandardRestore(target))

    def close(self) -> None:
        """Waits for pending saves, then releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
