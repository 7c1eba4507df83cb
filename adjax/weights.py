"""The one weight importer: PyTorch state dicts -> Flax variables of `adjax.nn` and
`adjax.models`.

Files are read on the host, once, before any traced function runs (`Method.pretrained`):
`read_state_dict` reads a `.safetensors` file (no PyTorch needed), a `.pth`/`.pt` file with
`torch.load(..., weights_only=True)` (never pickle; needs the optional `torch-weights` extra:
`pip install 'adjax[torch-weights]'`) or an `.npz` holding the same keys (written once with
`np.savez(f, **{k: v.numpy() for k, v in sd.items()})`). The mapping functions turn the
published key names (torchvision's, EfficientAD's reference code's and anomalib's) into the
modules' parameter paths and stop at the first entry that has no counterpart, is missing or
has the wrong shape, naming it.

`KINDS` names what `adjax weights import --kind=...` converts (torchvision's constructor names
and the EfficientAD teachers); `load(path, kind, like, what)` reads either a PyTorch file of
that kind or the Flax msgpack the command wrote, checked against `like`.
"""

import dataclasses
import hashlib
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np


class WeightsError(ValueError):
    """A weights file that does not fit the model it is meant for."""


TORCH_SUFFIXES = (".pth", ".pt", ".bin")
STATE_DICT_SUFFIXES = (*TORCH_SUFFIXES, ".safetensors", ".npz")


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip(".")


def read_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """A PyTorch state dict as numpy arrays, from a `.safetensors`, `.pth`/`.pt`/`.bin` or
    `.npz` file; a file that is missing or cannot be read stops with one sentence naming it."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"weights file {file} does not exist.")
    suffix = file.suffix.lower()
    if suffix not in STATE_DICT_SUFFIXES:
        raise WeightsError(f"weights file {file} is none of {', '.join(STATE_DICT_SUFFIXES)} "
                           f"(a PyTorch state dict) nor a Flax .msgpack.")
    if suffix == ".npz":
        try:
            with np.load(file, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except Exception as err:  # zipfile and numpy raise several kinds for a damaged file
            raise WeightsError(f"weights file {file} is not a readable .npz ({_first_line(err)})."
                               ) from err
    if suffix == ".safetensors":
        return _read_safetensors(file)
    return _read_torch(file)


def _read_safetensors(file: pathlib.Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return dict(load_file(file))
    except Exception as err:  # safetensors raises its own error kinds for a damaged header
        raise WeightsError(f"weights file {file} is not a readable .safetensors file "
                           f"({_first_line(err)}).") from err


def _read_torch(file: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as err:
        raise ImportError(f"reading {file} needs PyTorch: pip install 'adjax[torch-weights]', "
                          f"or convert it to .safetensors or .npz.") from err
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a file that is not a state dict
        raise WeightsError(f"weights file {file} is not a PyTorch state dict "
                           f"({_first_line(err)}).") from err
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise WeightsError(f"weights file {file} holds a {type(state).__name__}, not a state "
                           f"dict.")
    return {k: v.detach().cpu().float().numpy() if v.is_floating_point() else
            v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, "detach")}


def sha256(path: str | pathlib.Path) -> str:
    """The hex sha256 of a file (records name the weights they used by it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def check_tree(tree: Any, like: Any, what: str, skip=lambda path: False) -> Any:
    """`tree` (nested dicts of arrays) checked leaf by leaf against `like` (arrays or shape
    structs) and cast to its dtypes: a missing leaf, a wrong shape or a leaf `like` lacks (that
    `skip(path)` does not excuse; skipped leaves are dropped) stops with the first at fault."""
    found, expected = _leaves(tree), _leaves(like)
    for path in expected:
        if path not in found:
            raise WeightsError(f"{what} lacks {'/'.join(path)}.")
        if tuple(np.shape(found[path])) != tuple(expected[path].shape):
            raise WeightsError(f"{what} has {'/'.join(path)} of shape "
                               f"{tuple(np.shape(found[path]))} where this config expects "
                               f"{tuple(expected[path].shape)}.")
    extra = next((p for p in found if p not in expected and not skip(p)), None)
    if extra is not None:
        raise WeightsError(f"{what} holds {'/'.join(extra)}, which this config's network does "
                           f"not have.")
    return _nest({p: np.asarray(found[p], expected[p].dtype) for p in expected})


def read_flax(path: str | pathlib.Path, like: Any, what: str, skip=lambda path: False) -> Any:
    """Flax variables saved with `flax.serialization.to_bytes` (msgpack), checked leaf by leaf
    against `like` (`check_tree`): a file for another architecture or size stops with the first
    leaf at fault."""
    import flax.serialization

    file = pathlib.Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{what} file {file} does not exist.")
    try:
        tree = flax.serialization.msgpack_restore(file.read_bytes())
    except Exception as err:  # msgpack raises several kinds for a file that is not msgpack
        raise WeightsError(f"{what} file {file} is not a Flax msgpack file "
                           f"({_first_line(err)}).") from err
    return check_tree(tree, like, f"{what} file {file}", skip)


def write_flax(path: str | pathlib.Path, variables: Any) -> pathlib.Path:
    """Writes Flax variables as msgpack (`flax.serialization.to_bytes`), atomically."""
    import flax.serialization

    from adjax import files

    data = flax.serialization.to_bytes(variables)
    return files.write_with(path, lambda f: f.write(data), binary=True)


def merge(tree: Any, partial: Mapping[str, Any]) -> Any:
    """`tree` (a nested dict of arrays) with the leaves present in `partial` replaced."""
    if not isinstance(partial, Mapping):
        return partial
    return {k: merge(v, partial[k]) if k in partial else v for k, v in tree.items()}


def _numbered(names, prefix: str) -> list[str]:
    """`names` that are `prefix` + an integer, in the integer's order (Flax's auto-names)."""
    return sorted((n for n in names if n.startswith(prefix)
                   and n[len(prefix):].isdigit()), key=lambda n: int(n[len(prefix):]))


def convs_from_torch(state_dict: Mapping[str, np.ndarray], like: Any,
                     prefixes: Sequence[str], what: str) -> Any:
    """Variables of a module built of `adjax.nn.layers.Conv2d` layers only (auto-named
    `Conv2d_0`, `Conv2d_1`, ...), shaped as `like`, from the state-dict entries
    `<prefix>.weight` / `<prefix>.bias` of `prefixes` (one per conv, in order). Every entry of
    the state dict must be used."""
    modules = _numbered(like["params"], "Conv2d_")
    if len(modules) != len(prefixes):
        raise WeightsError(f"the {what} has {len(modules)} convolutions where the state dict's "
                           f"naming gives {len(prefixes)}.")
    mapper = Mapper(like, what)
    for module, prefix in zip(modules, prefixes, strict=True):
        for torch_name, flax_name, axes in (("weight", "kernel", CONV_AXES), ("bias", "bias",
                                                                              None)):
            key = f"{prefix}.{torch_name}"
            if key not in state_dict:
                raise WeightsError(f"the state dict has no entry {key} for the {what}.")
            mapper.put(("params", module, "conv", flax_name), state_dict[key], key, axes)
    used = set(mapper.source.values())
    extra = next((k for k in state_dict if k not in used), None)
    if extra is not None:
        raise WeightsError(f"state-dict entry {extra} has no counterpart in the {what}.")
    return mapper.result()


def pdn_from_torch(state_dict: Mapping[str, np.ndarray], like: Any, size: str) -> Any:
    """Variables of `adjax.models.pdn.PDN(size)` (shaped as `like`) from a published teacher:
    the reference code's `nn.Sequential` (`teacher_small.pth`: `0.weight`, `3.weight`, ...) or
    anomalib's named layers (`pretrained_teacher_small.pth`: `conv1.weight`, ...)."""
    from adjax.models.pdn import LAYERS

    layers = LAYERS[size]
    n_convs = sum(kind == "conv" for kind, *_ in layers)
    if "conv1.weight" in state_dict:
        prefixes = [f"conv{i + 1}" for i in range(n_convs)]
    else:  # nn.Sequential: each conv, then its ReLU, then any pooling, count one index each
        prefixes, index = [], 0
        for kind, _, _, _, relu in layers:
            if kind == "conv":
                prefixes.append(str(index))
            index += 1 + (kind == "conv" and relu)
    return convs_from_torch(state_dict, like, prefixes, f"PDN-{size.upper()}")


def vgg_from_torch(state_dict: Mapping[str, np.ndarray], like: Any) -> Any:
    """Variables of `adjax.nn.vgg.VGGFeatures` (shaped as `like`) from a torchvision VGG state
    dict: the `features.<i>.weight/bias` entries of the layers `like` holds. The classifier and
    the layers a truncated trunk does not build are not used; any other entry stops."""
    mapper = Mapper(like, "VGG features")
    built = {int(name.removeprefix("features_")) for name in like["params"]}
    for name in like["params"]:
        index = name.removeprefix("features_")
        for torch_name, flax_name in (("weight", "kernel"), ("bias", "bias")):
            key = f"features.{index}.{torch_name}"
            if key not in state_dict:
                raise WeightsError(f"the VGG state dict has no entry {key}.")
            mapper.put(("params", name, flax_name), state_dict[key], key,
                       CONV_AXES if torch_name == "weight" else None)
    for key in state_dict:
        parts = key.split(".")
        deeper = parts[0] == "features" and parts[1].isdigit() and int(parts[1]) > max(built)
        if parts[0] != "classifier" and not deeper and key not in mapper.source.values():
            raise WeightsError(f"state-dict entry {key} has no counterpart in the VGG features.")
    return mapper.result()


def lpips_from_torch(trunk: Mapping[str, np.ndarray], lin: Mapping[str, np.ndarray],
                     like: Any) -> Any:
    """Variables of `adjax.nn.lpips.LPIPS` (shaped as `like`) from torchvision's AlexNet state
    dict `trunk` (`features.*`; the classifier is not used) and the `lpips` package's linear
    layers `lin` (`weights/v0.1/alex.pth`: `lin<i>.model.1.weight`, [1, C, 1, 1])."""
    return {"params": {"trunk": _lpips_trunk(trunk, like), **_lpips_lins(lin, like)}}


def _lpips_trunk(state_dict: Mapping[str, np.ndarray], like: Any) -> Any:
    from adjax.nn.lpips import ALEXNET

    features = {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}
    return convs_from_torch(features, {"params": like["params"]["trunk"]},
                            [f"features.{layer[4]}" for layer in ALEXNET],
                            "AlexNet trunk of LPIPS")["params"]


def _lpips_lins(state_dict: Mapping[str, np.ndarray], like: Any) -> Any:
    lins = {k: v for k, v in like["params"].items() if k != "trunk"}
    mapper = Mapper({"params": lins}, "LPIPS-AlexNet linear layers")
    for name in lins:
        key = f"{name}.model.1.weight"
        if key not in state_dict:
            raise WeightsError(f"the state dict has no entry {key} for the LPIPS-AlexNet linear "
                               f"layers.")
        mapper.put(("params", name), np.reshape(state_dict[key], (-1,)), key)
    extra = next((k for k in state_dict if k not in mapper.source.values()), None)
    if extra is not None:
        raise WeightsError(f"state-dict entry {extra} has no counterpart in the LPIPS-AlexNet "
                           f"linear layers.")
    return mapper.result()["params"]


def load_lpips(trunk_path: str | pathlib.Path, lin_path: str | pathlib.Path, like: Any) -> Any:
    """`lpips_from_torch` of two files; a file of another network (the SqueezeNet or VGG
    variant's linear layers, another trunk) stops with one sentence naming it."""
    out = {}
    for part, path, convert in (("trunk", trunk_path, _lpips_trunk),
                                ("lins", lin_path, _lpips_lins)):
        try:
            out[part] = convert(read_state_dict(path), like)
        except WeightsError as err:
            raise WeightsError(f"weights file {path} does not fit LPIPS-AlexNet "
                               f"({_first_line(err)}).") from err
    return {"params": {"trunk": out["trunk"], **out["lins"]}}


def _unbuilt_stage(path: Sequence[str], built: set[str]) -> bool:
    """Whether `path` (a state-dict key split at dots, or a Flax leaf path) lies in a ResNet
    stage `layer1`..`layer4` that a truncated trunk does not build (a stage no ResNet has,
    e.g. `layer9`, is not excused)."""
    from adjax.nn.resnet import LAYERS

    stage = next((p.split("_")[0] for p in path[:2] if p.startswith("layer")), None)
    return stage in LAYERS and stage not in built


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
        if parts[0] == "fc" or parts[-1] == "num_batches_tracked" or _unbuilt_stage(parts,
                                                                                     built):
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


# -- kinds: what `adjax weights import` converts ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of published weights: the Flax module they fill and how.

    Attributes:
      module: builds the Flax module (full size, as published).
      convert: (state dict, like) -> variables.
      side: input side used to trace the module's shapes.
    """

    module: Callable[[], Any]
    convert: Callable[[Mapping[str, np.ndarray], Any], Any]
    side: int = 64


def _pdn(size: str) -> Kind:
    from adjax.models.pdn import PDN

    return Kind(lambda: PDN(size, 384), lambda sd, like: pdn_from_torch(sd, like, size), 64)


def _resnet(depth: int, width_per_group: int = 64) -> Kind:
    from adjax.nn.resnet import ResNet

    return Kind(lambda: ResNet(depth, width_per_group=width_per_group), resnet_from_torch)


def _vgg(config_name: str) -> Kind:
    from adjax.nn import vgg

    config = getattr(vgg, config_name)
    return Kind(lambda: vgg.VGGFeatures(vgg.feature_depth(config), config), vgg_from_torch, 32)


KINDS: dict[str, Callable[[], Kind]] = {
    "efficientad_teacher_s": lambda: _pdn("s"),
    "efficientad_teacher_m": lambda: _pdn("m"),
    "resnet18": lambda: _resnet(18),
    "resnet50": lambda: _resnet(50),
    "wide_resnet50_2": lambda: _resnet(50, 128),
    "wide_resnet101_2": lambda: _resnet(101, 128),
    "vgg16": lambda: _vgg("VGG16"),
    "vgg19": lambda: _vgg("VGG19"),
}


def kind(name: str) -> Kind:
    """The `Kind` called `name`; one sentence listing the kinds when it is unknown."""
    if name not in KINDS:
        raise WeightsError(f"--kind {name!r} is not one of {', '.join(KINDS)}.")
    return KINDS[name]()


def shapes(name: str) -> Any:
    """The variables (shape structs) of the full-size module of kind `name`."""
    import jax
    import jax.numpy as jnp

    k = kind(name)
    x = jax.ShapeDtypeStruct((1, k.side, k.side, 3), jnp.float32)
    return jax.eval_shape(k.module().init, jax.random.key(0), x)


def load(path: str | pathlib.Path, name: str, like: Any, what: str) -> Any:
    """Variables of kind `name` shaped as `like`, from a PyTorch file of that kind
    (`.pth`/`.pt`/`.bin`, `.safetensors`, `.npz`) or from the Flax msgpack `adjax weights
    import` wrote; `what` names the setting in errors. Stages of a ResNet that `like` (a
    truncated trunk) does not build are not needed from either."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{what} file {file} does not exist.")
    if file.suffix.lower() in STATE_DICT_SUFFIXES:
        return kind(name).convert(read_state_dict(file), like)
    built = {n.split("_")[0] for n in like.get("params", {}) if n.startswith("layer")}
    resnet = name.startswith(("resnet", "wide_resnet"))
    return read_flax(file, like, what, skip=lambda p: resnet and _unbuilt_stage(p[1:], built))


def import_file(source: str | pathlib.Path, name: str) -> Any:
    """The full-size variables of kind `name` converted from the PyTorch file `source`."""
    return kind(name).convert(read_state_dict(source), shapes(name))
