"""GANomaly (Akcay, Atapour-Abarghouei, Breckon, ACCV 2018), the baseline of seed 001's
Table 5.6: a DCGAN encoder-decoder-encoder generator and a DCGAN discriminator, as the
authors' code builds them for an `isize` x `isize` input (a power of two >= 16).

Encoder: Conv k4 s2 p1 (nc -> ndf) + LeakyReLU(0.2); then Conv k4 s2 p1 (channels doubled)
+ BN + LeakyReLU(0.2) until the map is 4 x 4; then Conv k4 s1 p0 to a 1 x 1 x nz code.
Decoder: ConvTranspose k4 s1 p0 (nz -> C) + BN + ReLU to 4 x 4, ConvTranspose k4 s2 p1
(channels halved) + BN + ReLU up to isize / 2, ConvTranspose k4 s2 p1 to nc channels and tanh.
No biases; convolutions drawn from N(0, 0.02), BatchNorm scales from N(1, 0.02) (the
authors' `weights_init`). The discriminator is the encoder with a 1-channel final conv and a
sigmoid; its features (before that conv) feed the adversarial feature-matching loss.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from adjax.nn.layers import Conv2d, ConvTranspose2d

_conv_init = nn.initializers.normal(0.02)


def _scale_init(key, shape, dtype=jnp.float32):
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def _bn(train: bool, name: str, dtype: Any) -> nn.BatchNorm:
    # PyTorch's BatchNorm2d defaults (momentum 0.1 of the batch, eps 1e-5), DCGAN's init.
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        scale_init=_scale_init, dtype=dtype, name=name)


def _check_size(size: int) -> None:
    if size < 16 or size & (size - 1):
        raise ValueError(f"GANomaly's input side must be a power of two >= 16 "
                         f"(config.data.image_size), got {size}.")


class DCGANEncoder(nn.Module):
    """Image [B, S, S, nc] -> (code [B, nz], features before the last conv [B, 4, 4, C])."""

    nz: int = 100
    ndf: int = 64
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        _check_size(x.shape[1])
        h = Conv2d(self.ndf, 4, 2, 1, self.dtype, False, _conv_init, name="initial")(x)
        h = nn.leaky_relu(h, 0.2)
        width, i = self.ndf, 0
        while h.shape[1] > 4:
            width, i = width * 2, i + 1
            h = Conv2d(width, 4, 2, 1, self.dtype, False, _conv_init, name=f"pyramid{i}")(h)
            h = nn.leaky_relu(_bn(train, f"pyramid{i}_bn", self.dtype)(h), 0.2)
        code = Conv2d(self.nz, 4, 1, 0, self.dtype, False, _conv_init, name="final")(h)
        return code.reshape(code.shape[0], -1), h


class DCGANDecoder(nn.Module):
    """Code [B, nz] -> image [B, size, size, nc] in (-1, 1)."""

    size: int
    nc: int = 3
    ngf: int = 64
    dtype: Any = None

    @nn.compact
    def __call__(self, z: jax.Array, train: bool) -> jax.Array:
        _check_size(self.size)
        width = self.ngf * self.size // 8  # halved at every step up to size / 2
        h = z.reshape(z.shape[0], 1, 1, -1)
        h = ConvTranspose2d(width, 4, 1, 0, _conv_init, dtype=self.dtype, use_bias=False,
                            name="initial")(h)
        h = nn.relu(_bn(train, "initial_bn", self.dtype)(h))
        i = 0
        while h.shape[1] < self.size // 2:
            width, i = width // 2, i + 1
            h = ConvTranspose2d(width, 4, 2, 1, _conv_init, dtype=self.dtype, use_bias=False,
                                name=f"pyramid{i}")(h)
            h = nn.relu(_bn(train, f"pyramid{i}_bn", self.dtype)(h))
        h = ConvTranspose2d(self.nc, 4, 2, 1, _conv_init, dtype=self.dtype, use_bias=False,
                            name="final")(h)
        return jnp.tanh(h.astype(jnp.float32))


class Generator(nn.Module):
    """x -> {"fake" x_hat, "latent_i" E1(x), "latent_o" E2(x_hat)}."""

    nz: int = 100
    ngf: int = 64
    ndf: int = 64
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        latent_i, _ = DCGANEncoder(self.nz, self.ndf, self.dtype, name="encoder1")(x, train)
        fake = DCGANDecoder(x.shape[1], x.shape[-1], self.ngf, self.dtype,
                            name="decoder")(latent_i, train)
        latent_o, _ = DCGANEncoder(self.nz, self.ndf, self.dtype, name="encoder2")(fake, train)
        return {"fake": fake, "latent_i": latent_i.astype(jnp.float32),
                "latent_o": latent_o.astype(jnp.float32)}


class Discriminator(nn.Module):
    """x -> (P(real) [B], features [B, 4, 4, C])."""

    ndf: int = 64
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        logit, features = DCGANEncoder(1, self.ndf, self.dtype, name="encoder")(x, train)
        return nn.sigmoid(logit[:, 0].astype(jnp.float32)), features.astype(jnp.float32)
