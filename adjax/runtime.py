"""What training and benchmarking share: the device mesh, the pools kept on the device, and the
compiled chunk of training steps.

The training split lives on the device as one uint8 array (a "pool"); each step draws its batch
by an epoch-wise permutation of the pool, as a shuffling data loader does: within an epoch every
image is drawn exactly once. `steps_per_call` steps form one compiled chunk: a `lax.scan` or a
host loop over one compiled step (`config.train.loop`). The batch is sharded over a `data` mesh
axis and the state replicated. Each step's randomness is derived from the run's key and the step
number only, so a run resumed from a checkpoint ends exactly where an uninterrupted run does.

Data too large for the device (ImageNet) streams from the host instead (`Method.host_stream`):
the trainer stacks `steps_per_call` of its batches into a "feed" ([steps, batch, ...], the
batch sharded) and the chunk gives step i the feed's i-th batch beside what it draws from the
pools.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from adjax.config import LOOPS

Pools = dict[str, dict[str, jax.Array]]


def is_primary() -> bool:
    """Whether this process writes a run's files (process 0 of a multi-host program; the
    others compute the same and write nothing, orbax's checkpoints aside)."""
    return jax.process_index() == 0


def make_mesh(batch_size: int, devices: Sequence[jax.Device] | None = None,
              log: Callable[[str], None] = print) -> jax.sharding.Mesh:
    """A 1-D `data` mesh over the most devices that divide the global batch evenly."""
    devices = list(devices or jax.devices())
    n = max(d for d in range(1, len(devices) + 1) if batch_size % d == 0)
    if n < len(devices):
        log(f"adjax: batch {batch_size} is split over {n} of {len(devices)} devices "
            f"(the batch must divide evenly).")
    return jax.sharding.Mesh(np.asarray(devices[:n]), ("data",))


def put_global(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Places a host array identical on every process onto `sharding` (works multi-host)."""
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def place_pools(train: Mapping[str, np.ndarray], extra: Mapping[str, np.ndarray],
                mesh: jax.sharding.Mesh) -> Pools:
    """The pools the chunk samples from, replicated on the mesh: the training split
    (`{"image", "label"}`) under "train", and each extra pool `name` as `{name: images}`."""
    replicated = NamedSharding(mesh, P())
    pools = {"train": {k: put_global(np.asarray(v), replicated) for k, v in train.items()}}
    pools = pools if train else {}  # a method that streams its data has no training split
    pools |= {k: {k: put_global(v, replicated)} for k, v in extra.items()}
    return pools


def feed(stream: Any, length: int, mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """The next `length` host batches of `stream` stacked into [length, batch, ...] arrays on
    the mesh, each step's batch split over the `data` axis."""
    batches = [next(stream) for _ in range(length)]
    sharding = NamedSharding(mesh, P(None, "data"))
    return {k: put_global(np.stack([b[k] for b in batches]), sharding) for k in batches[0]}


def resolve_loop(loop: str, platform: str) -> str:
    """`scan` or `host` for `config.train.loop` on `platform` (auto: host on CPU, else scan).

    On CPU, XLA runs convolutions inside a loop body several times slower than at the top level
    (measured: 5.5 s against 0.6 s for one EfficientAD step), so `auto` picks the host loop there.
    """
    if loop not in LOOPS:
        raise ValueError(f"config.train.loop {loop!r} is not one of {', '.join(LOOPS)}.")
    if loop == "auto":
        return "host" if platform == "cpu" else "scan"
    return loop


def epoch_indices(key: jax.Array, step: jax.Array, batch: int, n: jax.Array | int,
                  size: int | None = None) -> jax.Array:
    """The pool indices of the batch at `step`: positions `step * batch + i` of an endless
    sequence of permutations of `range(n)`, one permutation per epoch, drawn from `key`.

    `n` may be traced when the pool is padded to `size` rows (runs of a matrix). Image i's place
    in an epoch is the rank of a uniform draw keyed by (key, epoch, i) alone, so the order of
    the first n images does not depend on the padding: a run in a matrix draws the batches it
    draws alone.
    """
    size = n if size is None else size
    pos = step * batch + jnp.arange(batch)
    epoch, within = pos // n, pos % n
    rows = jnp.arange(size)

    def index(e, w):
        k = jax.random.fold_in(key, e)
        u = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(k, i)))(rows)
        return jnp.argsort(jnp.where(rows < n, u, jnp.inf), stable=True)[w]

    return jax.vmap(index)(epoch, within)


def _sample(pool: dict[str, jax.Array], key: jax.Array, step: jax.Array,
            batch: int) -> dict[str, jax.Array]:
    """A batch of a pool's aligned arrays; a pool padded for a matrix run carries its true
    size as "length"."""
    arrays = {name: a for name, a in pool.items() if name != "length"}
    size = jax.tree.leaves(arrays)[0].shape[0]
    indices = epoch_indices(key, step, batch, pool.get("length", size), size)
    return {name: array[indices] for name, array in arrays.items()}


def make_chunk(method: Any, config: Any, batch_sharding: NamedSharding | None,
               length: int, runs: int = 0) -> Callable:
    """The function that runs `length` steps: (state, pools, key, feed=None, on_step=None) ->
    (state, metrics), the metrics of every step stacked ([length] per name); `feed` holds the
    host-streamed batches of the `length` steps (see `feed`), or None.

    Each step's batch holds `batch_size` samples of every pool. With `runs > 0` the state, the
    "train" pool (padded, with its "length") and the key carry a leading run axis and the step
    is vmapped over it (a benchmark matrix in one program; metrics [length, runs]; no feed); the
    batch is then not sharded (`batch_sharding` None: the run axis is). `chunk.compiled` is the
    jitted function XLA compiles (the scanned chunk, or the one step of the host loop), for
    compile-time measurements; `chunk.per_step` says whether `on_step(step, metrics)` is called
    after each step (the host loop) or never (one compiled scan).
    """
    batch_size = config.train.batch_size

    def one_step(state, pools, key, streamed=None):
        # The permutation key depends on the run's key and the pool only: epochs are drawn
        # without replacement. Augmentation and dropout get a key of their own per step.
        k_data, k_step = jax.random.split(key)
        batch = dict(streamed or {})
        for i, (_, pool) in enumerate(sorted(pools.items())):
            batch |= _sample(pool, jax.random.fold_in(k_data, i), state.step, batch_size)
        if batch_sharding is not None:
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        state, metrics = method.train_step(state, batch, jax.random.fold_in(k_step, state.step))
        return state.replace(step=state.step + 1), metrics

    if runs:
        single = one_step

        def one_step(state, pools, key, streamed=None):
            axes = {name: 0 if name == "train" else None for name in pools}
            return jax.vmap(single, in_axes=(0, axes, 0))(state, pools, key)

    platform = jax.devices()[0].platform if batch_sharding is None else \
        batch_sharding.mesh.devices.flat[0].platform
    if resolve_loop(config.train.get("loop", "auto"), platform) == "host":
        step = jax.jit(one_step, donate_argnums=0)

        def host_loop(state, pools, key, feed=None, on_step=None):
            history = []
            first = int(jnp.ravel(state.step)[0])
            for i in range(length):
                streamed = None if feed is None else {k: v[i] for k, v in feed.items()}
                state, metrics = step(state, pools, key, streamed)
                history.append(metrics)
                if on_step is not None:
                    on_step(first + i + 1, metrics)
            return state, jax.tree.map(lambda *m: jnp.stack(m), *history)

        host_loop.compiled, host_loop.per_step = step, True
        return host_loop

    def scanned(state, pools, key, feed=None):
        return jax.lax.scan(lambda s, x: one_step(s, pools, key, x), state, xs=feed,
                            length=length)

    jitted = jax.jit(scanned, donate_argnums=0)

    def chunk(state, pools, key, feed=None, on_step=None):
        del on_step  # the steps run inside one compiled call
        return jitted(state, pools, key, feed)

    chunk.compiled, chunk.per_step = jitted, False
    return chunk
