"""VT-ADL: a vision-transformer encoder with a capsule "reconstruction vector", a
transposed-convolution decoder and a Gaussian mixture density head per patch.

Mishra, Verk, Fornasier, Piciarelli, Foresti (IEEE ISIE 2021) and ch. 6 of Mishra's thesis
(seed 003). Architecture constants not stated in the thesis come from the authors' code
(pankajmishra000/VT-ADL: `student_transformer.py`, `VT_AE.py`, `spatial.py`, `model_res18.py`,
`mdn1.py`); initialisations follow that code too: Kaiming-normal weights and zero biases in the
ViT, PyTorch's default initialisation in the decoder's transposed convolutions and the density
head, N(0, 1) position embedding and class token, N(0, 0.01^2) capsule transforms.

Shapes: B batch, N = (S / P)^2 patch tokens of width D, K mixture components.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from adjax.nn.capsules import RoutingCapsules
from adjax.nn.decoders import TransposedConvDecoder
from adjax.nn.layers import torch_kernel_init

# torch.nn.init.kaiming_normal_ (fan_in, gain sqrt(2), untruncated), as the authors' init.
kaiming_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# The authors' density head clamps its input at numpy's float64 epsilon.
CLAMP_EPS = 2.220446049250313e-16

# decoder2(8) of the authors' code: (out channels, kernel, stride, padding) per transposed
# convolution, 8x8x8 -> 15 -> 49 -> 245 -> 497 -> 502 -> 512 (the thesis text says five layers;
# its parameter count, 19,041,555, needs these six).
DECODER_512 = ((16, 3, 2, 1), (32, 9, 3, 1), (32, 7, 5, 1), (16, 9, 2, 0), (8, 6, 1, 0),
               (3, 11, 1, 0))


def patchify(x: jax.Array, patch: int) -> jax.Array:
    """[B, H, W, C] -> [B, (H/P)(W/P), P*P*C], patches in row-major order, each flattened as
    (row, column, channel): einops' 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


class Attention(nn.Module):
    """Multi-head self-attention with a bias-free fused qkv projection (lucidrains' ViT)."""

    dim: int
    heads: int
    scale: float
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, _ = x.shape
        qkv = nn.Dense(3 * self.dim, use_bias=False, kernel_init=kaiming_normal,
                       dtype=self.dtype, name="to_qkv")(x)
        q, k, v = (t.reshape(b, n, self.heads, -1) for t in jnp.split(qkv, 3, axis=-1))
        logits = jnp.einsum("bihd,bjhd->bhij", q, k) * self.scale
        attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("bhij,bjhd->bihd", attn, v).reshape(b, n, self.dim)
        return nn.Dense(self.dim, kernel_init=kaiming_normal, dtype=self.dtype,
                        name="to_out")(out)


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: x + MSA(LN(x)), then x + MLP(LN(x)); GELU, no dropout."""

    dim: int
    heads: int
    mlp_dim: int
    scale: float
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + Attention(self.dim, self.heads, self.scale, self.dtype, name="attention")(
            nn.LayerNorm(1e-5, name="norm_attention")(x))
        y = nn.LayerNorm(1e-5, name="norm_mlp")(x)
        y = nn.Dense(self.mlp_dim, kernel_init=kaiming_normal, dtype=self.dtype,
                     name="mlp_in")(y)
        y = nn.gelu(y, approximate=False)  # torch.nn.GELU's default, the exact erf form
        y = nn.Dense(self.dim, kernel_init=kaiming_normal, dtype=self.dtype, name="mlp_out")(y)
        return x + y


class ViTEncoder(nn.Module):
    """Patches -> linear embedding, a class token, learned position embedding, pre-LN blocks;
    returns the N patch tokens [B, N, D] (the class token is dropped; no final norm).

    Attributes:
      attention_scale: "model" multiplies the attention logits by D^-1/2 (the authors' code);
        "head" by (D / heads)^-1/2 (the usual ViT).
    """

    patch: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    attention_scale: str = "model"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.attention_scale not in ("model", "head"):
            raise ValueError(f"attention_scale must be 'model' or 'head', got "
                             f"{self.attention_scale!r}.")
        tokens = nn.Dense(self.dim, kernel_init=kaiming_normal, dtype=self.dtype,
                          name="patch_embedding")(patchify(x, self.patch))
        b, n, _ = tokens.shape
        cls = self.param("cls_token", nn.initializers.normal(1.0), (1, 1, self.dim))
        pos = self.param("pos_embedding", nn.initializers.normal(1.0), (1, n + 1, self.dim))
        z = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.dim)).astype(tokens.dtype),
                             tokens], axis=1) + pos
        width = self.dim if self.attention_scale == "model" else self.dim // self.heads
        for i in range(self.depth):
            z = EncoderBlock(self.dim, self.heads, self.mlp_dim, width**-0.5, self.dtype,
                             name=f"block_{i}")(z)
        return z[:, 1:]


class MixtureDensityHead(nn.Module):
    """Per-token mixture density network (Bishop 1994) with K diagonal Gaussians in D dims.

    Three bias-free linear maps of the token: mixing logits [B, N, K], means [B, N, K, D] and
    the pre-softplus scales [B, N, K, D] (the thesis reads softplus of them as the standard
    deviation; the authors' code as the log-variance: the loss decides).

    Attributes:
      clamp_input: clamp the head's input at float64 epsilon first, as the authors' code (this
        zeroes negative features); the density is still of the unclamped token.
    """

    components: int
    clamp_input: bool = True
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        b, n, d = x.shape
        k = self.components
        if self.clamp_input:
            x = jnp.maximum(x, CLAMP_EPS)

        def head(features, name):
            return nn.Dense(features, use_bias=False, kernel_init=torch_kernel_init,
                            dtype=self.dtype, name=name)(x)

        # The authors' `.view(B, N, D, K)` of the K * D outputs: the component index is the
        # fastest-varying one.
        return {"logits": head(k, "pi"),
                "mean": head(d * k, "mu").reshape(b, n, d, k).swapaxes(-1, -2),
                "scale": head(d * k, "sigma").reshape(b, n, d, k).swapaxes(-1, -2)}


class VTADL(nn.Module):
    """The VT-ADL network.

    Input [B, S, S, 3] in [0, 1]. Returns a dict: "tokens" [B, N, D] (the encoding the density
    head models; with the training noise added when `train`), "reconstruction" [B, S, S, 3] in
    (-1, 1), and the density head's "logits", "mean", "scale".

    The reconstruction path views the N x D encoding as N * D / capsule_in_dim capsules of
    capsule_in_dim dims, routes them to one capsule_dim-dimensional capsule (with one output
    capsule the coupling is identically 1 and routing reduces to squash(sum_i W_i u_i)),
    reshaped channel-first to (capsule_dim / grid^2, grid, grid) as the authors' `.view`,
    and decodes it.

    Attributes:
      noise_std: standard deviation of the Gaussian noise added to the encoding in training
        (needs the "noise" rng).
      routing_stop_gradient: route on stopped-gradient predictions in all but the last
        iteration (the authors' DigitCaps, after XifengGuo's CapsNet).
    """

    patch: int = 64
    dim: int = 512
    depth: int = 6
    heads: int = 8
    mlp_dim: int = 1024
    attention_scale: str = "model"
    noise_std: float = 0.2
    capsule_in_dim: int = 8
    capsule_dim: int = 512
    routing_iterations: int = 3
    routing_stop_gradient: bool = True
    decoder_grid: int = 8
    decoder: Sequence[Sequence[int]] = DECODER_512
    components: int = 150
    clamp_input: bool = True
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        tokens = ViTEncoder(self.patch, self.dim, self.depth, self.heads, self.mlp_dim,
                            self.attention_scale, self.dtype, name="encoder")(x)
        tokens = tokens.astype(jnp.float32)
        if train and self.noise_std > 0:
            tokens = tokens + self.noise_std * jax.random.normal(self.make_rng("noise"),
                                                                 tokens.shape)
        b = tokens.shape[0]
        capsules = tokens.reshape(b, -1, self.capsule_in_dim)
        vector = RoutingCapsules(1, self.capsule_dim, self.routing_iterations,
                                 self.routing_stop_gradient, name="capsules")(capsules)
        g = self.decoder_grid
        grid = vector.reshape(b, -1, g, g).transpose(0, 2, 3, 1)
        reconstruction = TransposedConvDecoder(self.decoder, dtype=self.dtype,
                                               name="decoder")(grid, train)
        density = MixtureDensityHead(self.components, self.clamp_input, self.dtype,
                                     name="mdn")(tokens)
        return {"tokens": tokens, "reconstruction": reconstruction.astype(jnp.float32),
                **{k: v.astype(jnp.float32) for k, v in density.items()}}
