"""The U-Net of seed 001 (Ferreira 2023, Sec. 4.1.1, after Sae-ang et al.): the supervised
segmenter fed with an image and its VAE residual, and the inpainting network of the RIAD
baseline.

Every conv is 3x3 with padding 1, followed by BatchNorm and ReLU. Four down blocks, each two
convs and a 2x2 max-pool (the pre-pool features are the skips); two convs at the bottom; four
up blocks, each a bilinear x2 upsampling (no transposed convs: they leave checkerboard
artefacts), a channel-wise concatenation with the skip (not a sum) and two convs; a final 1x1
conv to `out_channels` logits. Widths are not given in the thesis; they are attributes.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from adjax.nn.layers import Conv2d, batch_norm, resize_bilinear


class DoubleConv(nn.Module):
    """2 x (Conv 3x3 p1, BN, ReLU)."""

    features: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i in range(2):
            x = Conv2d(self.features, 3, 1, 1, dtype=self.dtype, name=f"conv{i + 1}")(x)
            x = nn.relu(batch_norm(train, f"bn{i + 1}", self.dtype)(x))
        return x


class UNet(nn.Module):
    """[B, H, W, C_in] -> logits [B, H, W, out_channels] (float32); H and W multiples of
    2^len(widths).

    Attributes:
      widths: channels of the down blocks; the bottom block has twice the last, the up blocks
        mirror the down blocks.
      out_channels: output channels (1 for a segmentation map, 3 for an image).
      dtype: computation dtype (parameters stay float32).
    """

    widths: Sequence[int] = (64, 128, 256, 512)
    out_channels: int = 1
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        levels = len(self.widths)
        if x.shape[1] % 2**levels or x.shape[2] % 2**levels:
            raise ValueError(f"the U-Net's input {x.shape[1]}x{x.shape[2]} is not a multiple of "
                             f"{2**levels} (config.data.image_size).")
        h = x.astype(self.dtype or jnp.float32)
        skips = []
        for i, width in enumerate(self.widths):
            h = DoubleConv(width, self.dtype, name=f"down{i + 1}")(h, train)
            skips.append(h)
            h = nn.max_pool(h, (2, 2), (2, 2))
        h = DoubleConv(2 * self.widths[-1], self.dtype, name="bottom")(h, train)
        for i, (width, skip) in enumerate(zip(reversed(self.widths), reversed(skips),
                                              strict=True)):
            h = resize_bilinear(h, skip.shape[1:3])
            h = DoubleConv(width, self.dtype, name=f"up{i + 1}")(
                jnp.concatenate([h, skip], axis=-1), train)
        return Conv2d(self.out_channels, 1, dtype=self.dtype, name="head")(h).astype(jnp.float32)
