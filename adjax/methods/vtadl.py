"""VT-ADL: a ViT encoder trained to reconstruct the image through a capsule vector and a
transposed-convolution decoder, while a mixture density head models each patch's encoding;
the per-patch negative log-likelihood is the anomaly map.

Loss (thesis eq. 6.11): NLL (summed over the patches, averaged over the batch)
+ 5 * MSE + 0.5 * (-SSIM). Map: the N per-patch NLLs on their grid, bilinearly enlarged with
aligned corners and blurred with a Gaussian (sigma 4 at 512 px). Score: see `SCORES`.

The NLL is the mixture's own, -log sum_k pi_k N(x; mu_k, sigma_k^2) with sigma = softplus
(thesis eqs. 6.6-6.8), unless `config.loss.nll == "code"`: the authors' code's
sum_k pi_k * NLL_k with softplus read as a log-variance and log(2 pi) counted once.
"""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from adjax.data import augment
from adjax.methods import Prediction
from adjax.methods.base import MethodBase, TrainState, count_params
from adjax.models.vtadl import VTADL as Network
from adjax.nn.decoders import transposed_conv_output_size
from adjax.nn.layers import resize_bilinear_align_corners
from adjax.nn.ssim import gaussian_filter, ssim

NLLS = ("mixture", "code")
# Image scores: "combined" = MSE + ssim_sign * SSIM + the largest patch NLL (thesis and code;
# they differ in ssim_sign), "nll_max" / "nll_sum" = largest / summed patch NLL,
# "map_max" = the maximum of the (enlarged, blurred) anomaly map.
SCORES = ("combined", "nll_max", "nll_sum", "map_max")


class State(TrainState):
    """Everything VT-ADL trains (`params`: {"encoder", "capsules", "decoder", "mdn"})."""

    batch_stats: dict[str, Any]   # the decoder's BatchNorm running averages


def mixture_nll(x: jax.Array, logits: jax.Array, mean: jax.Array,
                scale: jax.Array) -> jax.Array:
    """-log sum_k softmax(logits)_k N(x; mean_k, diag(softplus(scale_k))^2), by log-sum-exp.

    x [..., D]; logits [..., K]; mean, scale [..., K, D]. Returns [...].
    """
    log_sigma = _log_softplus(scale)
    z2 = jnp.square(x[..., None, :] - mean) * jnp.exp(-2.0 * log_sigma)
    d = x.shape[-1]
    log_normal = -0.5 * jnp.sum(z2, -1) - jnp.sum(log_sigma, -1) - 0.5 * d * math.log(2 * math.pi)
    return -jax.nn.logsumexp(jax.nn.log_softmax(logits, -1) + log_normal, axis=-1)


def code_nll(x: jax.Array, logits: jax.Array, mean: jax.Array, scale: jax.Array) -> jax.Array:
    """The authors' `mdn1.log_gmm`: sum_k pi_k * 0.5 * (log 2pi + sum_d [l + (x - mu)^2 / e^l])
    with l = softplus(scale) read as a log-variance. Shapes as `mixture_nll`."""
    logvar = jax.nn.softplus(scale)
    per_dim = logvar + jnp.square(x[..., None, :] - mean) * jnp.exp(-logvar)
    nll = 0.5 * (math.log(2 * math.pi) + jnp.sum(per_dim, -1))
    return jnp.sum(jax.nn.softmax(logits, -1) * nll, -1)


def _log_softplus(a: jax.Array) -> jax.Array:
    # log(softplus(a)) without underflow: softplus(a) = e^a (1 + O(e^a)) for very negative a.
    safe = jnp.maximum(a, -15.0)
    return jnp.where(a < -15.0, a, jnp.log(jax.nn.softplus(safe)))


@dataclasses.dataclass(frozen=True, eq=False)
class VTADL(MethodBase):
    """The VT-ADL method (see the module docstring); built from a vtadl config."""

    @property
    def net(self) -> Network:
        m, size = self.config.model, self.config.data.image_size
        layers = tuple(tuple(int(v) for v in layer) for layer in m.decoder)
        if size % m.patch:
            raise ValueError(f"config.data.image_size {size} is not a multiple of "
                             f"config.model.patch {m.patch}.")
        out = transposed_conv_output_size(m.decoder_grid, layers)
        if out != size:
            raise ValueError(f"config.model.decoder turns the {m.decoder_grid}x"
                             f"{m.decoder_grid} grid into {out} px images, but "
                             f"config.data.image_size is {size}.")
        if (size // m.patch) ** 2 * m.dim % m.capsule_in_dim or \
                m.capsule_dim % m.decoder_grid**2:
            raise ValueError("config.model: the encoding (tokens x dim) must split into "
                             "capsule_in_dim-sized capsules, and capsule_dim into "
                             "decoder_grid^2 channels.")
        return Network(
            patch=m.patch, dim=m.dim, depth=m.depth, heads=m.heads, mlp_dim=m.mlp_dim,
            attention_scale=m.attention_scale, noise_std=m.noise_std,
            capsule_in_dim=m.capsule_in_dim, capsule_dim=m.capsule_dim,
            routing_iterations=m.routing_iterations,
            routing_stop_gradient=m.routing_stop_gradient, decoder_grid=m.decoder_grid,
            decoder=layers, components=m.components, clamp_input=m.clamp_input,
            dtype=jnp.dtype(m.dtype))

    def patch_nll(self, out: dict[str, jax.Array]) -> jax.Array:
        """Per-patch NLL [B, N] of the network's output under the configured loss."""
        kind = self.config.loss.nll
        if kind not in NLLS:
            raise ValueError(f"config.loss.nll must be one of {NLLS}, got {kind!r}.")
        nll = mixture_nll if kind == "mixture" else code_nll
        return nll(out["tokens"], out["logits"], out["mean"], out["scale"])

    def _ssim(self, x: jax.Array, reconstruction: jax.Array) -> jax.Array:
        return ssim(x, reconstruction, padding=self.config.loss.ssim_padding)

    # -- setup ---------------------------------------------------------------------------------

    def init(self, rng: jax.Array, train: dict[str, jax.Array], weights: None = None) -> State:
        """Initialises the network for `train`'s image size."""
        x = jnp.zeros((1, *train["image"].shape[1:]), jnp.float32)
        variables = jax.jit(lambda r: self.net.init({"params": r}, x, train=False))(rng)
        return self.new_state(State, variables["params"], batch_stats=variables["batch_stats"])

    # -- training ------------------------------------------------------------------------------

    def train_step(self, state: State, batch: dict[str, jax.Array],
                   rng: jax.Array) -> tuple[State, dict[str, jax.Array]]:
        """One joint step of encoder, capsules, decoder and density head (training noise on,
        BatchNorm on batch statistics, its running averages updated)."""
        w = self.config.loss
        x = augment.to_float(batch["image"])

        def loss_fn(params):
            out, updates = self.net.apply(
                {"params": params, "batch_stats": state.batch_stats}, x, train=True,
                rngs={"noise": rng}, mutable=["batch_stats"])
            nll = jnp.mean(jnp.sum(self.patch_nll(out), axis=-1))
            mse = jnp.mean(jnp.square(out["reconstruction"] - x))
            similarity = jnp.mean(self._ssim(x, out["reconstruction"]))
            loss = nll + w.mse_weight * mse - w.ssim_weight * similarity
            return loss, (updates["batch_stats"], dict(loss=loss, nll=nll, mse=mse,
                                                       ssim=similarity))

        state, (batch_stats, metrics) = self.gradient_step(state, loss_fn)
        return state.replace(batch_stats=batch_stats), metrics

    # -- inference -----------------------------------------------------------------------------

    def predict(self, state: State, images: jax.Array) -> Prediction:
        """Per-patch NLL maps enlarged (aligned corners) and blurred; scores per config."""
        cfg = self.config.score
        x = augment.to_float(images)
        out = self.net.apply({"params": state.params, "batch_stats": state.batch_stats}, x,
                             train=False)
        nll = self.patch_nll(out)
        b, h, w = x.shape[:3]
        g = h // self.config.model.patch
        grid = nll.reshape(b, g, g, 1)
        full = resize_bilinear_align_corners(grid, (h, w))
        if self.config.map.blur_sigma > 0:
            full = gaussian_filter(full, self.config.map.blur_sigma, mode="symmetric")
        full = full[..., 0]
        if cfg.kind == "combined":
            rec = out["reconstruction"]
            mse = jnp.mean(jnp.square(rec - x), axis=(1, 2, 3))
            score = mse + cfg.ssim_sign * self._ssim(x, rec) + jnp.max(nll, axis=-1)
        elif cfg.kind == "nll_max":
            score = jnp.max(nll, axis=-1)
        elif cfg.kind == "nll_sum":
            score = jnp.sum(nll, axis=-1)
        elif cfg.kind == "map_max":
            score = jnp.max(full, axis=(1, 2))
        else:
            raise ValueError(f"config.score.kind must be one of {SCORES}, got {cfg.kind!r}.")
        return Prediction(anomaly_map=full, score=score)

    def describe(self, state: State) -> dict[str, Any]:
        """Facts a results record must carry about this run."""
        counts = super().describe(state)["params"]
        encoder = state.params["encoder"]
        thesis = (counts["encoder"] - count_params(encoder["pos_embedding"])
                  - count_params(encoder["cls_token"]) + counts["decoder"])
        m, s = self.config.model, self.config.score
        return {"params": counts,
                "params_thesis_convention": thesis,  # Table 7.1's count: 19,041,555 at 512 px
                "nll": self.config.loss.nll, "components": m.components,
                "score": s.kind + (f" (ssim_sign {s.ssim_sign:+g})" if s.kind == "combined"
                                   else "")}
