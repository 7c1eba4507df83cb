"""PIADE, the Pyramidal Image Anomaly DEtector (Mishra 2021, ch. 5; Int. J. Neural Systems 2020).

SE-ResNet features -> a pyramid of pooled, 1x1-convolved maps, flattened into 8-D capsules ->
dynamic routing into two 64-D instantiation vectors -> one vector (the first in training, the
longest at test; or always the longest) -> a linear upsampler to a 512 x mf x mf map (mf: the
feature map's side) -> concatenated with the backbone features, viewed as n x 8 x 8 and decoded
by transposed convolutions (8 -> 15 -> 29 -> 60 -> 120) with a tanh output.

Two pyramids: `spatial` (the thesis: adaptive average pools 8/4/2/1, each a 1x1 conv to 64
channels, BN, ReLU; 680 capsules on a 512-channel map) and `channel` (the authors' code: global
average pool, a 1x1 conv to C/1, C/2, C/4, C/8 channels, BN, ReLU; 480 capsules on ResNet-50).
Flattening and the n x 8 x 8 view follow PyTorch's NCHW memory order, as the code's `view`s do.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from adjax.nn.capsules import RoutingCapsules
from adjax.nn.decoders import DECODERS, HEAD_INITS, TransposedConvDecoder, decode_to
from adjax.nn.layers import batch_norm, nchw_flatten
from adjax.nn.resnet import ResNet


def adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
    """PyTorch's AdaptiveAvgPool2d(size) on NHWC: bin i spans [floor(i*H/s), ceil((i+1)*H/s))."""
    def pool_axis(x, axis):
        n = x.shape[axis]
        bins = []
        for i in range(size):
            lo, hi = (i * n) // size, -((-(i + 1) * n) // size)
            bins.append(jnp.mean(jax.lax.slice_in_dim(x, lo, hi, axis=axis), axis=axis,
                                 keepdims=True))
        return jnp.concatenate(bins, axis=axis)

    return pool_axis(pool_axis(x, 1), 2)


def select_vector(vectors: jax.Array, index: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """vectors [B, J, D] -> (vectors[b, index[b]] [B, D], index [B]); None: the longest."""
    if index is None:
        index = jnp.argmax(jnp.sum(vectors * vectors, axis=-1), axis=-1)
    index = jnp.broadcast_to(index, vectors.shape[:1])
    return jnp.take_along_axis(vectors, index[:, None, None], axis=1)[:, 0], index


class PIADE(nn.Module):
    """The PIADE network; returns the reconstruction, the two instantiation vectors and which
    one was decoded.

    Attributes:
      depth, width, se_ratio: the SE-ResNet backbone (18, 1.0, 4 in the thesis; 50, 1.0, 16 in
        the code).
      pyramid: "spatial" (pools `levels`, 1x1 conv to `pyramid_channels`) or "channel" (global
        pool, 1x1 conv to C / d for d in `levels`).
      levels: pool sizes (spatial) or channel divisors (channel).
      capsule_dim: dimension of the capsules the pyramid is cut into (8).
      num_vectors, vector_dim: routed instantiation vectors (2 x 64).
      routing_iterations, stop_inner_gradient: dynamic routing (3; the code routes on detached
        predictions in all but the last iteration).
      upsample_widths: hidden widths of the upsampler (128, 512); its output has
        `upsample_channels` x mf x mf values.
      decoder: "mvtec" (8 -> 120) or "mnist" (8 -> 28).
      head_init: initialisation of the layers outside the backbone: "orthogonal" or "kaiming".
      dtype: computation dtype (parameters stay float32; routing runs in float32).
    """

    depth: int = 18
    width: float = 1.0
    se_ratio: int = 4
    pyramid: str = "spatial"
    levels: tuple[int, ...] = (8, 4, 2, 1)
    pyramid_channels: int = 64
    capsule_dim: int = 8
    num_vectors: int = 2
    vector_dim: int = 64
    routing_iterations: int = 3
    stop_inner_gradient: bool = True
    upsample_widths: tuple[int, ...] = (128, 512)
    upsample_channels: int = 512
    decoder: str = "mvtec"
    head_init: str = "orthogonal"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, decode_index: jax.Array | None = None,
                 train: bool = False) -> dict[str, jax.Array]:
        """x: [B, H, W, 3] in [0, 1]. decode_index: [B] vector to decode; None: the longest.
        Returns {"reconstruction" [B, H, W, 3] (tanh), "vectors" [B, 2, 64], "decoded" [B]}."""
        kernel_init = HEAD_INITS[self.head_init]
        features = ResNet(self.depth, self.width, self.se_ratio, maxpool=True, dtype=self.dtype,
                          name="backbone")(x, train)
        b, h, w, c = features.shape
        parts = []
        for i, level in enumerate(self.levels):
            if self.pyramid == "spatial":
                pooled, channels = adaptive_avg_pool(features, level), self.pyramid_channels
            elif self.pyramid == "channel":
                pooled, channels = jnp.mean(features, axis=(1, 2), keepdims=True), c // level
            else:
                raise ValueError(f"pyramid must be spatial or channel, got {self.pyramid!r}.")
            y = nn.Conv(channels, (1, 1), use_bias=False, kernel_init=kernel_init,
                        dtype=self.dtype, name=f"pyramid{i + 1}_conv")(pooled)
            y = nn.relu(batch_norm(train, f"pyramid{i + 1}_bn", self.dtype)(y))
            parts.append(nchw_flatten(y))
        flat = jnp.concatenate(parts, axis=1)
        if flat.shape[1] % self.capsule_dim:
            raise ValueError(f"{flat.shape[1]} pyramid features do not split into "
                             f"{self.capsule_dim}-D capsules.")
        # Routing in float32: squash and the softmax-normalised agreements are sensitive.
        capsules = flat.reshape(b, -1, self.capsule_dim).astype(jnp.float32)
        vectors = RoutingCapsules(self.num_vectors, self.vector_dim, self.routing_iterations,
                                  self.stop_inner_gradient, name="routing")(capsules)
        z, decode_index = select_vector(vectors, decode_index)
        for i, width in enumerate(self.upsample_widths):
            z = nn.Dense(width, kernel_init=kernel_init, dtype=self.dtype,
                         name=f"upsample{i + 1}")(z)
            z = nn.relu(batch_norm(train, f"upsample{i + 1}_bn", self.dtype)(z))
        z = nn.Dense(self.upsample_channels * h * w, kernel_init=kernel_init, dtype=self.dtype,
                     name=f"upsample{len(self.upsample_widths) + 1}")(z)
        upsampled = jnp.transpose(nn.relu(z).reshape(b, -1, h, w), (0, 2, 3, 1))
        joined = jnp.concatenate([features, upsampled], axis=-1)
        decoder = TransposedConvDecoder(DECODERS[self.decoder], HEAD_INITS[self.head_init],
                                        zero_bias=True, dtype=self.dtype, name="decoder")
        recon = decode_to(decoder, joined.astype(upsampled.dtype), x.shape[1:3], train)
        return {"reconstruction": recon, "vectors": vectors, "decoded": decode_index}
