"""The EfficientAD autoencoder: a 64-d bottleneck and a bilinear-resize decoder.

Layer table: EfficientAD Table 5.4 of the seed-004 thesis and the reference code
(nelson1425/EfficientAD `common.py`). The decoder sizes follow anomalib's generalisation to any
input size H (H/64-1, H/32, H/16-1, H/8, H/4-1, H/2-1, rounded down, then the PDN's output
size), which gives the reference's 3, 8, 15, 32, 63, 127, 56 at H = 256. The last encoder
convolution has kernel H/32 (8 at H = 256, the reference) so that the bottleneck is 1x1 at any
side of at least 128 that is divisible by 32.

Dropout: the paper's table puts Dropout(0.2) after each of the six 4x4 decoder convolutions;
the reference code has none. `dropout=0.0` (the reference code) is the default; 0.2 gives the
paper (and anomalib).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from adjax.models.pdn import output_size
from adjax.nn.layers import Conv2d, resize_bilinear


def decoder_sizes(image_size: int, padding: bool = False) -> tuple[int, ...]:
    """The seven bilinear resize targets of the decoder for a square input."""
    h = image_size
    return (h // 64 - 1, h // 32, h // 16 - 1, h // 8, h // 4 - 1, h // 2 - 1,
            output_size(h, padding))


class Autoencoder(nn.Module):
    """EfficientAD autoencoder mapping an image to PDN-shaped features.

    Attributes:
      out_channels: 384 (the teacher's width).
      width: multiplies the hidden widths (1.0 is the reference).
      dropout: rate after each 4x4 decoder convolution (0.0 reference code, 0.2 paper).
      padding: match a padded PDN's output size.
      bottleneck_1x1: last encoder kernel H/32 instead of the reference's 8 (see above).
      dtype: computation dtype.
    """

    out_channels: int = 384
    width: float = 1.0
    dropout: float = 0.0
    padding: bool = False
    bottleneck_1x1: bool = False
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        image_size = x.shape[1]
        kernel = image_size // 32 if self.bottleneck_1x1 else 8
        # 128: the decoder's first size (H/64 - 1) must be at least 1.
        least = max(128, 32 * kernel)
        if image_size % 32 or image_size < least or x.shape[2] != image_size:
            raise ValueError(
                f"the EfficientAD autoencoder needs square inputs with a side divisible by 32 "
                f"and of at least {least} (128 with bottleneck_1x1), got "
                f"{x.shape[1]}x{x.shape[2]}."
            )
        c32, c64 = max(1, round(32 * self.width)), max(1, round(64 * self.width))
        for features in (c32, c32, c64, c64, c64):
            x = nn.relu(Conv2d(features, 4, stride=2, padding=1, dtype=self.dtype)(x))
        x = Conv2d(c64, kernel, dtype=self.dtype)(x)  # the 64-d bottleneck
        *upsampled, final = decoder_sizes(image_size, self.padding)
        for size in upsampled:
            x = resize_bilinear(x, size)
            x = nn.relu(Conv2d(c64, 4, padding=2, dtype=self.dtype)(x))
            if self.dropout:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = resize_bilinear(x, final)
        x = nn.relu(Conv2d(c64, 3, padding=1, dtype=self.dtype)(x))
        return Conv2d(self.out_channels, 3, padding=1, dtype=self.dtype)(x)
