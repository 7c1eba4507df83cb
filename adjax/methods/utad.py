"""Seed 001's unsupervised two-stage model (Ferreira 2023, Sec. 4.2.1, 5.4; adapted from UTAD,
Liu et al. 2021; `adjax.models.utad`), trained in two phases of one run.

Phase 1, the first `ie.steps` of `train.steps`: the IE-Net and its pair discriminator T on
batches x of normal images (eq. 4.9):

    L = lambda_1 MSE(x, D_M(E_M(x))) + alpha KL(mu, sigma) + DSC
    DSC = -log T(x, E_M(x)) - log(1 - T(x~, z~))

MSE the mean over pixels and channels (eq. 4.6; `ie.reconstruction="l1"` takes the prose's
L1 instead, which the equation contradicts), KL
its mean form (eq. 4.7) over every element of E_M(x)'s distribution, x~ the batch rolled by a
random non-zero shift (every image paired with another's features), z~ ~ N(mu, sigma^2); the
encoder, decoder, head and T minimise L together (with Adam at `ie.lr`).

Phase 2, the rest: the Expert-Net on the first `expert.batch_size` images of each batch and
their impressions m = w x_hat_VAE + (1 - w) x_hat_IE (eq. 4.11, `model.vae_weight` w = 0.8;
the VAE a finished `configs/vae.py` run, `model.vae_workdir`, and the IE-Net of phase 1, both
frozen):

    L = w_x L_x + w_m L_m + w_style L_style + w_vgg L_VGG        (eq. 4.18)

L_x = |x - x_hat|, L_m = |m - m_hat|, L_style = |s - s_hat| and L_VGG = sum over the VGG-19
layers `expert.vgg_layers` of |phi_l(x) - phi_l(x_hat)| + |phi_l(m) - phi_l(m_hat)| (ImageNet
weights, `expert.vgg_weights`, on ImageNet-normalised input). The thesis writes L_x, L_m and
L_style as sums over elements; here each is the mean (per image, then over the batch): with
sums the terms' balance would follow the image size (L_x of a 256 px image counts 196,608
elements, L_style 8), and Adam is blind to a common scale, so only the ratios matter.

Anomaly map (eqs. 4.19, 4.21): with x_hat = D_x(C_m(m), E_S(x)) and m_hat = D_m(C_x(x), 0) (the
style drawn from N(0, I) in training, its mean at inference), for each layer l of the
extractor (`score.extractor`: "resnet18", the thesis's, or "vgg19", the original's; weights
`score.weights`) d_l = phi_l(x, x_hat) + phi_l(m, m_hat) + phi_l(x, m), phi_l the channel mean
of the absolute feature difference, bilinearly resized to the image and divided by its maximum
over the validation images (`calibrate`, so that a normal image's d_l stays within [0, 1]);
e = the product of the d_l ("product", the thesis's) or their mean ("sum", the original's
with lambda_l = 1 / L). The thresholds 0.3 (product) and 0.5 (sum) of the thesis's figures
apply to this e. The image score is the map's maximum. The reconstruction errors of x_hat and
m_hat (Table 5.4) come with every prediction.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adjax import weights as weights_lib
from adjax.config import ConfigError, check_choice
from adjax.data import augment
from adjax.methods import Prediction
from adjax.methods.base import (
    MethodBase,
    TrainState,
    map_batches,
    reconstruction_errors,
    two_phase_step,
)
from adjax.methods.vae import FrozenVAE
from adjax.models.utad import ExpertNet, IENet, PairDiscriminator
from adjax.nn.layers import resize_bilinear
from adjax.nn.resnet import LAYERS, ResNet
from adjax.nn.vgg import VGG19, VGGFeatures

EXTRACTORS = ("resnet18", "vgg19")
COMBINES = ("product", "sum")
# What each phase trains: its optimiser's entry in `opt_state` and the nets it moves.
PHASES = {"ie": ("ie", "disc"), "expert": ("expert",)}


class State(TrainState):
    """params {"ie", "disc", "expert"}, opt_state {"ie", "expert"} (one Adam per phase), the
    BatchNorm statistics of the IE-Net and T, the frozen nets, and the map's per-layer scale."""

    batch_stats: Any
    vae: Any          # the frozen VAE's variables ({} with model.vae_weight 0)
    perceptual: Any   # the frozen VGG-19 of L_VGG ({} with expert.vgg 0)
    extractor: Any    # the frozen error-map net
    layer_scale: jax.Array  # [L] validation maxima of the per-layer maps (ones before)


def _vgg_taps(layers) -> tuple[int, ...]:
    return tuple(int(v) for v in layers)


@dataclasses.dataclass(frozen=True, eq=False)
class UTAD(MethodBase):
    """The two-stage model; built from a `configs/utad.py` config."""

    def __post_init__(self):
        c = self.config
        check_choice("config.score.extractor", c.score.extractor, EXTRACTORS)
        check_choice("config.score.combine", c.score.combine, COMBINES)
        check_choice("config.ie.reconstruction", c.ie.reconstruction, ("mse", "l1"))
        if c.score.extractor == "resnet18" and set(c.score.layers) - set(LAYERS):
            raise ConfigError(f"config.score.layers {tuple(c.score.layers)} must be ResNet "
                              f"stages ({', '.join(LAYERS)}) for the resnet18 extractor.")
        size, down = c.data.image_size, 2 ** len(c.model.ie_widths)
        if size < 64 or size % max(down, 4):
            raise ConfigError(f"config.data.image_size must be at least 64 (the pair "
                              f"discriminator's five stride-2 convs after a 2x2 pool) and a "
                              f"multiple of {max(down, 4)} (the IE-Net's {len(c.model.ie_widths)} "
                              f"pools), got {size}.")
        if not 0 <= c.ie.steps <= c.train.steps:
            raise ConfigError(f"config.ie.steps must be in [0, config.train.steps = "
                              f"{c.train.steps}], got {c.ie.steps}.")
        if not 1 <= c.expert.batch_size <= c.train.batch_size or c.train.batch_size < 2:
            raise ConfigError(f"config.expert.batch_size must be in [1, config.train.batch_size"
                              f"] and the batch at least 2 (T pairs each image with another's "
                              f"features), got {c.expert.batch_size} and {c.train.batch_size}.")
        if not 0.0 <= c.model.vae_weight <= 1.0:
            raise ConfigError(f"config.model.vae_weight must be in [0, 1], got "
                              f"{c.model.vae_weight}.")
        if self.uses_vae and not c.model.vae_workdir:
            raise ConfigError("config.model.vae_workdir is empty, but the impression fuses a "
                              "trained VAE's reconstruction (config.model.vae_weight > 0): "
                              "train configs/vae.py and point it at that work directory, or "
                              "set config.model.vae_weight=0.")
        if c.expert.vgg and not c.expert.vgg_weights:
            raise ConfigError("config.expert.vgg_weights is empty, but L_VGG needs ImageNet "
                              "VGG-19 weights (a torchvision state dict); point it at one, or "
                              "set config.expert.vgg=0 to train without it.")

    # -- the nets ------------------------------------------------------------------------------

    @property
    def uses_vae(self) -> bool:
        return self.config.model.vae_weight > 0

    @functools.cached_property
    def vae(self) -> FrozenVAE:
        """The trained VAE of `config.model.vae_workdir`."""
        return FrozenVAE(self.config.model.vae_workdir, "config.model.vae_workdir")

    @property
    def ie_net(self) -> IENet:
        m = self.config.model
        return IENet(tuple(m.ie_widths), jnp.dtype(m.dtype))

    @property
    def discriminator(self) -> PairDiscriminator:
        m = self.config.model
        return PairDiscriminator(m.disc_width, tuple(m.disc_hidden), jnp.dtype(m.dtype))

    @property
    def expert_net(self) -> ExpertNet:
        m = self.config.model
        return ExpertNet(m.dim, m.style_dim, m.mlp_hidden, jnp.dtype(m.dtype))

    @property
    def perceptual_net(self) -> VGGFeatures:
        return VGGFeatures(config=VGG19, taps=_vgg_taps(self.config.expert.vgg_layers))

    @property
    def extractor_net(self) -> ResNet | VGGFeatures:
        s = self.config.score
        if s.extractor == "resnet18":
            return ResNet(18, returns=tuple(s.layers))
        return VGGFeatures(config=VGG19, taps=_vgg_taps(s.layers))

    @property
    def txs(self) -> dict[str, optax.GradientTransformation]:
        """One Adam per phase (IE-Net and T at `ie.lr`, the Expert-Net at `expert.lr`)."""
        return {"ie": optax.adam(self.config.ie.lr), "expert": optax.adam(self.config.expert.lr)}

    # -- setup ---------------------------------------------------------------------------------

    def _frozen_like(self, rng: jax.Array) -> dict[str, Any]:
        """Randomly initialised frozen nets (shapes of what `pretrained` reads)."""
        k_ext, k_vgg = jax.random.split(rng)
        x = jnp.zeros((1, 64, 64, 3), jnp.float32)
        out = {"extractor": self.extractor_net.init(k_ext, x)}
        if self.config.expert.vgg:
            out["perceptual"] = self.perceptual_net.init(k_vgg, x)
        return out

    def pretrained(self) -> dict[str, Any] | None:
        """The VAE run's variables and the ImageNet weights of the extractor and of L_VGG's
        VGG-19, read on the host; None when none is configured."""
        c, out = self.config, {}
        like = jax.eval_shape(self._frozen_like, jax.random.key(0))
        if self.uses_vae:
            out["vae"] = self.vae.variables()
        if c.score.weights:
            out["extractor"] = weights_lib.load(c.score.weights, c.score.extractor,
                                                like["extractor"], "config.score.weights")
        if c.expert.vgg:
            out["perceptual"] = weights_lib.load(c.expert.vgg_weights, "vgg19",
                                                 like["perceptual"], "config.expert.vgg_weights")
        return out or None

    def init(self, rng: jax.Array, train: dict[str, jax.Array],
             weights: dict[str, Any] | None = None) -> State:
        """Random IE-Net, T and Expert-Net for the training images' size; the frozen nets from
        `weights` (random where absent: shapes for a restored run, or a random extractor)."""
        size = train["image"].shape[1]
        k_ie, k_d, k_ex, k_frozen, k_vae = jax.random.split(rng, 5)
        x = jnp.zeros((1, size, size, 3), jnp.float32)
        ie = jax.jit(self.ie_net.init)(k_ie, x)
        features = jax.eval_shape(self.ie_net.apply, ie, x)["features"]
        disc = jax.jit(self.discriminator.init)(k_d, jnp.zeros((2, size, size, 3)),
                                                jnp.zeros((2, *features.shape[1:])))
        style = jnp.zeros((1, self.config.model.style_dim))
        expert = jax.jit(self.expert_net.init)(k_ex, x, x, style)["params"]
        frozen = {**jax.jit(self._frozen_like)(k_frozen), **(weights or {})}
        vae = {}
        if self.uses_vae:
            vae = frozen.get("vae") or self.vae.shapes(k_vae)
        params = {"ie": ie["params"], "disc": disc["params"], "expert": expert}
        opt_state = {phase: self.txs[phase].init({n: params[n] for n in nets})
                     for phase, nets in PHASES.items()}
        n_layers = len(self.config.score.layers)
        return State(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                     batch_stats={"ie": ie["batch_stats"], "disc": disc["batch_stats"]},
                     vae=jax.tree.map(jnp.asarray, vae),
                     perceptual=jax.tree.map(jnp.asarray, frozen.get("perceptual", {})),
                     extractor=jax.tree.map(jnp.asarray, frozen["extractor"]),
                     layer_scale=jnp.ones((n_layers,), jnp.float32))

    # -- training ------------------------------------------------------------------------------

    def _phase_update(self, state: State, phase: str, loss_fn) -> tuple[State, Any]:
        """One Adam step of `phase`'s nets on `loss_fn(params) -> (loss, aux)` (the other
        phase's nets and optimiser state untouched)."""
        nets = {n: state.params[n] for n in PHASES[phase]}
        grads, aux = jax.grad(lambda p: loss_fn({**state.params, **p}), has_aux=True)(nets)
        updates, opt = self.txs[phase].update(grads, state.opt_state[phase], nets)
        return state.replace(params={**state.params, **optax.apply_updates(nets, updates)},
                             opt_state={**state.opt_state, phase: opt}), aux

    @staticmethod
    def _metrics(**values: jax.Array) -> dict[str, jax.Array]:
        # Both phases report the same names (one structure for the two branches and the log).
        names = ("loss", "loss_mse", "loss_kl", "loss_dsc", "loss_x", "loss_m", "loss_style",
                 "loss_vgg")
        return {n: jnp.asarray(values.get(n, 0.0), jnp.float32) for n in names}

    def train_step(self, state: State, batch: dict[str, jax.Array],
                   rng: jax.Array) -> tuple[State, dict[str, jax.Array]]:
        """An IE-Net step for the first `ie.steps`, an Expert-Net step after."""
        c = self.config
        if c.ie.steps == c.train.steps:
            return self._ie_step(state, batch, rng)
        if c.ie.steps == 0:
            return self._expert_step(state, batch, rng)
        return two_phase_step(state.step < c.ie.steps, self._ie_step, self._expert_step,
                              state, batch, rng)

    def _ie_step(self, state: State, batch: dict[str, jax.Array],
                 rng: jax.Array) -> tuple[State, dict[str, jax.Array]]:
        x = augment.to_float(batch["image"])
        k_shift, k_z = jax.random.split(rng)
        # Every image paired with another image's features: a roll by 1..B-1.
        x_other = jnp.roll(x, jax.random.randint(k_shift, (), 1, x.shape[0]), axis=0)
        ie_cfg = self.config.ie

        def loss_fn(params):
            out, ie_stats = self.ie_net.apply(
                {"params": params["ie"], "batch_stats": state.batch_stats["ie"]}, x,
                train=True, mutable=["batch_stats"])
            error = out["reconstruction"] - x
            mse = jnp.mean(error ** 2 if ie_cfg.reconstruction == "mse" else jnp.abs(error))
            mu, logvar = out["mu"], out["logvar"]
            kl = 0.5 * jnp.mean(mu ** 2 + jnp.exp(logvar) - logvar - 1.0)
            z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(k_z, mu.shape)
            logits, d_stats = self.discriminator.apply(
                {"params": params["disc"], "batch_stats": state.batch_stats["disc"]},
                jnp.concatenate([x, x_other]),
                jnp.concatenate([out["features"].astype(jnp.float32), z]), train=True,
                mutable=["batch_stats"])
            n = x.shape[0]
            # -log T(x, E_M(x)) - log(1 - T(x~, z~)) from the logits (exact where log(sigmoid)
            # would round to 0).
            dsc = (jnp.mean(jax.nn.softplus(-logits[:n]))
                   + jnp.mean(jax.nn.softplus(logits[n:])))
            loss = ie_cfg.mse_weight * mse + ie_cfg.kl_weight * kl + dsc
            stats = {"ie": ie_stats["batch_stats"], "disc": d_stats["batch_stats"]}
            return loss, (stats, self._metrics(loss=loss, loss_mse=mse, loss_kl=kl,
                                               loss_dsc=dsc))

        state, (stats, metrics) = self._phase_update(state, "ie", loss_fn)
        return state.replace(batch_stats=stats), metrics

    def impression(self, state: State, x: jax.Array) -> jax.Array:
        """m = w VAE(x) + (1 - w) IE(x) for [0, 1] images x (eq. 4.11), both nets frozen."""
        ie = self.ie_net.apply({"params": state.params["ie"],
                                "batch_stats": state.batch_stats["ie"]}, x)["reconstruction"]
        w = self.config.model.vae_weight
        m = ie if not self.uses_vae else w * self.vae.reconstruct(state.vae, x) + (1 - w) * ie
        return jax.lax.stop_gradient(m)

    def _perceptual(self, state: State, a: jax.Array, b: jax.Array) -> jax.Array:
        """Sum over the layers of the mean |phi_l(a) - phi_l(b)| (b's features are targets)."""
        # One pass of the frozen net over both batches.
        f = self.perceptual_net.apply(state.perceptual,
                                      augment.imagenet_normalize(jnp.concatenate([a, b])))
        n = a.shape[0]
        return sum(jnp.mean(jnp.abs(v[:n] - jax.lax.stop_gradient(v[n:]))) for v in f.values())

    def _expert_step(self, state: State, batch: dict[str, jax.Array],
                     rng: jax.Array) -> tuple[State, dict[str, jax.Array]]:
        e = self.config.expert
        x = augment.to_float(batch["image"][:e.batch_size])
        m = self.impression(state, x)
        s_random = jax.random.normal(rng, (x.shape[0], self.config.model.style_dim))

        def loss_fn(params):
            out = self.expert_net.apply({"params": params["expert"]}, x, m, s_random)
            l_x = jnp.mean(jnp.abs(x - out["x_hat"]))
            l_m = jnp.mean(jnp.abs(m - out["m_hat"]))
            l_style = jnp.mean(jnp.abs(out["style"] - out["style_hat"]))
            l_vgg = 0.0
            if e.vgg:
                l_vgg = (self._perceptual(state, out["x_hat"], x)
                         + self._perceptual(state, out["m_hat"], m))
            loss = e.x * l_x + e.m * l_m + e.style * l_style + e.vgg * l_vgg
            return loss, self._metrics(loss=loss, loss_x=l_x, loss_m=l_m, loss_style=l_style,
                                       loss_vgg=l_vgg)

        return self._phase_update(state, "expert", loss_fn)

    # -- inference -----------------------------------------------------------------------------

    def _features(self, state: State, images: jax.Array) -> list[jax.Array]:
        out = self.extractor_net.apply(state.extractor, augment.imagenet_normalize(images))
        return [out[k] for k in (self.config.score.layers if self.config.score.extractor ==
                                 "resnet18" else _vgg_taps(self.config.score.layers))]

    def _layer_maps(self, state: State, x: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        """([B, L, H, W] the unscaled d_l of eq. 4.19 / 4.21, the reconstruction errors)."""
        m = self.impression(state, x)
        out = self.expert_net.apply({"params": state.params["expert"]}, x, m,
                                    jnp.zeros((x.shape[0], self.config.model.style_dim)))
        n = x.shape[0]
        maps = []
        for f in self._features(state, jnp.concatenate([x, out["x_hat"], m, out["m_hat"]])):
            fx, fx_hat, fm, fm_hat = (f[i * n:(i + 1) * n] for i in range(4))
            d = sum(jnp.mean(jnp.abs(a - b), axis=-1)
                    for a, b in ((fx, fx_hat), (fm, fm_hat), (fx, fm)))
            maps.append(resize_bilinear(d[..., None].astype(jnp.float32), x.shape[1:3])[..., 0])
        errors = {**reconstruction_errors(x, out["x_hat"], "recon_x"),
                  **reconstruction_errors(m, out["m_hat"], "recon_m")}
        return jnp.stack(maps, axis=1), errors

    def calibrate(self, state: State, val: dict[str, jax.Array]) -> State:
        """Each layer's map maximum over the validation images."""
        fn = jax.jit(lambda images: jnp.max(
            self._layer_maps(state, augment.to_float(images))[0], axis=(2, 3)))
        maxima = map_batches(fn, val["image"], self.config.eval.batch_size)
        return state.replace(layer_scale=jnp.maximum(jnp.max(maxima, axis=0), 1e-12))

    def predict(self, state: State, images: jax.Array) -> Prediction:
        """e: the product (or mean) of the scaled per-layer maps; score = max(e)."""
        maps, errors = self._layer_maps(state, augment.to_float(images))
        scaled = maps / state.layer_scale[None, :, None, None]
        e = (jnp.prod(scaled, axis=1) if self.config.score.combine == "product"
             else jnp.mean(scaled, axis=1))
        return Prediction(anomaly_map=e, score=jnp.max(e, axis=(1, 2)), reconstruction=errors)

    def param_groups(self, state: State) -> dict[str, Any]:
        """The IE-Net, T and the Expert-Net (the frozen nets are counted by their sources)."""
        return dict(state.params)

    def describe(self, state: State) -> dict[str, Any]:
        """The VAE run, the extractor's and VGG-19's weights (or that they are random)."""
        c = self.config
        return {**super().describe(state),
                "vae": c.model.vae_workdir if self.uses_vae else "none (vae_weight 0)",
                "extractor": f"{c.score.extractor}: "
                             f"{c.score.weights or 'random initialisation (not ImageNet)'}",
                "perceptual": c.expert.vgg_weights if c.expert.vgg else "off"}

