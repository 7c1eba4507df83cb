"""The pyramidal auto-encoder of Mishra 2021, ch. 4 ("stacked auto-encoders using pyramidal
features"; ICPR 2021 workshops). No capsules, despite the thesis abstract's wording.

ResNet-18 without its max-pool (512 x 8 x 8 features on 120 x 120 input) -> four branches, each
a global average pool, a bias-free 1x1 conv to 512/d channels (d = 1, 2, 3, 6: 512, 256, 170, 85),
BN, ReLU and a small conv encoder (3x3 -> 16, BN, ReLU; 3x3 -> 8, BN, ReLU; 1x1 -> 8) down to a
vector in R^8 -> one upsampler shared by the branches (Linear 8 -> 128, BN, ReLU; Linear 128 ->
512 mf^2, ReLU with mf = h / 2, i.e. a 128 x h x h map) -> the four maps concatenated with the
ResNet features (1,024 x 8 x 8 on 120 px) -> the transposed-conv decoder of Table 4.2.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from adjax.nn.decoders import DECODERS, HEAD_INITS, TransposedConvDecoder, decode_to
from adjax.nn.layers import batch_norm
from adjax.nn.resnet import ResNet


class BranchEncoder(nn.Module):
    """Pooled features [B, 1, 1, C] -> code [B, code_dim] (Table 4.1)."""

    channels: int
    code_dim: int = 8
    head_init: str = "orthogonal"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        kernel_init = HEAD_INITS[self.head_init]
        x = nn.Conv(self.channels, (1, 1), use_bias=False, kernel_init=kernel_init,
                    dtype=self.dtype, name="reduce")(x)
        x = nn.relu(batch_norm(train, "reduce_bn", self.dtype)(x))
        for i, width in enumerate((16, 8)):
            x = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), kernel_init=kernel_init,
                        dtype=self.dtype, name=f"conv{i + 1}")(x)
            x = nn.relu(batch_norm(train, f"bn{i + 1}", self.dtype)(x))
        x = nn.Conv(self.code_dim, (1, 1), kernel_init=kernel_init, dtype=self.dtype,
                    name="conv3")(x)
        return x.reshape(x.shape[0], -1)


class Upsampler(nn.Module):
    """Code [B, 8] -> map [B, side, side, channels] (Linear, BN, ReLU, Linear, ReLU)."""

    side: int
    channels: int = 128
    hidden: int = 128
    head_init: str = "orthogonal"
    dtype: Any = None

    @nn.compact
    def __call__(self, z: jax.Array, train: bool) -> jax.Array:
        kernel_init = HEAD_INITS[self.head_init]
        z = nn.Dense(self.hidden, kernel_init=kernel_init, dtype=self.dtype, name="fc1")(z)
        z = nn.relu(batch_norm(train, "bn1", self.dtype)(z))
        z = nn.relu(nn.Dense(self.channels * self.side**2, kernel_init=kernel_init,
                             dtype=self.dtype, name="fc2")(z))
        return jnp.transpose(z.reshape(z.shape[0], self.channels, self.side, self.side),
                             (0, 2, 3, 1))


class PyramidAE(nn.Module):
    """The pyramidal auto-encoder; returns the reconstruction and the branch codes.

    Attributes:
      depth, width: the ResNet backbone (18, 1.0), without max-pool.
      divisors: channel divisors of the four branches (1, 2, 3, 6).
      code_dim: branch code size (8).
      branch_channels: channels of each upsampled branch map (128 = 512 mf^2 / h^2).
      hidden: the upsampler's hidden width (128).
      decoder: "mvtec" (8 -> 120) or "mnist" (8 -> 28).
      head_init: initialisation outside the backbone ("orthogonal", the thesis; or "kaiming").
      dtype: computation dtype (parameters stay float32).
    """

    depth: int = 18
    width: float = 1.0
    divisors: tuple[int, ...] = (1, 2, 3, 6)
    code_dim: int = 8
    branch_channels: int = 128
    hidden: int = 128
    decoder: str = "mvtec"
    head_init: str = "orthogonal"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        """x: [B, H, W, 3] in [0, 1]. Returns {"reconstruction" [B, H, W, 3] (tanh),
        "codes" [B, branches, code_dim]}."""
        features = ResNet(self.depth, self.width, maxpool=False, dtype=self.dtype,
                          name="backbone")(x, train)
        c, side = features.shape[-1], features.shape[1]
        pooled = jnp.mean(features, axis=(1, 2), keepdims=True)
        upsampler = Upsampler(side, self.branch_channels, self.hidden, self.head_init,
                              self.dtype, name="upsampler")  # shared by the branches
        codes, maps = [], []
        for i, d in enumerate(self.divisors):
            code = BranchEncoder(c // d, self.code_dim, self.head_init, self.dtype,
                                 name=f"branch{i + 1}")(pooled, train)
            codes.append(code)
            maps.append(upsampler(code, train))
        joined = jnp.concatenate([features, *maps], axis=-1)
        decoder = TransposedConvDecoder(DECODERS[self.decoder], HEAD_INITS[self.head_init],
                                        zero_bias=True, dtype=self.dtype, name="decoder")
        recon = decode_to(decoder, joined, x.shape[1:3], train)
        return {"reconstruction": recon, "codes": jnp.stack(codes, axis=1)}
