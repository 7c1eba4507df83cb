"""Methods behind one contract (see DESIGN.md, "The Method contract"), and their registry.

A method is a small frozen object built from its config, with pure functions only:

- `init(rng, train) -> State`: `train` is the whole training split as a batch dict
  (`{"image": uint8 [N, H, W, 3], "label": int32 [N]}`, on the device; labels are all 0 under
  the one-class protocol); methods take shapes and any statistics they need before training
  (e.g. EfficientAD's teacher channel mean/std) from it.
- `calibrate(state, val) -> State`: statistics on held-out normal images (e.g. map quantiles).
- `train_step(state, batch, rng) -> (state, metrics)`: one optimisation step; jitted, scanned
  and sharded by `adjax.train`. `batch` holds "image" and "label" drawn together from the
  training split, plus one entry per extra pool. The trainer advances `state.step`.
- `predict(state, images) -> Prediction`: anomaly maps at input size and image scores.
- `extra_pools() -> dict[str, np.ndarray]`: further uint8 image sets the trainer keeps on the
  device and samples `batch[name]` from at each step (e.g. penalty images); usually empty.
"""

from collections.abc import Callable
from typing import Any, Protocol

import flax.struct
import jax
import ml_collections
import numpy as np


class Prediction(flax.struct.PyTreeNode):
    """What a method predicts for a batch of images."""

    anomaly_map: jax.Array  # [B, H, W] float32 at the input size, higher = more anomalous
    score: jax.Array        # [B] float32 image scores


class Method(Protocol):
    """The contract every method implements (see the module docstring)."""

    config: ml_collections.ConfigDict

    def init(self, rng: jax.Array, train: dict[str, jax.Array]) -> Any: ...
    def calibrate(self, state: Any, val: dict[str, jax.Array]) -> Any: ...
    def train_step(self, state: Any, batch: dict[str, jax.Array],
                   rng: jax.Array) -> tuple[Any, dict[str, jax.Array]]: ...
    def predict(self, state: Any, images: jax.Array) -> Prediction: ...
    def extra_pools(self) -> dict[str, np.ndarray]: ...
    def describe(self, state: Any) -> dict[str, Any]: ...


def _efficientad(config):
    from adjax.methods.efficientad import EfficientAD

    return EfficientAD(config)


def _capsnet(config):
    from adjax.methods.capsnet import CapsNet

    return CapsNet(config)


def _piade(config):
    from adjax.methods.piade import PIADE

    return PIADE(config)


def _vtadl(config):
    from adjax.methods.vtadl import VTADL

    return VTADL(config)


REGISTRY: dict[str, Callable[[ml_collections.ConfigDict], Method]] = {
    "efficientad": _efficientad,
    "capsnet": _capsnet,
    "piade": _piade,
    "pyramidal_ae": _piade,  # the same method file; config.method picks the network
    "vtadl": _vtadl,
}


def build(config: ml_collections.ConfigDict) -> Method:
    """Builds the method named by `config.method`."""
    name = config.get("method")
    if name not in REGISTRY:
        raise ValueError(f"config.method {name!r} is not a known method; known: "
                         f"{', '.join(sorted(REGISTRY))}.")
    return REGISTRY[name](config)
