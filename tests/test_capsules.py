"""Capsules: squash and dynamic routing against a plain numpy loop, and their invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adjax.nn.capsules import PrimaryCapsules, RoutingCapsules, dynamic_routing, squash


def _routing_reference(u_hat: np.ndarray, iterations: int):
    """Algorithm 1 of Sabour et al. written with explicit loops over i and j."""
    batch, n_in, n_out, dim = u_hat.shape
    b = np.zeros((batch, n_in, n_out))
    for r in range(iterations):
        c = np.exp(b) / np.exp(b).sum(axis=2, keepdims=True)
        v = np.zeros((batch, n_out, dim))
        for j in range(n_out):
            s = sum(c[:, i, j, None] * u_hat[:, i, j] for i in range(n_in))
            n2 = (s * s).sum(-1, keepdims=True)
            v[:, j] = n2 / (1 + n2) * s / np.sqrt(n2 + 1e-7)
        if r < iterations - 1:
            for i in range(n_in):
                for j in range(n_out):
                    b[:, i, j] += (u_hat[:, i, j] * v[:, j]).sum(-1)
    return v, c


@pytest.mark.parametrize("iterations", [1, 3])
def test_routing_matches_the_loop(iterations):
    u_hat = np.random.default_rng(0).normal(size=(2, 7, 3, 4)).astype(np.float32)
    v, c = dynamic_routing(jnp.asarray(u_hat), iterations)
    v_ref, c_ref = _routing_reference(u_hat.astype(np.float64), iterations)
    np.testing.assert_allclose(v, v_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c, c_ref, rtol=1e-5, atol=1e-6)


def test_single_output_capsule_has_coupling_one_and_short_vectors():
    u_hat = jax.random.normal(jax.random.key(0), (3, 10, 1, 8)) * 5
    v, c = dynamic_routing(u_hat, 3)
    np.testing.assert_allclose(c, 1.0)
    assert np.all(np.linalg.norm(np.asarray(v), axis=-1) < 1.0)


def test_squash_keeps_direction_and_bounds_length():
    s = jnp.array([[3.0, 4.0], [0.0, 0.0], [1e-3, 0.0]])
    v = np.asarray(squash(s))
    np.testing.assert_allclose(np.linalg.norm(v[0]), 25 / 26, rtol=1e-6)
    np.testing.assert_allclose(v[0] / np.linalg.norm(v[0]), [0.6, 0.8], rtol=1e-6)
    assert np.all(np.isfinite(v)) and np.allclose(v[1], 0.0)


def test_stop_inner_gradient_changes_gradients_not_values():
    u_hat = jax.random.normal(jax.random.key(1), (2, 5, 3, 4))

    def f(u, stop):
        return jnp.sum(dynamic_routing(u, 3, stop)[0] ** 2)

    assert f(u_hat, True) == pytest.approx(float(f(u_hat, False)), rel=1e-6)
    g_full, g_stop = jax.grad(f)(u_hat, False), jax.grad(f)(u_hat, True)
    assert not np.allclose(g_full, g_stop)


def test_capsnet_shapes_on_28x28():
    conv = jax.nn.relu(jnp.zeros((2, 20, 20, 256)))  # the 9x9 ReLU conv's output size
    primary = PrimaryCapsules()
    u, _ = primary.init_with_output(jax.random.key(0), conv)
    assert u.shape == (2, 1152, 8)  # 6 x 6 x 32 capsules, as in the paper
    caps = RoutingCapsules(num_capsules=10, dim=16)
    (v, c), params = caps.init_with_output(jax.random.key(1), u, return_coupling=True)
    assert v.shape == (2, 10, 16) and c.shape == (2, 1152, 10)
    assert params["params"]["weights"].shape == (1152, 10, 16, 8)
