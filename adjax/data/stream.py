"""Images too many for the device (ImageNet, for EfficientAD's teacher distillation), streamed
from the host through grain: decoded and resized in worker processes, prefetched.

The stream is a pure function of (files, seed, step): grain's `MapDataset` shuffles the file
list anew each epoch from the seed, and batch i of the stream is always the same images, so a
run resumed at step s reads on from batch s exactly as an uninterrupted run does. Each image is
converted to RGB and resized (bilinear, as torchvision's `Resize` on PIL images) to every side
asked for, all from the decoded original.
"""

import functools
import os
import pathlib
from collections.abc import Iterator, Mapping

import numpy as np
from PIL import Image

from adjax.data.layouts import IMAGE_EXTENSIONS, DataError


def image_files(folder: str | os.PathLike, what: str = "image folder") -> list[str]:
    """Every image file under `folder` (recursively, ImageNet's `train/<wnid>/*.JPEG`), sorted;
    a missing folder or one without images stops with one sentence naming it."""
    root = pathlib.Path(folder)
    if not root.is_dir():
        raise DataError(f"{what} {root} does not exist or is not a folder")
    found = sorted(os.path.join(d, name) for d, _, names in os.walk(root) for name in names
                   if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."))
    if not found:
        raise DataError(f"{what} {root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return found


def decode(path: str, sides: Mapping[str, int]) -> dict[str, np.ndarray]:
    """One image file -> {name: uint8 [side, side, 3]} for each (name, side) of `sides`."""
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"could not decode image {path}: {err}") from err
    return {name: np.asarray(rgb.resize((side, side), Image.BILINEAR), np.uint8)
            for name, side in sides.items()}


def batches(files: list[str], sides: Mapping[str, int], batch_size: int, seed: int,
            start: int = 0, workers: int = 8) -> Iterator[dict[str, np.ndarray]]:
    """Endless batches {name: uint8 [batch_size, side, side, 3]} of `files` in an epoch-wise
    shuffled order drawn from `seed`, from batch `start` on; `workers` decoding processes (0:
    decode in this process)."""
    import grain
    from absl import flags

    if not flags.FLAGS.is_parsed():
        # grain's worker processes read their settings from absl flags, which only the command
        # line parses; a library caller gets their defaults.
        flags.FLAGS.mark_as_parsed()
    dataset = (grain.MapDataset.source(files).shuffle(seed=seed).repeat(None)
               .map(functools.partial(decode, sides=dict(sides))).batch(batch_size))[start:]
    stream = dataset.to_iter_dataset()
    if workers:
        stream = stream.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return iter(stream)
