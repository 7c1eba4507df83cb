"""DRAEM's two networks (Zavrtanik, Kristan, Skočaj, ICCV 2021; VitjanZ/DRAEM `model_unet.py`),
with seed 000's bottleneck variants.

Every block is [Conv3x3 (padding 1) -> BatchNorm -> ReLU] x 2; downsampling is MaxPool(2),
upsampling a bilinear x2 resize with aligned corners followed by Conv3x3-BN-ReLU.

- `Reconstructive(base=128)`: an autoencoder without skips. Encoder blocks of base x (1, 2, 4,
  8, 8) with four pools (256 -> 16); decoder stages (up 8b, block 8b -> 4b), (up 4b, 4b -> 2b),
  (up 2b, 2b -> b), (up b, b -> b); a last Conv3x3 to 3 channels, no activation. 69,048,579
  parameters at base 128.
- `Discriminative(base=64)`: a U-Net on 6 channels. Encoder blocks base x (1, 2, 4, 8, 8, 8)
  with five pools; decoder stages (up 8b -> 8b, cat b5, 16b -> 8b), (up 8b -> 4b, cat b4, 12b ->
  4b), (up 4b -> 2b, cat b3, 6b -> 2b), (up 2b -> b, cat b2, 3b -> b), (up b -> b, cat b1, 2b
  -> b); a last Conv3x3 to 2 logits. 28,374,146 parameters at base 64.

Initialisation is the reference's `weights_init`: every convolution's weight ~ N(0, 0.02) (the
bias keeps PyTorch's default), every BatchNorm's weight ~ N(1, 0.02) and bias 0. BatchNorm
uses PyTorch's momentum (`adjax.nn.layers.batch_norm`).

Seed 000's bottleneck variants (thesis §3.4; the author's repository), applied in the given
order to the encoder's output before the decoder (`bottleneck`):

- "vae": z = b + eps * exp(0.5 b), eps ~ N(0, I) elementwise (the bottleneck is both mean and
  log-variance; no KL term). The code draws eps at test time too; `test_noise=False` turns it
  off there. The noise comes from the "noise" RNG stream.
- "attention": SAGAN self-attention: Q, K = Conv1x1(C -> C/8), V = Conv1x1(C -> C); A =
  softmax over keys of Q K^T (N = H W positions); y = gamma V A^T + b, gamma a learnt scalar
  initialised to 0 (so the variant starts as the plain network).

("vae", "attention") is the repository's default order, ("attention", "vae") the thesis's text.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from adjax.nn.layers import Conv2d, batch_norm, resize_bilinear_align_corners

BOTTLENECKS = ("vae", "attention")
# The reference's weights_init.
conv_init = nn.initializers.normal(0.02)


def bn_scale_init(key, shape, dtype=jnp.float32):
    """N(1, 0.02): the reference's BatchNorm weight."""
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


class ConvBNReLU(nn.Module):
    """Conv3x3 (padding 1) -> BatchNorm -> ReLU."""

    features: int
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = Conv2d(self.features, 3, padding=1, kernel_init=conv_init, dtype=self.dtype)(x)
        x = batch_norm(train, "bn", self.dtype, scale_init=bn_scale_init)(x)
        return nn.relu(x)


class Block(nn.Module):
    """[Conv3x3-BN-ReLU] x 2 with widths `middle` then `features` (`middle` defaults to
    `features`)."""

    features: int
    middle: int | None = None
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = ConvBNReLU(self.middle or self.features, self.dtype, name="conv1")(x, train)
        return ConvBNReLU(self.features, self.dtype, name="conv2")(x, train)


def _pool(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (2, 2), (2, 2))


def _up(x: jax.Array) -> jax.Array:
    return resize_bilinear_align_corners(x, (2 * x.shape[1], 2 * x.shape[2]))


class SelfAttention(nn.Module):
    """SAGAN self-attention with a residual weight gamma initialised to 0."""

    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        flat = x.reshape(b, h * w, c)

        def proj(features, name):
            return Conv2d(features, 1, kernel_init=conv_init, dtype=self.dtype,
                          name=name)(x).reshape(b, h * w, features)

        q, k, v = proj(max(1, c // 8), "query"), proj(max(1, c // 8), "key"), proj(c, "value")
        attention = jax.nn.softmax(jnp.einsum("bic,bjc->bij", q, k).astype(jnp.float32), axis=-1)
        out = jnp.einsum("bij,bjc->bic", attention.astype(v.dtype), v)
        gamma = self.param("gamma", nn.initializers.zeros, ())
        return (gamma * out + flat).reshape(b, h, w, c)


class Bottleneck(nn.Module):
    """Seed 000's variants applied in order to the encoder's output (module docstring)."""

    kinds: Sequence[str] = ()
    test_noise: bool = True
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for kind in self.kinds:
            if kind == "attention":
                x = SelfAttention(self.dtype, name="attention")(x)
            elif kind == "vae":
                if train or self.test_noise:
                    eps = jax.random.normal(self.make_rng("noise"), x.shape, jnp.float32)
                    x = x + (eps * jnp.exp(0.5 * x.astype(jnp.float32))).astype(x.dtype)
            else:
                raise ValueError(f"unknown DRAEM bottleneck {kind!r}; choose from "
                                 f"{', '.join(BOTTLENECKS)}.")
        return x


class Reconstructive(nn.Module):
    """DRAEM's reconstructive autoencoder (module docstring).

    Attributes:
      base: the first block's width (128 in the reference).
      bottleneck: seed 000's variants in the order applied ("vae", "attention"); () is DRAEM.
      test_noise: the VAE draws its noise at test time too (the author's code).
      dtype: computation dtype (parameters float32).
    """

    base: int = 128
    bottleneck: Sequence[str] = ()
    test_noise: bool = True
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        b = self.base
        for i, mult in enumerate((1, 2, 4, 8, 8)):
            if i:
                x = _pool(x)
            x = Block(b * mult, dtype=self.dtype, name=f"block{i + 1}")(x, train)
        if self.bottleneck:
            x = Bottleneck(tuple(self.bottleneck), self.test_noise, self.dtype,
                           name="bottleneck")(x, train)
        for i, (up, out) in enumerate(((8, 4), (4, 2), (2, 1), (1, 1))):
            x = ConvBNReLU(b * up, self.dtype, name=f"up{i + 1}")(_up(x), train)
            x = Block(b * out, middle=b * up, dtype=self.dtype, name=f"db{i + 1}")(x, train)
        return Conv2d(3, 3, padding=1, kernel_init=conv_init, dtype=self.dtype,
                      name="fin_out")(x)


class Discriminative(nn.Module):
    """DRAEM's discriminative U-Net (module docstring): [B, H, W, C_in] -> [B, H, W, 2] logits.

    Attributes:
      base: the first block's width (64 in the reference).
      dtype: computation dtype (parameters float32).
    """

    base: int = 64
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        b = self.base
        skips = []
        for i, mult in enumerate((1, 2, 4, 8, 8, 8)):
            if i:
                x = _pool(x)
            x = Block(b * mult, dtype=self.dtype, name=f"block{i + 1}")(x, train)
            skips.append(x)
        x = skips.pop()
        for i, mult in enumerate((8, 4, 2, 1, 1)):
            x = ConvBNReLU(b * mult, self.dtype, name=f"up{i + 1}")(_up(x), train)
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = Block(b * mult, dtype=self.dtype, name=f"db{i + 1}")(x, train)
        return Conv2d(2, 3, padding=1, kernel_init=conv_init, dtype=self.dtype,
                      name="fin_out")(x)


class DRAEM(nn.Module):
    """Both networks: the reconstruction of the input, and the discriminative logits on the
    reconstruction and the input concatenated on channels (`reconstruction_first`: the
    reference's order cat(reconstruction, input); False: anomalib's cat(input,
    reconstruction)).

    `__call__(x, train, mask=None)` returns {"reconstruction", "logits"}; a [B, H, W] `mask`
    (seed 002's PRE masking) multiplies the input and the reconstruction before the
    discriminative network.
    """

    reconstructive_base: int = 128
    discriminative_base: int = 64
    bottleneck: Sequence[str] = ()
    test_noise: bool = True
    reconstruction_first: bool = True
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool,
                 mask: jax.Array | None = None) -> dict[str, jax.Array]:
        if x.shape[1] % 32 or x.shape[2] % 32:
            raise ValueError(f"DRAEM's U-Net pools five times: image sides must be multiples of "
                             f"32, got {x.shape[1]}x{x.shape[2]}.")
        x = x.astype(self.dtype or x.dtype)
        recon = Reconstructive(self.reconstructive_base, tuple(self.bottleneck), self.test_noise,
                               self.dtype, name="reconstructive")(x, train)
        seen, shown = recon, x
        if mask is not None:
            m = mask[..., None].astype(recon.dtype)
            seen, shown = recon * m, x * m
        pair = (seen, shown) if self.reconstruction_first else (shown, seen)
        logits = Discriminative(self.discriminative_base, self.dtype,
                                name="discriminative")(jnp.concatenate(pair, axis=-1), train)
        return {"reconstruction": recon, "logits": logits}
