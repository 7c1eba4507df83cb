"""The ResNet trunks against torchvision's parameter counts (its published constructors, minus
the 1000-way classifier), and the stage outputs feature extractors use."""

import jax
import jax.numpy as jnp
import pytest

from adjax.methods.base import count_params
from adjax.nn.resnet import ResNet

FC = 2048 * 1000 + 1000  # torchvision's classifier on the 2048-channel trunks


@pytest.mark.parametrize("kwargs, torchvision", [
    (dict(depth=18), 11_689_512 - (512 * 1000 + 1000)),
    (dict(depth=50), 25_557_032 - FC),
    (dict(depth=101), 44_549_160 - FC),
    (dict(depth=50, width_per_group=128), 68_883_240 - FC),    # wide_resnet50_2
    (dict(depth=101, width_per_group=128), 126_886_696 - FC),  # wide_resnet101_2
])
def test_parameter_counts_equal_torchvisions(kwargs, torchvision):
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    variables = jax.eval_shape(ResNet(**kwargs).init, jax.random.key(0), x)
    assert count_params(variables["params"]) == torchvision


def test_stage_outputs_stop_after_the_last_one_asked_for():
    net = ResNet(depth=50, width_per_group=128, returns=("layer2", "layer3"))
    x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    variables = jax.eval_shape(net.init, jax.random.key(0), x)
    assert not any(name.startswith("layer4") for name in variables["params"])
    out = jax.eval_shape(net.apply, variables, x)
    assert out["layer2"].shape == (2, 8, 8, 512) and out["layer3"].shape == (2, 4, 4, 1024)
