"""PIADE (Mishra 2021, ch. 5) and the pyramidal auto-encoder (ch. 4): reconstruction methods
trained on normal images only, whose loss is also their anomaly score.

`config.method` picks the network: `piade` (adjax.models.piade) or `pyramidal_ae`
(adjax.models.pyramid_ae). Per image, with x in [0, 1] and x_hat the (tanh) reconstruction:

    L(x, x_hat) = w_mse MSE + w_perceptual Perc - w_ssim SSIM

MSE the mean squared pixel error; Perc the mean squared difference of frozen VGG-11
`features[:4]` activations of x and x_hat (ImageNet weights imported from a torchvision state
dict: `config.loss.vgg_weights`); SSIM the mean local SSIM (11x11 Gaussian window, sigma 1.5,
zero-padded borders as the `pytorch_ssim` package the authors use). The training loss uses the
`config.loss` weights (PIADE: 1, 1, 1; pyramidal AE: 1, 1, 0) averaged over the batch; the
image score uses the `config.score` weights (PIADE: the same, as its test code; pyramidal AE:
MSE only, eq. 4.3). The anomaly map holds the score's per-pixel terms at the input size:
w_mse x the squared error (mean over channels) + w_ssim x (1 - local SSIM); the perceptual term
has no pixel map and only enters the score. With `config.score.reduce = "max"` the image score
is the map's maximum instead (not in the thesis; for defects far smaller than the image, as in
the embedded data set, where the image-mean loss cannot see them).

PIADE decodes one of its two instantiation vectors (`config.model.decode`): `first` (thesis:
the first vector in training, the longest at test) or `longest` (the authors' code: always the
longest).
"""

import dataclasses
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from adjax.data import augment
from adjax.methods import Prediction
from adjax.models.piade import PIADE as PIADENet
from adjax.models.pyramid_ae import PyramidAE
from adjax.nn.resnet import resnet_params_from_torch
from adjax.nn.vgg import VGGFeatures, read_torch_state_dict, vgg_params_from_torch

NETWORKS = {"piade": PIADENet, "pyramidal_ae": PyramidAE}
DECODES = ("first", "longest")
REDUCES = ("mean", "max")


class State(flax.struct.PyTreeNode):
    """Trained parameters, BatchNorm statistics and the frozen perceptual net."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    vgg: Any  # frozen VGG params ({} when the perceptual term is off)


@dataclasses.dataclass(frozen=True, eq=False)
class PIADE:
    """PIADE or the pyramidal auto-encoder (see the module docstring), from their configs."""

    config: ml_collections.ConfigDict

    def __post_init__(self):
        if self.config.method not in NETWORKS:
            raise ValueError(f"config.method {self.config.method!r} is not one of "
                             f"{', '.join(NETWORKS)}.")
        if self.config.method == "piade" and self.config.model.decode not in DECODES:
            raise ValueError(f"config.model.decode {self.config.model.decode!r} is not one of "
                             f"{', '.join(DECODES)}.")
        if self.config.score.reduce not in REDUCES:
            raise ValueError(f"config.score.reduce {self.config.score.reduce!r} is not one of "
                             f"{', '.join(REDUCES)}.")
        if self.uses_perceptual and not self.config.loss.vgg_weights:
            raise ValueError(
                "config.loss.vgg_weights is empty, but the perceptual term needs ImageNet VGG-11 "
                "weights (a torchvision state dict, .pth or .npz); point it at one, or set "
                "config.loss.perceptual=0 and config.score.perceptual=0 to train without it.")

    @property
    def uses_perceptual(self) -> bool:
        return bool(self.config.loss.perceptual or self.config.score.perceptual)

    @property
    def net(self) -> nn.Module:
        cls = NETWORKS[self.config.method]
        names = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
        kwargs = {k: tuple(v) if isinstance(v, list | tuple) else v
                  for k, v in self.config.model.items() if k in names}
        kwargs["dtype"] = jnp.dtype(kwargs.get("dtype", "float32"))
        return cls(**kwargs)

    @property
    def vgg(self) -> VGGFeatures:
        return VGGFeatures(self.config.loss.vgg_depth)

    @property
    def tx(self) -> optax.GradientTransformation:
        """Adam with PyTorch-style (L2) weight decay."""
        o = self.config.optim
        return optax.chain(optax.add_decayed_weights(o.weight_decay), optax.adam(o.lr))

    # -- setup ---------------------------------------------------------------------------------

    def init(self, rng: jax.Array, train: dict[str, jax.Array]) -> State:
        """Initialises the network (ImageNet backbone weights when configured) and loads the
        frozen VGG for the perceptual term."""
        x = jnp.zeros((1, *train["image"].shape[1:]), jnp.float32)
        variables = self.net.init(rng, x)
        params, stats = variables["params"], variables["batch_stats"]
        path = self.config.model.backbone_weights
        if path:
            loaded = resnet_params_from_torch(
                read_torch_state_dict(path),
                {"params": params["backbone"], "batch_stats": stats["backbone"]})
            params = {**params, "backbone": loaded["params"]}
            stats = {**stats, "backbone": loaded["batch_stats"]}
        vgg = {}
        if self.uses_perceptual:
            like = self.vgg.init(jax.random.key(0), x)
            vgg = vgg_params_from_torch(read_torch_state_dict(self.config.loss.vgg_weights),
                                        like)
        return State(step=jnp.zeros((), jnp.int32), params=params, batch_stats=stats,
                     opt_state=self.tx.init(params), vgg=vgg)

    def calibrate(self, state: State, val: dict[str, jax.Array]) -> State:
        """Nothing to calibrate: the score is the loss."""
        return state

    def extra_pools(self) -> dict[str, np.ndarray]:
        return {}

    # -- the loss terms ------------------------------------------------------------------------

    def _forward(self, params, batch_stats, x, train: bool):
        """The reconstruction (and new BatchNorm statistics in training)."""
        variables = {"params": params, "batch_stats": batch_stats}
        kwargs = {}
        if self.config.method == "piade":
            first = self.config.model.decode == "first" and train
            kwargs["decode_index"] = jnp.zeros((x.shape[0],), jnp.int32) if first else None
        if train:
            out, updates = self.net.apply(variables, x, train=True, mutable=["batch_stats"],
                                          **kwargs)
            return out["reconstruction"].astype(jnp.float32), updates["batch_stats"]
        out = self.net.apply(variables, x, train=False, **kwargs)
        return out["reconstruction"].astype(jnp.float32), None

    def terms(self, state: State, x: jax.Array, recon: jax.Array,
              weights: ml_collections.ConfigDict) -> dict[str, jax.Array]:
        """Per-image MSE, perceptual and SSIM terms ([B] each; 0 where the weight is 0), and
        the per-pixel maps of the first and last ([B, H, W]: squared error, local SSIM; both
        averaged over channels)."""
        n = x.shape[0]
        out = {"mse_map": jnp.mean((recon - x) ** 2, axis=-1), "perceptual": jnp.zeros((n,)),
               "ssim_map": jnp.ones(x.shape[:3])}
        if weights.perceptual:
            f = self.vgg.apply(state.vgg, self._vgg_input(jnp.concatenate([x, recon])))
            out["perceptual"] = jnp.mean((f[n:] - jax.lax.stop_gradient(f[:n])) ** 2,
                                         axis=(1, 2, 3))
        if weights.ssim:
            out["ssim_map"] = jnp.mean(self._ssim_map(x, recon), axis=-1)
        out["mse"] = jnp.mean(out["mse_map"], axis=(1, 2))
        out["ssim"] = jnp.mean(out["ssim_map"], axis=(1, 2)) if weights.ssim else jnp.zeros((n,))
        return out

    def _vgg_input(self, images: jax.Array) -> jax.Array:
        # The authors feed [0, 1] images to VGG without ImageNet normalisation.
        return augment.imagenet_normalize(images) if self.config.loss.vgg_normalize else images

    def _ssim_map(self, x: jax.Array, recon: jax.Array) -> jax.Array:
        from adjax.nn.ssim import ssim_map

        return ssim_map(x, recon, padding="zeros")

    @staticmethod
    def _combine(terms: dict[str, jax.Array], weights) -> jax.Array:
        return (weights.mse * terms["mse"] + weights.perceptual * terms["perceptual"]
                - weights.ssim * terms["ssim"])

    # -- training ------------------------------------------------------------------------------

    def train_step(self, state: State, batch: dict[str, jax.Array],
                   rng: jax.Array) -> tuple[State, dict[str, jax.Array]]:
        """One step of the weighted MSE + perceptual - SSIM loss."""
        del rng  # no augmentation, no dropout
        x = augment.to_float(batch["image"])
        weights = self.config.loss

        def loss_fn(params):
            recon, stats = self._forward(params, state.batch_stats, x, train=True)
            terms = self.terms(state, x, recon, weights)
            loss = jnp.mean(self._combine(terms, weights))
            return loss, (stats, {"loss": loss, **{f"loss_{k}": jnp.mean(terms[k])
                                                   for k in ("mse", "perceptual", "ssim")}})

        grads, (stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        return state.replace(params=optax.apply_updates(state.params, updates),
                             batch_stats=stats, opt_state=opt_state), metrics

    # -- inference -----------------------------------------------------------------------------

    def predict(self, state: State, images: jax.Array) -> Prediction:
        """Score = the weighted terms of `config.score`; map = their per-pixel part."""
        weights = self.config.score
        x = augment.to_float(images)
        recon, _ = self._forward(state.params, state.batch_stats, x, train=False)
        terms = self.terms(state, x, recon, weights)
        pixel = weights.mse * terms["mse_map"] + weights.ssim * (1.0 - terms["ssim_map"])
        if weights.reduce == "max":
            return Prediction(anomaly_map=pixel, score=jnp.max(pixel, axis=(1, 2)))
        return Prediction(anomaly_map=pixel, score=self._combine(terms, weights))

    def describe(self, state: State) -> dict[str, Any]:
        """Facts a results record must carry about this run."""
        m = self.config.model
        return {"backbone": m.backbone_weights or "random initialisation (not ImageNet)",
                "perceptual": self.config.loss.vgg_weights if self.uses_perceptual else "off",
                "params": {self.config.method: _count(state.params)}}


def _count(tree) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))
