"""Analytic FLOP counts against numbers worked out by hand."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from adjax.flops import count_flops
from adjax.models.pdn import PDN


def _shape(*shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


def _conv(x, w, groups=1):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", feature_group_count=groups,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_single_conv():
    # 2 images, 10x10x3 -> 3x3 kernel, 5 filters, VALID: output 2x8x8x5 = 640 elements, each
    # 3*3*3 = 27 multiply-accumulates.
    flops = count_flops(_conv, _shape(2, 10, 10, 3), _shape(3, 3, 3, 5))
    assert flops == 2 * 640 * 27 == 34_560


def test_grouped_conv_counts_features_per_group():
    # 8 -> 12 features in 4 groups: each output sees 8 / 4 = 2 input features; kernel 3x3.
    # Output 1x6x6x12 = 432 elements x 2 x 9 MACs.
    flops = count_flops(lambda x, w: _conv(x, w, groups=4), _shape(1, 8, 8, 8),
                        _shape(3, 3, 2, 12))
    assert flops == 2 * 432 * 2 * 9 == 15_552
    # Depthwise: one feature per group.
    depthwise = count_flops(lambda x, w: _conv(x, w, groups=8), _shape(1, 8, 8, 8),
                            _shape(3, 3, 1, 8))
    assert depthwise == 2 * (6 * 6 * 8) * 1 * 9


def test_dense_layer():
    # Batch 4, 32 -> 10: 4*32*10 MACs; the bias add is elementwise, not counted by default.
    dense = nn.Dense(10)
    params = jax.eval_shape(dense.init, jax.random.key(0), _shape(4, 32))
    assert count_flops(dense.apply, params, _shape(4, 32)) == 2 * 4 * 32 * 10
    # elementwise=True adds one per output element of the bias add (4 x 10).
    assert count_flops(dense.apply, params, _shape(4, 32), elementwise=True) == 2560 + 40


def test_batched_dot_general():
    # einsum with a batch dimension: 3 batches of (5x7) @ (7x2).
    flops = count_flops(lambda a, b: jnp.einsum("bij,bjk->bik", a, b), _shape(3, 5, 7),
                        _shape(3, 7, 2))
    assert flops == 2 * 3 * 5 * 7 * 2


def test_control_flow():
    def matmul(x, w):
        return x @ w

    one = 2 * 4 * 16 * 16
    x, w = _shape(4, 16), _shape(16, 16)

    def scanned(x, w):
        return jax.lax.scan(lambda c, _: (matmul(c, w), None), x, length=7)[0]

    assert count_flops(scanned, x, w) == 7 * one

    def branches(x, w):  # the most expensive branch: two matmuls
        return jax.lax.cond(x.sum() > 0, lambda a: matmul(matmul(a, w), w), lambda a: a, x)

    assert count_flops(branches, x, w) == 2 * one

    def loop(x, w):  # counted once, whatever the trip count
        return jax.lax.while_loop(lambda a: a.sum() < 1e3, lambda a: matmul(a, w), x)

    assert count_flops(loop, x, w) == one

    def nested(x, w):  # jit, remat and custom_jvp bodies are walked into
        y = jax.jit(matmul)(x, w)
        y = jax.checkpoint(matmul)(y, w)
        return jax.nn.relu(matmul(y, w))

    assert count_flops(nested, x, w) == 3 * one


def test_elementwise_and_reductions():
    def f(x):
        return jnp.sum(jnp.exp(x) * 2.0)

    # exp: 12, mul: 12, reduce_sum over 12 inputs.
    assert count_flops(f, _shape(3, 4)) == 0
    assert count_flops(f, _shape(3, 4), elementwise=True) == 36


def test_pdn_small_teacher_at_256():
    # PDN-S without padding (the detector's setting), 256x256x3 input, 384 output channels:
    #   conv1 4x4, 3 -> 128:    256 - 3 = 253  -> 253*253*128 outputs x 3*16 MACs
    #   avgpool 2/2:            253 -> 126
    #   conv2 4x4, 128 -> 256:  126 - 3 = 123  -> 123*123*256 outputs x 128*16 MACs
    #   avgpool 2/2:            123 -> 61
    #   conv3 3x3, 256 -> 256:  61 - 2 = 59    -> 59*59*256 outputs x 256*9 MACs
    #   conv4 4x4, 256 -> 384:  59 - 3 = 56    -> 56*56*384 outputs x 256*16 MACs
    macs = (253 * 253 * 128 * 3 * 16       # 393,271,296
            + 123 * 123 * 256 * 128 * 16   # 7,931,953,152
            + 59 * 59 * 256 * 256 * 9      # 2,053,177,344
            + 56 * 56 * 384 * 256 * 16)    # 4,932,501,504
    assert macs == 15_310_903_296
    net = PDN("s", 384)
    x = _shape(1, 256, 256, 3)
    params = jax.eval_shape(net.init, jax.random.key(0), x)
    assert count_flops(net.apply, params, x) == 2 * macs  # about 30.6 GFLOP per image
