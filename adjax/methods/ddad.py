"""DDAD: an ε-prediction UNet (`adjax.models.ddad_unet`) learns the normal images; a test image is
reconstructed by the conditioned DDIM process of `adjax.diffusion`, conditioned on itself, and
compared with its reconstruction in pixels and in the features of an ImageNet ResNet
(WideResNet-101-2 in the reference, arimousa/DDAD).

Training has two phases, chosen inside the compiled step by `state.step` (`lax.cond`), so a
run is one trainer loop and resumes anywhere:

1. steps [0, train.steps − da.steps): the ε-MSE of `adjax.diffusion.epsilon_loss` on the batch
   (images in [−1, 1]), Adam with L2 weight decay (the reference's `Adam(3e-4, wd=0.05)`).
2. the last `da.steps` steps, domain adaptation: the first `da.batch_size` images of the batch
   are split in half, targets y and inputs x; x is reconstructed conditioned on y with w_DA;
   the extractor φ (BatchNorm in training mode, as the reference's `feature_extractor.train()`)
   is trained with AdamW on
   Σ_l (1 − cos(φ_l(x̂0), φ_l(y))) + λ_DL (1 − cos(φ_l(y), φ̄_l(y))) + λ_DL (1 − cos(φ_l(x̂0),
   φ̄_l(x̂0))), cosines over each sample's flattened map, φ̄ the frozen copy as loaded.

The map of an image y and its reconstruction x̂0 (both in [−1, 1]):
D_p = mean over RGB of |x̂0 − y|; D_f = Σ over `map.layers` of 1 − cos over channels of the
3 x 3 zero-padded patch means of φ_l(y) and φ_l(x̂0), each bilinearly resized with aligned
corners to the image; A = v · max(D_f) / max(D_p) · D_p + D_f (maxima over the batch, or per
image with `map.norm="image"`), blurred by a Gaussian of σ 4 (kernel 33, reflected borders, as
kornia); the image score is max(A). The extractor sees the images mapped to [0, 1] and
ImageNet-normalised.

Reconstruction is random (η = 1). Each image's noise comes from its own key, folded from
`config.seed` and a hash of the image's pixels: an image is reconstructed the same way in any
batch and in every evaluation of the run (the reference draws one batch's noise at a time
from the global generator).
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adjax import diffusion
from adjax import weights as weights_lib
from adjax.config import ConfigError, check_choice
from adjax.data import augment
from adjax.methods import Prediction, view_masks
from adjax.methods.base import MethodBase, TrainState, backbone_kind, two_phase_step
from adjax.models.ddad_unet import UNet
from adjax.nn.layers import avg_pool, resize_bilinear_align_corners
from adjax.nn.resnet import LAYERS, ResNet
from adjax.nn.ssim import gaussian_filter

NORMS = ("batch", "image")
# Folded into the run's seed for the keys of `predict`'s reconstructions.
_PREDICT_STREAM = 0x0DDAD


class State(TrainState):
    """The UNet (`params`, `opt_state`), the feature extractor and its domain adaptation."""

    extractor: Any            # {"params", "batch_stats"}: φ, fine-tuned by the DA phase
    frozen: Any               # {"params", "batch_stats"}: φ̄, the extractor as loaded
    da_opt_state: Any         # AdamW state of φ's params
    extractor_sha256: jax.Array  # [32] uint8: the digest of the weights file; 0 for random


def to_signed(images: jax.Array) -> jax.Array:
    """uint8 images -> float32 in [−1, 1] (the reference's `ToTensor`, then 2x − 1)."""
    return augment.to_float(images) * 2.0 - 1.0


def image_keys(key: jax.Array, images: jax.Array) -> jax.Array:
    """One key per image: `key` folded with a 32-bit hash of the image's pixels (a position-
    weighted sum that wraps around), so an image's key does not depend on its batch."""
    flat = images.reshape(images.shape[0], -1).astype(jnp.uint32)
    weights = jnp.arange(flat.shape[1], dtype=jnp.uint32) * jnp.uint32(2654435761) + 1
    return jax.vmap(lambda h: jax.random.fold_in(key, h))(jnp.sum(flat * weights, axis=1))


def cosine(a: jax.Array, b: jax.Array, axis: int = -1) -> jax.Array:
    """Cosine similarity along `axis`, each norm clamped at 1e-8 (PyTorch's
    `cosine_similarity`)."""
    dot = jnp.sum(a * b, axis=axis)
    na = jnp.maximum(jnp.linalg.norm(a, axis=axis), 1e-8)
    nb = jnp.maximum(jnp.linalg.norm(b, axis=axis), 1e-8)
    return dot / (na * nb)


def feature_distance(fa: dict[str, jax.Array], fb: dict[str, jax.Array],
                     layers: tuple[str, ...], size: tuple[int, int]) -> jax.Array:
    """D_f [B, H, W]: Σ_l 1 − cos over channels of the 3 x 3 patch means (zeros counted, as
    PyTorch's zero-padded `Unfold` then a mean) of two feature sets, each resized to `size`
    with aligned corners."""
    total = 0.0
    for name in layers:
        a, b = (avg_pool(f[name].astype(jnp.float32), 3, 1, 1) for f in (fa, fb))
        d = 1.0 - cosine(a, b)
        total = total + resize_bilinear_align_corners(d[..., None], size)[..., 0]
    return total


def combine(d_f: jax.Array, d_p: jax.Array, v: float, norm: str, sigma: float) -> jax.Array:
    """A = v · max(D_f) / max(D_p) · D_p + D_f (maxima over the batch, or per image), blurred
    by a Gaussian of `sigma` (radius int(4 sigma + 0.5)) with reflected borders."""
    axes = (0, 1, 2) if norm == "batch" else (1, 2)
    # A reconstruction equal to its input (D_p = 0 everywhere) leaves the feature term alone
    # instead of dividing by zero.
    max_p = jnp.maximum(jnp.max(d_p, axis=axes, keepdims=True), 1e-12)
    ratio = jnp.max(d_f, axis=axes, keepdims=True) / max_p
    a = d_f + v * ratio * d_p
    return gaussian_filter(a[..., None], sigma, mode="reflect")[..., 0]


def da_loss(fx: dict[str, jax.Array], fy: dict[str, jax.Array], fx_frozen: dict[str, jax.Array],
            fy_frozen: dict[str, jax.Array], layers: tuple[str, ...],
            lambda_dl: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The domain-adaptation loss (module docstring) and its three sums."""
    def term(a, b):
        a, b = (f.reshape(f.shape[0], -1).astype(jnp.float32) for f in (a, b))
        return jnp.mean(1.0 - cosine(a, b))

    sim = sum(term(fx[n], fy[n]) for n in layers)
    target = sum(term(fy[n], fy_frozen[n]) for n in layers)
    recon = sum(term(fx[n], fx_frozen[n]) for n in layers)
    loss = sim + lambda_dl * (target + recon)
    return loss, {"da_similarity": sim, "da_target": target, "da_reconstruction": recon}


@dataclasses.dataclass(frozen=True, eq=False)
class DDAD(MethodBase):
    """The DDAD method (see the module docstring); built from a ddad config."""

    def __post_init__(self):
        c = self.config
        check_choice("config.map.mask_timing", c.map.mask_timing, view_masks.MASK_TIMINGS)
        check_choice("config.map.norm", c.map.norm, NORMS)
        e = c.extractor
        kind = backbone_kind(e, "extractor")
        if e.pretrained and not e.weights:
            raise ConfigError(
                f"config.extractor.weights is empty, but DDAD's feature extractor needs "
                f"ImageNet {kind} weights: write them with `adjax weights import "
                f"--from={kind}.pth --to={kind}.msgpack --kind={kind}` and pass "
                f"--config.extractor.weights={kind}.msgpack (or set "
                f"--config.extractor.pretrained=False for a random extractor).")
        for key in ("map.layers", "da.layers"):
            block, name = key.split(".")
            unknown = set(c[block][name]) - set(LAYERS)
            if unknown or not c[block][name]:
                raise ConfigError(f"config.{key} must name stages of {LAYERS}, got "
                                  f"{list(c[block][name])}.")
        d = c.diffusion
        if not 0 < d.skip <= d.test_start < d.steps:
            raise ConfigError(f"config.diffusion needs 0 < skip <= test_start < steps, got "
                              f"{d.skip}, {d.test_start} and {d.steps}.")
        if not 0 <= c.da.steps < c.train.steps:
            raise ConfigError(f"config.da.steps must be in [0, config.train.steps), got "
                              f"{c.da.steps} of {c.train.steps}.")
        if c.da.steps and not 2 <= c.da.batch_size <= c.train.batch_size:
            raise ConfigError(f"config.da.batch_size must be in [2, config.train.batch_size "
                              f"{c.train.batch_size}], got {c.da.batch_size}.")
        if c.map.w is None and self._reference_w() is None:
            raise ConfigError(f"config.map.w is not set and the reference has no w for "
                              f"{c.data.layout}/{c.data.category or '(no category)'}; pass "
                              f"--config.map.w.")

    # -- the nets ------------------------------------------------------------------------------

    @property
    def unet(self) -> UNet:
        m = self.config.model
        return UNet(m.base, tuple(m.channel_mults), m.num_res_blocks,
                    tuple(m.attention_resolutions), m.heads, m.dropout, m.groups,
                    dtype=jnp.dtype(m.dtype))

    @property
    def extractor_net(self) -> ResNet:
        e = self.config.extractor
        last = max(LAYERS.index(n) for n in (*self.config.map.layers, *self.config.da.layers))
        return ResNet(e.depth, e.width, maxpool=e.maxpool, width_per_group=e.width_per_group,
                      returns=LAYERS[:last + 1], dtype=jnp.dtype(self.config.model.dtype))

    @property
    def abar(self) -> jax.Array:
        d = self.config.diffusion
        return jnp.asarray(diffusion.alphas_cumprod(d.beta_start, d.beta_end, d.steps))

    @property
    def w(self) -> float:
        """The conditioning weight at detection: `config.map.w`, else the reference's for the
        category."""
        w = self.config.map.w
        return float(self._reference_w() if w is None else w)

    def _reference_w(self) -> float | None:
        return self.config.map.w_by_category.get(self.config.data.category)

    @property
    def da_tx(self) -> optax.GradientTransformation:
        da = self.config.da
        return optax.adamw(da.lr, weight_decay=da.weight_decay)

    @property
    def unet_steps(self) -> int:
        """Steps of the UNet phase; the rest of `train.steps` adapts the extractor."""
        return self.config.train.steps - self.config.da.steps

    def eps_fn(self, params: Any, train: bool = False, rng: jax.Array | None = None):
        """ε_θ(x_t, t) of the UNet with `params` (dropout drawn from `rng` when training)."""
        rngs = {"dropout": rng} if train and rng is not None else {}
        return lambda x, t: self.unet.apply({"params": params}, x, t, train=train, rngs=rngs)

    def features(self, variables: Any, x: jax.Array) -> dict[str, jax.Array]:
        """The extractor's stage outputs (BatchNorm in inference mode) for images in [−1, 1]."""
        return self.extractor_net.apply(variables, augment.imagenet_normalize((x + 1.0) / 2.0))

    def reconstruct(self, params: Any, x: jax.Array, y: jax.Array, keys: jax.Array,
                    w: float) -> jax.Array:
        """x̂0 of `x` conditioned on `y` (both [−1, 1]) with one key per image."""
        d = self.config.diffusion
        return diffusion.reconstruct(self.eps_fn(params), x, y, keys, self.abar,
                                     start=d.test_start, skip=d.skip, w=w, eta=d.eta)

    # -- setup ---------------------------------------------------------------------------------

    def _init_nets(self, rng: jax.Array, size: int) -> tuple[Any, Any]:
        k_unet, k_ext = jax.random.split(rng)
        x = jnp.zeros((1, size, size, 3), jnp.float32)
        unet = self.unet.init(k_unet, x, jnp.zeros((1,), jnp.float32))["params"]
        return unet, self.extractor_net.init(k_ext, x)

    def pretrained(self) -> dict[str, Any] | None:
        """The ImageNet extractor of `config.extractor.weights` (a torchvision state dict or the
        msgpack of `adjax weights import`), read on the host, with its sha256; None for a
        random extractor."""
        e = self.config.extractor
        if not e.weights:
            return None
        _, like = jax.eval_shape(lambda k: self._init_nets(k, 64), jax.random.key(0))
        variables = weights_lib.load(e.weights, backbone_kind(e, "extractor"), like,
                                     "config.extractor.weights")
        digest = bytes.fromhex(weights_lib.sha256(e.weights))
        return {"extractor": variables, "sha256": np.frombuffer(digest, np.uint8)}

    def init(self, rng: jax.Array, train: dict[str, jax.Array],
             weights: dict[str, Any] | None = None) -> State:
        """A new UNet; the extractor from `weights` (else random) and its frozen copy."""
        unet, extractor = jax.jit(self._init_nets, static_argnums=1)(rng, train["image"].shape[1])
        digest = jnp.zeros((32,), jnp.uint8)
        if weights is not None:
            extractor = jax.tree.map(jnp.asarray, weights["extractor"])
            digest = jnp.asarray(weights["sha256"])
        # The frozen copy holds buffers of its own: the trainer donates the state to its step,
        # and one buffer donated twice is an error (a crash with XLA:CPU).
        return self.new_state(State, unet, extractor=extractor,
                              frozen=jax.tree.map(jnp.copy, extractor),
                              da_opt_state=self.da_tx.init(extractor["params"]),
                              extractor_sha256=digest)

    # -- training ------------------------------------------------------------------------------

    def train_step(self, state: State, batch: dict[str, jax.Array],
                   rng: jax.Array) -> tuple[State, dict[str, jax.Array]]:
        """A UNet step before `train.steps − da.steps`, a domain-adaptation step after, chosen
        by `state.step` inside the compiled step (`two_phase_step`; a run without DA compiles
        the UNet step alone)."""
        if not self.config.da.steps:
            return self._unet_step(state, batch, rng)
        return two_phase_step(state.step < self.unet_steps, self._unet_step, self._da_step,
                              state, batch, rng)

    def _metrics(self, **values: jax.Array) -> dict[str, jax.Array]:
        # Both phases report the same names (lax.cond and the trainer's log need one structure).
        names = ("loss", "loss_eps", "loss_da", "da_similarity", "da_target",
                 "da_reconstruction")
        return {n: jnp.asarray(values.get(n, 0.0), jnp.float32) for n in names}

    def _unet_step(self, state: State, batch: dict[str, jax.Array],
                   rng: jax.Array) -> tuple[State, dict[str, jax.Array]]:
        k_loss, k_drop = jax.random.split(rng)
        x0 = to_signed(batch["image"])

        def loss_fn(params):
            loss = diffusion.epsilon_loss(self.eps_fn(params, True, k_drop), x0, k_loss,
                                          self.abar)
            return loss, self._metrics(loss=loss, loss_eps=loss)

        return self.gradient_step(state, loss_fn)

    def _da_step(self, state: State, batch: dict[str, jax.Array],
                 rng: jax.Array) -> tuple[State, dict[str, jax.Array]]:
        da = self.config.da
        half = da.batch_size // 2
        images = to_signed(batch["image"][:2 * half])
        target, source = images[:half], images[half:]
        x0 = jax.lax.stop_gradient(self.reconstruct(state.params, source, target,
                                                    jax.random.split(rng, half), da.w))
        x0_in, target_in = (augment.imagenet_normalize((x + 1.0) / 2.0) for x in (x0, target))
        net, layers = self.extractor_net, tuple(da.layers)
        fx_frozen = net.apply(state.frozen, x0_in)
        fy_frozen = net.apply(state.frozen, target_in)

        def loss_fn(params):
            # Training-mode BatchNorm: batch statistics, running averages updated by both
            # calls in the reference's order (reconstruction, then target).
            stats = {"batch_stats": state.extractor["batch_stats"]}
            fx, stats = net.apply({"params": params, **stats}, x0_in, train=True,
                                  mutable=["batch_stats"])
            fy, stats = net.apply({"params": params, **stats}, target_in, train=True,
                                  mutable=["batch_stats"])
            loss, terms = da_loss(fx, fy, fx_frozen, fy_frozen, layers, da.lambda_dl)
            return loss, (stats["batch_stats"], terms)

        params = state.extractor["params"]
        (loss, (batch_stats, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, da_opt_state = self.da_tx.update(grads, state.da_opt_state, params)
        extractor = {"params": optax.apply_updates(params, updates), "batch_stats": batch_stats}
        return (state.replace(extractor=extractor, da_opt_state=da_opt_state),
                self._metrics(loss=loss, loss_da=loss, **terms))

    # -- inference -----------------------------------------------------------------------------

    @functools.cached_property
    def view_mask(self) -> np.ndarray | None:
        """Seed 002's per-view mask (`config.map.mask`), read once; None without one."""
        path = self.config.map.mask
        return view_masks.read_view_mask(path, self.config.data.image_size) if path else None

    def anomaly_maps(self, state: State, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(A [B, H, W], the reconstructions x̂0 in [−1, 1]) of uint8 images; with a view mask
        and `map.mask_timing` "pre", input and reconstruction are black outside the mask
        before the map is made."""
        m = self.config.map
        y = to_signed(images)
        keys = image_keys(jax.random.fold_in(jax.random.key(self.config.seed), _PREDICT_STREAM),
                          images)
        x0 = self.reconstruct(state.params, y, y, keys, self.w)
        mask = view_masks.batch_mask(self.view_mask, images)
        if mask is not None and m.mask_timing == "pre":
            y, x0 = (jnp.where(mask[..., None] > 0, a, -1.0) for a in (y, x0))
        d_p = jnp.mean(jnp.abs(x0 - y), axis=-1)
        features = self.features(state.extractor, jnp.concatenate([y, x0]))
        fy, fx = ({n: f[:y.shape[0]] for n, f in features.items()},
                  {n: f[y.shape[0]:] for n, f in features.items()})
        d_f = feature_distance(fy, fx, tuple(m.layers), images.shape[1:3])
        return combine(d_f, d_p, m.v, m.norm, m.sigma), x0

    def predict(self, state: State, images: jax.Array) -> Prediction:
        """The map A at the input size (zeroed outside a view mask with `map.mask_timing`
        "post"); score = max(A)."""
        amap, _ = self.anomaly_maps(state, images)
        mask = view_masks.batch_mask(self.view_mask, images)
        if mask is not None and self.config.map.mask_timing == "post":
            amap = amap * mask
        return Prediction(anomaly_map=amap, score=jnp.max(amap, axis=(1, 2)))

    def param_groups(self, state: State) -> dict[str, Any]:
        """The UNet and the feature extractor."""
        return {"unet": state.params, "extractor": state.extractor["params"]}

    def describe(self, state: State) -> dict[str, Any]:
        """The extractor's weights file and sha256 (or that it is random), w, the DA steps and
        the reference's epochs for the category."""
        e, category = self.config.extractor, self.config.data.category
        facts = {**super().describe(state), "w": str(self.w),
                 "domain_adaptation_steps": str(self.config.da.steps)}
        if e.weights:
            facts |= {"extractor": e.weights,
                      "extractor_sha256": bytes(np.asarray(state.extractor_sha256)).hex()}
        else:
            facts["extractor"] = "random initialisation (no ImageNet weights)"
        reference = self.config.get("reference", {})
        if category in reference.get("epochs", {}):
            facts["reference_epochs"] = (f"{reference.epochs[category]} UNet, "
                                         f"{reference.da_epochs[category]} DA")
        return facts
