"""The convolutional VAE of seed 001 (Ferreira 2023, Sec. 4.2.1): "canonical vehicle
reconstruction", whose residual feeds the supervised U-Net.

Encoder: n x [Conv k4 s2 p1, BN, ReLU] (256 -> 16 with four), dropout, flatten (PyTorch's
memory order), Linear + BN + ReLU, then two Linear heads for the mean and the log-variance (no
BN, no activation). Decoder: two Linears (BN + ReLU after each) to a map at the encoder's
output size, then n x [bilinear x2 upsampling, Conv k3 p1] with BN + ReLU after each but the
last, which ends in a sigmoid. Channel widths are not given in the thesis (its figures did not
survive); they are attributes here, chosen in `configs/vae.py`.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from adjax.nn.layers import Conv2d, batch_norm, nchw_flatten, nchw_view, resize_bilinear


class VAE(nn.Module):
    """Returns {"reconstruction" [B, H, W, 3] in (0, 1), "mu", "logvar" [B, latent]}.

    The decoder gets z = mu + exp(logvar / 2) * eps with eps ~ N(0, I) from the "sample" rng
    when `sample` is True (training, eq. 4.3's reparameterisation), and z = mu otherwise (the
    deterministic reconstruction used for the residual and the anomaly map).

    Attributes:
      widths: encoder channels per stride-2 conv; the decoder uses them in reverse.
      latent: size of z (256 in the thesis).
      hidden: width of the Linear before the heads and of the decoder's first Linear.
      dropout: dropout rate after the conv encoder (0.3).
      dtype: computation dtype (parameters stay float32).
    """

    widths: Sequence[int] = (32, 64, 128, 256)
    latent: int = 256
    hidden: int = 512
    dropout: float = 0.3
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False,
                 sample: bool = False) -> dict[str, jax.Array]:
        size = x.shape[1]
        side = size // 2 ** len(self.widths)
        if side * 2 ** len(self.widths) != size:
            raise ValueError(f"the VAE's input side {size} is not a multiple of "
                             f"{2 ** len(self.widths)} (config.data.image_size).")
        h = x.astype(self.dtype or jnp.float32)
        for i, width in enumerate(self.widths):
            h = Conv2d(width, 4, 2, 1, dtype=self.dtype, name=f"enc_conv{i + 1}")(h)
            h = nn.relu(batch_norm(train, f"enc_bn{i + 1}", self.dtype)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Dense(self.hidden, dtype=self.dtype, name="enc_fc")(nchw_flatten(h))
        h = nn.relu(batch_norm(train, "enc_fc_bn", self.dtype)(h))
        mu = nn.Dense(self.latent, dtype=self.dtype, name="mu")(h).astype(jnp.float32)
        logvar = nn.Dense(self.latent, dtype=self.dtype, name="logvar")(h).astype(jnp.float32)
        z = mu
        if sample:
            eps = jax.random.normal(self.make_rng("sample"), mu.shape)
            z = mu + jnp.exp(0.5 * logvar) * eps
        # Decoder: two Linears to the encoder's output map, then upsample + conv per level.
        widths = tuple(reversed(self.widths))
        h = nn.Dense(self.hidden, dtype=self.dtype, name="dec_fc1")(z.astype(h.dtype))
        h = nn.relu(batch_norm(train, "dec_fc1_bn", self.dtype)(h))
        h = nn.Dense(widths[0] * side * side, dtype=self.dtype, name="dec_fc2")(h)
        h = nn.relu(batch_norm(train, "dec_fc2_bn", self.dtype)(h))
        h = nchw_view(h, side)
        outs = (*widths[1:], 3)
        for i, width in enumerate(outs):
            h = resize_bilinear(h, 2 * h.shape[1])
            h = Conv2d(width, 3, 1, 1, dtype=self.dtype, name=f"dec_conv{i + 1}")(h)
            if i < len(outs) - 1:
                h = nn.relu(batch_norm(train, f"dec_bn{i + 1}", self.dtype)(h))
        recon = nn.sigmoid(h.astype(jnp.float32))
        return {"reconstruction": recon, "mu": mu, "logvar": logvar}


def kl_sum(mu: jax.Array, logvar: jax.Array) -> jax.Array:
    """Eq. 4.3 per sample: 1/2 sum_m (mu^2 + sigma^2 - log sigma^2 - 1), [B]."""
    return 0.5 * jnp.sum(mu**2 + jnp.exp(logvar) - logvar - 1.0, axis=-1)
