"""RIAD, reconstruction by inpainting (Zavrtanik, Kristan, Skocaj, Pattern Recognition 2021),
the baseline of seed 001's Table 5.6 (Sec. 2.3.2, eqs. 2.5-2.8).

For a grid size k the image is cut into k x k cells, which are dealt at random into 3 disjoint
sets; each set is blanked in one of 3 copies of the image, a U-Net (`adjax.models.unet`, 3
sigmoid outputs) inpaints each copy, and the inpainted cells are put together into one
reconstruction. Training draws one k per step from `config.masks.sizes` (the same masks for
the whole batch, as the public implementation) and minimises, per image,

    L = w_mse MSE + w_msgms MSGMS + w_ssim (1 - SSIM)          (eq. 2.7)

(means over pixels; SSIM with an 11x11 Gaussian window and zero-padded borders). The anomaly
map (eq. 2.8) is 1 - MSGMS(x, x_hat_k) averaged over every k, smoothed by an s_f x s_f mean
filter (edge-mirrored); the image score is its maximum. Masks at inference are drawn from a
fixed key, so a prediction is deterministic.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from adjax.data import augment
from adjax.methods import Prediction
from adjax.methods.base import MethodBase, TrainState
from adjax.models.unet import UNet
from adjax.nn.gms import msgms_anomaly_map, msgms_loss
from adjax.nn.ssim import ssim_map

N_MASKS = 3  # disjoint masked copies per grid size


class State(TrainState):
    """The inpainting U-Net's parameters and BatchNorm statistics."""

    batch_stats: Any


def grid_masks(rng: jax.Array, size: int, k: int, n: int = N_MASKS) -> jax.Array:
    """[n, size, size] {0, 1} masks (1 = pixel kept): the k x k cells of the image dealt at
    random into n disjoint sets, set j blanked in mask j; every cell is blanked exactly once."""
    cells = size // k
    order = jax.random.permutation(rng, cells * cells)
    group = jnp.zeros(cells * cells, jnp.int32).at[order].set(
        jnp.arange(cells * cells, dtype=jnp.int32) % n)
    pixel_group = jnp.repeat(jnp.repeat(group.reshape(cells, cells), k, 0), k, 1)
    return (pixel_group[None] != jnp.arange(n)[:, None, None]).astype(jnp.float32)


def mean_filter(x: jax.Array, size: int) -> jax.Array:
    """[B, H, W] -> [B, H, W]: the mean over a size x size window, borders mirrored."""
    if size <= 1:
        return x
    lo, hi = (size - 1) // 2, size // 2
    padded = jnp.pad(x, ((0, 0), (lo, hi), (lo, hi)), mode="symmetric")
    total = jax.lax.reduce_window(padded, 0.0, jax.lax.add, (1, size, size), (1, 1, 1),
                                  "VALID")
    return total / (size * size)


@dataclasses.dataclass(frozen=True, eq=False)
class RIAD(MethodBase):
    """RIAD; built from a `configs/riad.py` config."""

    def __post_init__(self):
        size, sizes = self.config.data.image_size, tuple(self.config.masks.sizes)
        bad = [k for k in sizes if k < 1 or size % k]
        if not sizes or bad:
            raise ValueError(f"config.masks.sizes {sizes} must be grid sizes that divide "
                             f"config.data.image_size {size}.")

    @property
    def net(self) -> UNet:
        m = self.config.model
        return UNet(tuple(m.widths), 3, jnp.dtype(m.dtype))

    def init(self, rng: jax.Array, train: dict[str, jax.Array], weights: Any = None) -> State:
        """Randomly initialised U-Net for the training images' size."""
        del weights
        size = train["image"].shape[1]
        variables = jax.jit(self.net.init)(rng, jnp.zeros((1, size, size, 3), jnp.float32))
        return self.new_state(State, variables["params"], batch_stats=variables["batch_stats"])

    def inpaint(self, params, batch_stats, x: jax.Array, masks: jax.Array,
                train: bool) -> tuple[jax.Array, Any]:
        """The reconstruction of x [B, H, W, 3] from its masked copies (masks [n, H, W]): each
        cell taken from the copy in which it was blanked. Returns (x_hat, new batch stats or
        None)."""
        n, b = masks.shape[0], x.shape[0]
        m = masks[:, None, :, :, None]                              # [n, 1, H, W, 1]
        inputs = (x[None] * m).reshape(n * b, *x.shape[1:])
        variables = {"params": params, "batch_stats": batch_stats}
        if train:
            logits, updates = self.net.apply(variables, inputs, train=True,
                                             mutable=["batch_stats"])
            stats = updates["batch_stats"]
        else:
            logits, stats = self.net.apply(variables, inputs), None
        out = jax.nn.sigmoid(logits).reshape(n, b, *x.shape[1:])
        return jnp.sum(out * (1.0 - m), axis=0), stats

    def losses(self, x: jax.Array, recon: jax.Array) -> dict[str, jax.Array]:
        """The per-image terms of eq. 2.7, [B] each."""
        return {"mse": jnp.mean((recon - x) ** 2, axis=(1, 2, 3)),
                "msgms": msgms_loss(x, recon),
                "ssim": 1.0 - jnp.mean(ssim_map(x, recon, padding="zeros"), axis=(1, 2, 3))}

    def train_step(self, state: State, batch: dict[str, jax.Array],
                   rng: jax.Array) -> tuple[State, dict[str, jax.Array]]:
        """One step of eq. 2.7 on the masks of one grid size drawn at random."""
        x = augment.to_float(batch["image"])
        sizes = tuple(self.config.masks.sizes)
        k_size, k_mask = jax.random.split(rng)
        # Every size's masks are made (they are cheap) and one is picked: shapes stay static.
        all_masks = jnp.stack([grid_masks(k_mask, x.shape[1], k) for k in sizes])
        masks = all_masks[jax.random.randint(k_size, (), 0, len(sizes))]
        w = self.config.loss

        def loss_fn(params):
            recon, stats = self.inpaint(params, state.batch_stats, x, masks, train=True)
            terms = self.losses(x, recon)
            loss = jnp.mean(w.mse * terms["mse"] + w.msgms * terms["msgms"]
                            + w.ssim * terms["ssim"])
            return loss, (stats, {"loss": loss, **{f"loss_{k}": jnp.mean(v)
                                                   for k, v in terms.items()}})

        state, (stats, metrics) = self.gradient_step(state, loss_fn)
        return state.replace(batch_stats=stats), metrics

    def predict(self, state: State, images: jax.Array) -> Prediction:
        """Eq. 2.8: 1 - MSGMS averaged over the grid sizes, mean-filtered; score its max."""
        x = augment.to_float(images)
        sizes = tuple(self.config.masks.sizes)
        keys = jax.random.split(jax.random.key(self.config.masks.test_seed), len(sizes))
        total = 0.0
        for key, k in zip(keys, sizes, strict=True):
            recon, _ = self.inpaint(state.params, state.batch_stats, x,
                                    grid_masks(key, x.shape[1], k), train=False)
            total = total + msgms_anomaly_map(x, recon)
        amap = mean_filter(total / len(sizes), self.config.score.mean_filter)
        return Prediction(anomaly_map=amap, score=jnp.max(amap, axis=(1, 2)))

    def param_groups(self, state: State) -> dict[str, Any]:
        """The U-Net as one count."""
        return {"unet": state.params}
