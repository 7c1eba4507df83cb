"""Capsules and dynamic routing by agreement (Sabour, Frosst, Hinton, NIPS 2017).

Shapes: B batch, I input capsules, J output capsules, D capsule dimension. Everything is
`einsum` over (B, I, J, D), so it jits, vmaps and shards like any other layer.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp


def squash(s: jax.Array, axis: int = -1, eps: float = 1e-7) -> jax.Array:
    """v = |s|^2 / (1 + |s|^2) * s / |s|: keeps the direction, maps the length into [0, 1)."""
    norm2 = jnp.sum(s * s, axis=axis, keepdims=True)
    return norm2 / (1.0 + norm2) * s / jnp.sqrt(norm2 + eps)


def dynamic_routing(u_hat: jax.Array, iterations: int = 3,
                    stop_inner_gradient: bool = False) -> tuple[jax.Array, jax.Array]:
    """Routing by agreement.

    Args:
      u_hat: [B, I, J, D] each input capsule's prediction of each output capsule.
      iterations: routing iterations r (3 in the paper).
      stop_inner_gradient: route on `stop_gradient(u_hat)` in all but the last iteration (as
        XifengGuo/CapsNet-Pytorch does); False follows the paper and the official TF code.

    Returns:
      v [B, J, D] the output capsules and c [B, I, J] the final coupling coefficients. The
      logits b_ij start at 0 and grow by <u_hat_ij, v_j>; c_ij = softmax over j of b_ij.
    """
    if iterations < 1:
        raise ValueError(f"routing needs at least one iteration, got {iterations}.")
    inner = jax.lax.stop_gradient(u_hat) if stop_inner_gradient else u_hat
    logits = jnp.zeros(u_hat.shape[:3], u_hat.dtype)
    for r in range(iterations):
        coupling = jax.nn.softmax(logits, axis=-1)
        last = r == iterations - 1
        v = squash(jnp.einsum("bij,bijd->bjd", coupling, u_hat if last else inner))
        if not last:
            logits = logits + jnp.einsum("bijd,bjd->bij", inner, v)
    return v, coupling


class PrimaryCapsules(nn.Module):
    """A convolution whose channels are grouped into `types` capsule types of `dim` each, every
    spatial position giving one capsule per type; squashed. Output [B, H'*W'*types, dim]."""

    types: int = 32
    dim: int = 8
    kernel: int = 9
    stride: int = 2

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.Conv(self.types * self.dim, (self.kernel, self.kernel),
                    strides=(self.stride, self.stride), padding="VALID")(x)
        b, h, w, _ = y.shape
        return squash(y.reshape(b, h * w * self.types, self.dim))


class RoutingCapsules(nn.Module):
    """Fully connected capsule layer: a weight matrix W_ij [D_out, D_in] per (input, output)
    pair gives u_hat_ij = W_ij u_i, then dynamic routing. Input [B, I, D_in]; output v [B, J,
    D_out] (and the coupling coefficients with `return_coupling`)."""

    num_capsules: int
    dim: int
    iterations: int = 3
    stop_inner_gradient: bool = False
    weight_std: float = 0.01  # N(0, 0.01^2) initial transforms (XifengGuo; the paper is silent)

    @nn.compact
    def __call__(self, u: jax.Array, return_coupling: bool = False):
        weights = self.param("weights", nn.initializers.normal(self.weight_std),
                             (u.shape[1], self.num_capsules, self.dim, u.shape[2]))
        u_hat = jnp.einsum("ijdk,bik->bijd", weights, u)
        v, coupling = dynamic_routing(u_hat, self.iterations, self.stop_inner_gradient)
        return (v, coupling) if return_coupling else v
