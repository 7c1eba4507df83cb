"""Seed 002's per-view masks, shared by DRAEM and DDAD: a PNG at the training size whose
non-zero pixels are the part of a camera view to inspect, applied before the map is made
("pre": input and reconstruction masked) or after ("post": the map zeroed outside)."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

MASK_TIMINGS = ("pre", "post")


def read_view_mask(path: str, image_size: int) -> np.ndarray:
    """float32 [S, S] in {0, 1}: the view mask `path` (non-zero = keep); one sentence naming
    the file when it cannot be read or its size is not the view's training size."""
    file = pathlib.Path(path)
    try:
        with Image.open(file) as img:
            mask = np.asarray(img.convert("L"))
    except (OSError, ValueError, SyntaxError) as err:
        raise ValueError(f"view mask {file} cannot be read as an image ({err}).") from err
    if mask.shape != (image_size, image_size):
        raise ValueError(f"view mask {file} is {mask.shape[1]}x{mask.shape[0]}, but the view's "
                         f"images are {image_size}x{image_size} (config.data.image_size); "
                         f"resize the mask to that size.")
    return (mask > 0).astype(np.float32)


def batch_mask(mask: np.ndarray | None, images: jax.Array) -> jax.Array | None:
    """The view mask broadcast to the batch's [B, H, W], or None without one."""
    return None if mask is None else jnp.broadcast_to(jnp.asarray(mask), images.shape[:3])
