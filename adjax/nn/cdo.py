"""The collaborative discrepancy optimisation (CDO) loss (Cao et al., IEEE TII 2023; Eq. 4.9 of
the seed-004 thesis; caoyunkang/CDO `models/CDO.py`).

Features are L2-normalised along the channels, d = sum_c (t - s)^2 per location. Normal
locations (mask 0) are weighted by (d / mean_N d)^gamma, synthetic-anomaly locations (mask 1)
by (mean_A d / d)^gamma, both under stop-gradient, with the means over the whole batch:

    L = (sum_N w d - sum_A w d) / (sum_N w + sum_A w)

so the student is pulled towards the teacher where the image is normal, hardest where it is
farthest, and pushed away where a patch was pasted. A batch without any anomalous location
(60 % of the images carry no patch) keeps only the normal term.
"""

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps) along the last axis (PyTorch's `F.normalize`)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def discrepancy(teacher: jax.Array, student: jax.Array) -> jax.Array:
    """[..., C] features -> [...] squared distance of their L2-normalised vectors (Eq. 4.5)."""
    return jnp.sum((l2_normalize(teacher) - l2_normalize(student)) ** 2, axis=-1)


def cdo_loss(teacher: jax.Array, student: jax.Array, mask: jax.Array, gamma: float = 2.0,
             batch_scale: bool = False) -> jax.Array:
    """Eq. 4.9 over [B, h, w, C] features and a [B, h, w] anomaly mask at the feature grid.

    `batch_scale` multiplies by the batch size as the CDO code does (the thesis's equation does
    not; at EfficientAD's batch 1 they agree)."""
    d = discrepancy(teacher.astype(jnp.float32), student.astype(jnp.float32))
    anomalous = mask.astype(bool)
    normal = ~anomalous

    def mean(where):
        return jnp.sum(jnp.where(where, d, 0.0)) / jnp.maximum(jnp.sum(where), 1)

    mean_n, mean_a = jax.lax.stop_gradient((mean(normal), mean(anomalous)))
    safe = jax.lax.stop_gradient(jnp.maximum(d, 1e-12))
    w_n = jnp.where(normal, (safe / jnp.maximum(mean_n, 1e-12)) ** gamma, 0.0)
    w_a = jnp.where(anomalous, (mean_a / safe) ** gamma, 0.0)
    loss = (jnp.sum(w_n * d) - jnp.sum(w_a * d)) / jnp.maximum(jnp.sum(w_n) + jnp.sum(w_a),
                                                                 1e-12)
    return loss * d.shape[0] if batch_scale else loss
