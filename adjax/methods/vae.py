"""The VAE of seed 001 (Ferreira 2023, Sec. 4.2.1; `adjax.models.vae`) as an anomaly
detector: trained on normal images with eq. 4.10, scored by its reconstruction error.

Training loss per image (eq. 4.10), averaged over the batch:

    L = REC_SUM(x, x_hat) + alpha * KL_SUM(mu, logvar)

REC_SUM is the squared error summed over pixels and channels (`config.loss.reconstruction =
"mse"`, eq. 4.4; "l1" and "ssim" (the sum of 1 - local SSIM) are the Table 5.1 ablations);
KL_SUM is eq. 4.3; x_hat is decoded from a sampled z. At inference x_hat is decoded from mu,
the anomaly map is the squared error averaged over channels (optionally Gaussian-smoothed,
`config.score.smooth_sigma`), and the image score its maximum or mean (`config.score.reduce`).
`residual` gives x - x_hat, the input the supervised U-Net takes beside the image.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adjax.config import check_choice
from adjax.data import augment
from adjax.methods import Prediction
from adjax.methods.base import MethodBase, TrainState, reconstruction_errors
from adjax.models.vae import VAE, kl_sum
from adjax.nn.layers import resize_bilinear
from adjax.nn.ssim import gaussian_filter, ssim_map

RECONSTRUCTIONS = ("mse", "l1", "ssim")
REDUCES = ("max", "mean")


class State(TrainState):
    """The VAE's parameters and BatchNorm statistics."""

    batch_stats: Any


def reconstruction_sum(x: jax.Array, recon: jax.Array, kind: str) -> jax.Array:
    """Per-image reconstruction loss summed over pixels and channels, [B]."""
    if kind == "mse":
        err = (recon - x) ** 2
    elif kind == "l1":
        err = jnp.abs(recon - x)
    else:
        err = 1.0 - ssim_map(x, recon, padding="zeros")
    return jnp.sum(err, axis=(1, 2, 3))


def smoothed_map(error: jax.Array, sigma: float) -> jax.Array:
    """[B, H, W] error map, Gaussian-smoothed (edge-mirrored) when sigma > 0."""
    if sigma <= 0:
        return error
    return gaussian_filter(error[..., None], sigma)[..., 0]


@dataclasses.dataclass(frozen=True, eq=False)
class VAEMethod(MethodBase):
    """The seed-001 VAE; built from a `configs/vae.py` config."""

    def __post_init__(self):
        check_choice("config.loss.reconstruction", self.config.loss.reconstruction,
                     RECONSTRUCTIONS)
        check_choice("config.score.reduce", self.config.score.reduce, REDUCES)

    @property
    def net(self) -> VAE:
        m = self.config.model
        return VAE(tuple(m.widths), m.latent, m.hidden, m.dropout, jnp.dtype(m.dtype))

    def init(self, rng: jax.Array, train: dict[str, jax.Array], weights: Any = None) -> State:
        """Randomly initialised VAE for the training images' size."""
        del weights
        size = train["image"].shape[1]
        variables = jax.jit(self.net.init)(rng, jnp.zeros((1, size, size, 3), jnp.float32))
        return self.new_state(State, variables["params"], batch_stats=variables["batch_stats"])

    def reconstruct(self, state: State, x: jax.Array) -> jax.Array:
        """The deterministic reconstruction (z = mu) of [0, 1] images x."""
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        return self.net.apply(variables, x)["reconstruction"]

    def residual(self, state: State, x: jax.Array) -> jax.Array:
        """x - x_hat for [0, 1] images x (signed, in [-1, 1])."""
        return x - self.reconstruct(state, x)

    def train_step(self, state: State, batch: dict[str, jax.Array],
                   rng: jax.Array) -> tuple[State, dict[str, jax.Array]]:
        """One step of eq. 4.10 with a sampled z and dropout."""
        x = augment.to_float(batch["image"])
        k_drop, k_sample = jax.random.split(rng)
        loss_cfg = self.config.loss

        def loss_fn(params):
            out, updates = self.net.apply(
                {"params": params, "batch_stats": state.batch_stats}, x, train=True,
                sample=True, rngs={"dropout": k_drop, "sample": k_sample},
                mutable=["batch_stats"])
            rec = reconstruction_sum(x, out["reconstruction"], loss_cfg.reconstruction)
            kl = kl_sum(out["mu"], out["logvar"])
            loss = jnp.mean(rec + loss_cfg.kl_weight * kl)
            return loss, (updates["batch_stats"],
                          {"loss": loss, "loss_rec": jnp.mean(rec), "loss_kl": jnp.mean(kl)})

        state, (stats, metrics) = self.gradient_step(state, loss_fn)
        return state.replace(batch_stats=stats), metrics

    def predict(self, state: State, images: jax.Array) -> Prediction:
        """Map: squared error of the mean reconstruction (channel mean, smoothed); score: its
        max or mean; the reconstruction's L1, MSE and SSIM (Table 5.1)."""
        x = augment.to_float(images)
        recon = self.reconstruct(state, x)
        amap = smoothed_map(jnp.mean((x - recon) ** 2, axis=-1), self.config.score.smooth_sigma)
        reduce = jnp.max if self.config.score.reduce == "max" else jnp.mean
        return Prediction(anomaly_map=amap, score=reduce(amap, axis=(1, 2)),
                          reconstruction=reconstruction_errors(x, recon, "recon"))

    def param_groups(self, state: State) -> dict[str, Any]:
        """The VAE as one count."""
        return {"vae": state.params}


@dataclasses.dataclass(frozen=True, eq=False)
class FrozenVAE:
    """A finished `configs/vae.py` run used, frozen, inside another method (the supervised
    U-Net's residual, the UTAD fusion): read from `workdir`, named by config key `key` in
    errors, applied at its own image size."""

    workdir: str
    key: str

    @functools.cached_property
    def run(self) -> tuple[VAEMethod, Any]:
        """(the VAE method, its config), read on the host."""
        # The VAE is a finished run of its own; the evaluator's reader finds its config.
        from adjax import evaluate

        try:
            config = evaluate.load_config(self.workdir)
        except evaluate.EvaluationError as err:
            raise ValueError(f"{self.key}: {err}") from err
        if config.method != "vae":
            raise ValueError(f"{self.key} {self.workdir} holds a {config.method!r} run, not a "
                             f"VAE.")
        return VAEMethod(config), config

    def variables(self) -> dict[str, Any]:
        """The trained VAE's variables as host numpy arrays."""
        from adjax import evaluate

        self.run  # noqa: B018 -- says which key names a missing or wrong run
        _, _, state = evaluate.load_run(self.workdir)
        return jax.tree.map(np.asarray, {"params": state.params,
                                         "batch_stats": state.batch_stats})

    def shapes(self, rng: jax.Array) -> dict[str, Any]:
        """Randomly initialised variables of the trained VAE's shapes (for `eval_shape`)."""
        method, config = self.run
        size = config.data.image_size
        v = method.init(rng, {"image": jnp.zeros((1, size, size, 3), jnp.uint8)})
        return {"params": v.params, "batch_stats": v.batch_stats}

    def reconstruct(self, variables: Any, x: jax.Array) -> jax.Array:
        """The VAE's mean reconstruction of [0, 1] images x, at x's size (x resized to the
        VAE's size and the reconstruction back, bilinearly, where they differ)."""
        method, config = self.run
        vs = config.data.image_size
        recon = method.net.apply(variables, x if x.shape[1] == vs else resize_bilinear(x, vs))
        recon = recon["reconstruction"]
        return recon if recon.shape[1:3] == x.shape[1:3] else resize_bilinear(recon,
                                                                              x.shape[1:3])
