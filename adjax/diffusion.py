"""Denoising diffusion for DDAD: the linear noise schedule, the ε-prediction loss, and the
conditioned DDIM reconstruction as one compiled `lax.scan`.

Notation: β_1..β_T linear from `beta_start` to `beta_end`; ᾱ_t = Π_{s<=t} (1 − β_s), indexed
here from 0 (`alphas_cumprod[t]` for the timestep t in 0..T−1 the UNet is given), with ᾱ = 1
before the first step (t = −1). Images are in [−1, 1].

Reconstruction (DDAD, Eqs. 13-14; the reference's `reconstruction.py`): the input x is noised
to T′ (x_T′ = √ᾱ_T′ x + √(1 − ᾱ_T′) ε), then for t = T′ − skip, T′ − 2 skip, ..., 0 (each
with t_next = t − skip, and −1 after 0; the first UNet call is at T′ − skip, as in the
reference):

    ε = ε_θ(x_t, t);  y_t = √ᾱ_t y + √(1 − ᾱ_t) ε;  ε̂ = ε − w √(1 − ᾱ_t) (y_t − x_t)
    x̂_0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t
    σ = η √((1 − ᾱ_t / ᾱ_next)(1 − ᾱ_next) / (1 − ᾱ_t));  c = √(1 − ᾱ_next − σ²)
    x_next = √ᾱ_next x̂_0 + σ z + c ε̂

where y is the conditioning (target) image. With η > 0 the result is random: every draw comes
from the explicit per-image keys, so an image's reconstruction does not depend on the batch it
is in.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

# ε_θ(x_t [B, H, W, C], t [B] float) -> ε̂ [B, H, W, C]
EpsFn = Callable[[jax.Array, jax.Array], jax.Array]


def linear_betas(beta_start: float, beta_end: float, steps: int) -> np.ndarray:
    """β_1..β_T evenly spaced from `beta_start` to `beta_end` (computed in float64 and cast to
    float32, as the reference)."""
    return np.linspace(beta_start, beta_end, steps, dtype=np.float64).astype(np.float32)


def alphas_cumprod(beta_start: float, beta_end: float, steps: int) -> np.ndarray:
    """ᾱ_t = Π_{s<=t} (1 − β_s) for t = 0..T−1, float32 (the product taken in float64 over
    the float32 betas; the reference multiplies in float32, within 1e-6 of this)."""
    betas = linear_betas(beta_start, beta_end, steps).astype(np.float64)
    return np.cumprod(1.0 - betas).astype(np.float32)


def noise(x0: jax.Array, t: jax.Array, eps: jax.Array, abar: jax.Array) -> jax.Array:
    """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε for per-image timesteps `t` [B]."""
    a = abar[t].reshape(-1, *([1] * (x0.ndim - 1)))
    return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * eps


def epsilon_loss(eps_fn: EpsFn, x0: jax.Array, key: jax.Array, abar: jax.Array) -> jax.Array:
    """The ε-prediction loss: t ~ U{0..T−1} and ε ~ N(0, I) per image, ‖ε − ε_θ(x_t, t)‖²
    summed over H, W, C and averaged over the batch."""
    k_t, k_eps = jax.random.split(key)
    t = jax.random.randint(k_t, (x0.shape[0],), 0, abar.shape[0])
    eps = jax.random.normal(k_eps, x0.shape, jnp.float32)
    pred = eps_fn(noise(x0, t, eps, abar), t.astype(jnp.float32))
    return jnp.mean(jnp.sum((eps - pred) ** 2, axis=tuple(range(1, x0.ndim))))


def ddim_timesteps(start: int, skip: int) -> tuple[np.ndarray, np.ndarray]:
    """(t, t_next) of each reconstruction step, in the order they run: t = start − skip, ...,
    0 (every `skip`-th step below `start`, last to first) and t_next = t − skip (−1 after 0)."""
    if not 0 < skip <= start:
        raise ValueError(f"DDIM needs 0 < skip <= start, got skip {skip} and start {start}.")
    seq = np.arange(0, start, skip)
    return seq[::-1].copy(), np.concatenate([[-1], seq[:-1]])[::-1].copy()


def reconstruct(eps_fn: EpsFn, x: jax.Array, y: jax.Array, keys: jax.Array, abar: jax.Array,
                *, start: int, skip: int, w: float | jax.Array, eta: float = 1.0) -> jax.Array:
    """The conditioned DDIM reconstruction of `x` towards `y` (module docstring): `x` noised to
    `start`, then `start / skip` denoising steps, one `lax.scan` over them. `keys` holds one
    PRNG key per image; step i draws image b's noise from `fold_in(keys[b], i + 1)` (the
    initial noise from fold 0). Returns x̂_0, the same shape as `x`."""
    if not 0 < start < abar.shape[0]:
        raise ValueError(f"the reconstruction starts at a timestep in 1..{abar.shape[0] - 1}, "
                         f"got {start}.")
    ts, ts_next = ddim_timesteps(start, skip)
    # ᾱ with the value 1 of "before the first step" at index 0: ᾱ_t is abar1[t + 1].
    abar1 = jnp.concatenate([jnp.ones((1,), abar.dtype), abar])
    n = x.shape[0]

    def normal(i):
        return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), x.shape[1:],
                                                    x.dtype))(keys)

    a_start = abar[start]
    x_t = jnp.sqrt(a_start) * x + jnp.sqrt(1.0 - a_start) * normal(0)

    def step(x_t, inputs):
        t, t_next, i = inputs
        a, a_next = abar1[t + 1], abar1[t_next + 1]
        eps = eps_fn(x_t, jnp.full((n,), t, jnp.float32))
        y_t = jnp.sqrt(a) * y + jnp.sqrt(1.0 - a) * eps
        eps_hat = eps - w * jnp.sqrt(1.0 - a) * (y_t - x_t)
        x0_t = (x_t - jnp.sqrt(1.0 - a) * eps_hat) / jnp.sqrt(a)
        sigma = eta * jnp.sqrt((1.0 - a / a_next) * (1.0 - a_next) / (1.0 - a))
        # 1 − ᾱ_next − σ² >= 0 in exact arithmetic (0 at the last step); float rounding must
        # not turn it into a NaN.
        c = jnp.sqrt(jnp.maximum(1.0 - a_next - sigma**2, 0.0))
        return jnp.sqrt(a_next) * x0_t + sigma * normal(i + 1) + c * eps_hat, None

    steps = (jnp.asarray(ts), jnp.asarray(ts_next), jnp.arange(len(ts)))
    x0, _ = jax.lax.scan(step, x_t, steps)
    return x0
