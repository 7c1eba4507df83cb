"""Seed 001's multi-level patch model (Ferreira 2023, Sec. 4.1.2, 5.3; `adjax.models.multilevel`)
as a supervised segmenter: every pixel at least 16 px from the border is classified from the
33 x 33 patch centred on it.

Training: from each batch of images (with masks; `config.data.supervised_fraction`), patches
whose centre pixel is anomalous and as many whose centre is normal (the thesis's 1:1 balance)
are cut at valid centres drawn uniformly from the batch's anomalous, resp. normal, pixels
(`config.patches.per_step` in all; when the batch holds no anomalous pixel its positive half
gets weight 0). Loss per patch (eq. 4.5), averaged over the patches:

    L = MSE_SUM(patch, reconstruction) + KL_SUM + alpha * BCE(centre label, P(anomalous))

with sums over the patch's pixels and channels and the latent (eqs. 4.3, 4.4; eq. 4.2's sign
restored). Images are used at `config.data.image_size` (the thesis's I_size: 128, 256, 512).

Prediction: the probability of every valid pixel's patch (the (S - 32)^2 centres, a row of
patches at a time); border pixels, which have no patch, take the value of the nearest valid
pixel (the thesis does not say how it fills them). The image score is the map's maximum.

`config.patches.border`: "copy" (the default, as above: the thesis's valid pixels) or
"reflect": images are reflect-padded by 16 px, in training and at inference, so that every
pixel centres a patch and anomalies within 16 px of the border are classified too (not in the
thesis; for small images, where the valid pixels are a small part: a quarter at 64 px).
"""

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from adjax.config import check_choice
from adjax.data import augment
from adjax.methods import Prediction
from adjax.methods.base import MethodBase, TrainState, reconstruction_errors
from adjax.models.multilevel import PATCH, MultiLevel
from adjax.models.vae import kl_sum

HALF = PATCH // 2  # 16: a valid centre is at least this far from the border
BORDERS = ("copy", "reflect")


class State(TrainState):
    """The model's parameters and BatchNorm statistics."""

    batch_stats: Any


def valid_region(size: int) -> jax.Array:
    """[size, size] booleans: the pixels that are the centre of a whole 33 x 33 patch."""
    inside = (jnp.arange(size) >= HALF) & (jnp.arange(size) < size - HALF)
    return inside[:, None] & inside[None, :]


def cut_patches(images: jax.Array, index: jax.Array, rows: jax.Array,
                cols: jax.Array) -> jax.Array:
    """The 33 x 33 patches of images[index] centred on (rows, cols) (valid centres)."""
    def cut(i, r, c):
        return jax.lax.dynamic_slice(images[i], (r - HALF, c - HALF, 0),
                                     (PATCH, PATCH, images.shape[-1]))
    return jax.vmap(cut)(index, rows, cols)


def draw_centres(rng: jax.Array, weights: jax.Array, n: int) -> tuple[jax.Array, ...]:
    """n (image, row, col) draws proportional to `weights` [B, H, W] (uniform when all 0)."""
    b, h, w = weights.shape
    flat = weights.reshape(-1)
    logits = jnp.where(flat > 0, 0.0, -jnp.inf)
    logits = jnp.where(jnp.any(flat > 0), logits, 0.0)
    pick = jax.random.categorical(rng, logits, shape=(n,))
    return pick // (h * w), (pick // w) % h, pick % w


@dataclasses.dataclass(frozen=True, eq=False)
class MultiLevelMethod(MethodBase):
    """The multi-level patch model; built from a `configs/multilevel.py` config."""

    trains_on_masks: ClassVar[bool] = True

    def __post_init__(self):
        self.require_masked_training_data("the multi-level model")
        check_choice("config.patches.border", self.config.patches.border, BORDERS)
        if self.config.data.image_size <= 2 * HALF and self.config.patches.border == "copy":
            raise ValueError(f"config.data.image_size must exceed {2 * HALF} for 33x33 patches, "
                             f"got {self.config.data.image_size}.")
        if self.config.patches.per_step < 2 or self.config.patches.per_step % 2:
            raise ValueError(f"config.patches.per_step must be an even number >= 2, got "
                             f"{self.config.patches.per_step}.")

    @property
    def net(self) -> MultiLevel:
        m = self.config.model
        return MultiLevel(m.width, m.hidden, m.latent, m.se_ratio, m.agg, tuple(m.mlp),
                          jnp.dtype(m.dtype))

    def init(self, rng: jax.Array, train: dict[str, jax.Array], weights: Any = None) -> State:
        """A randomly initialised model."""
        del train, weights
        variables = jax.jit(self.net.init)(rng, jnp.zeros((1, PATCH, PATCH, 3)))
        return self.new_state(State, variables["params"], batch_stats=variables["batch_stats"])

    def training_patches(self, rng: jax.Array, x: jax.Array, y: jax.Array):
        """(patches [P, 33, 33, 3], centre labels [P], weights [P]): half with anomalous
        centres, half with normal ones."""
        n = self.config.patches.per_step // 2
        valid = valid_region(x.shape[1])[None]
        k_pos, k_neg = jax.random.split(rng)
        pos, neg = valid * (y > 0), valid * (y == 0)
        patches = jnp.concatenate([cut_patches(x, *draw_centres(k_pos, pos, n)),
                                   cut_patches(x, *draw_centres(k_neg, neg, n))])
        labels = jnp.concatenate([jnp.ones(n), jnp.zeros(n)])
        weights = jnp.concatenate([jnp.full(n, jnp.any(pos).astype(jnp.float32)),
                                   jnp.ones(n)])
        return patches, labels, weights

    def train_step(self, state: State, batch: dict[str, jax.Array],
                   rng: jax.Array) -> tuple[State, dict[str, jax.Array]]:
        """One step of eq. 4.5 on a balanced draw of patches."""
        x, y = self.padded(augment.to_float(batch["image"])), batch["mask"]
        if self.config.patches.border == "reflect":
            y = jnp.pad(y, ((0, 0), (HALF, HALF), (HALF, HALF)))
        k_patch, k_sample = jax.random.split(rng)
        patches, labels, weights = self.training_patches(k_patch, x, y)
        alpha = self.config.loss.alpha

        def loss_fn(params):
            out, upd = self.net.apply({"params": params, "batch_stats": state.batch_stats},
                                      patches, train=True, sample=True,
                                      rngs={"sample": k_sample}, mutable=["batch_stats"])
            mse = jnp.sum((out["reconstruction"] - patches) ** 2, axis=(1, 2, 3))
            kl = kl_sum(out["mu"], out["logvar"])
            # BCE from the logit: log sigmoid is exact where log(sigmoid) would round to 0.
            bce = -(labels * jax.nn.log_sigmoid(out["logit"])
                    + (1 - labels) * jax.nn.log_sigmoid(-out["logit"]))
            def mean(v):  # over the patches that count
                return jnp.sum(weights * v) / jnp.sum(weights)

            loss = mean(mse + kl + alpha * bce)
            return loss, (upd["batch_stats"], {"loss": loss, "loss_mse": mean(mse),
                                               "loss_kl": mean(kl), "loss_bce": mean(bce)})

        state, (stats, metrics) = self.gradient_step(state, loss_fn)
        return state.replace(batch_stats=stats), metrics

    def padded(self, x: jax.Array) -> jax.Array:
        """[B, S, S, C] images, reflect-padded by 16 px with `patches.border` "reflect" (every
        pixel then centres a patch), else as they are."""
        if self.config.patches.border == "reflect":
            return jnp.pad(x, ((0, 0), (HALF, HALF), (HALF, HALF), (0, 0)), mode="reflect")
        return x

    def predict(self, state: State, images: jax.Array) -> Prediction:
        """P(anomalous centre) of every patch centre (with `patches.border` "copy", the border
        pixels take the value of the nearest valid pixel); the image score is the map's
        maximum; the decoder's reconstruction errors (Table 5.3) of the image whose centre
        pixels come from their patches' reconstructions (borders copied from the input)."""
        x = augment.to_float(images)
        xp = self.padded(x)
        b, size = x.shape[0], xp.shape[1]
        inner = size - 2 * HALF
        cols = jnp.arange(HALF, size - HALF)
        variables = {"params": state.params, "batch_stats": state.batch_stats}

        def row(r):  # the patches of one row of centres, for every image
            index = jnp.repeat(jnp.arange(b), inner)
            patches = cut_patches(xp, index, jnp.full(b * inner, r), jnp.tile(cols, b))
            out = self.net.apply(variables, patches)
            return (jax.nn.sigmoid(out["logit"]).reshape(b, inner),
                    out["reconstruction"][:, HALF, HALF].reshape(b, inner, -1))

        probs, centres = jax.lax.map(row, jnp.arange(HALF, size - HALF))  # rows first
        probs, centres = jnp.swapaxes(probs, 0, 1), jnp.swapaxes(centres, 0, 1)
        pad = (x.shape[1] - inner) // 2  # 16 with "copy", 0 with "reflect"
        amap = jnp.pad(probs, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
        recon = jax.lax.dynamic_update_slice(x, centres.astype(x.dtype), (0, pad, pad, 0))
        return Prediction(anomaly_map=amap, score=jnp.max(amap, axis=(1, 2)),
                          reconstruction=reconstruction_errors(x, recon, "recon"))

    def param_groups(self, state: State) -> dict[str, Any]:
        """The model as one count."""
        return {"multilevel": state.params}
