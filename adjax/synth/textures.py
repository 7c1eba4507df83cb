"""Anomaly textures for DRAEM's synthesis: a user's image folder (DTD), or procedural ones.

Both are uint8 [N, S, S, 3] arrays that the trainer keeps on the device as an extra pool
(`Method.extra_pools`), so that every step draws its textures there. The reference reads
`<dtd>/images/*/*.jpg`; `load_textures` takes every image file under the folder, at any depth
(so `dtd/images` and a flat folder both work), decoded and resized once by the data loader
(with its `.npz` cache).

Without a folder, `procedural_textures` draws a fixed set of textures on the host from a seed:
two random colours mixed by a sum of three random gratings (orientation, frequency 1-24 cycles
per image, phase), half of them thresholded into hard-edged stripes and checks, a quarter of
one colour only, plus pixel noise. They are not DTD: results with them are not the paper's,
and a run's record says which source it used.
"""

import os
import pathlib

import numpy as np

from adjax.data.layouts import IMAGE_EXTENSIONS, DataError, Sample
from adjax.data.loading import load_split


def texture_files(folder: str | os.PathLike) -> list[pathlib.Path]:
    """Every image file under `folder` (any depth), sorted; one sentence naming the folder when
    it is missing or holds none."""
    root = pathlib.Path(folder)
    if not root.is_dir():
        raise DataError(f"texture folder {root} does not exist.")
    found = sorted(p for p in root.rglob("*")
                   if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not found:
        raise DataError(f"texture folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)}) "
                        f"at any depth; point config.synth.textures at DTD's images/ folder.")
    return found


def load_textures(folder: str | os.PathLike, image_size: int,
                  cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """uint8 [N, S, S, 3]: the images under `folder`, decoded and resized to S x S."""
    samples = [Sample(image=p, mask=None, label=0, defect="good") for p in texture_files(folder)]
    return load_split(samples, image_size, cache_dir).images


def procedural_textures(count: int, image_size: int, seed: int = 0) -> np.ndarray:
    """uint8 [count, S, S, 3] procedural textures (module docstring), the same for a seed."""
    rng = np.random.default_rng(seed)
    grid = np.arange(image_size, dtype=np.float32) / image_size
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    out = np.empty((count, image_size, image_size, 3), np.uint8)
    for i in range(count):
        pattern = np.zeros_like(yy)
        for _ in range(3):
            angle = rng.uniform(0, np.pi)
            cycles = rng.uniform(1.0, 24.0)
            pattern += np.sin(2 * np.pi * cycles * (np.cos(angle) * xx + np.sin(angle) * yy)
                              + rng.uniform(0, 2 * np.pi))
        pattern = (pattern - pattern.min()) / max(float(np.ptp(pattern)), 1e-6)
        if rng.random() < 0.5:
            pattern = (pattern > rng.uniform(0.3, 0.7)).astype(np.float32)
        colours = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        if rng.random() < 0.25:  # one colour: flat fills (the stains and cavities of real data)
            colours[1] = colours[0]
        image = colours[0] * (1 - pattern[..., None]) + colours[1] * pattern[..., None]
        image += rng.normal(0, rng.uniform(0, 20), image.shape)
        out[i] = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return out
