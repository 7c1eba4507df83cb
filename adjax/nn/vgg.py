"""VGG feature extractor (the perceptual loss's frozen net) and PyTorch state-dict import.

`VGGFeatures(depth)` computes torchvision's `vgg11().features[:depth]`; the seed-003 thesis's
perceptual loss uses `depth=4` (conv 64, ReLU, max-pool, conv 128). Its parameters are named
after torchvision's layer indices (`features_0`, `features_3`, ...), so a torchvision state
dict maps onto them one to one (`vgg_params_from_torch`).

Weights: `read_torch_state_dict` reads a torchvision `.pth` file (needs the optional
`torch-weights` extra: `pip install 'adjax[torch-weights]'`) or an `.npz` holding the same
keys (e.g. written once with `np.savez(f, **{k: v.numpy() for k, v in sd.items()})`), which
needs no PyTorch.
"""

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# torchvision's configuration "A" (VGG-11): channels of each 3x3 conv, "M" a 2x2 max-pool.
VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


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


class VGGFeatures(nn.Module):
    """torchvision's `vgg.features[:depth]` on NHWC input (no normalisation inside)."""

    depth: int = 4
    config: tuple = VGG11

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for index, kind, channels in _layers(self.config):
            if index >= self.depth:
                break
            if kind == "conv":
                x = nn.Conv(channels, (3, 3), padding=((1, 1), (1, 1)),
                            name=f"features_{index}")(x)
            elif kind == "relu":
                x = nn.relu(x)
            else:
                x = nn.max_pool(x, (2, 2), (2, 2))
        return x


def read_torch_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """A PyTorch state dict as numpy arrays, from a `.pth`/`.pt` file or an `.npz`."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"weights file {file} does not exist.")
    if file.suffix == ".npz":
        with np.load(file) as data:
            return {k: data[k] for k in data.files}
    try:
        import torch
    except ImportError as err:
        raise ImportError(f"reading {file} needs PyTorch: pip install 'adjax[torch-weights]', "
                          f"or save the state dict as .npz.") from err
    state = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    return {k: v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, "detach")}


def conv_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch conv weight [O, I, kh, kw] -> Flax kernel [kh, kw, I, O]."""
    return np.transpose(weight, (2, 3, 1, 0))


def assign(tree: dict[str, Any], path: Sequence[str], value: np.ndarray, key: str) -> None:
    """Puts `value` at `path` in a nested dict of arrays, checking the shape against the
    existing leaf; `key` names the source entry in error messages."""
    node = tree
    for name in path[:-1]:
        if name not in node:
            raise ValueError(f"state-dict entry {key} has no counterpart ({'/'.join(path)}).")
        node = node[name]
    old = node.get(path[-1])
    if old is None:
        raise ValueError(f"state-dict entry {key} has no counterpart ({'/'.join(path)}).")
    if tuple(old.shape) != tuple(value.shape):
        raise ValueError(f"state-dict entry {key} has shape {value.shape} where the model "
                         f"expects {tuple(old.shape)} ({'/'.join(path)}).")
    node[path[-1]] = jnp.asarray(value, old.dtype)


def vgg_params_from_torch(state_dict: Mapping[str, np.ndarray], like: Any) -> Any:
    """Flax variables of `VGGFeatures` (shaped as `like`) from a torchvision VGG state dict.

    Only the `features.<i>.weight/bias` entries of the layers `like` holds are used; a missing
    or misshapen one raises ValueError.
    """
    params = {name: dict(leaves) for name, leaves in like["params"].items()}
    for name in params:
        index = name.removeprefix("features_")
        for torch_name, flax_name in (("weight", "kernel"), ("bias", "bias")):
            key = f"features.{index}.{torch_name}"
            if key not in state_dict:
                raise ValueError(f"the VGG state dict has no entry {key}.")
            value = np.asarray(state_dict[key])
            if torch_name == "weight":
                value = conv_kernel(value)
            assign(params, (name, flax_name), value, key)
    return {"params": params}
