"""Conv2d pads explicitly (a jnp.pad, then a VALID convolution): the same outputs and gradients
as the convolution's own zero padding, the formulation it replaced for XLA:CPU's speed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adjax.nn.layers import Conv2d


def _padded_by_the_conv(params, x, stride, pad):
    """The unchanged formulation: the padding handed to the convolution itself."""
    p = params["params"]["conv"]
    y = jax.lax.conv_general_dilated(x, p["kernel"], (stride, stride), [(pad, pad)] * 2,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision="highest")
    return y + p["bias"]


@pytest.mark.parametrize(("kernel", "stride", "pad"), [(4, 1, 2), (4, 2, 1), (3, 1, 1)])
def test_explicit_padding_matches_the_convolutions_own(kernel, stride, pad):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 9, 3)), jnp.float32)
    conv = Conv2d(4, kernel, stride=stride, padding=pad)
    params = conv.init(jax.random.key(0), x)

    def loss(f):
        return lambda p, x: jnp.sum(jnp.sin(f(p, x)))

    with jax.default_matmul_precision("float32"):
        ours = conv.apply(params, x)
        theirs = _padded_by_the_conv(params, x, stride, pad)
        grads = jax.grad(loss(conv.apply), argnums=(0, 1))(params, x)
        expected = jax.grad(loss(lambda p, x: _padded_by_the_conv(p, x, stride, pad)),
                            argnums=(0, 1))(params, x)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)
