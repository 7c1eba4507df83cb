"""Seed 001's multi-level patch model (Ferreira 2023, Sec. 4.1.2, Figs 4.4-4.6; after Ji et
al.'s supervised VAE): a VAE-style encoder over a 33 x 33 patch whose mean, variance and
features of three encoder levels feed an MLP that classifies the patch's centre pixel; the
decoder reconstructs the patch as a regulariser.

Encoder: a 3x3 stem conv (+ BN + ReLU; the thesis's blocks add their input, which needs as
many channels as they have), 4 fundamental blocks (2 x [Conv k3 s1 p1, BN, ReLU] plus the
block's input; no downsampling), a squeeze-excitation block (global average, Linear + ReLU,
Linear + sigmoid, channel weights), then two Linear + BN + ReLU to the feature vector and two
Linear heads for the mean and the log-variance. Decoder: two Linear (BN + ReLU) to a 5 x 5 map
and 4 x Conv k3 p1 with bilinear upsampling between them (5 -> 9 -> 17 -> 33), BN + ReLU on all
but the last, which ends in a sigmoid. Aggregation: the outputs of blocks 2, 3 and 4, each
through its own 1x1 conv + ReLU to `agg` channels and averaged over the patch. Classifier:
[mu, sigma^2, v2, v3, v4] through 4 x (Linear, BN, ReLU) and a Linear to one logit.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from adjax.nn.layers import Conv2d, batch_norm, nchw_flatten, nchw_view, resize_bilinear

PATCH = 33
_DECODER_SIDES = (5, 9, 17, 33)


class FundamentalBlock(nn.Module):
    """2 x [Conv k3 p1, BN, ReLU] plus the block's input."""

    features: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        h = x
        for i in range(2):
            h = Conv2d(self.features, 3, 1, 1, dtype=self.dtype, name=f"conv{i + 1}")(h)
            h = nn.relu(batch_norm(train, f"bn{i + 1}", self.dtype)(h))
        return h + x


class MultiLevel(nn.Module):
    """Patch [B, 33, 33, 3] -> {"reconstruction", "mu", "logvar", "logit" [B]}.

    z = mu + exp(logvar / 2) eps (rng "sample") feeds the decoder when `sample`, else mu.

    Attributes:
      width: channels of the stem and the fundamental blocks.
      hidden: width of the two Linears before the heads and of the decoder's first Linear.
      latent: size of z.
      se_ratio: channel reduction inside the squeeze-excitation block.
      agg: channels of each aggregation branch.
      mlp: widths of the classifier's four hidden Linears.
      dtype: computation dtype (parameters stay float32).
    """

    width: int = 32
    hidden: int = 256
    latent: int = 64
    se_ratio: int = 4
    agg: int = 32
    mlp: Sequence[int] = (256, 128, 64, 32)
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False,
                 sample: bool = False) -> dict[str, jax.Array]:
        if x.shape[1:3] != (PATCH, PATCH):
            raise ValueError(f"the multi-level model takes {PATCH}x{PATCH} patches, got "
                             f"{x.shape[1]}x{x.shape[2]}.")
        h = Conv2d(self.width, 3, 1, 1, dtype=self.dtype, name="stem")(
            x.astype(self.dtype or jnp.float32))
        h = nn.relu(batch_norm(train, "stem_bn", self.dtype)(h))
        levels = []
        for i in range(4):
            h = FundamentalBlock(self.width, self.dtype, name=f"block{i + 1}")(h, train)
            levels.append(h)
        # Squeeze-excitation: channel weights from the patch's average.
        s = nn.relu(nn.Dense(max(self.width // self.se_ratio, 1), dtype=self.dtype,
                             name="se_fc1")(jnp.mean(h, axis=(1, 2))))
        h = h * nn.sigmoid(nn.Dense(self.width, dtype=self.dtype, name="se_fc2")(s))[:, None,
                                                                                     None]
        f = nchw_flatten(h)
        for i in range(2):
            f = nn.Dense(self.hidden, dtype=self.dtype, name=f"enc_fc{i + 1}")(f)
            f = nn.relu(batch_norm(train, f"enc_fc{i + 1}_bn", self.dtype)(f))
        mu = nn.Dense(self.latent, dtype=self.dtype, name="mu")(f).astype(jnp.float32)
        logvar = nn.Dense(self.latent, dtype=self.dtype, name="logvar")(f).astype(jnp.float32)
        z = mu
        if sample:
            z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(self.make_rng("sample"),
                                                               mu.shape)
        # Decoder (the regulariser).
        d = nn.Dense(self.hidden, dtype=self.dtype, name="dec_fc1")(z.astype(f.dtype))
        d = nn.relu(batch_norm(train, "dec_fc1_bn", self.dtype)(d))
        side = _DECODER_SIDES[0]
        d = nn.Dense(2 * self.width * side * side, dtype=self.dtype, name="dec_fc2")(d)
        d = nchw_view(nn.relu(batch_norm(train, "dec_fc2_bn", self.dtype)(d)), side)
        outs = (2 * self.width, self.width, self.width, 3)
        for i, (features, size) in enumerate(zip(outs, _DECODER_SIDES, strict=True)):
            if d.shape[1] != size:
                d = resize_bilinear(d, size)
            d = Conv2d(features, 3, 1, 1, dtype=self.dtype, name=f"dec_conv{i + 1}")(d)
            if i < len(outs) - 1:
                d = nn.relu(batch_norm(train, f"dec_bn{i + 1}", self.dtype)(d))
        recon = nn.sigmoid(d.astype(jnp.float32))
        # Aggregation of three encoder levels, then the classifier.
        vectors = [jnp.mean(nn.relu(Conv2d(self.agg, 1, dtype=self.dtype,
                                           name=f"agg{i + 1}")(levels[i])), axis=(1, 2))
                   for i in (1, 2, 3)]
        c = jnp.concatenate([mu, jnp.exp(logvar), *[v.astype(jnp.float32) for v in vectors]],
                            axis=-1).astype(f.dtype)
        for i, features in enumerate(self.mlp):
            c = nn.Dense(features, dtype=self.dtype, name=f"mlp{i + 1}")(c)
            c = nn.relu(batch_norm(train, f"mlp{i + 1}_bn", self.dtype)(c))
        logit = nn.Dense(1, dtype=self.dtype, name="mlp_out")(c)[:, 0].astype(jnp.float32)
        return {"reconstruction": recon, "mu": mu, "logvar": logvar, "logit": logit}
