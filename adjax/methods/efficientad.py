"""EfficientAD: a PDN student regresses a frozen PDN teacher (local map) and an autoencoder
(global map); maps are normalised on validation images, fused and resized to the input.

Constants follow the reference code (nelson1425/EfficientAD `efficientad.py`) unless the config
says otherwise; the seed-004 thesis's deviations (hard-loss quantile 0.99, the fusion weight
alpha) are config values.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adjax.data import augment
from adjax.methods import Prediction
from adjax.methods.base import MethodBase, TrainState, adam_l2, map_batches
from adjax.models.autoencoder import Autoencoder
from adjax.models.pdn import PDN
from adjax.nn.layers import resize_bilinear
from adjax.weights import read_flax

# Images per compiled call when the teacher statistics and the calibration maps are computed.
STATS_BATCH = 16


class State(TrainState):
    """Everything EfficientAD trains (`params`: student and autoencoder), freezes and
    calibrates."""

    teacher: Any                # frozen teacher params
    teacher_mean: jax.Array     # [C] channel mean of teacher features on the training images
    teacher_std: jax.Array      # [C]
    quantiles: jax.Array        # [2, 2]: (student-teacher, autoencoder) x (q_a, q_b); 0 before
                                # calibration


@dataclasses.dataclass(frozen=True, eq=False)
class EfficientAD(MethodBase):
    """The EfficientAD method (see the module docstring); built from an efficientad config."""

    @property
    def channels(self) -> int:
        return self.config.model.out_channels

    @property
    def dtype(self) -> jnp.dtype:
        """Computation dtype of the nets (parameters and losses stay float32)."""
        return jnp.dtype(self.config.model.dtype)

    @property
    def teacher_net(self) -> PDN:
        m = self.config.model
        return PDN(m.size, m.out_channels, m.width, m.padding, dtype=self.dtype)

    @property
    def student_net(self) -> PDN:
        m = self.config.model
        return PDN(m.size, 2 * m.out_channels, m.width, m.padding, dtype=self.dtype)

    @property
    def autoencoder_net(self) -> Autoencoder:
        m = self.config.model
        return Autoencoder(m.out_channels, m.width, m.ae_dropout, m.padding, dtype=self.dtype)

    @property
    def tx(self) -> optax.GradientTransformation:
        """Adam with PyTorch-style (L2, not decoupled) weight decay and a step drop of the lr."""
        o, steps = self.config.optim, self.config.train.steps
        schedule = optax.piecewise_constant_schedule(
            o.lr, {int(o.lr_drop_at * steps): o.lr_drop})
        return adam_l2(schedule, o.weight_decay)

    def _net_input(self, images: jax.Array) -> jax.Array:
        """[0, 1] images -> the nets' input: ImageNet-normalised, and reflect-padded by
        `config.model.input_pad` pixels on each side (0 in the reference)."""
        x = augment.imagenet_normalize(images)
        p = self.config.model.input_pad
        return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect") if p else x

    def prepare(self, images: jax.Array) -> jax.Array:
        """uint8 images -> the nets' input (see `_net_input`)."""
        return self._net_input(augment.to_float(images))

    # -- setup ---------------------------------------------------------------------------------

    def _init_nets(self, rng: jax.Array, size: int) -> tuple[Any, dict[str, Any]]:
        k_teacher, k_student, k_ae = jax.random.split(rng, 3)
        side = size + 2 * self.config.model.input_pad
        x = jnp.zeros((1, side, side, 3), jnp.float32)
        params = {"student": self.student_net.init(k_student, x),
                  "autoencoder": self.autoencoder_net.init(k_ae, x)}
        return self.teacher_net.init(k_teacher, x), params

    def pretrained(self) -> dict[str, Any] | None:
        """The teacher of `config.model.teacher_path` (a Flax msgpack of the PDN's params),
        read and checked against this config's PDN on the host."""
        path = self.config.model.teacher_path
        if not path:
            return None
        size = self.config.data.image_size
        like, _ = jax.eval_shape(lambda k: self._init_nets(k, size), jax.random.key(0))
        return {"teacher": read_flax(path, like, "config.model.teacher_path")}

    def init(self, rng: jax.Array, train: dict[str, jax.Array],
             weights: dict[str, Any] | None = None) -> State:
        """Initialises the nets (the teacher from `weights` when given) and computes the
        teacher's channel statistics on `train`."""
        images = train["image"]
        init = jax.jit(self._init_nets, static_argnums=1)
        teacher, params = init(rng, images.shape[1])
        if weights is not None:
            teacher = jax.tree.map(jnp.asarray, weights["teacher"])
        mean, std = self._teacher_stats(teacher, images)
        return self.new_state(State, params, teacher=teacher, teacher_mean=mean,
                              teacher_std=std, quantiles=jnp.zeros((2, 2)))

    def _teacher_stats(self, teacher, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        # Two passes as the reference: the mean of per-image channel means, then the root of the
        # mean of per-image mean squared deviations from it; images in batches of STATS_BATCH,
        # one compiled call per batch.
        def features(x):
            return self.teacher_net.apply(teacher, self.prepare(x)).astype(jnp.float32)

        means = map_batches(jax.jit(lambda x: features(x).mean((1, 2))), images, STATS_BATCH)
        mean = jnp.mean(means, axis=0)
        var = map_batches(jax.jit(lambda x: jnp.mean((features(x) - mean) ** 2, (1, 2))),
                          images, STATS_BATCH)
        return mean, jnp.sqrt(jnp.mean(var, axis=0))

    def extra_pools(self) -> dict[str, np.ndarray]:
        """The penalty images (the paper's ImageNet term), when a folder is configured."""
        folder = self.config.loss.penalty_dir
        if not folder:
            return {}
        from adjax.data.loading import load_folder

        # The reference resizes penalty images to 2x the input and centre-crops the input size.
        size = self.config.data.image_size
        images = load_folder(folder, 2 * size)
        lo = size // 2
        return {"penalty": images[:, lo:lo + size, lo:lo + size]}

    # -- training ------------------------------------------------------------------------------

    def train_step(self, state: State, batch: dict[str, jax.Array],
                   rng: jax.Array) -> tuple[State, dict[str, jax.Array]]:
        """One EfficientAD step: hard student-teacher loss (+ penalty), AE and student-AE losses."""
        k_aug, k_gray, k_drop = jax.random.split(rng, 3)
        c, n = self.channels, batch["image"].shape[0]
        image = augment.to_float(batch["image"])
        image_ae = augment.random_color_jitter(k_aug, image, self.config.loss.augment_factor)
        x = self._net_input(jnp.concatenate([image, image_ae]))
        teacher_out = self._teacher(state, x)
        target, target_ae = teacher_out[:n], teacher_out[n:]
        student_in = x
        if "penalty" in batch:
            penalty = augment.random_grayscale(k_gray, augment.to_float(batch["penalty"]),
                                               self.config.loss.penalty_grayscale)
            student_in = jnp.concatenate([x, self._net_input(penalty)])

        def loss_fn(params):
            student = self.student_net.apply(params["student"], student_in).astype(jnp.float32)
            d = (target - student[:n, ..., :c]) ** 2
            d_hard = jnp.quantile(d, self.config.loss.hard_quantile)
            hard = d >= d_hard
            loss_hard = jnp.sum(jnp.where(hard, d, 0.0)) / jnp.sum(hard)
            loss_penalty = (jnp.mean(student[2 * n:, ..., :c] ** 2) if "penalty" in batch
                            else jnp.zeros(()))
            ae = self.autoencoder_net.apply(params["autoencoder"], x[n:], train=True,
                                            rngs={"dropout": k_drop}).astype(jnp.float32)
            loss_ae = jnp.mean((target_ae - ae) ** 2)
            loss_stae = jnp.mean((ae - student[n:2 * n, ..., c:]) ** 2)
            loss = loss_hard + loss_penalty + loss_ae + loss_stae
            return loss, dict(loss=loss, loss_hard=loss_hard, loss_penalty=loss_penalty,
                              loss_ae=loss_ae, loss_stae=loss_stae)

        return self.gradient_step(state, loss_fn)

    def _teacher(self, state: State, x: jax.Array) -> jax.Array:
        out = self.teacher_net.apply(state.teacher, x).astype(jnp.float32)
        return jax.lax.stop_gradient((out - state.teacher_mean) / state.teacher_std)

    # -- inference -----------------------------------------------------------------------------

    def feature_maps(self, state: State, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Unnormalised student-teacher and autoencoder maps at the PDN's output size."""
        c = self.channels
        x = self.prepare(images)
        target = self._teacher(state, x)
        student = self.student_net.apply(state.params["student"], x).astype(jnp.float32)
        ae = self.autoencoder_net.apply(state.params["autoencoder"], x).astype(jnp.float32)
        map_st = jnp.mean((target - student[..., :c]) ** 2, axis=-1)
        map_ae = jnp.mean((ae - student[..., c:]) ** 2, axis=-1)
        return map_st, map_ae

    def calibrate(self, state: State, val: dict[str, jax.Array]) -> State:
        """Quantiles q_a, q_b of both maps over the validation images."""
        q = jnp.array([self.config.map.q_a, self.config.map.q_b])
        maps_st, maps_ae = map_batches(jax.jit(lambda x: self.feature_maps(state, x)),
                                       val["image"], STATS_BATCH)
        return state.replace(quantiles=jnp.stack([jnp.quantile(maps_st, q),
                                                  jnp.quantile(maps_ae, q)]))

    def predict(self, state: State, images: jax.Array) -> Prediction:
        """Fused, normalised maps padded and resized to the input; score = max of the map."""
        cfg = self.config.map
        map_st, map_ae = self.feature_maps(state, images)
        (st_a, st_b), (ae_a, ae_b) = state.quantiles
        map_st = 0.1 * (map_st - st_a) / (st_b - st_a)
        map_ae = 0.1 * (map_ae - ae_a) / (ae_b - ae_a)
        fused = cfg.alpha * map_st + (1.0 - cfg.alpha) * map_ae
        fused = jnp.pad(fused, ((0, 0), (cfg.pad, cfg.pad), (cfg.pad, cfg.pad)))
        size = images.shape[1:3]
        full = resize_bilinear(fused[..., None], size)[..., 0]
        return Prediction(anomaly_map=full, score=jnp.max(full, axis=(1, 2)))

    def param_groups(self, state: State) -> dict[str, Any]:
        """The teacher, the student and the autoencoder."""
        return {"teacher": state.teacher, **state.params}

    def describe(self, state: State) -> dict[str, Any]:
        """Facts a results record must carry about this run."""
        path = self.config.model.teacher_path
        return {**super().describe(state),
                "teacher": path or "random initialisation (not distilled)"}


