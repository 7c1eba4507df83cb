"""Methods behind one contract (DESIGN.md, "The Method contract"), and their registry.

A method is a small frozen dataclass built from its config (deriving from
`adjax.methods.base.MethodBase`, which gives the shared defaults), with pure functions only.
As the trainer (`adjax.train`) and the evaluator (`adjax.evaluate`) use it:

- `pretrained() -> weights | None`: pretrained weights read on the host, once, before `init`
  (a pytree of numpy arrays, through `adjax.weights`); None when the method needs none.
- `init(rng, train, weights=None) -> State`: `train` is the whole training split as a batch
  dict (`{"image": uint8 [N, H, W, 3], "label": int32 [N]}`, on the device; labels are all 0
  under the one-class protocol); methods take shapes and the statistics they need before
  training from it (e.g. EfficientAD's teacher channel mean/std). Called on the host, not under
  `jit`: it jits its own parts (so a statistic over many images is a loop over one compiled
  batch). With `weights=None` the pretrained parts are randomly initialised, which gives the
  same shapes: the evaluator restores checkpoints onto `jax.eval_shape(init, ...)`.
- `train_step(state, batch, rng) -> (state, metrics)`: one optimisation step; jitted, scanned
  and sharded by the trainer. `batch` holds "image" and "label" drawn together from the
  training split (and "mask", uint8 [B, H, W], when the split holds anomalous images: the
  supervised methods, `trains_on_masks = True`, whose data config moves them there), plus one
  entry per extra pool. The trainer advances `state.step`.
- `calibrate(state, val) -> State`: statistics on held-out normal images (e.g. map quantiles);
  called on the host after training, like `init`.
- `predict(state, images) -> Prediction`: anomaly maps at input size and image scores (and
  per-image reconstruction errors where the method reconstructs its input); jitted.
- `extra_pools() -> dict[str, np.ndarray]`: further uint8 image sets the trainer keeps on the
  device and samples `batch[name]` from at each step (e.g. penalty images); usually empty.
- `host_stream(start_step) -> Iterator[dict[str, np.ndarray]] | None`: batches of data too
  large for the device (ImageNet), read on the host for steps `start_step`, ... and merged into
  `batch`; deterministic in the step, so that a resumed run reads on where it stopped. None (the
  default) for the device-resident methods. A method whose data all stream sets
  `trains_on_splits = False`: the trainer then loads no split and does not calibrate.
- `describe(state) -> dict`: what a results record says about the run: `params` (a count per
  net, {name: int}) and facts such as the weights used ({key: str}), stored in its notes.

`State` derives from `adjax.methods.base.TrainState` (`step`, `params`, `opt_state`).
"""

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import flax.struct
import jax
import ml_collections
import numpy as np


class Prediction(flax.struct.PyTreeNode):
    """What a method predicts for a batch of images: maps, scores and, for reconstruction
    models, seed 001's per-image reconstruction errors (`base.reconstruction_errors`: e.g.
    {"recon_l1": [B], "recon_mse": [B], "recon_ssim": [B]}), which the evaluator averages over
    the test images."""

    anomaly_map: jax.Array  # [B, H, W] float32 at the input size, higher = more anomalous
    score: jax.Array        # [B] float32 image scores
    reconstruction: dict[str, jax.Array] = flax.struct.field(default_factory=dict)


class Method(Protocol):
    """The contract every method implements (see the module docstring)."""

    config: ml_collections.ConfigDict
    trains_on_splits: bool
    trains_on_masks: bool

    def pretrained(self) -> Any: ...
    def init(self, rng: jax.Array, train: dict[str, jax.Array], weights: Any = None) -> Any: ...
    def calibrate(self, state: Any, val: dict[str, jax.Array]) -> Any: ...
    def train_step(self, state: Any, batch: dict[str, jax.Array],
                   rng: jax.Array) -> tuple[Any, dict[str, jax.Array]]: ...
    def predict(self, state: Any, images: jax.Array) -> Prediction: ...
    def extra_pools(self) -> dict[str, np.ndarray]: ...
    def host_stream(self, start_step: int) -> Iterator[dict[str, np.ndarray]] | None: ...
    def describe(self, state: Any) -> dict[str, Any]: ...


def _draem(config):
    from adjax.methods.draem import DRAEM

    return DRAEM(config)


def _efficientad(config):
    from adjax.methods.efficientad import EfficientAD

    return EfficientAD(config)


def _ddad(config):
    from adjax.methods.ddad import DDAD

    return DDAD(config)


def _efficientad_distill(config):
    from adjax.methods.efficientad_distill import EfficientADDistill

    return EfficientADDistill(config)


def _capsnet(config):
    from adjax.methods.capsnet import CapsNet

    return CapsNet(config)


def _ganomaly(config):
    from adjax.methods.ganomaly import GANomaly

    return GANomaly(config)


def _multilevel(config):
    from adjax.methods.multilevel import MultiLevelMethod

    return MultiLevelMethod(config)


def _piade(config):
    from adjax.methods.piade import PIADE

    return PIADE(config)


def _pyramidal_ae(config):
    from adjax.methods.pyramid_ae import PyramidalAE

    return PyramidalAE(config)


def _riad(config):
    from adjax.methods.riad import RIAD

    return RIAD(config)


def _supervised_unet(config):
    from adjax.methods.supervised_unet import SupervisedUNet

    return SupervisedUNet(config)


def _utad(config):
    from adjax.methods.utad import UTAD

    return UTAD(config)


def _vae(config):
    from adjax.methods.vae import VAEMethod

    return VAEMethod(config)


def _vtadl(config):
    from adjax.methods.vtadl import VTADL

    return VTADL(config)


REGISTRY: dict[str, Callable[[ml_collections.ConfigDict], Method]] = {
    "ddad": _ddad,
    "draem": _draem,
    "efficientad": _efficientad,
    "efficientad_distill": _efficientad_distill,
    "capsnet": _capsnet,
    "ganomaly": _ganomaly,
    "multilevel": _multilevel,
    "piade": _piade,
    "pyramidal_ae": _pyramidal_ae,
    "riad": _riad,
    "supervised_unet": _supervised_unet,
    "utad": _utad,
    "vae": _vae,
    "vtadl": _vtadl,
}


def build(config: ml_collections.ConfigDict) -> Method:
    """Builds the method named by `config.method`."""
    name = config.get("method")
    if name not in REGISTRY:
        raise ValueError(f"config.method {name!r} is not a known method; known: "
                         f"{', '.join(sorted(REGISTRY))}.")
    return REGISTRY[name](config)
