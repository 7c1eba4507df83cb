"""What every method shares: the train-state fields, the gradient-and-optimiser step, PyTorch's
Adam with L2 weight decay, parameter counts, and the no-op defaults of the Method contract.

A method is a frozen dataclass deriving from `MethodBase`, its state a `TrainState` subclass
that adds the method's own fields (frozen nets, statistics, BatchNorm averages):

    class State(TrainState):
        teacher: Any

    @dataclasses.dataclass(frozen=True, eq=False)
    class MyMethod(MethodBase):
        def init(self, rng, train, weights=None):
            params = jax.jit(self.net.init)(rng, sample)
            return self.new_state(State, params, teacher=...)

        def train_step(self, state, batch, rng):
            return self.gradient_step(state, loss_fn)   # loss_fn(params) -> (loss, metrics)
"""

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import parameter_overview

from adjax.config import ConfigError
from adjax.nn.resnet import BACKBONES
from adjax.nn.ssim import ssim


class TrainState(flax.struct.PyTreeNode):
    """The fields every method's state has: the step counter, what the optimiser trains, and the
    optimiser's state. Subclasses add their own fields after these."""

    step: jax.Array
    params: Any
    opt_state: Any


def adam_l2(learning_rate: float | optax.Schedule,
            weight_decay: float = 0.0) -> optax.GradientTransformation:
    """`torch.optim.Adam(lr, weight_decay=wd)`: the decay is an L2 term added to the gradient
    before Adam's moments (not AdamW's decoupled decay)."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))


def count_params(tree: Any) -> int:
    """The number of scalars in a pytree of arrays (or of shape structs)."""
    return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree.leaves(tree)))


def map_batches(fn: Callable[[jax.Array], Any], images: Any, batch_size: int, *,
                to_host: bool = False) -> Any:
    """`fn` (a jitted function of a [batch_size, ...] array whose outputs lead with the batch)
    over `images` in fixed-size batches, outputs concatenated: one compile for any number of
    images (the last batch is padded by repeating its last image). With `to_host` each batch's
    outputs are moved to the host as numpy arrays at once (large test sets)."""
    n = images.shape[0]
    batch_size = max(1, min(batch_size, n))
    outputs = []
    for start in range(0, n, batch_size):
        index = np.minimum(np.arange(start, start + batch_size), n - 1)
        keep = min(batch_size, n - start)
        out = jax.tree.map(lambda a, k=keep: a[:k], fn(images[index]))
        outputs.append(jax.tree.map(np.asarray, out) if to_host else out)
    concat = np.concatenate if to_host else jnp.concatenate
    return jax.tree.map(lambda *parts: concat(parts), *outputs)


def reconstruction_errors(x: jax.Array, recon: jax.Array, name: str) -> dict[str, jax.Array]:
    """Seed 001's reconstruction metrics of [B, H, W, C] images in [0, 1], per image [B]:
    `<name>_l1` and `<name>_mse` (means over pixels and channels) and `<name>_ssim` (the mean
    local SSIM with an 11x11 Gaussian window, sigma 1.5, over the windows inside the image,
    as scikit-image's `structural_similarity` with `gaussian_weights=True`)."""
    x, recon = x.astype(jnp.float32), recon.astype(jnp.float32)
    return {f"{name}_l1": jnp.mean(jnp.abs(recon - x), axis=(1, 2, 3)),
            f"{name}_mse": jnp.mean((recon - x) ** 2, axis=(1, 2, 3)),
            f"{name}_ssim": ssim(x, recon)}


def two_phase_step(in_first: jax.Array, first: Callable, second: Callable, *args: Any) -> Any:
    """`first(*args)` while `in_first` (a traced boolean, e.g. `state.step < n`), else
    `second(*args)`: one compiled training step for a method trained in two phases. On
    accelerators one `lax.cond` runs the phase's step. XLA:CPU runs the branches of a
    conditional several times slower than the same computation at the top level (DDAD's quick
    step: 4.2 s under `lax.cond` against 0.74 s + 0.66 s for the two phases' steps, on the shared
    2-core machine), so on a CPU both are computed and the phase's result is kept."""
    if jax.default_backend() == "cpu":
        both = first(*args), second(*args)
        return jax.tree.map(lambda a, b: jnp.where(in_first, a, b), *both)
    return jax.lax.cond(in_first, first, second, *args)


def parameter_table(params: Any) -> str:
    """clu's table of every parameter (name, shape, size) with the total, as text."""
    return parameter_overview.get_parameter_overview(params, include_stats=False)


@dataclasses.dataclass(frozen=True, eq=False)
class MethodBase:
    """Defaults shared by the methods; see `adjax.methods` for the contract they implement."""

    config: ml_collections.ConfigDict
    # False for a method whose data all stream from the host (`host_stream`): the trainer then
    # loads no training, validation or test split and does not calibrate.
    trains_on_splits: ClassVar[bool] = True
    # True for a supervised method: its training batches carry "mask" (uint8 [B, H, W]).
    trains_on_masks: ClassVar[bool] = False

    def require_masked_training_data(self, what: str) -> None:
        """For a supervised method (`trains_on_masks`), called when it is built: one sentence
        naming both keys unless `config.data` gives `what` anomalous training images with masks
        (`supervised_fraction` > 0 or `labelled_train`)."""
        data = self.config.data
        if data.get("supervised_fraction", 0.0) or data.get("labelled_train", False):
            return
        raise ConfigError(f"{what} needs anomalous training images with masks, but "
                          f"config.data.supervised_fraction is 0 and config.data.labelled_train "
                          f"is false: set supervised_fraction (e.g. 0.5) to move that share of "
                          f"each defect's anomalous test images into training, or "
                          f"labelled_train=true to train on the train/<defect> folders with "
                          f"their masks in ground_truth/<defect>.")

    @property
    def tx(self) -> optax.GradientTransformation:
        """Adam with L2 weight decay from `config.optim` (lr, weight_decay)."""
        o = self.config.optim
        return adam_l2(o.lr, o.get("weight_decay", 0.0))

    def new_state(self, cls: type[TrainState], params: Any, **fields: Any) -> TrainState:
        """A state at step 0 with the optimiser initialised on `params`."""
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params),
                   **fields)

    def gradient_step(self, state: TrainState, loss_fn) -> tuple[TrainState, Any]:
        """One optimiser step on `loss_fn(params) -> (loss, aux)`; returns (state, aux)."""
        grads, aux = jax.grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        return state.replace(params=optax.apply_updates(state.params, updates),
                             opt_state=opt_state), aux

    def pretrained(self) -> Any:
        """Pretrained weights the method needs, read on the host once (by the trainer, before
        `init`), as a pytree of numpy arrays; None when it needs none."""
        return None

    def calibrate(self, state: TrainState, val: dict[str, jax.Array]) -> TrainState:
        """Statistics on held-out normal images; none by default."""
        del val
        return state

    def extra_pools(self) -> dict[str, np.ndarray]:
        """Further image sets kept on the device; none by default."""
        return {}

    def host_stream(self, start_step: int) -> Iterator[dict[str, np.ndarray]] | None:
        """Batches of data too large for the device, read on the host, for steps
        `start_step`, `start_step + 1`, ... (deterministic in the step, for resuming); an
        iterator with `close()`. None (the default): no stream."""
        del start_step
        return None

    def param_groups(self, state: TrainState) -> dict[str, Any]:
        """The nets whose parameters a record counts, by name (default: the top-level entries
        of `state.params`)."""
        return dict(state.params)

    def describe(self, state: TrainState) -> dict[str, Any]:
        """Facts a results record carries: `params` (count per net) and, in subclasses, the
        weights used and the variant's choices."""
        return {"params": {name: count_params(tree)
                           for name, tree in self.param_groups(state).items()}}


def backbone_kind(block: ml_collections.ConfigDict, key: str) -> str:
    """torchvision's name of the ResNet that config block `key` describes by its `depth` and
    `width_per_group`; one sentence naming the keys when it is none of them."""
    kind = BACKBONES.get((block.depth, block.width_per_group))
    if kind is None:
        raise ConfigError(f"config.{key}.depth and width_per_group must name one of "
                          f"{', '.join(BACKBONES.values())}, got {block.depth} and "
                          f"{block.width_per_group}.")
    return kind
