"""The focal loss (Lin et al. 2017) as DRAEM's reference computes it.

VitjanZ/DRAEM `loss.py` (after Hsuxu/Loss_ToolBox) applies it to softmax probabilities, not to
logits: the one-hot target is clamped to [smooth / (C - 1), 1 - smooth], p_t = <target, p> +
smooth, and the loss is -alpha (1 - p_t)^gamma log(p_t), averaged over every pixel of the batch
(alpha = 1 for every class: the reference's `alpha=None`).
"""

import jax
import jax.numpy as jnp


def focal_loss(probs: jax.Array, target: jax.Array, gamma: float = 2.0,
               smooth: float = 1e-5) -> jax.Array:
    """Mean focal loss of [..., C] class probabilities against integer-valued `target` [...]."""
    classes = probs.shape[-1]
    one_hot = jax.nn.one_hot(target.astype(jnp.int32), classes, dtype=jnp.float32)
    if smooth:
        one_hot = jnp.clip(one_hot, smooth / (classes - 1), 1.0 - smooth)
    pt = jnp.sum(one_hot * probs.astype(jnp.float32), axis=-1) + smooth
    return jnp.mean(-((1.0 - pt) ** gamma) * jnp.log(pt))
