"""DRAEM (Zavrtanik, Kristan, Skočaj, ICCV 2021) behind the Method contract, with the variants of
seed 000 (car damage) and seed 002 (line clearance).

Training (VitjanZ/DRAEM `train_DRAEM.py`): each step turns its batch of normal images into
simulated anomalies on the device (`adjax.synth.draem`, textures from the "texture" pool that
`extra_pools` keeps there); the reconstructive network reconstructs the augmented image; the
discriminative network segments cat(reconstruction, augmented image). The loss, all weights 1:

    L = MSE(rec, I) + (1 - SSIM(rec, I)) + Focal(softmax(logits), M)

with I the (rotated) normal image. SSIM: 11 x 11 Gaussian window, sigma 1.5, zero-padded
borders (`adjax.nn.ssim`, padding "zeros"), averaged over the batch; its dynamic range L is
the reference's guess from the reconstruction (max > 128 -> 255 else 1, minus (min < -0.5 ->
-1 else 0)), so L = 2 while the early reconstructions dip below -0.5. Focal: gamma 2 on the
softmax with the reference's clamps (`adjax.nn.focal`). Gradients of the focal term reach the
reconstructive network (the reference does not detach the reconstruction in training). One Adam
(lr 1e-4) over both networks; the lr is multiplied by `optim.gamma` at the fractions
`optim.milestones` of the steps (the code: 0.2 at 80 % and 90 %; seed 002: 0.1 at 40 % and
70 %, i.e. epochs 1,200 and 2,100 of 3,000).

Inference (`test_DRAEM.py`): map = softmax channel 1 of the discriminative network on
cat(reconstruction, image), at the input size, unsmoothed; image score = the maximum of the
map mean-filtered with a `score.filter` square window (21 in the reference; stride 1, zero
padding counted, as `avg_pool2d(21, 1, 10)`). Seed 002's per-view mask (`score.mask`, a PNG at
the view's training size; white = keep): "pre" multiplies the input and the reconstruction by
it before the discriminative network, "post" zeroes the map outside it; without a mask both are
the plain map.

Seed 000's reconstruction losses (`loss.recon`): "lpips" and "inv_lpips" (1 - LPIPS) replace
the SSIM term (L2 stays), with LPIPS-AlexNet (`adjax.nn.lpips`; weights from torchvision's
alexnet and the lpips package's alex.pth, `loss.lpips_trunk` / `loss.lpips_lin`). The
author's repository uses torchmetrics' SqueezeNet LPIPS and an `lpips.LPIPS(net="alex")` class
beside it; adjax has the AlexNet one. `loss.lpips_input` "div255" reproduces the repository's
quirk of dividing [0, 1] images by 255 before LPIPS.

Images are RGB in [0, 1]; the reference reads BGR with OpenCV (the same up to the order of the
first convolutions' input channels, which matters only for imported weights).
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adjax import weights as weights_lib
from adjax.config import check_choice
from adjax.data import augment
from adjax.methods import Prediction, view_masks
from adjax.methods.base import MethodBase, TrainState, adam_l2
from adjax.models.draem import DRAEM as DRAEMNet
from adjax.nn.focal import focal_loss
from adjax.nn.layers import avg_pool
from adjax.nn.lpips import LPIPS
from adjax.nn.ssim import ssim_map
from adjax.synth import draem as synth
from adjax.synth.textures import load_textures, procedural_textures

RECON_LOSSES = ("ssim", "lpips", "inv_lpips")
# How [0, 1] images enter LPIPS, which expects [-1, 1]: mapped there (the lpips package's
# normalize=True), or divided by 255 (seed 000's repository feeds x / 255 of [0, 1] images).
LPIPS_INPUTS = {"normalize": lambda x: 2.0 * x - 1.0, "div255": lambda x: x / 255.0}


class State(TrainState):
    """Both networks' parameters and BatchNorm statistics, and the frozen LPIPS network."""

    batch_stats: Any
    lpips: Any  # LPIPS-AlexNet's variables ({} unless config.loss.recon is an LPIPS loss)


def reference_data_range(recon: jax.Array) -> jax.Array:
    """The SSIM dynamic range the reference infers from its first argument (the
    reconstruction): (255 if max > 128 else 1) - (-1 if min < -0.5 else 0)."""
    high = jnp.where(jnp.max(recon) > 128.0, 255.0, 1.0)
    low = jnp.where(jnp.min(recon) < -0.5, -1.0, 0.0)
    return jax.lax.stop_gradient(high - low)


@dataclasses.dataclass(frozen=True, eq=False)
class DRAEM(MethodBase):
    """DRAEM; built from a draem config."""

    def __post_init__(self):
        synth.Spec.from_config(self.config.synth)  # checks config.synth before any work
        s = self.config.score
        check_choice("config.score.mask_timing", s.mask_timing, view_masks.MASK_TIMINGS)
        loss = self.config.loss
        check_choice("config.loss.recon", loss.recon, RECON_LOSSES)
        check_choice("config.loss.lpips_input", loss.lpips_input, LPIPS_INPUTS)
        if self.uses_lpips and not (loss.lpips_trunk and loss.lpips_lin):
            raise ValueError(f"config.loss.recon {loss.recon!r} needs LPIPS-AlexNet's weights: "
                             f"config.loss.lpips_trunk (torchvision's alexnet state dict) and "
                             f"config.loss.lpips_lin (the lpips package's weights/v0.1/alex.pth).")
        if s.filter < 1 or s.filter % 2 == 0:
            raise ValueError(f"config.score.filter must be an odd window side, got {s.filter}.")

    @property
    def uses_lpips(self) -> bool:
        return self.config.loss.recon != "ssim"

    @property
    def spec(self) -> synth.Spec:
        """The synthesis's choices (`config.synth`)."""
        return synth.Spec.from_config(self.config.synth)

    @functools.cached_property
    def view_mask(self) -> np.ndarray | None:
        path = self.config.score.mask
        return view_masks.read_view_mask(path, self.config.data.image_size) if path else None

    @property
    def net(self) -> DRAEMNet:
        m = self.config.model
        return DRAEMNet(m.reconstructive_base, m.discriminative_base, tuple(m.bottleneck),
                        m.test_noise, m.reconstruction_first, dtype=jnp.dtype(m.dtype))

    @property
    def tx(self) -> optax.GradientTransformation:
        """Adam with the step drops of `config.optim` (MultiStepLR)."""
        o, steps = self.config.optim, self.config.train.steps
        drops: dict[int, float] = {}
        for fraction in o.milestones:
            at = int(fraction * steps)
            drops[at] = drops.get(at, 1.0) * o.gamma
        return adam_l2(optax.piecewise_constant_schedule(o.lr, drops), o.weight_decay)

    # -- setup ---------------------------------------------------------------------------------

    def extra_pools(self) -> dict[str, np.ndarray]:
        """The anomaly textures: `config.synth.textures` (DTD's images/), or procedural ones."""
        size, s = self.config.data.image_size, self.config.synth
        if s.textures:
            return {"texture": load_textures(s.textures, size, self.config.data.cache_dir
                                             or None)}
        return {"texture": procedural_textures(s.procedural_count, size, self.config.seed)}

    def _lpips_like(self, size: int) -> Any:
        x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
        return jax.eval_shape(LPIPS().init, jax.random.key(0), x, x)

    def pretrained(self) -> dict[str, Any] | None:
        """LPIPS-AlexNet's weights, when the reconstruction loss is an LPIPS one."""
        if not self.uses_lpips:
            return None
        loss = self.config.loss
        like = self._lpips_like(self.config.data.image_size)
        return {"lpips": weights_lib.load_lpips(loss.lpips_trunk, loss.lpips_lin, like)}

    def init(self, rng: jax.Array, train: dict[str, jax.Array],
             weights: dict[str, Any] | None = None) -> State:
        """Both networks, initialised as the reference's weights_init; LPIPS from `weights`
        (without them, random: the shapes a restored run needs)."""
        size = train["image"].shape[1]
        x = jnp.zeros((1, size, size, 3), jnp.float32)
        k_params, k_noise = jax.random.split(rng)
        variables = jax.jit(functools.partial(self.net.init, train=False))(
            {"params": k_params, "noise": k_noise}, x)
        lpips = (weights or {}).get("lpips", {})
        if self.uses_lpips and not lpips:
            lpips = jax.jit(LPIPS().init)(jax.random.key(0), x, x)
        return self.new_state(State, variables["params"], batch_stats=variables["batch_stats"],
                              lpips=jax.tree.map(jnp.asarray, lpips))

    # -- training ------------------------------------------------------------------------------

    def losses(self, state: State, recon: jax.Array, target: jax.Array, logits: jax.Array,
               mask: jax.Array) -> dict[str, jax.Array]:
        """The three terms of the loss (module docstring), each a scalar: "l2", the
        reconstruction term named after `config.loss.recon`, "focal"."""
        loss = self.config.loss
        recon = recon.astype(jnp.float32)
        if self.uses_lpips:
            scale = LPIPS_INPUTS[loss.lpips_input]
            distance = jnp.mean(LPIPS().apply(state.lpips, scale(recon), scale(target)))
            term = distance if loss.recon == "lpips" else 1.0 - distance
        else:
            ssim = ssim_map(recon, target, data_range=reference_data_range(recon),
                            padding="zeros")
            term = 1.0 - jnp.mean(ssim)
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        return {"l2": jnp.mean((recon - target) ** 2), loss.recon: term,
                "focal": focal_loss(probs, mask, loss.focal_gamma)}

    def train_step(self, state: State, batch: dict[str, jax.Array],
                   rng: jax.Array) -> tuple[State, dict[str, jax.Array]]:
        """Synthesises the batch's anomalies and takes one step of L2 + SSIM (or LPIPS) +
        focal."""
        k_synth, k_noise = jax.random.split(rng)
        sample = synth.synthesize(k_synth, augment.to_float(batch["image"]), batch["texture"],
                                  self.spec)

        def loss_fn(params):
            out, updates = self.net.apply(
                {"params": params, "batch_stats": state.batch_stats}, sample["augmented"],
                train=True, mutable=["batch_stats"], rngs={"noise": k_noise})
            terms = self.losses(state, out["reconstruction"], sample["image"], out["logits"],
                                sample["mask"])
            loss = sum(terms.values())
            return loss, (updates["batch_stats"],
                          {"loss": loss, **{f"loss_{k}": v for k, v in terms.items()},
                           "anomalous_fraction": jnp.mean(sample["label"].astype(jnp.float32))})

        state, (stats, metrics) = self.gradient_step(state, loss_fn)
        return state.replace(batch_stats=stats), metrics

    # -- inference -----------------------------------------------------------------------------

    def predict(self, state: State, images: jax.Array) -> Prediction:
        """Map = softmax channel 1 (masked per `config.score`); score = max of its mean filter."""
        s = self.config.score
        x = augment.to_float(images)
        mask = view_masks.batch_mask(self.view_mask, x)
        out = self.net.apply({"params": state.params, "batch_stats": state.batch_stats}, x,
                             train=False, mask=mask if s.mask_timing == "pre" else None,
                             rngs={"noise": jax.random.key(self.config.seed)})
        amap = jax.nn.softmax(out["logits"].astype(jnp.float32), axis=-1)[..., 1]
        if mask is not None and s.mask_timing == "post":
            amap = amap * mask
        smoothed = avg_pool(amap[..., None], s.filter, 1, s.filter // 2)
        return Prediction(anomaly_map=amap, score=jnp.max(smoothed, axis=(1, 2, 3)))

    def describe(self, state: State) -> dict[str, Any]:
        """Parameter counts per network, the texture source and the variant's choices."""
        s, m = self.config.synth, self.config.model
        textures = (f"folder {s.textures}" if s.textures else
                    f"procedural ({s.procedural_count} textures from seed {self.config.seed}; "
                    f"not DTD)")
        lpips = (f"LPIPS-AlexNet from {self.config.loss.lpips_trunk} and "
                 f"{self.config.loss.lpips_lin} (input {self.config.loss.lpips_input})"
                 if self.uses_lpips else "off")
        return {**super().describe(state), "textures": textures,
                "reconstruction_loss": self.config.loss.recon, "lpips": lpips,
                "synthesis": f"blend {s.blend}, p_clean {s.p_clean}, p_cutout {s.p_cutout}, "
                             f"threshold {tuple(s.threshold)}, focused {s.focused}",
                "bottleneck": "+".join(m.bottleneck) or "none",
                "score": f"max of {self.config.score.filter}x{self.config.score.filter} mean "
                         f"filter; view mask {self.config.score.mask or 'none'} "
                         f"({self.config.score.mask_timing})"}
