"""CapsNet for anomaly detection (Mishra 2021, ch. 3; Piciarelli, Mishra, Foresti, ICIAP 2019).

Two class capsules, z_n (index 0, normal) and z_a (index 1, anomalous), trained with the margin
loss on the training labels (0 normal, 1 anomalous) plus the reconstruction loss.

Protocols (the data config's `protocol`):

* `imbalanced` (the thesis's): the training split holds the normal class and 1% or 10% labelled
  anomalies; the margin loss makes z_n long on normal and z_a long on anomalous images.
* `one_class`: only normal images (every label 0). The margin loss then only asks z_n to be
  long and z_a short; the score below still separates because images unlike the training class
  give a shorter z_n, a longer z_a and a worse reconstruction.

Reconstruction (`model.decode`): `normal` (thesis: "the normal digitcaps vector is used for the
reconstruction") decodes z_n in training and at test, and only normal training images count in
the reconstruction loss, so the decoder learns to draw the normal class only; `label` (Sabour)
decodes the true class's capsule in training and the longest capsule at test.

Loss per image: margin (m+ 0.9, m- 0.1, lambda 0.5, summed over capsules) + 0.0005 x the sum
of squared pixel errors of the reconstruction (Sabour's constants; the thesis states none),
averaged over the batch.

Score (`score.kind`), with MSE the mean squared pixel error of the reconstruction in [0, 1]:
`proposed` = |z_a| - |z_n| + MSE (eq. 3.3), `standard` = |z_a| - |z_n| (Sabour's decision: the
longer capsule wins, i.e. anomalous iff > 0), `reconstruction` = MSE. Anomaly map: the squared
reconstruction error per pixel (mean over channels), at the input size.

The network sees one grey channel (`model.channels` = 1; the mean of RGB) or RGB (3),
standardised with the mean and standard deviation of all training pixels (the thesis
standardises MNIST and Fashion-MNIST with the whole data set's statistics); reconstructions
target the [0, 1] pixels.
"""

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from adjax.config import check_choice
from adjax.data import augment
from adjax.methods import Prediction
from adjax.methods.base import MethodBase, TrainState, count_params
from adjax.models.capsnet import CapsNet as CapsNetModel

SCORES = ("proposed", "standard", "reconstruction")
DECODES = ("normal", "label")


class State(TrainState):
    """Everything CapsNet trains and the input statistics."""

    mean: jax.Array  # scalar: mean of the training pixels in [0, 1]
    std: jax.Array   # scalar: their standard deviation


def margin_loss(lengths: jax.Array, labels: jax.Array, m_plus: float = 0.9,
                m_minus: float = 0.1, lam: float = 0.5) -> jax.Array:
    """Sabour's margin loss per image: sum_k T_k max(0, m+ - |v_k|)^2
    + lam (1 - T_k) max(0, |v_k| - m-)^2, with T the one-hot label. lengths [B, J] -> [B]."""
    t = jax.nn.one_hot(labels, lengths.shape[-1], dtype=lengths.dtype)
    present = t * jnp.maximum(0.0, m_plus - lengths) ** 2
    absent = lam * (1.0 - t) * jnp.maximum(0.0, lengths - m_minus) ** 2
    return jnp.sum(present + absent, axis=-1)


@dataclasses.dataclass(frozen=True, eq=False)
class CapsNet(MethodBase):
    """The CapsNet method (see the module docstring); built from a capsnet config."""

    def __post_init__(self):
        m, s = self.config.model, self.config.score
        check_choice("config.score.kind", s.kind, SCORES)
        check_choice("config.model.decode", m.decode, DECODES)
        if m.num_capsules != 2:
            raise ValueError("config.model.num_capsules must be 2 (normal, anomalous) for "
                             "anomaly detection.")
        _check_variant(self.config)

    @property
    def net(self) -> CapsNetModel:
        m = self.config.model
        return CapsNetModel(m.num_capsules, m.capsule_dim, m.conv_channels, m.primary_types,
                            m.primary_dim, m.routing_iterations, m.stop_inner_gradient,
                            tuple(m.decoder_widths), jnp.dtype(m.get("dtype", "float32")))

    def _pixels(self, images: jax.Array) -> jax.Array:
        """[0, 1] pixels with the model's channels: grey (mean of RGB) or RGB."""
        x = augment.to_float(images)
        return jnp.mean(x, axis=-1, keepdims=True) if self.config.model.channels == 1 else x

    def _decode_index(self, labels: jax.Array | None, n: int) -> jax.Array | None:
        if self.config.model.decode == "normal":
            return jnp.zeros((n,), jnp.int32)
        return labels  # None at test: the longest capsule

    # -- setup ---------------------------------------------------------------------------------

    def init(self, rng: jax.Array, train: dict[str, jax.Array], weights: None = None) -> State:
        """Initialises the network; the input statistics come from all training pixels."""
        pixels = self._pixels(train["image"])
        mean, std = jnp.mean(pixels), jnp.std(pixels)
        if not self.config.model.standardize:
            mean, std = jnp.zeros(()), jnp.ones(())
        x = jnp.zeros((1, *pixels.shape[1:]), jnp.float32)
        params = jax.jit(self.net.init)(rng, x)
        return self.new_state(State, params, mean=mean, std=jnp.maximum(std, 1e-6))

    # -- training ------------------------------------------------------------------------------

    def train_step(self, state: State, batch: dict[str, jax.Array],
                   rng: jax.Array) -> tuple[State, dict[str, jax.Array]]:
        """One step of margin + weighted reconstruction loss on a labelled batch."""
        del rng  # no augmentation, no dropout
        cfg = self.config.loss
        target = self._pixels(batch["image"])
        x = (target - state.mean) / state.std
        labels = batch["label"].astype(jnp.int32)
        n = labels.shape[0]
        counts = (labels == 0) if self.config.model.decode == "normal" else jnp.ones((n,), bool)

        def loss_fn(params):
            out = self.net.apply(params, x, self._decode_index(labels, n))
            margin = jnp.mean(margin_loss(out["lengths"], labels, cfg.m_plus, cfg.m_minus,
                                          cfg.lam))
            recon = out["reconstruction"].astype(jnp.float32)
            sse = jnp.sum((recon - target) ** 2, axis=(1, 2, 3))
            recon_loss = jnp.sum(jnp.where(counts, sse, 0.0)) / n
            loss = margin + cfg.reconstruction_weight * recon_loss
            return loss, {"loss": loss, "loss_margin": margin, "loss_reconstruction": recon_loss,
                          "length_normal": jnp.mean(out["lengths"][:, 0])}

        return self.gradient_step(state, loss_fn)

    # -- inference -----------------------------------------------------------------------------

    def outputs(self, state: State, images: jax.Array) -> dict[str, jax.Array]:
        """Capsule lengths [B, 2], reconstruction error map [B, H, W] and its mean [B]."""
        target = self._pixels(images)
        out = self.net.apply(state.params, (target - state.mean) / state.std,
                             self._decode_index(None, target.shape[0]))
        error = jnp.mean((out["reconstruction"].astype(jnp.float32) - target) ** 2, axis=-1)
        return {"lengths": out["lengths"], "map": error, "mse": jnp.mean(error, axis=(1, 2))}

    def predict(self, state: State, images: jax.Array) -> Prediction:
        """Reconstruction error map; score per `score.kind` (see the module docstring)."""
        out = self.outputs(state, images)
        difference = out["lengths"][:, 1] - out["lengths"][:, 0]
        score = {"proposed": difference + out["mse"], "standard": difference,
                 "reconstruction": out["mse"]}[self.config.score.kind]
        return Prediction(anomaly_map=out["map"], score=score)

    def describe(self, state: State) -> dict[str, Any]:
        """Facts a results record must carry about this run."""
        d = self.config.data
        protocol = d.get("protocol", "one_class")
        if protocol == "imbalanced":
            protocol += f" ({100 * d.anomaly_fraction:g}% anomalies in training)"
        return {"protocol": protocol, "score": self.config.score.kind,
                "decode": self.config.model.decode,
                "params": {"capsnet": count_params(state.params)}}


def _check_variant(config: ml_collections.ConfigDict) -> None:
    """A variant named like the thesis's rows ("proposed-10pct") must match the data config,
    so that results records land in the right published row."""
    match = re.fullmatch(r"(proposed|standard)-([\d.]+)pct", config.get("variant", ""))
    if not match:
        return
    d = config.data
    fraction = float(match.group(2)) / 100
    if (d.get("protocol") != "imbalanced" or not np.isclose(d.anomaly_fraction, fraction)
            or match.group(1) != config.score.kind):
        raise ValueError(
            f"config.variant {config.variant!r} names the {match.group(1)} score with "
            f"{match.group(2)}% anomalies, but the config has protocol "
            f"{d.get('protocol')!r}, anomaly_fraction {d.anomaly_fraction} and score "
            f"{config.score.kind!r}; pick the matching variant (e.g. configs/capsnet.py:mnist-1pct"
            f") or rename it with --config.variant.")
