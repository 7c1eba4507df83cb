"""Seed 001's supervised U-Net (Ferreira 2023, Sec. 4.1.1 and 5.2; after Sae-ang et al.): a
U-Net (`adjax.models.unet`) segments anomalies from the image and the residual of the
seed-001 VAE, trained on anomalous images with masks.

Input (`config.model.inputs`): "image_residual" (6 channels, the thesis's (Original,
Residual)), "image" or "residual" (3). The residual is x - x_hat, signed, with x_hat the VAE's
mean reconstruction; the VAE is a finished `configs/vae.py` run (`config.model.vae_workdir`),
frozen, applied at its own image size (x resized to it, x_hat resized back).

Loss (`config.loss.terms`): BCE (eq. 4.1, mean over pixels), + soft Dice (eq. 5.9) and + soft
IoU (eq. 5.10), each per image with a smoothing of 1 (so that an image without anomalous
pixels has a defined loss), averaged over the batch. With `config.loss.consistency` = lambda
> 0 the batch also goes through a random dihedral transform T (flips and transposition) and
lambda * mean((p - T^-1(UNet(T(x))))^2) is added (eq. 5.11; the thesis leaves the norm
unstated). With `config.augment` each image (and its mask) is flipped horizontally and
vertically at random and its saturation and hue are jittered (the thesis's "Augmented" input);
the residual is computed from the augmented image.

Prediction: the sigmoid map (the thesis thresholds it at 0.3 for its per-image metrics); the
image score is its maximum.
"""

import dataclasses
import functools
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from adjax.config import check_choice
from adjax.data import augment
from adjax.methods import Prediction
from adjax.methods.base import MethodBase, TrainState
from adjax.methods.vae import FrozenVAE
from adjax.models.unet import UNet

INPUTS = ("image_residual", "image", "residual")
TERMS = ("bce", "dice", "iou")

# RGB <-> YIQ (NTSC): a hue shift is a rotation of the (I, Q) chroma plane.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                        [0.211, -0.523, 0.312]], np.float32)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


class State(TrainState):
    """The U-Net's parameters and BatchNorm statistics, and the frozen VAE's variables ({}
    when the input has no residual)."""

    batch_stats: Any
    vae: Any


def rotate_hue(images: jax.Array, turns: jax.Array) -> jax.Array:
    """Shifts the hue of [B, H, W, 3] images in [0, 1] by `turns` [B] of a full circle (a
    rotation of the YIQ chroma plane), clipped to [0, 1]."""
    yiq = jnp.einsum("bhwc,dc->bhwd", images, jnp.asarray(_RGB_TO_YIQ))
    angle = 2 * jnp.pi * turns[:, None, None]
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    i, q = yiq[..., 1], yiq[..., 2]
    yiq = jnp.stack([yiq[..., 0], cos * i - sin * q, sin * i + cos * q], axis=-1)
    return jnp.clip(jnp.einsum("bhwc,dc->bhwd", yiq, jnp.asarray(_YIQ_TO_RGB)), 0.0, 1.0)


def dihedral(x: jax.Array, bits: jax.Array, inverse: bool = False) -> jax.Array:
    """One of the 8 symmetries of the square on NHW(C) `x`: `bits` = (transpose, flip
    columns, flip rows) as booleans; `inverse` undoes it."""
    def transpose(a):
        return jnp.where(bits[0], jnp.swapaxes(a, 1, 2), a)

    def flips(a):
        a = jnp.where(bits[1], a[:, :, ::-1], a)
        return jnp.where(bits[2], a[:, ::-1], a)

    return transpose(flips(x)) if inverse else flips(transpose(x))


def segmentation_loss(p: jax.Array, y: jax.Array, terms: tuple[str, ...]) -> jax.Array:
    """The base loss of probabilities p and {0, 1} targets y ([B, H, W]): the sum of the chosen
    terms (BCE; soft Dice and IoU, per image with smoothing 1), averaged over the batch."""
    eps = 1e-7
    pc = jnp.clip(p, eps, 1.0 - eps)
    total = jnp.zeros(())
    inter = jnp.sum(p * y, axis=(1, 2))
    both = jnp.sum(p, axis=(1, 2)) + jnp.sum(y, axis=(1, 2))
    if "bce" in terms:
        total += -jnp.mean(y * jnp.log(pc) + (1 - y) * jnp.log(1 - pc))
    if "dice" in terms:
        total += jnp.mean(1.0 - (2 * inter + 1.0) / (both + 1.0))
    if "iou" in terms:
        total += jnp.mean(1.0 - (inter + 1.0) / (both - inter + 1.0))
    return total


@dataclasses.dataclass(frozen=True, eq=False)
class SupervisedUNet(MethodBase):
    """The seed-001 U-Net; built from a `configs/supervised_unet.py` config."""

    trains_on_masks: ClassVar[bool] = True

    def __post_init__(self):
        m, terms = self.config.model, tuple(self.config.loss.terms)
        check_choice("config.model.inputs", m.inputs, INPUTS)
        if not terms or set(terms) - set(TERMS):
            raise ValueError(f"config.loss.terms {terms} must be some of {', '.join(TERMS)}.")
        if self.uses_vae and not m.vae_workdir:
            raise ValueError(f"config.model.vae_workdir is empty, but the input "
                             f"{m.inputs!r} needs a trained VAE: train configs/vae.py and "
                             f"point it at that work directory.")
        self.require_masked_training_data("the supervised U-Net")

    @property
    def uses_vae(self) -> bool:
        return self.config.model.inputs != "image"

    @property
    def net(self) -> UNet:
        m = self.config.model
        return UNet(tuple(m.widths), 1, jnp.dtype(m.dtype))

    @functools.cached_property
    def vae(self) -> FrozenVAE:
        """The trained VAE of `config.model.vae_workdir`."""
        return FrozenVAE(self.config.model.vae_workdir, "config.model.vae_workdir")

    def pretrained(self) -> dict[str, Any] | None:
        """The trained VAE's variables (host numpy arrays), when the input needs them."""
        return self.vae.variables() if self.uses_vae else None

    def init(self, rng: jax.Array, train: dict[str, jax.Array],
             weights: dict[str, Any] | None = None) -> State:
        """A random U-Net for the configured input; the VAE from `weights` (or its shapes)."""
        size = train["image"].shape[1]
        vae = {}
        if self.uses_vae:
            if weights is None:  # shapes only (eval_shape of a restored run)
                weights = self.vae.shapes(rng)
            vae = jax.tree.map(jnp.asarray, weights)
        channels = 6 if self.config.model.inputs == "image_residual" else 3
        variables = jax.jit(self.net.init)(rng, jnp.zeros((1, size, size, channels)))
        return self.new_state(State, variables["params"], batch_stats=variables["batch_stats"],
                              vae=vae)

    def network_input(self, state: State, x: jax.Array) -> jax.Array:
        """The U-Net's input for [0, 1] images x: image, residual, or both stacked."""
        if not self.uses_vae:
            return x
        residual = jax.lax.stop_gradient(x - self.vae.reconstruct(state.vae, x))
        return residual if self.config.model.inputs == "residual" else \
            jnp.concatenate([x, residual], axis=-1)

    def _augment(self, rng: jax.Array, x: jax.Array, y: jax.Array):
        """Random flips (image and mask together), saturation and hue per image."""
        n = x.shape[0]
        k_h, k_v, k_s, k_hue = jax.random.split(rng, 4)
        for key, axis in ((k_h, 2), (k_v, 1)):
            flip = jax.random.bernoulli(key, 0.5, (n,))
            x = jnp.where(flip[:, None, None, None], jnp.flip(x, axis), x)
            y = jnp.where(flip[:, None, None], jnp.flip(y, axis), y)
        a = self.config.augment
        sat = jax.random.uniform(k_s, (n, 1, 1, 1), minval=1 - a.saturation,
                                 maxval=1 + a.saturation)
        x = augment.adjust_saturation(x, sat)
        return rotate_hue(x, jax.random.uniform(k_hue, (n,), minval=-a.hue, maxval=a.hue)), y

    def train_step(self, state: State, batch: dict[str, jax.Array],
                   rng: jax.Array) -> tuple[State, dict[str, jax.Array]]:
        """One step of the base loss (and the consistency term) on images with masks."""
        x = augment.to_float(batch["image"])
        y = batch["mask"].astype(jnp.float32)
        k_aug, k_t = jax.random.split(rng)
        if self.config.augment.enabled:
            x, y = self._augment(k_aug, x, y)
        inputs = self.network_input(state, x)
        lam = self.config.loss.consistency
        bits = jax.random.bernoulli(k_t, 0.5, (3,))
        if lam:
            inputs = jnp.concatenate([inputs, dihedral(inputs, bits)])
        terms = tuple(self.config.loss.terms)

        def loss_fn(params):
            logits, upd = self.net.apply({"params": params, "batch_stats": state.batch_stats},
                                         inputs, train=True, mutable=["batch_stats"])
            p = jax.nn.sigmoid(logits[..., 0])
            n = x.shape[0]
            base = segmentation_loss(p[:n], y, terms)
            metrics = {"loss_base": base}
            loss = base
            if lam:
                consistency = jnp.mean((p[:n] - dihedral(p[n:], bits, inverse=True)) ** 2)
                loss = loss + lam * consistency
                metrics["loss_consistency"] = consistency
            return loss, (upd["batch_stats"], {"loss": loss, **metrics})

        state, (stats, metrics) = self.gradient_step(state, loss_fn)
        return state.replace(batch_stats=stats), metrics

    def predict(self, state: State, images: jax.Array) -> Prediction:
        """The sigmoid map; the image score its maximum."""
        x = augment.to_float(images)
        logits = self.net.apply({"params": state.params, "batch_stats": state.batch_stats},
                                self.network_input(state, x))
        amap = jax.nn.sigmoid(logits[..., 0])
        return Prediction(anomaly_map=amap, score=jnp.max(amap, axis=(1, 2)))

    def param_groups(self, state: State) -> dict[str, Any]:
        """The U-Net (the frozen VAE is counted by its own run)."""
        return {"unet": state.params}

    def describe(self, state: State) -> dict[str, Any]:
        """Parameter count, the input and the VAE run used."""
        return {**super().describe(state), "inputs": self.config.model.inputs,
                "vae": self.config.model.vae_workdir if self.uses_vae else "none"}
