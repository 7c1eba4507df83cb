"""VGG feature extractor: the perceptual loss's frozen net, and torchvision's VGG-16/19 trunks.

`VGGFeatures(depth)` computes torchvision's `vgg11().features[:depth]`; the seed-003 thesis's
perceptual loss uses `depth=4` (conv 64, ReLU, max-pool, conv 128). `config=VGG16` or `VGG19`
with `depth=feature_depth(config)` is the whole `vgg16().features` / `vgg19().features`. Its
parameters are named after torchvision's layer indices (`features_0`, `features_3`, ...), so a
torchvision state dict maps onto them one to one.

Weights: `adjax.weights.vgg_from_torch` maps a torchvision VGG state dict onto it.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax

# torchvision's configuration "A" (VGG-11): channels of each 3x3 conv, "M" a 2x2 max-pool.
VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
# Configurations "D" (VGG-16) and "E" (VGG-19).
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
VGG19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M")


def _layers(config: Sequence[int | str]) -> list[tuple[int, str, int]]:
    """torchvision's `features` as (index, kind, channels): conv at i, its ReLU at i + 1."""
    out, i = [], 0
    for v in config:
        if v == "M":
            out.append((i, "pool", 0))
            i += 1
        else:
            out += [(i, "conv", int(v)), (i + 1, "relu", 0)]
            i += 2
    return out


def feature_depth(config: Sequence[int | str]) -> int:
    """The length of torchvision's `features` for `config` (all its layers)."""
    return len(_layers(config))


class VGGFeatures(nn.Module):
    """torchvision's `vgg.features[:depth]` on NHWC input (no normalisation inside); with
    `taps`, the outputs of those torchvision layer indices as {index: map} instead (e.g. VGG-19's
    relu1_1, relu2_1, relu3_1, relu4_1 are 1, 6, 11, 20), the trunk ending at the last tap."""

    depth: int = 4
    config: tuple = VGG11
    taps: tuple[int, ...] = ()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array | dict[int, jax.Array]:
        depth = max(self.taps) + 1 if self.taps else self.depth
        out = {}
        for index, kind, channels in _layers(self.config):
            if index >= depth:
                break
            if kind == "conv":
                x = nn.Conv(channels, (3, 3), padding=((1, 1), (1, 1)),
                            name=f"features_{index}")(x)
            elif kind == "relu":
                x = nn.relu(x)
            else:
                x = nn.max_pool(x, (2, 2), (2, 2))
            if index in self.taps:
                out[index] = x
        return out if self.taps else x
