"""What PIADE (Mishra 2021, ch. 5) and the pyramidal auto-encoder (ch. 4) share: reconstruction
methods trained on normal images only, whose loss is also their anomaly score.

`adjax.methods.piade` and `adjax.methods.pyramid_ae` give the networks. Per image, with x in
[0, 1] and x_hat the (tanh) reconstruction:

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
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from adjax import weights as weights_lib
from adjax.config import check_choice
from adjax.data import augment
from adjax.methods import Prediction
from adjax.methods.base import MethodBase, TrainState
from adjax.nn.ssim import ssim_map
from adjax.nn.vgg import VGGFeatures

REDUCES = ("mean", "max")


class State(TrainState):
    """Trained parameters, BatchNorm statistics and the frozen perceptual net."""

    batch_stats: Any
    vgg: Any  # frozen VGG params ({} when the perceptual term is off)


@dataclasses.dataclass(frozen=True, eq=False)
class ReconstructionMethod(MethodBase):
    """The shared part of PIADE and the pyramidal AE; subclasses give `network` (the Flax
    module class) and may pass extra call arguments (`net_kwargs`)."""

    network = nn.Module  # the subclass's Flax module class

    def __post_init__(self):
        check_choice("config.score.reduce", self.config.score.reduce, REDUCES)
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
        names = {f.name for f in dataclasses.fields(self.network)} - {"parent", "name"}
        kwargs = {k: tuple(v) if isinstance(v, list | tuple) else v
                  for k, v in self.config.model.items() if k in names}
        kwargs["dtype"] = jnp.dtype(kwargs.get("dtype", "float32"))
        return self.network(**kwargs)

    @property
    def vgg(self) -> VGGFeatures:
        return VGGFeatures(self.config.loss.vgg_depth)

    # -- setup ---------------------------------------------------------------------------------

    def _shapes(self) -> tuple[Any, Any]:
        size = self.config.data.image_size
        x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
        return (jax.eval_shape(self.net.init, jax.random.key(0), x),
                jax.eval_shape(self.vgg.init, jax.random.key(0), x))

    def pretrained(self) -> dict[str, Any] | None:
        """The ImageNet backbone (`config.model.backbone_weights`) and the perceptual VGG
        (`config.loss.vgg_weights`), read from torchvision state dicts on the host."""
        backbone_path = self.config.model.get("backbone_weights", "")
        if not backbone_path and not self.uses_perceptual:
            return None
        net_like, vgg_like = self._shapes()
        out = {}
        if backbone_path:
            like = {k: net_like[k]["backbone"] for k in ("params", "batch_stats")}
            out["backbone"] = weights_lib.resnet_from_torch(
                weights_lib.read_state_dict(backbone_path), like)
        if self.uses_perceptual:
            out["vgg"] = weights_lib.vgg_from_torch(
                weights_lib.read_state_dict(self.config.loss.vgg_weights), vgg_like)
        return out

    def init(self, rng: jax.Array, train: dict[str, jax.Array],
             weights: dict[str, Any] | None = None) -> State:
        """Initialises the network (the ImageNet backbone from `weights` when given) and takes
        the frozen VGG of the perceptual term from `weights`."""
        size = train["image"].shape[1]
        x = jnp.zeros((1, size, size, 3), jnp.float32)
        variables = jax.jit(self.net.init)(rng, x)
        weights = weights or {}
        if "backbone" in weights:
            loaded = weights["backbone"]
            variables = {k: {**variables[k], "backbone": weights_lib.merge(
                variables[k]["backbone"], loaded[k])} for k in ("params", "batch_stats")}
        vgg = weights.get("vgg", {})
        if self.uses_perceptual and not vgg:  # shapes only (eval_shape of a restored run)
            vgg = jax.jit(self.vgg.init)(jax.random.key(0), x)
        return self.new_state(State, variables["params"], batch_stats=variables["batch_stats"],
                              vgg=jax.tree.map(jnp.asarray, vgg))

    # -- the loss terms ------------------------------------------------------------------------

    def net_kwargs(self, x: jax.Array, train: bool) -> dict[str, Any]:
        """Extra arguments of the network's call (none by default)."""
        del x, train
        return {}

    def _forward(self, params, batch_stats, x, train: bool):
        """The reconstruction (and new BatchNorm statistics in training)."""
        variables = {"params": params, "batch_stats": batch_stats}
        kwargs = self.net_kwargs(x, train)
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

        state, (stats, metrics) = self.gradient_step(state, loss_fn)
        return state.replace(batch_stats=stats), metrics

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

    def param_groups(self, state: State) -> dict[str, Any]:
        """The whole network as one count (the frozen VGG is not counted)."""
        return {self.config.method: state.params}

    def describe(self, state: State) -> dict[str, Any]:
        """Facts a results record must carry about this run."""
        backbone = self.config.model.get("backbone_weights", "")
        return {**super().describe(state),
                "backbone": backbone or "random initialisation (not ImageNet)",
                "perceptual": self.config.loss.vgg_weights if self.uses_perceptual else "off"}
