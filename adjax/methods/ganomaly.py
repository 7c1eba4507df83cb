"""GANomaly (Akcay et al., ACCV 2018), the baseline of seed 001's Table 5.6
(`adjax.models.ganomaly`): an encoder-decoder-encoder generator trained against a
discriminator on normal images; the image score is the latent distance.

Images are scaled to [-1, 1] (the generator ends in tanh). Per step, as the authors'
`optimize_params` (one forward, then each network stepped on its own loss):

    L_G = w_adv |f(x) - f(G(x))|^2 + w_con |x - G(x)|_1 + w_enc |E1(x) - E2(G(x))|^2
    L_D = (BCE(D(x), 1) + BCE(D(G(x)), 0)) / 2

means over all elements; f the discriminator's features; weights 1, 50, 1. L_G moves the
generator only and L_D the discriminator only (here one Adam over both parameter trees with
each tree's gradient taken from its own loss: the same update as the authors' two Adams).
Score (`config.score.image`): "latent", the paper's mean over the latent of
(E1(x) - E2(G(x)))^2, or "map_max", the pixel map's maximum (for defects too small to move a
global code). The thesis uses GANomaly for
segmentation without saying how it got a pixel map: here the map is |x - G(x)| averaged over
channels (in [0, 1] units), optionally Gaussian-smoothed. The authors re-initialise the
discriminator when L_D falls below 1e-5; that is not done here.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adjax.config import check_choice
from adjax.data import augment
from adjax.methods import Prediction
from adjax.methods.base import MethodBase, TrainState, reconstruction_errors
from adjax.methods.vae import smoothed_map
from adjax.models.ganomaly import Discriminator, Generator

IMAGE_SCORES = ("latent", "map_max")


class State(TrainState):
    """Parameters and BatchNorm statistics of {"generator", "discriminator"}."""

    batch_stats: Any


def _bce(p: jax.Array, target: float) -> jax.Array:
    # PyTorch's BCELoss clamps the log at -100.
    log = jnp.maximum(jnp.log(p if target else 1.0 - p), -100.0)
    return -jnp.mean(log)


@dataclasses.dataclass(frozen=True, eq=False)
class GANomaly(MethodBase):
    """GANomaly; built from a `configs/ganomaly.py` config."""

    def __post_init__(self):
        check_choice("config.score.image", self.config.score.image, IMAGE_SCORES)

    @property
    def generator(self) -> Generator:
        m = self.config.model
        return Generator(m.nz, m.ngf, m.ndf, jnp.dtype(m.dtype))

    @property
    def discriminator(self) -> Discriminator:
        m = self.config.model
        return Discriminator(m.ndf, jnp.dtype(m.dtype))

    @property
    def tx(self) -> optax.GradientTransformation:
        """Adam with the authors' betas (0.5, 0.999)."""
        o = self.config.optim
        return optax.adam(o.lr, b1=o.b1, b2=o.b2)

    def init(self, rng: jax.Array, train: dict[str, jax.Array], weights: Any = None) -> State:
        """Randomly initialised generator and discriminator for the training images' size."""
        del weights
        size = train["image"].shape[1]
        x = jnp.zeros((1, size, size, 3), jnp.float32)
        k_g, k_d = jax.random.split(rng)
        g = jax.jit(self.generator.init)(k_g, x)
        d = jax.jit(self.discriminator.init)(k_d, x)
        return self.new_state(State, {"generator": g["params"], "discriminator": d["params"]},
                              batch_stats={"generator": g["batch_stats"],
                                           "discriminator": d["batch_stats"]})

    def train_step(self, state: State, batch: dict[str, jax.Array],
                   rng: jax.Array) -> tuple[State, dict[str, jax.Array]]:
        """One generator and one discriminator update from the same forward pass."""
        del rng
        x = augment.to_float(batch["image"]) * 2.0 - 1.0
        w = self.config.loss
        stats = state.batch_stats

        def d_apply(params, d_stats, images):
            (p, f), upd = self.discriminator.apply({"params": params, "batch_stats": d_stats},
                                                   images, train=True, mutable=["batch_stats"])
            return p, f, upd["batch_stats"]

        def loss_fn(params):
            out, g_upd = self.generator.apply(
                {"params": params["generator"], "batch_stats": stats["generator"]}, x,
                train=True, mutable=["batch_stats"])
            fake = out["fake"]
            # The discriminator's loss, on a detached fake: moves the discriminator only.
            p_real, f_real, d_stats = d_apply(params["discriminator"], stats["discriminator"], x)
            p_fake, _, d_stats = d_apply(params["discriminator"], d_stats,
                                         jax.lax.stop_gradient(fake))
            err_d = 0.5 * (_bce(p_real, 1.0) + _bce(p_fake, 0.0))
            # The generator's loss, through a frozen discriminator: moves the generator only.
            _, f_fake, _ = d_apply(jax.lax.stop_gradient(params["discriminator"]), d_stats,
                                   fake)
            adv = jnp.mean((jax.lax.stop_gradient(f_real) - f_fake) ** 2)
            con = jnp.mean(jnp.abs(x - fake))
            enc = jnp.mean((out["latent_o"] - out["latent_i"]) ** 2)
            err_g = w.adversarial * adv + w.contextual * con + w.encoder * enc
            new_stats = {"generator": g_upd["batch_stats"], "discriminator": d_stats}
            return err_g + err_d, (new_stats, {"loss": err_g, "loss_d": err_d, "loss_adv": adv,
                                               "loss_con": con, "loss_enc": enc})

        state, (new_stats, metrics) = self.gradient_step(state, loss_fn)
        return state.replace(batch_stats=new_stats), metrics

    def predict(self, state: State, images: jax.Array) -> Prediction:
        """Score: the latent distance (or the map's maximum); map: |x - G(x)| (channel mean,
        smoothed); the reconstruction's L1, MSE and SSIM in [0, 1] units."""
        x = augment.to_float(images) * 2.0 - 1.0
        out = self.generator.apply({"params": state.params["generator"],
                                    "batch_stats": state.batch_stats["generator"]}, x)
        error = jnp.mean(jnp.abs(x - out["fake"]), axis=-1) / 2.0
        amap = smoothed_map(error, self.config.score.smooth_sigma)
        if self.config.score.image == "map_max":
            score = jnp.max(amap, axis=(1, 2))
        else:
            score = jnp.mean((out["latent_i"] - out["latent_o"]) ** 2, axis=-1)
        recon = reconstruction_errors((x + 1.0) / 2.0, (out["fake"] + 1.0) / 2.0, "recon")
        return Prediction(anomaly_map=amap, score=score, reconstruction=recon)
