"""EfficientAD's teacher: a PDN distilled from WideResNet-101-2's PatchCore features on ImageNet
(seed-004 thesis, Algorithm 1; reference `pretraining.py`).

Each step takes a batch of ImageNet images streamed from the host (`adjax.data.stream`: decoded
and resized in worker processes to the extractor's 512 px and the PDN's 256 px), turns both
copies grayscale together with probability 0.1, and regresses the padded PDN's 64 x 64 x 384
output onto the extractor's features (`adjax.models.patchcore`), normalised by their channel
mean and standard deviation: MSE, Adam 1e-4 with PyTorch-style weight decay 1e-5, batch 16,
60,000 steps. The statistics are two passes over 10,000 streamed images before training (the
reference's `feature_normalization`: the mean of per-batch channel means, then the root of the
mean of per-batch mean squared deviations), computed once with the backbone's weights
(`pretrained`) and kept in the checkpoints.

The result is a teacher for `configs/efficientad.py`: `adjax weights import --from=WORKDIR
--kind=efficientad_teacher_s --to=FILE` writes it (`exported_teacher`).
"""

import dataclasses
import math
import pathlib
from collections.abc import Iterator
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from adjax import weights as weights_lib
from adjax.config import ConfigError
from adjax.data import augment, stream
from adjax.methods.base import MethodBase, TrainState, backbone_kind
from adjax.models import patchcore
from adjax.models.pdn import PDN, output_size
from adjax.nn.resnet import ResNet

LAYERS = ("layer2", "layer3")


class State(TrainState):
    """The PDN being distilled (`params`), the frozen backbone and the target statistics."""

    backbone: Any             # {"params", "batch_stats"} of the ResNet trunk up to layer3
    target_mean: jax.Array    # [C] channel mean of the extractor's features
    target_std: jax.Array     # [C]


@dataclasses.dataclass(frozen=True, eq=False)
class EfficientADDistill(MethodBase):
    """Algorithm 1 (see the module docstring); built from a `distill-*` config."""

    trains_on_splits: ClassVar[bool] = False

    def __post_init__(self):
        d, side = self.config.distill, self.config.data.image_size
        for key in ("imagenet", "backbone"):
            if not d[key]:
                raise ConfigError(f"config.distill.{key} is empty: distillation needs "
                                  + ("the ImageNet train folder." if key == "imagenet" else
                                     "the WideResNet-101-2 ImageNet weights file."))
        backbone_kind(d, "distill")
        if d.extractor_size % 8 or d.extractor_size // 8 != output_size(side, padding=True):
            raise ConfigError(f"config.distill.extractor_size {d.extractor_size} gives a "
                              f"{d.extractor_size // 8}-cell feature grid where the PDN at "
                              f"config.data.image_size {side} gives "
                              f"{output_size(side, padding=True)}.")

    @property
    def pdn(self) -> PDN:
        m = self.config.model
        return PDN(m.size, m.out_channels, m.width, padding=True, dtype=jnp.dtype(m.dtype))

    @property
    def backbone_net(self) -> ResNet:
        d = self.config.distill
        return ResNet(d.depth, d.width, width_per_group=d.width_per_group,
                      returns=LAYERS, dtype=jnp.dtype(self.config.model.dtype))

    def targets(self, backbone: Any, images: jax.Array) -> jax.Array:
        """uint8 [B, E, E, 3] extractor inputs -> unnormalised [B, E/8, E/8, C] features."""
        x = augment.imagenet_normalize(augment.to_float(images))
        features = self.backbone_net.apply(backbone, x, train=False)
        return patchcore.embed(features, LAYERS, self.config.distill.pre_dim,
                               self.config.model.out_channels)

    # -- data ----------------------------------------------------------------------------------

    def _stream(self, seed: int, start: int) -> Iterator[dict[str, np.ndarray]]:
        d = self.config.distill
        files = stream.image_files(d.imagenet, "config.distill.imagenet folder")
        sides = {"image": self.config.data.image_size, "image_extractor": d.extractor_size}
        return stream.batches(files, sides, self.config.train.batch_size, seed, start,
                              d.workers)

    def host_stream(self, start_step: int) -> Iterator[dict[str, np.ndarray]]:
        """ImageNet batches for steps `start_step`, ... (the statistics read another order)."""
        return self._stream(self.config.seed, start_step)

    @staticmethod
    def _gray(key: jax.Array, images: jax.Array, p: float) -> jax.Array:
        flip = jax.random.bernoulli(key, p, (images.shape[0], 1, 1, 1))
        return jnp.where(flip, augment.grayscale(augment.to_float(images)),
                         augment.to_float(images))

    # -- setup ---------------------------------------------------------------------------------

    def pretrained(self) -> dict[str, Any]:
        """The backbone (`config.distill.backbone`, read on the host) and the target channel
        statistics over `config.distill.stats_images` streamed images, twice."""
        d = self.config.distill
        like = jax.eval_shape(self.backbone_net.init, jax.random.key(0),
                              jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
        backbone = weights_lib.load(d.backbone, backbone_kind(d, "distill"), like,
                                    "config.distill.backbone")
        backbone = jax.tree.map(jnp.asarray, backbone)
        batches = self._stream(self.config.seed + 1, 0)
        n = math.ceil(d.stats_images / self.config.train.batch_size)
        key = jax.random.key(self.config.seed + 1)

        @jax.jit  # the backbone is an argument, not a constant compiled into the program
        def moments(backbone, images, k, mean):
            x = (self._gray(k, images, d.grayscale) * 255.0).astype(jnp.uint8)
            f = self.targets(backbone, x)
            return jnp.mean(f, axis=(0, 1, 2)), jnp.mean((f - mean) ** 2, axis=(0, 1, 2))

        def pass_(first, mean, which):
            return jnp.mean(jnp.stack([
                moments(backbone, next(batches)["image_extractor"],
                        jax.random.fold_in(key, first + i), mean)[which] for i in range(n)]),
                axis=0)

        try:
            mean = pass_(0, jnp.zeros((self.config.model.out_channels,)), 0)
            var = pass_(n, mean, 1)
        finally:
            batches.close()
        return {"backbone": backbone, "target_mean": np.asarray(mean),
                "target_std": np.asarray(jnp.sqrt(var))}

    def init(self, rng: jax.Array, train: dict[str, jax.Array],
             weights: dict[str, Any] | None = None) -> State:
        """The PDN (PyTorch's initialisation), the backbone and statistics from `weights`
        (random and 0 / 1 without them: shapes for restoring a checkpoint)."""
        del train  # the data stream from the host
        side = self.config.data.image_size
        k_pdn, k_backbone = jax.random.split(rng)
        params = jax.jit(self.pdn.init)(k_pdn, jnp.zeros((1, side, side, 3)))
        c = self.config.model.out_channels
        if weights is None:
            weights = {"backbone": jax.jit(self.backbone_net.init)(
                k_backbone, jnp.zeros((1, 32, 32, 3))), "target_mean": jnp.zeros((c,)),
                "target_std": jnp.ones((c,))}
        return self.new_state(State, params, backbone=weights["backbone"],
                              target_mean=jnp.asarray(weights["target_mean"]),
                              target_std=jnp.asarray(weights["target_std"]))

    # -- training ------------------------------------------------------------------------------

    def train_step(self, state: State, batch: dict[str, jax.Array],
                   rng: jax.Array) -> tuple[State, dict[str, jax.Array]]:
        """MSE between the normalised extractor features and the PDN's output; both inputs of
        an image turn grayscale together (RandomGrayscale before both resizes)."""
        p = self.config.distill.grayscale
        extractor_in = (self._gray(rng, batch["image_extractor"], p) * 255.0).astype(jnp.uint8)
        pdn_in = augment.imagenet_normalize(self._gray(rng, batch["image"], p))
        target = (self.targets(state.backbone, extractor_in) - state.target_mean) / \
            state.target_std
        target = jax.lax.stop_gradient(target)

        def loss_fn(params):
            prediction = self.pdn.apply(params, pdn_in).astype(jnp.float32)
            loss = jnp.mean((target - prediction) ** 2)
            return loss, {"loss": loss}

        return self.gradient_step(state, loss_fn)

    def predict(self, state: State, images: jax.Array) -> Any:
        """A distillation scores no images: its product is the teacher."""
        raise ValueError("a teacher distillation run scores no images; export its teacher with "
                         "`adjax weights import --from=WORKDIR --kind=efficientad_teacher_s "
                         "--to=FILE` and train configs/efficientad.py with it.")

    def param_groups(self, state: State) -> dict[str, Any]:
        """The PDN being distilled (the backbone is not trained)."""
        return {"teacher": state.params}

    def describe(self, state: State) -> dict[str, Any]:
        """The distilled PDN's size and the backbone file."""
        return {**super().describe(state), "backbone": self.config.distill.backbone}


def exported_teacher(workdir: str | pathlib.Path, kind: str) -> dict[str, Any]:
    """The distilled PDN of the finished run in `workdir` as teacher variables of `kind`
    (`efficientad_teacher_s` / `_m`), checked against that kind's shapes."""
    from adjax import evaluate

    config, _, state = evaluate.load_run(workdir)
    if config.method != "efficientad_distill":
        raise ValueError(f"{workdir} holds a {config.method} run, not a teacher distillation.")
    variables = jax.tree.map(np.asarray, state.params)
    return weights_lib.check_tree(variables, weights_lib.shapes(kind),
                                  f"the teacher distilled in {workdir}")
