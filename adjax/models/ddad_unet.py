"""The ε-prediction UNet of DDAD (Mousakhan et al. 2023), the guided-diffusion layout its
reference code ports (arimousa/DDAD `unet.py`, from openai/guided-diffusion), NHWC.

- Time: a sinusoidal embedding of the (float) timestep of width `base` ([sin, cos] halves,
  frequencies exp(-log(10000) i / (base / 2))), then Linear(base, 4 base), SiLU,
  Linear(4 base, 4 base).
- ResBlock: GroupNorm, SiLU, 3x3 conv; plus Linear(SiLU(time)) added as a per-channel bias (no
  scale-shift norm); GroupNorm, SiLU, dropout, a zero-initialised 3x3 conv; the residual
  through a 1x1 conv when the width changes. BigGAN-style resampling ResBlocks halve (2x2
  average pool) or double (nearest) both branches after the first SiLU; they have no conv of
  their own.
- Attention: GroupNorm, a 1x1 qkv projection in guided diffusion's "legacy" head layout (each
  head's q, k and v are contiguous), q and k each scaled by ch^-1/4, softmax in float32, a
  zero-initialised output projection, a residual.
- Down path: a 3x3 input conv, per level `num_res_blocks` ResBlocks (each followed by attention
  where the feature map's side is in `attention_resolutions`) and a down-ResBlock between
  levels; middle ResBlock, attention, ResBlock; up path per level `num_res_blocks + 1`
  ResBlocks on the concatenated skip (with attention at the same sides) and an up-ResBlock
  between levels; output GroupNorm, SiLU, zero-initialised 3x3 conv.

`CHANNEL_MULTS` holds the per-size multipliers. 256 is the reference's. At 512 the reference's
(0.5, 1, 1, 2, 2, 4, 4) does not build (its input conv gives `base` channels where the first
ResBlock expects base / 2, and base * 0.5 is a float width); ours is (1, 1, 2, 2, 4, 4, 4):
the 256 layout with one more full-width level, so that the lowest level is again 8 x 8 and
attention stays at the 32, 16 and 8 pixel maps.

Module names follow the reference's `nn.ModuleList` positions (`down_<k>_<m>`, `middle_<m>`,
`up_<k>_<m>`: entry k of the list, layer m of that entry), so a state dict maps by name.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from adjax.nn.layers import Conv2d, Linear, group_norm, upsample_nearest2

# Channel multipliers per image side: the reference's where it builds, ours at 512 (see above).
CHANNEL_MULTS = {
    32: (1, 2, 3, 4),
    64: (1, 2, 3, 4),
    128: (1, 1, 2, 3, 4),
    256: (1, 1, 2, 2, 4, 4),
    512: (1, 1, 2, 2, 4, 4, 4),
}

_zeros = nn.initializers.zeros


def timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
    """[B] (float) timesteps -> [B, dim] sinusoids: [sin(t f_i), cos(t f_i)] for
    f_i = exp(-log(10000) i / (dim / 2)), i < dim / 2."""
    if dim % 2:
        raise ValueError(f"the timestep embedding's width must be even, got {dim}.")
    half = dim // 2
    freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(10000.0) / half))
    angles = t.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def _downsample(x: jax.Array) -> jax.Array:
    return nn.avg_pool(x, (2, 2), (2, 2))


class ResBlock(nn.Module):
    """The time-conditioned residual block (see the module docstring).

    Attributes:
      features: output channels.
      groups: GroupNorm groups (32 in the reference).
      dropout: dropout rate before the second conv.
      resample: None, "down" or "up" (the BigGAN-style resampling block).
      dtype: computation dtype.
    """

    features: int
    groups: int = 32
    dropout: float = 0.0
    resample: str | None = None
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, train: bool) -> jax.Array:
        h = nn.silu(group_norm(x, self.groups, "in_norm"))
        if self.resample is not None:
            resample = {"down": _downsample, "up": upsample_nearest2}[self.resample]
            h, x = resample(h), resample(x)
        h = Conv2d(self.features, 3, padding=1, dtype=self.dtype, name="in_conv")(h)
        bias = Linear(self.features, dtype=self.dtype, name="emb")(nn.silu(emb))
        h = h + bias[:, None, None, :].astype(h.dtype)
        h = nn.silu(group_norm(h, self.groups, "out_norm"))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = Conv2d(self.features, 3, padding=1, dtype=self.dtype, kernel_init=_zeros,
                   zero_bias=True, name="out_conv")(h)
        if x.shape[-1] != self.features:
            x = Conv2d(self.features, 1, dtype=self.dtype, name="skip")(x)
        return x + h


class Attention(nn.Module):
    """Multi-head self-attention over the positions of an NHWC map, with a residual."""

    heads: int
    groups: int = 32
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        if c % self.heads:
            raise ValueError(f"attention: {c} channels do not split into {self.heads} heads.")
        ch = c // self.heads
        qkv = Linear(3 * c, dtype=self.dtype, name="qkv")(group_norm(x, self.groups, "norm"))
        # Legacy layout: channel (head, [q | k | v], ch), i.e. PyTorch's
        # qkv.reshape(B * heads, 3 * ch, T).split(ch).
        qkv = qkv.reshape(b, h * w, self.heads, 3, ch)
        q, k, v = qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]
        scale = ch ** -0.25  # on q and k each: steadier in low precision than 1/sqrt(ch) after
        logits = jnp.einsum("bthc,bshc->bhts", q * scale, k * scale)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("bhts,bshc->bthc", weights, v).reshape(b, h, w, c)
        out = Linear(c, dtype=self.dtype, kernel_init=_zeros, zero_bias=True,
                     name="proj_out")(out)
        return x + out


class UNet(nn.Module):
    """The ε-prediction UNet: (x_t [B, H, W, C], t [B]) -> ε̂ [B, H, W, out_channels].

    Attributes:
      base: channels of the first level (64 for DDAD, 32 for DDAD-S).
      channel_mults: per-level multipliers of `base` (integers); `CHANNEL_MULTS[side]` are
        the reference's (ours at 512).
      num_res_blocks: ResBlocks per level on the down path (one more on the up path).
      attention_resolutions: feature-map sides that get attention after each ResBlock (the
        reference's "32,16,8").
      heads: attention heads (4 for DDAD, 2 for DDAD-S).
      dropout: dropout rate in the ResBlocks (0 for DDAD, 0.3 for DDAD-S).
      groups: GroupNorm groups (32 in the reference; tests use fewer with narrow nets).
      out_channels: channels of ε̂ (the image's).
      dtype: computation dtype (parameters and GroupNorm statistics stay float32; the output
        is float32).
    """

    base: int = 64
    channel_mults: tuple[int, ...] = CHANNEL_MULTS[256]
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    heads: int = 4
    dropout: float = 0.0
    groups: int = 32
    out_channels: int = 3
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, train: bool = False) -> jax.Array:
        levels = len(self.channel_mults)
        if x.shape[1] % 2 ** (levels - 1) or x.shape[2] % 2 ** (levels - 1):
            raise ValueError(f"the UNet halves its input {levels - 1} times: the image side "
                             f"must be a multiple of {2 ** (levels - 1)}, got "
                             f"{x.shape[1]}x{x.shape[2]}.")
        block = dict(groups=self.groups, dropout=self.dropout, dtype=self.dtype)
        emb = timestep_embedding(t, self.base)
        emb = nn.silu(Linear(4 * self.base, dtype=self.dtype, name="time_fc1")(emb))
        emb = Linear(4 * self.base, dtype=self.dtype, name="time_fc2")(emb)

        def attend(h, name):
            if h.shape[1] not in self.attention_resolutions:
                return h
            return Attention(self.heads, self.groups, self.dtype, name=name)(h)

        h = Conv2d(self.base * self.channel_mults[0], 3, padding=1, dtype=self.dtype,
                   name="down_0_0")(x.astype(self.dtype or x.dtype))
        skips, k = [h], 1
        for level, mult in enumerate(self.channel_mults):
            for _ in range(self.num_res_blocks):
                h = ResBlock(self.base * mult, **block, name=f"down_{k}_0")(h, emb, train)
                h = attend(h, f"down_{k}_1")
                skips.append(h)
                k += 1
            if level != levels - 1:
                h = ResBlock(h.shape[-1], **block, resample="down",
                             name=f"down_{k}_0")(h, emb, train)
                skips.append(h)
                k += 1
        h = ResBlock(h.shape[-1], **block, name="middle_0")(h, emb, train)
        h = Attention(self.heads, self.groups, self.dtype, name="middle_1")(h)
        h = ResBlock(h.shape[-1], **block, name="middle_2")(h, emb, train)
        k = 0
        for level, mult in reversed(list(enumerate(self.channel_mults))):
            for j in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = ResBlock(self.base * mult, **block, name=f"up_{k}_0")(h, emb, train)
                h = attend(h, f"up_{k}_1")
                if level and j == self.num_res_blocks:
                    # Named after the layer's place in the reference's entry: after the
                    # attention where there is one.
                    m = 2 if h.shape[1] in self.attention_resolutions else 1
                    h = ResBlock(h.shape[-1], **block, resample="up",
                                 name=f"up_{k}_{m}")(h, emb, train)
                k += 1
        h = nn.silu(group_norm(h, self.groups, "out_norm"))
        h = Conv2d(self.out_channels, 3, padding=1, dtype=self.dtype, kernel_init=_zeros,
                   zero_bias=True, name="out_conv")(h)
        return h.astype(jnp.float32)
