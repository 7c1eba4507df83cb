"""Transposed-convolution decoders: the decoders of PIADE, the pyramidal auto-encoder (Mishra
2021, chs. 4-5) and VT-ADL, and the layer tables and initialisations those share.
"""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from adjax.nn.layers import (
    ConvTranspose2d,
    batch_norm,
    nchw_view,
    resize_bilinear,
    torch_kernel_init,
)

# (out channels, kernel, stride, padding) of PyTorch ConvTranspose2d layers.
DECODER_MVTEC = ((16, 3, 2, 1), (32, 3, 2, 1), (32, 4, 2, 0), (3, 4, 2, 1))  # 8 -> 120
DECODER_MNIST = ((16, 5, 1, 1), (32, 5, 1, 0), (32, 6, 1, 0), (32, 6, 1, 0),
                 (3, 5, 1, 0))  # 8 -> 28 (Mishra 2021, Table 4.2)
DECODERS = {"mvtec": DECODER_MVTEC, "mnist": DECODER_MNIST}

# Initialisations of the layers outside the backbone in Mishra's models.
HEAD_INITS = {
    "orthogonal": nn.initializers.orthogonal(),  # the thesis (Saxe et al.)
    "kaiming": nn.initializers.variance_scaling(2.0, "fan_in", "normal"),  # the PIADE code
}


class TransposedConvDecoder(nn.Module):
    """Transposed convolutions (PyTorch's size rule) with BatchNorm + ReLU after each but the
    last, and tanh at the end: the decoders of PIADE, the pyramidal AE and VT-ADL.

    Attributes:
      layers: (out channels, kernel, stride, padding) per transposed convolution.
      kernel_init: the kernels' initialisation (PyTorch's default unless given).
      zero_bias: zero biases instead of PyTorch's default.
      dtype: computation dtype.
    """

    layers: Sequence[Sequence[int]]
    kernel_init: Callable = torch_kernel_init
    zero_bias: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i, (features, kernel, stride, padding) in enumerate(self.layers):
            x = ConvTranspose2d(features, kernel, stride, padding, self.kernel_init,
                                self.zero_bias, self.dtype, name=f"deconv{i + 1}")(x)
            if i < len(self.layers) - 1:
                x = nn.relu(batch_norm(train, f"bn{i + 1}", self.dtype)(x))
        return jnp.tanh(x)


def transposed_conv_output_size(size: int, layers: Sequence[Sequence[int]]) -> int:
    """The side `TransposedConvDecoder(layers)` makes of a `size` x `size` input."""
    for _, kernel, stride, padding in layers:
        size = (size - 1) * stride - 2 * padding + kernel
    return size


def decode_to(decoder: TransposedConvDecoder, x: jax.Array, size: tuple[int, int],
              train: bool) -> jax.Array:
    """Views `x` as n x 8 x 8 maps (PyTorch's memory order), decodes them and resizes to `size`
    if the decoder's output differs (e.g. the 120-pixel decoder on smaller inputs; bilinear)."""
    out = decoder(nchw_view(x, 8), train)
    return out if out.shape[1:3] == tuple(size) else resize_bilinear(out, size)
