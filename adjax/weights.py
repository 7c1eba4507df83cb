"""The one weight importer: PyTorch state dicts -> Flax variables of `adjax.nn` and
`adjax.models`.

Files are read on the host, once, before any traced function runs (`Method.pretrained`):
`read_state_dict` reads a `.pth`/`.pt` file with `torch.load(..., weights_only=True)` (never
pickle; needs the optional `torch-weights` extra: `pip install 'adjax[torch-weights]'`) or an
`.npz` holding the same keys (written once with
`np.savez(f, **{k: v.numpy() for k, v in sd.items()})`), which needs no PyTorch. The mapping
functions turn torchvision's key names into the modules' parameter paths and stop at the first
entry that has no counterpart or the wrong shape, naming it.
"""

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


class WeightsError(ValueError):
    """A weights file that does not fit the model it is meant for."""


def read_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
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
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a file that is not a state dict
        raise WeightsError(f"weights file {file} is not a PyTorch state dict ({err}).") from err
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise WeightsError(f"weights file {file} holds a {type(state).__name__}, not a state "
                           f"dict.")
    return {k: v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, "detach")}


# PyTorch conv weight [O, I, kh, kw] -> Flax kernel [kh, kw, I, O]. (A transposed conv's
# [I, O, kh, kw] weight maps by the same transposition onto `adjax.nn.layers.ConvTranspose2d`'s
# [kh, kw, O, I] kernel.)
CONV_AXES = (2, 3, 1, 0)


def _leaves(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if isinstance(tree, Mapping):
        out = {}
        for k, v in tree.items():
            out |= _leaves(v, (*prefix, k))
        return out
    return {prefix: tree}


def _nest(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in flat.items():
        node = out
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return out


class Mapper:
    """Collects state-dict entries onto the leaves of `like` (a variables tree of arrays or
    shape structs), checking that each has a counterpart of the same shape."""

    def __init__(self, like: Any, what: str):
        self.like, self.what = _leaves(like), what
        self.found: dict[tuple[str, ...], np.ndarray] = {}
        self.source: dict[tuple[str, ...], str] = {}

    def put(self, path: Sequence[str], value: np.ndarray, key: str,
            axes: Sequence[int] | None = None) -> None:
        """Puts state-dict entry `key` (PyTorch's layout) at `path`, transposed by `axes`
        (e.g. `CONV_AXES` for a convolution kernel) into Flax's layout."""
        path = tuple(path)
        if path not in self.like:
            raise WeightsError(f"state-dict entry {key} has no counterpart in the {self.what} "
                               f"({'/'.join(path)}).")
        value, expected = np.asarray(value), tuple(self.like[path].shape)
        torch_shape = expected if axes is None else tuple(expected[i] for i in np.argsort(axes))
        if tuple(value.shape) != torch_shape:
            raise WeightsError(f"state-dict entry {key} has shape {tuple(value.shape)} where the "
                               f"{self.what} expects {torch_shape} ({'/'.join(path)}).")
        if axes is not None:
            value = np.transpose(value, axes)
        self.found[path] = np.asarray(value, self.like[path].dtype)
        self.source[path] = key

    def result(self, optional=lambda path: False) -> dict[str, Any]:
        """The collected leaves as a nested dict; a leaf of `like` that no entry filled (and
        `optional(path)` does not excuse) stops with its name."""
        for path in self.like:
            if path not in self.found and not optional(path):
                raise WeightsError(f"the state dict has no entry for {'/'.join(path)} of the "
                                   f"{self.what}.")
        return _nest(self.found)


def read_flax(path: str | pathlib.Path, like: Any, what: str) -> Any:
    """Flax params saved with `flax.serialization.to_bytes` (msgpack), checked leaf by leaf
    against `like` (arrays or shape structs): a file for another architecture or size stops
    with the first leaf at fault."""
    import flax.serialization

    file = pathlib.Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{what} file {file} does not exist.")
    try:
        tree = flax.serialization.msgpack_restore(file.read_bytes())
    except Exception as err:  # msgpack raises several kinds for a file that is not msgpack
        raise WeightsError(f"{what} file {file} is not a Flax msgpack file ({err}).") from err
    found, expected = _leaves(tree), _leaves(like)
    for path_ in expected:
        if path_ not in found:
            raise WeightsError(f"{what} file {file} lacks {'/'.join(path_)}.")
        if tuple(np.shape(found[path_])) != tuple(expected[path_].shape):
            raise WeightsError(f"{what} file {file} has {'/'.join(path_)} of shape "
                               f"{tuple(np.shape(found[path_]))} where this config expects "
                               f"{tuple(expected[path_].shape)}.")
    extra = next((p for p in found if p not in expected), None)
    if extra is not None:
        raise WeightsError(f"{what} file {file} holds {'/'.join(extra)}, which this config's "
                           f"network does not have.")
    return _nest({p: np.asarray(found[p], expected[p].dtype) for p in expected})


def merge(tree: Any, partial: Mapping[str, Any]) -> Any:
    """`tree` (a nested dict of arrays) with the leaves present in `partial` replaced."""
    if not isinstance(partial, Mapping):
        return partial
    return {k: merge(v, partial[k]) if k in partial else v for k, v in tree.items()}


def vgg_from_torch(state_dict: Mapping[str, np.ndarray], like: Any) -> Any:
    """Variables of `adjax.nn.vgg.VGGFeatures` (shaped as `like`) from a torchvision VGG state
    dict: the `features.<i>.weight/bias` entries of the layers `like` holds (deeper layers and
    the classifier are not used)."""
    mapper = Mapper(like, "VGG features")
    for name in like["params"]:
        index = name.removeprefix("features_")
        for torch_name, flax_name in (("weight", "kernel"), ("bias", "bias")):
            key = f"features.{index}.{torch_name}"
            if key not in state_dict:
                raise WeightsError(f"the VGG state dict has no entry {key}.")
            mapper.put(("params", name, flax_name), state_dict[key], key,
                       CONV_AXES if torch_name == "weight" else None)
    return mapper.result()


def resnet_from_torch(state_dict: Mapping[str, np.ndarray], like: Any) -> Any:
    """Variables of `adjax.nn.resnet.ResNet` (shaped as `like`: {"params", "batch_stats"}) from
    a torchvision ResNet state dict; `fc.*` is ignored, and so are the stages a truncated trunk
    (`ResNet.returns`) does not build. The result holds every torchvision layer of the trunk (a
    missing one stops with its name); layers torchvision lacks (squeeze-and-excitation, `se*`)
    are not in it: `merge` keeps their initialisation."""
    mapper = Mapper(like, "ResNet")
    built = {name.split("_")[0] for name in like["params"]}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "fc" or parts[-1] == "num_batches_tracked" or (
                parts[0].startswith("layer") and parts[0] not in built):
            continue
        if parts[0].startswith("layer"):
            parts = [f"{parts[0]}_{parts[1]}", *parts[2:]]
            if parts[1] == "downsample":
                parts = [parts[0], "downsample_" + ("conv" if parts[2] == "0" else "bn"),
                         *parts[3:]]
        *module, leaf = parts
        value = np.asarray(value)
        if leaf == "weight" and value.ndim == 4:
            mapper.put(("params", *module, "kernel"), value, key, CONV_AXES)
        elif leaf in ("weight", "bias"):
            mapper.put(("params", *module, "scale" if leaf == "weight" else "bias"), value, key)
        elif leaf in ("running_mean", "running_var"):
            mapper.put(("batch_stats", *module, "mean" if leaf == "running_mean" else "var"),
                       value, key)
        else:
            raise WeightsError(f"state-dict entry {key} is not a ResNet parameter.")
    return mapper.result(optional=lambda path: any(p.startswith("se") for p in path[1:2]))
