"""EfficientAD: a PDN student regresses a frozen PDN teacher (local map) and an autoencoder
(global map); maps are normalised on validation images, fused and resized to the input.

Constants follow the reference code (nelson1425/EfficientAD `efficientad.py`) unless the config
says otherwise; the seed-004 thesis's deviations are config values: the hard-loss quantile
(0.99), the fusion weight alpha, the coefficients of Eq. 5.1 (hard, penalty, AE, student-AE,
CDO) and the CDO branch: noise patches (`adjax.synth.patches`) pasted on a copy of the image,
on which the CDO loss (`adjax.nn.cdo`) pulls the student's first half towards the teacher on
normal locations and away from it on the patches.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adjax import weights as weights_lib
from adjax.config import ConfigError, check_choice
from adjax.data import augment
from adjax.methods import Prediction
from adjax.methods.base import MethodBase, TrainState, adam_l2, map_batches
from adjax.models.autoencoder import Autoencoder
from adjax.models.pdn import PDN
from adjax.nn.cdo import cdo_loss
from adjax.nn.layers import resize_bilinear
from adjax.synth import patches

# Images per compiled call when the teacher statistics and the calibration maps are computed.
STATS_BATCH = 16
# The coefficients of Eq. 5.1 (config.loss.coeff_<name>).
COEFFICIENTS = ("coeff_hard", "coeff_penalty", "coeff_ae", "coeff_stae", "coeff_cdo")


class State(TrainState):
    """Everything EfficientAD trains (`params`: student and autoencoder), freezes and
    calibrates."""

    teacher: Any                # frozen teacher params
    teacher_mean: jax.Array     # [C] channel mean of teacher features on the training images
    teacher_std: jax.Array      # [C]
    quantiles: jax.Array        # [2, 2]: (student-teacher, autoencoder) x (q_a, q_b); 0 before
                                # calibration
    teacher_sha256: jax.Array   # [32] uint8: the digest of the teacher file; 0 for a random one


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """PyTorch's `interpolate(mode="nearest")` source index of each output position."""
    return np.minimum(np.floor(np.arange(n_out) * (n_in / n_out)).astype(int), n_in - 1)


def mask_at_features(mask: jax.Array, side: int, pad: int) -> jax.Array:
    """[B, H, W] image mask -> [B, side, side] at the feature grid, with the geometry `predict`
    maps back with: the grid padded by `pad` cells spans the image (nearest resize, crop)."""
    rows = nearest_indices(mask.shape[1], side + 2 * pad)[pad:pad + side]
    cols = nearest_indices(mask.shape[2], side + 2 * pad)[pad:pad + side]
    return mask[:, rows][:, :, cols]


@dataclasses.dataclass(frozen=True, eq=False)
class EfficientAD(MethodBase):
    """The EfficientAD method (see the module docstring); built from an efficientad config."""

    def __post_init__(self):
        loss, m = self.config.loss, self.config.map
        for key in COEFFICIENTS:
            if not loss[key] >= 0:
                raise ConfigError(f"config.loss.{key} must be >= 0, got {loss[key]!r}.")
        if not 0.0 <= m.alpha <= 1.0:
            raise ConfigError(f"config.map.alpha must be in [0, 1], got {m.alpha!r}.")
        synth = self.config.synth
        check_choice("config.synth.noise", synth.noise, patches.NOISES)
        if not 0 <= synth.min_patches <= synth.max_patches or synth.max_patches < 1:
            raise ConfigError(f"config.synth needs 0 <= min_patches <= max_patches and "
                              f"max_patches >= 1, got {synth.min_patches} and "
                              f"{synth.max_patches}.")

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
        return Autoencoder(m.out_channels, m.width, m.ae_dropout, m.padding,
                           m.ae_bottleneck_1x1, dtype=self.dtype)

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
        """The teacher of `config.model.teacher_path`, read and checked against this config's
        PDN on the host: a Flax msgpack (`adjax weights import`) or a published PyTorch teacher
        (the reference code's `teacher_small.pth`, anomalib's
        `pretrained_teacher_small.pth`; .pth, .safetensors or .npz), with its sha256."""
        m = self.config.model
        if not m.teacher_path:
            return None
        size = self.config.data.image_size
        like, _ = jax.eval_shape(lambda k: self._init_nets(k, size), jax.random.key(0))
        teacher = weights_lib.load(m.teacher_path, f"efficientad_teacher_{m.size}", like,
                                   "config.model.teacher_path")
        digest = bytes.fromhex(weights_lib.sha256(m.teacher_path))
        return {"teacher": teacher, "sha256": np.frombuffer(digest, np.uint8)}

    def init(self, rng: jax.Array, train: dict[str, jax.Array],
             weights: dict[str, Any] | None = None) -> State:
        """Initialises the nets (the teacher from `weights` when given) and computes the
        teacher's channel statistics on `train`."""
        images = train["image"]
        init = jax.jit(self._init_nets, static_argnums=1)
        teacher, params = init(rng, images.shape[1])
        digest = jnp.zeros((32,), jnp.uint8)
        if weights is not None:
            teacher = jax.tree.map(jnp.asarray, weights["teacher"])
            digest = jnp.asarray(weights["sha256"])
        mean, std = self._teacher_stats(teacher, images)
        return self.new_state(State, params, teacher=teacher, teacher_mean=mean,
                              teacher_std=std, quantiles=jnp.zeros((2, 2)),
                              teacher_sha256=digest)

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
        """One step of Eq. 5.1: coeff-weighted hard student-teacher loss, penalty, AE,
        student-AE and CDO losses (a branch whose coefficient is 0 is not computed, except the
        cheap hard loss, which is still reported)."""
        k_aug, k_gray, k_drop, k_synth = jax.random.split(rng, 4)
        loss_cfg, c, n = self.config.loss, self.channels, batch["image"].shape[0]
        image = augment.to_float(batch["image"])
        uses_ae = bool(loss_cfg.coeff_ae or loss_cfg.coeff_stae)
        uses_cdo = bool(loss_cfg.coeff_cdo)
        uses_penalty = "penalty" in batch and bool(loss_cfg.coeff_penalty)
        parts = {"image": image}
        if uses_ae:
            parts["ae"] = augment.random_color_jitter(k_aug, image, loss_cfg.augment_factor)
        if uses_cdo:
            parts["synth"], mask = patches.noise_patches(k_synth, image,
                                                         **self.config.synth.to_dict())
        x = self._net_input(jnp.concatenate(list(parts.values())))
        teacher_out = dict(zip(parts, jnp.split(self._teacher(state, x), len(parts)),
                               strict=True))
        student_in = x
        if uses_penalty:
            penalty = augment.random_grayscale(k_gray, augment.to_float(batch["penalty"]),
                                               loss_cfg.penalty_grayscale)
            student_in = jnp.concatenate([x, self._net_input(penalty)])

        def loss_fn(params):
            out = self.student_net.apply(params["student"], student_in).astype(jnp.float32)
            student = dict(zip(parts, jnp.split(out[:len(parts) * n], len(parts)),
                               strict=True))
            d = (teacher_out["image"] - student["image"][..., :c]) ** 2
            d_hard = jnp.quantile(d, loss_cfg.hard_quantile)
            hard = d >= d_hard
            terms = {"hard": jnp.sum(jnp.where(hard, d, 0.0)) / jnp.sum(hard)}
            if uses_penalty:
                terms["penalty"] = jnp.mean(out[len(parts) * n:, ..., :c] ** 2)
            if uses_ae:
                ae = self.autoencoder_net.apply(params["autoencoder"], x[n:2 * n], train=True,
                                                rngs={"dropout": k_drop}).astype(jnp.float32)
                terms["ae"] = jnp.mean((teacher_out["ae"] - ae) ** 2)
                terms["stae"] = jnp.mean((ae - student["ae"][..., c:]) ** 2)
            if uses_cdo:
                side = teacher_out["synth"].shape[1]
                terms["cdo"] = cdo_loss(teacher_out["synth"], student["synth"][..., :c],
                                        mask_at_features(mask, side, self.config.map.pad),
                                        loss_cfg.cdo_gamma, loss_cfg.cdo_batch_scale)
            loss = sum(loss_cfg[f"coeff_{name}"] * value for name, value in terms.items())
            metrics = {f"loss_{name}": terms.get(name, jnp.zeros(())) for name in
                       ("hard", "penalty", "ae", "stae", "cdo")}
            return loss, dict(loss=loss, **metrics)

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
        maps = self.feature_maps(state, images)
        # Eq. 4.12; a map of weight 0 (an ablation without that branch) is left out, so that
        # its untrained, possibly constant values cannot turn the fusion into NaN.
        fused = sum(weight * 0.1 * (m - q_a) / (q_b - q_a)
                    for weight, m, (q_a, q_b) in zip((cfg.alpha, 1.0 - cfg.alpha), maps,
                                                      state.quantiles, strict=True) if weight)
        fused = jnp.pad(fused, ((0, 0), (cfg.pad, cfg.pad), (cfg.pad, cfg.pad)))
        size = images.shape[1:3]
        full = resize_bilinear(fused[..., None], size)[..., 0]
        return Prediction(anomaly_map=full, score=jnp.max(full, axis=(1, 2)))

    def param_groups(self, state: State) -> dict[str, Any]:
        """The teacher, the student and the autoencoder."""
        return {"teacher": state.teacher, **state.params}

    def describe(self, state: State) -> dict[str, Any]:
        """Facts a results record must carry about this run: the teacher file and its sha256
        (or that the teacher is random)."""
        path = self.config.model.teacher_path
        if not path:
            return {**super().describe(state), "teacher": "random initialisation (not distilled)"}
        return {**super().describe(state), "teacher": path,
                "teacher_sha256": bytes(np.asarray(state.teacher_sha256)).hex()}


