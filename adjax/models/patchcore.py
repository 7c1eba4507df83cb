"""PatchCore's locally aware patch features (Roth et al., CVPR 2022), as EfficientAD's teacher
distillation uses them (seed-004 thesis, Algorithm 1; reference `pretraining.py`).

From a backbone's stage outputs (WideResNet-101-2 `layer2`, `layer3`): every location's 3x3
neighbourhood (zero-padded, PyTorch's `Unfold`), flattened channel-major and averaged into
`pre_dim` bins (`adaptive_avg_pool1d`, "MeanMapper"); the later stages bilinearly resized to the
first one's grid; the layers' vectors concatenated and averaged into `out_dim` bins
("Aggregator"). The reference resizes the unfolded patches before pooling them; both steps are
linear and act on different axes, so pooling first gives the same features with 9x less to
resize. The pooling is exact and cheap: bins never straddle more than a group of channels, so it
runs as one grouped convolution with fixed weights (a depthwise one for WideResNet-101-2).
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from adjax.nn.layers import adaptive_pool_matrix, resize_bilinear

HIGHEST = jax.lax.Precision.HIGHEST


def pooled_patches(x: jax.Array, out_dim: int, patch: int = 3) -> jax.Array:
    """[B, h, w, C] -> [B, h, w, out_dim]: each location's zero-padded `patch` x `patch`
    neighbourhood, flattened as (C, patch, patch), averaged into `out_dim` bins."""
    c, k2 = x.shape[-1], patch * patch
    groups = math.gcd(c, out_dim)  # bins of output group t only see channels of group t
    block = adaptive_pool_matrix(k2 * c // groups, out_dim // groups)  # the same for each group
    kernel = block.reshape(c // groups, patch, patch, out_dim // groups).transpose(1, 2, 0, 3)
    kernel = np.tile(kernel, (1, 1, 1, groups))  # [patch, patch, C / groups, out_dim]
    pad = (patch - 1) // 2
    return jax.lax.conv_general_dilated(
        x, jnp.asarray(kernel, x.dtype), (1, 1), ((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
        precision=HIGHEST)


def pooled_channels(x: jax.Array, out_dim: int) -> jax.Array:
    """`adaptive_avg_pool1d(out_dim)` over the last axis, group by group."""
    n = x.shape[-1]
    groups = math.gcd(n, out_dim)
    block = jnp.asarray(adaptive_pool_matrix(n // groups, out_dim // groups), x.dtype)
    grouped = x.reshape(*x.shape[:-1], groups, n // groups)
    return jnp.einsum("...gi,io->...go", grouped, block, precision=HIGHEST).reshape(
        *x.shape[:-1], out_dim)


def embed(features: dict[str, jax.Array], layers: Sequence[str] = ("layer2", "layer3"),
          pre_dim: int = 1024, out_dim: int = 384) -> jax.Array:
    """Stage outputs {name: [B, h_i, w_i, C_i]} -> [B, h_0, w_0, out_dim] PatchCore features
    on the grid of `layers[0]`."""
    grid = features[layers[0]].shape[1:3]
    pooled = [pooled_patches(features[name].astype(jnp.float32), pre_dim) for name in layers]
    pooled = [p if p.shape[1:3] == grid else resize_bilinear(p, grid) for p in pooled]
    return pooled_channels(jnp.concatenate(pooled, axis=-1), out_dim)
