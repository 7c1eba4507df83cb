"""CapsNet (Sabour, Frosst, Hinton 2017) as Mishra 2021 (ch. 3) adapts it: 2 class capsules.

Conv 256@9x9 + ReLU -> primary capsules (32 types x 8-D, 9x9 stride 2: 6x6x32 = 1,152 capsules
on 28x28) -> class capsules (`num_capsules` x 16-D, routing by agreement) -> a fully connected
decoder (512, 1024, H*W*C, sigmoid) that reconstructs the input from the class capsules with all
but one masked to zero. The capsule lengths are the class probabilities.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from adjax.nn.capsules import PrimaryCapsules, RoutingCapsules
from adjax.nn.layers import Conv2d, torch_kernel_init


class CapsuleDecoder(nn.Module):
    """Masked class capsules [B, J, D] -> image [B, H, W, C] in [0, 1] (FC, ReLU, ..., sigmoid)."""

    out_shape: tuple[int, int, int]
    widths: tuple[int, ...] = (512, 1024)
    dtype: Any = None

    @nn.compact
    def __call__(self, capsules: jax.Array, index: jax.Array) -> jax.Array:
        b = capsules.shape[0]
        mask = jax.nn.one_hot(index, capsules.shape[1], dtype=capsules.dtype)
        x = (capsules * mask[..., None]).reshape(b, -1)
        for i, width in enumerate(self.widths):
            x = nn.relu(nn.Dense(width, kernel_init=torch_kernel_init, dtype=self.dtype,
                                 name=f"fc{i + 1}")(x))
        h, w, c = self.out_shape
        x = nn.Dense(h * w * c, kernel_init=torch_kernel_init, dtype=self.dtype,
                     name=f"fc{len(self.widths) + 1}")(x)
        return nn.sigmoid(x).reshape(b, h, w, c)


class CapsNet(nn.Module):
    """The capsule network; `__call__` returns the class capsules, their lengths and the
    reconstruction from capsule `decode_index` (per image; None: the longest capsule).

    Attributes:
      num_capsules: class capsules (2 in the thesis: normal, anomalous; 10 in Sabour's MNIST).
      capsule_dim: their dimension (16).
      conv_channels: Conv1's kernels (256).
      primary_types, primary_dim: primary capsule types and dimension (32, 8).
      routing_iterations: routing by agreement iterations (3).
      stop_inner_gradient: route on stop_gradient(u_hat) in all but the last iteration.
      decoder_widths: hidden widths of the reconstruction decoder (512, 1024).
      dtype: computation dtype of Conv1 and the decoder (parameters stay float32; the capsule
        layers compute in float32).
    """

    num_capsules: int = 2
    capsule_dim: int = 16
    conv_channels: int = 256
    primary_types: int = 32
    primary_dim: int = 8
    routing_iterations: int = 3
    stop_inner_gradient: bool = False
    decoder_widths: tuple[int, ...] = (512, 1024)
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, decode_index: jax.Array | None = None) -> dict[str, Any]:
        """x: [B, H, W, C] float. Returns {"capsules" [B, J, D], "lengths" [B, J],
        "reconstruction" [B, H, W, C] in [0, 1], "decoded" [B] the decoded capsule}."""
        y = nn.relu(Conv2d(self.conv_channels, 9, dtype=self.dtype, name="conv1")(x))
        u = PrimaryCapsules(self.primary_types, self.primary_dim, 9, 2, name="primary")(y)
        v = RoutingCapsules(self.num_capsules, self.capsule_dim, self.routing_iterations,
                            self.stop_inner_gradient, name="class_capsules")(u)
        lengths = jnp.sqrt(jnp.sum(v * v, axis=-1) + 1e-12)
        if decode_index is None:
            decode_index = jnp.argmax(lengths, axis=-1)
        decode_index = jnp.broadcast_to(decode_index, lengths.shape[:1])
        recon = CapsuleDecoder(tuple(x.shape[1:]), tuple(self.decoder_widths), self.dtype,
                               name="decoder")(v, decode_index)
        return {"capsules": v, "lengths": lengths, "reconstruction": recon,
                "decoded": decode_index}
