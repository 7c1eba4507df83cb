"""The patch description network (PDN) of EfficientAD, small and medium.

Layer tables: EfficientAD (Batzner et al., WACV 2024), Tables 5.2 and 5.3 of the seed-004
thesis, and the reference code (nelson1425/EfficientAD `common.py`). Every output feature sees a
33x33 patch. `padding=True` is used for teacher pre-training (256 -> 64x64 features); training and
inference of the detector use `padding=False` (256 -> 56x56), as in the reference code.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from adjax.nn.layers import Conv2d, avg_pool

# (kind, channels or None for the output width, kernel, padding at pad_mult = 1, relu after)
_SMALL = (
    ("conv", 128, 4, 3, True),
    ("pool", None, 2, 1, False),
    ("conv", 256, 4, 3, True),
    ("pool", None, 2, 1, False),
    ("conv", 256, 3, 1, True),
    ("conv", "out", 4, 0, False),
)
_MEDIUM = (
    ("conv", 256, 4, 3, True),
    ("pool", None, 2, 1, False),
    ("conv", 512, 4, 3, True),
    ("pool", None, 2, 1, False),
    ("conv", 512, 1, 0, True),
    ("conv", 512, 3, 1, True),
    ("conv", "out", 4, 0, True),
    ("conv", "out", 1, 0, False),
)
LAYERS = {"s": _SMALL, "m": _MEDIUM}


def output_size(image_size: int, padding: bool = False) -> int:
    """Spatial size of the PDN's output for a square input (the same for S and M)."""
    if padding:
        return image_size // 4
    return image_size // 4 - 8


class PDN(nn.Module):
    """Patch description network.

    Attributes:
      size: "s" or "m".
      out_channels: 384 for a teacher, 768 for a student (384 for the teacher target, 384 for the
        autoencoder target).
      width: multiplies the hidden widths (1.0 is the reference; smaller for CPU-sized runs).
      padding: the reference's `padding` flag (pre-training only).
      dtype: computation dtype.
    """

    size: str = "s"
    out_channels: int = 384
    width: float = 1.0
    padding: bool = False
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.size not in LAYERS:
            raise ValueError(f"PDN size must be one of {sorted(LAYERS)}, got {self.size!r}.")
        pad_mult = 1 if self.padding else 0
        for kind, channels, kernel, pad, relu in LAYERS[self.size]:
            if kind == "pool":
                x = avg_pool(x, kernel, 2, pad * pad_mult)
                continue
            features = (self.out_channels if channels == "out"
                        else max(1, round(channels * self.width)))
            x = Conv2d(features, kernel, padding=pad * pad_mult, dtype=self.dtype)(x)
            if relu:
                x = nn.relu(x)
        return x
