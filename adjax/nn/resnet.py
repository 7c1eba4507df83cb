"""ResNet-18/34/50/101 and Wide ResNet trunks (torchvision layout) with optional
squeeze-and-excitation, NHWC.

The trunk is torchvision's `conv1, bn1, relu, maxpool, layer1..layer4` without the average
pool and classifier. Module names follow torchvision's state-dict keys (`conv1`, `bn1`,
`layer2_0/conv1`, `layer2_0/downsample_conv`, ...), so ImageNet weights import with
`adjax.weights.resnet_from_torch`. Squeeze-and-excitation, when `se_ratio > 0`, re-weights the
channels after the stem and after each of the four stages (`se1`..`se5`), as PIADE does (Mishra
2021, ch. 5; eq. 5.1-5.2: s = sigmoid(W2 relu(W1 mean_hw(u))), W1 in R^{C/r x C}, no biases);
those layers are not in torchvision's weights and keep their initialisation.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from adjax.nn.layers import batch_norm

# torchvision's constructor of each (depth, width_per_group): the `adjax.weights` kind.
BACKBONES = {(18, 64): "resnet18", (50, 64): "resnet50", (50, 128): "wide_resnet50_2",
             (101, 128): "wide_resnet101_2"}

# torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu") for the trunk's convs.
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

STAGES = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
          50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3))}
LAYERS = ("layer1", "layer2", "layer3", "layer4")


def _conv(features: int, kernel: int, stride: int, name: str, dtype) -> nn.Conv:
    pad = (kernel - 1) // 2
    return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                   use_bias=False, kernel_init=kaiming_fan_out, dtype=dtype, name=name)


def _conv_bn(x, features, kernel, stride, i, train, dtype):
    # Called inside a block's compact __call__: the modules attach to that block.
    y = _conv(features, kernel, stride, f"conv{i}", dtype)(x)
    return batch_norm(train, f"bn{i}", dtype)(y)


class SqueezeExcite(nn.Module):
    """Channel attention: x * sigmoid(W2 relu(W1 mean_hw(x))), hidden width C // ratio."""

    ratio: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        s = jnp.mean(x, axis=(1, 2))
        s = nn.relu(nn.Dense(max(c // self.ratio, 1), use_bias=False, dtype=x.dtype,
                             name="fc1")(s))
        s = nn.sigmoid(nn.Dense(c, use_bias=False, dtype=x.dtype, name="fc2")(s))
        return x * s[:, None, None, :]


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual (ResNet-18/34)."""

    features: int
    stride: int = 1
    dtype: Any = None
    width_per_group: int = 64  # torchvision's BasicBlock supports only 64
    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = nn.relu(_conv_bn(x, self.features, 3, self.stride, 1, train, self.dtype))
        y = _conv_bn(y, self.features, 3, 1, 2, train, self.dtype)
        return nn.relu(y + _shortcut(x, self.features, self.stride, train, self.dtype))


class Bottleneck(nn.Module):
    """1x1, 3x3 (strided, torchvision v1.5), 1x1 x4 convs with a residual (ResNet-50/101); the
    inner width is features * width_per_group / 64 (128: torchvision's Wide ResNet-50-2/101-2)."""

    features: int
    stride: int = 1
    dtype: Any = None
    width_per_group: int = 64
    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        inner = self.features * self.width_per_group // 64
        y = nn.relu(_conv_bn(x, inner, 1, 1, 1, train, self.dtype))
        y = nn.relu(_conv_bn(y, inner, 3, self.stride, 2, train, self.dtype))
        y = _conv_bn(y, self.features * 4, 1, 1, 3, train, self.dtype)
        return nn.relu(y + _shortcut(x, self.features * 4, self.stride, train, self.dtype))


def _shortcut(x, features, stride, train, dtype):
    # Called inside a block's compact __call__: the modules attach to that block.
    if stride == 1 and x.shape[-1] == features:
        return x
    y = _conv(features, 1, stride, "downsample_conv", dtype)(x)
    return batch_norm(train, "downsample_bn", dtype)(y)


class ResNet(nn.Module):
    """A ResNet trunk: the feature map after layer4 ([B, ~H/32, ~W/32, 512 or 2048]), or the
    outputs of the stages named in `returns`.

    Attributes:
      depth: 18, 34, 50 or 101.
      width: multiplier of the stage widths 64/128/256/512 (1.0 = torchvision).
      se_ratio: squeeze-and-excitation reduction ratio after stem and stages; 0 = none.
      maxpool: keep the stem's 3x3/2 max-pool (the pyramidal AE of ch. 4 removes it).
      width_per_group: 64, or 128 for torchvision's `wide_resnet50_2` / `wide_resnet101_2`.
      returns: stages whose outputs to return as a dict ({"layer2": ..., "layer3": ...}); the
        trunk stops after the last one (its later stages have no parameters). Empty: the
        layer4 map.
      dtype: computation dtype.
    """

    depth: int = 18
    width: float = 1.0
    se_ratio: int = 0
    maxpool: bool = True
    width_per_group: int = 64
    returns: tuple[str, ...] = ()
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array | dict[str, jax.Array]:
        if self.depth not in STAGES:
            raise ValueError(f"ResNet depth must be one of {sorted(STAGES)}, got {self.depth}.")
        kind, blocks = STAGES[self.depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        base = max(int(round(64 * self.width)), 1)
        x = _conv(base, 7, 2, "conv1", self.dtype)(x)
        x = nn.relu(batch_norm(train, "bn1", self.dtype)(x))
        if self.maxpool:
            x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        if self.se_ratio:
            x = SqueezeExcite(self.se_ratio, name="se1")(x)
        unknown = set(self.returns) - set(LAYERS)
        if unknown:
            raise ValueError(f"ResNet returns stages of {LAYERS}, not {sorted(unknown)}.")
        last = max((LAYERS.index(r) for r in self.returns), default=len(LAYERS) - 1)
        out = {}
        for stage, n in enumerate(blocks[:last + 1]):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                x = block(base * 2**stage, stride, self.dtype, self.width_per_group,
                          name=f"layer{stage + 1}_{i}")(x, train)
            if self.se_ratio:
                x = SqueezeExcite(self.se_ratio, name=f"se{stage + 2}")(x)
            out[LAYERS[stage]] = x
        return {r: out[r] for r in self.returns} if self.returns else x
