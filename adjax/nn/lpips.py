"""LPIPS (Zhang et al., CVPR 2018) with the AlexNet trunk: the `lpips` package's
`LPIPS(net="alex", version="0.1")`, a learnt perceptual distance.

Inputs are NHWC images in [-1, 1]. They are shifted and scaled per channel (the package's
`ScalingLayer`: shift (-0.030, -0.088, -0.188), scale (0.458, 0.448, 0.450)), passed through
torchvision's AlexNet `features` up to each of its five ReLUs (64, 192, 384, 256, 256 channels),
each tap unit-normalised over channels (eps 1e-10), the squared differences weighted per
channel by a learnt non-negative vector (the package's `lin<i>` 1x1 convolutions without bias),
averaged over space and summed over the taps: one distance per image pair.

Weights: torchvision's `alexnet` state dict (the trunk's `features.*`) and the package's
`weights/v0.1/alex.pth` (`lin<i>.model.1.weight`), mapped by `adjax.weights.lpips_from_torch`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from adjax.nn.layers import Conv2d

# torchvision AlexNet `features` convolutions: (channels, kernel, stride, padding, index), and
# whether a 3x3 stride-2 max-pool precedes the layer.
ALEXNET = ((64, 11, 4, 2, 0, False), (192, 5, 1, 2, 3, True), (384, 3, 1, 1, 6, True),
           (256, 3, 1, 1, 8, False), (256, 3, 1, 1, 10, False))
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class AlexNetTaps(nn.Module):
    """torchvision AlexNet `features`, returning the output of each of its five ReLUs."""

    @nn.compact
    def __call__(self, x: jax.Array) -> list[jax.Array]:
        taps = []
        for channels, kernel, stride, padding, _, pool in ALEXNET:
            if pool:
                x = nn.max_pool(x, (3, 3), (2, 2))
            x = nn.relu(Conv2d(channels, kernel, stride, padding)(x))
            taps.append(x)
        return taps


class LPIPS(nn.Module):
    """The LPIPS distance of image pairs (module docstring): [B, H, W, 3] x 2 -> [B]."""

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        n = x.shape[0]
        pair = (jnp.concatenate([x, y]) - jnp.asarray(_SHIFT)) / jnp.asarray(_SCALE)
        total = jnp.zeros(n, jnp.float32)
        for i, f in enumerate(AlexNetTaps(name="trunk")(pair)):  # one pass for both images
            weight = self.param(f"lin{i}", nn.initializers.ones, (f.shape[-1],))
            d = (_unit(f[:n]) - _unit(f[n:])) ** 2
            total = total + jnp.mean(d @ weight, axis=(1, 2))
        return total


def _unit(f: jax.Array) -> jax.Array:
    return f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + 1e-10)
