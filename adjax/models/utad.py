"""Seed 001's unsupervised two-stage model (Ferreira 2023, Sec. 4.2.1; adapted from UTAD, Liu et
al., arXiv 2103.11671): the impression extractor IE-Net and the style-transfer Expert-Net.

IE-Net (Figs 4.7-4.10):
- encoder E_M: an inception block then a 2x2 max-pool per width of `widths`;
- decoder D_M: per width, in reverse, an inception block then a x2 nearest upsampling; then
  Conv k3 with reflect padding 1 (+ BN + LeakyReLU 0.1), Conv k1 to 3 channels, sigmoid;
- inception block: Conv 1x1, 3x3 and 5x5 and [MaxPool k3 s1 (same size), Conv 1x1] in
  parallel, each with BN + LeakyReLU 0.1 and a quarter of the block's channels, concatenated;
- distribution head: two Linears over the channels of every position of E_M(x) (a 1x1 conv,
  the "fully connected network") give mu and log sigma^2 of E_M(x)'s shape, so that a sample
  z ~ N(mu, sigma^2) can stand in for E_M(x) in the discriminator;
- discriminator T(x, z): AvgPool k2 then 5 x Conv(k4, p1, s2) on the image (BN + ReLU but the
  last), the feature map z beside it, both flattened and concatenated, then 4 Linears (BN +
  ReLU but the last) to one logit.

Expert-Net (Figs 4.15-4.17; MUNIT's generator, which UTAD adapts):
- content encoder: Conv k7 p3, 2 x Conv k4 s2 p1 (widths dim, 2 dim, 4 dim), one residual
  block of 2 x Conv k3 p1; InstanceNorm + ReLU everywhere but the block's last conv (no ReLU);
- decoder (mirrors it): a residual block whose convs are followed by AdaIN (ReLU after the
  first), 2 x [nearest x2, Conv k5 p2, LayerNorm, ReLU] (the thesis leaves the upsampling
  unstated: MUNIT's), Conv k7 p3 to 3 channels and a sigmoid;
- style encoder E_S: Conv k7 p3 then 4 x Conv k4 s2 p1 (ReLU, no normalisation; widths dim,
  2 dim, 4 dim, 4 dim, 4 dim), a global average, Conv 1x1 to `style_dim`;
- MLP: 3 Linears (ReLU but the last) from a style vector to [mu_1..mu_n, sigma_1..sigma_n]
  (eq. 4.12), the shifts and scales of the decoder's n AdaIN channels.
Two content encoders (of x and of m) and two decoders (to x and to m) share one E_S and MLP:
x_hat = D_x(C_m(m), E_S(x)), m_hat = D_m(C_x(x), s_random), s_hat = E_S(x_hat).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from adjax.nn.layers import Conv2d, adain, batch_norm, instance_norm, upsample_nearest2


def _lrelu(x: jax.Array) -> jax.Array:
    return nn.leaky_relu(x, 0.1)


class Inception(nn.Module):
    """Four parallel branches of `features // 4` channels each, concatenated."""

    features: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.features % 4:
            raise ValueError(f"an inception block splits its channels in 4, got {self.features}.")
        quarter = self.features // 4
        pooled = nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))
        branches = []
        for name, (inputs, kernel) in {"b1": (x, 1), "b3": (x, 3), "b5": (x, 5),
                                       "pool": (pooled, 1)}.items():
            h = Conv2d(quarter, kernel, 1, kernel // 2, dtype=self.dtype, name=f"{name}_conv")(
                inputs)
            branches.append(_lrelu(batch_norm(train, f"{name}_bn", self.dtype)(h)))
        return jnp.concatenate(branches, axis=-1)


class IENet(nn.Module):
    """Image [B, S, S, 3] in [0, 1] -> {"reconstruction", "features" (E_M(x)), "mu",
    "logvar"}; `widths` are the inception blocks' channels (S divisible by 2^len(widths))."""

    widths: Sequence[int] = (64, 128, 256)
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        h = x.astype(self.dtype or jnp.float32)
        for i, w in enumerate(self.widths):  # E_M
            h = nn.max_pool(Inception(w, self.dtype, name=f"enc{i + 1}")(h, train), (2, 2),
                            (2, 2))
        features = h
        # The distribution head, per position (mu and log sigma^2 of E_M(x)'s shape).
        channels = self.widths[-1]
        d = nn.relu(nn.Dense(channels, dtype=self.dtype, name="head_fc")(features))
        mu = nn.Dense(channels, dtype=self.dtype, name="head_mu")(d).astype(jnp.float32)
        logvar = nn.Dense(channels, dtype=self.dtype, name="head_logvar")(d).astype(jnp.float32)
        for i, w in enumerate(reversed(self.widths)):  # D_M
            h = upsample_nearest2(Inception(w, self.dtype, name=f"dec{i + 1}")(h, train))
        h = Conv2d(self.widths[0], 3, 1, 1, dtype=self.dtype, padding_mode="reflect",
                   name="out_conv")(h)
        h = _lrelu(batch_norm(train, "out_bn", self.dtype)(h))
        recon = nn.sigmoid(Conv2d(3, 1, dtype=self.dtype, name="to_rgb")(h).astype(jnp.float32))
        return {"reconstruction": recon, "features": features, "mu": mu, "logvar": logvar}


class PairDiscriminator(nn.Module):
    """T(x, z): the logit that feature map z belongs to image x."""

    width: int = 64
    hidden: Sequence[int] = (512, 256, 128)
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, z: jax.Array, train: bool = False) -> jax.Array:
        h = nn.avg_pool(x.astype(self.dtype or jnp.float32), (2, 2), (2, 2))
        widths = [self.width * 2 ** min(i, 3) for i in range(4)] + [self.width * 8]
        for i, w in enumerate(widths):
            h = Conv2d(w, 4, 2, 1, dtype=self.dtype, name=f"conv{i + 1}")(h)
            if i < len(widths) - 1:
                h = nn.relu(batch_norm(train, f"conv{i + 1}_bn", self.dtype)(h))
        f = jnp.concatenate([h.reshape(h.shape[0], -1),
                             z.astype(h.dtype).reshape(z.shape[0], -1)], axis=-1)
        for i, w in enumerate(self.hidden):
            f = nn.Dense(w, dtype=self.dtype, name=f"fc{i + 1}")(f)
            f = nn.relu(batch_norm(train, f"fc{i + 1}_bn", self.dtype)(f))
        return nn.Dense(1, dtype=self.dtype, name="fc_out")(f)[:, 0].astype(jnp.float32)


class ContentEncoder(nn.Module):
    """Image -> content map [B, S/4, S/4, 4 dim]."""

    dim: int = 64
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.astype(self.dtype or jnp.float32)
        for i, (w, k, s, p) in enumerate(((self.dim, 7, 1, 3), (2 * self.dim, 4, 2, 1),
                                           (4 * self.dim, 4, 2, 1))):
            h = nn.relu(instance_norm(Conv2d(w, k, s, p, dtype=self.dtype,
                                             name=f"conv{i + 1}")(h)))
        r = nn.relu(instance_norm(Conv2d(4 * self.dim, 3, 1, 1, dtype=self.dtype,
                                         name="res_conv1")(h)))
        return h + instance_norm(Conv2d(4 * self.dim, 3, 1, 1, dtype=self.dtype,
                                        name="res_conv2")(r))


class Decoder(nn.Module):
    """Content map and AdaIN parameters [B, 2 n] (n = 8 dim: shifts, then scales) -> image in
    [0, 1]."""

    dim: int = 64
    dtype: Any = None

    @nn.compact
    def __call__(self, content: jax.Array, style_params: jax.Array) -> jax.Array:
        c = 4 * self.dim
        beta, gamma = style_params[:, :2 * c], style_params[:, 2 * c:]
        h = content
        r = nn.relu(adain(Conv2d(c, 3, 1, 1, dtype=self.dtype, name="res_conv1")(h),
                          gamma[:, :c], beta[:, :c]))
        h = h + adain(Conv2d(c, 3, 1, 1, dtype=self.dtype, name="res_conv2")(r),
                      gamma[:, c:], beta[:, c:])
        for i, w in enumerate((2 * self.dim, self.dim)):
            h = Conv2d(w, 5, 1, 2, dtype=self.dtype, name=f"up{i + 1}")(upsample_nearest2(h))
            h = nn.relu(nn.LayerNorm(epsilon=1e-5, reduction_axes=(1, 2, 3), feature_axes=-1,
                                     dtype=self.dtype, name=f"up{i + 1}_ln")(h))
        return nn.sigmoid(Conv2d(3, 7, 1, 3, dtype=self.dtype, name="out")(h).astype(
            jnp.float32))


class StyleEncoder(nn.Module):
    """Image -> style vector [B, style_dim]."""

    dim: int = 64
    style_dim: int = 8
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.astype(self.dtype or jnp.float32)
        layers = [(self.dim, 7, 1, 3)] + [(self.dim * min(2 ** (i + 1), 4), 4, 2, 1)
                                          for i in range(4)]
        for i, (w, k, s, p) in enumerate(layers):
            h = nn.relu(Conv2d(w, k, s, p, dtype=self.dtype, name=f"conv{i + 1}")(h))
        h = jnp.mean(h, axis=(1, 2), keepdims=True)
        return Conv2d(self.style_dim, 1, dtype=self.dtype, name="out")(h)[:, 0, 0].astype(
            jnp.float32)


class StyleMLP(nn.Module):
    """Style vector -> AdaIN parameters [B, 2 n] (eq. 4.12)."""

    hidden: int = 256
    n: int = 512
    dtype: Any = None

    @nn.compact
    def __call__(self, s: jax.Array) -> jax.Array:
        h = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(s))
        h = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="fc2")(h))
        return nn.Dense(2 * self.n, dtype=self.dtype, name="fc3")(h).astype(jnp.float32)


class ExpertNet(nn.Module):
    """(x, m, s_random) -> {"x_hat", "m_hat", "style" E_S(x), "style_hat" E_S(x_hat)}; all
    images in [0, 1] with sides divisible by 4."""

    dim: int = 64
    style_dim: int = 8
    mlp_hidden: int = 256
    dtype: Any = None

    def setup(self):
        self.content_m = ContentEncoder(self.dim, self.dtype)
        self.content_x = ContentEncoder(self.dim, self.dtype)
        self.decoder_x = Decoder(self.dim, self.dtype)
        self.decoder_m = Decoder(self.dim, self.dtype)
        self.style = StyleEncoder(self.dim, self.style_dim, self.dtype)
        self.mlp = StyleMLP(self.mlp_hidden, 8 * self.dim, self.dtype)

    def __call__(self, x: jax.Array, m: jax.Array, s_random: jax.Array) -> dict[str, jax.Array]:
        s = self.style(x)
        x_hat = self.decoder_x(self.content_m(m), self.mlp(s))
        m_hat = self.decoder_m(self.content_x(x), self.mlp(s_random))
        return {"x_hat": x_hat, "m_hat": m_hat, "style": s, "style_hat": self.style(x_hat)}
