"""DRAEM's simulated anomalies, drawn on the device inside the compiled training step.

`synthesize(key, images, textures, spec)` turns a batch of normal images into DRAEM's training
triple, one key per image under `jax.vmap`. Per image, as the reference's
`MVTecDRAEMTrainDataset` (VitjanZ/DRAEM `data_loader.py`), with the theses' additions:

1. With p = `rotate_p` (0.3) the image is rotated by U(-rotate_degrees, rotate_degrees) (90);
   the rotated image is also the reconstruction target.
2. One of three paths, with probabilities `p_clean` (0.5), 1 - p_clean - p_cutout, `p_cutout`
   (0; seed 002 adds this path): the image left normal with an empty mask; a Perlin-noise mask
   (`adjax.synth.perlin`) filled with an augmented texture (3 of the 10 augmenters of
   `adjax.synth.augmenters`); or a white rectangle, each side U(cutout_size) of the image's,
   placed uniformly inside it, that is its own mask (seed 002 §2.2: "feasible size", not given;
   the default (0.1, 0.3) is an assumption).
3. `focused` (seed 000's "Focused" augmentation): the mask is cleared where the image is blank
   (every channel exactly 0, rotated corners included).
4. The blend inside the mask: I_a = I (1 - M) + M (o A + (1 - o) I), o the texture's opacity
   (1 for the white rectangle). `blend` "code": o = 1 - 0.8 U[0, 1), in (0.2, 1] (the code's
   beta = 0.8 U, I_a = I (1 - M) + (1 - beta) A M + beta I M); "thesis": o ~ U[0.1, 1.0]
   (seed 002, eq. 6).

The label is 1 where the mask has any pixel (the reference: has_anomaly = 0 when the Perlin
mask happens to be empty).
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from adjax.synth.augmenters import augment, rotate
from adjax.synth.perlin import perlin_mask

LOOPS = ("map", "vmap")
# Texture opacity ranges [low, high) of the blend; see the module docstring.
BLENDS = {"code": (0.2, 1.0), "thesis": (0.1, 1.0)}


@dataclasses.dataclass(frozen=True)
class Spec:
    """The synthesis's choices (the `config.synth` block; defaults: the reference code)."""

    p_clean: float = 0.5
    p_cutout: float = 0.0
    rotate_p: float = 0.3
    rotate_degrees: float = 90.0
    min_scale: int = 0
    max_scale: int = 6            # exclusive: scales 2^0 .. 2^5
    noise_rotate: float = 90.0
    threshold: tuple[float, float] = (0.5, 0.5)
    augmenters: int = 3
    blend: str = "code"
    focused: bool = False
    cutout_size: tuple[float, float] = (0.1, 0.3)

    def __post_init__(self):
        if self.blend not in BLENDS:
            raise ValueError(f"config.synth.blend must be one of {', '.join(BLENDS)}, got "
                             f"{self.blend!r}.")
        for key in ("p_clean", "p_cutout", "rotate_p"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"config.synth.{key} must be in [0, 1], got "
                                 f"{getattr(self, key)}.")
        if self.p_clean + self.p_cutout > 1.0:
            raise ValueError(f"config.synth.p_clean + config.synth.p_cutout must be at most 1, "
                             f"got {self.p_clean} + {self.p_cutout}.")
        lo, hi = self.threshold
        if not lo <= hi:
            raise ValueError(f"config.synth.threshold must be (low, high) with low <= high, got "
                             f"{self.threshold}.")
        lo, hi = self.cutout_size
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"config.synth.cutout_size must be (low, high) with 0 < low <= "
                             f"high <= 1, got {self.cutout_size}.")
        if not 1 <= self.augmenters <= 10:
            raise ValueError(f"config.synth.augmenters must be in 1..10, got "
                             f"{self.augmenters}.")

    @classmethod
    def from_config(cls, block: ml_collections.ConfigDict) -> "Spec":
        """The spec of a `config.synth` block (keys not of the spec, such as `textures`, are
        ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: tuple(v) if isinstance(v, list | tuple) else v
                  for k, v in block.items() if k in names}
        return cls(**values)


def _rectangle(key: jax.Array, shape: tuple[int, int],
               size: tuple[float, float]) -> jax.Array:
    h, w = shape
    k_size, k_pos = jax.random.split(key)
    frac = jax.random.uniform(k_size, (2,), minval=size[0], maxval=size[1])
    sides = jnp.maximum(jnp.round(frac * jnp.array([h, w])), 1.0).astype(jnp.int32)
    corner = jnp.floor(jax.random.uniform(k_pos, (2,)) * (jnp.array([h, w]) - sides + 1))
    corner = corner.astype(jnp.int32)
    rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    inside = ((rows >= corner[0]) & (rows < corner[0] + sides[0])
              & (cols >= corner[1]) & (cols < corner[1] + sides[1]))
    return inside.astype(jnp.float32)


def _one(key: jax.Array, image: jax.Array, source: jax.Array,
         spec: Spec) -> dict[str, jax.Array]:
    shape = image.shape[:2]
    k_rot, k_angle, k_path, k_perlin, k_opacity, k_cut = jax.random.split(key, 6)
    angle = jax.random.uniform(k_angle, (), minval=-spec.rotate_degrees,
                               maxval=spec.rotate_degrees)
    image = jnp.where(jax.random.bernoulli(k_rot, spec.rotate_p), rotate(image, angle), image)
    u = jax.random.uniform(k_path, ())
    cutout = u >= 1.0 - spec.p_cutout
    perlin = (u >= spec.p_clean) & ~cutout
    mask = jnp.where(cutout, _rectangle(k_cut, shape, spec.cutout_size),
                     jnp.where(perlin, perlin_mask(
                         k_perlin, shape, min_scale=spec.min_scale, max_scale=spec.max_scale,
                         rotate_degrees=spec.noise_rotate, threshold=spec.threshold), 0.0))
    if spec.focused:
        mask = mask * jnp.any(image != 0.0, axis=-1)
    lo, hi = BLENDS[spec.blend]
    # The code's 1 - 0.8 U[0, 1) lies in (0.2, 1]; U over [lo, hi) reversed gives the same.
    opacity = hi + lo - jax.random.uniform(k_opacity, (), minval=lo, maxval=hi)
    source = jnp.where(cutout, 1.0, source)
    opacity = jnp.where(cutout, 1.0, opacity)
    m = mask[..., None]
    augmented = image * (1.0 - m) + m * (opacity * source + (1.0 - opacity) * image)
    return {"image": image, "augmented": augmented, "mask": mask,
            "label": jnp.any(mask > 0).astype(jnp.int32),
            "path": jnp.where(cutout, 2, jnp.where(perlin, 1, 0))}


def synthesize(key: jax.Array, images: jax.Array, textures: jax.Array, spec: Spec,
               loop: str | None = None) -> dict[str, Any]:
    """DRAEM's training triple for a batch (module docstring).

    Args:
      key: one key for the batch (split per image).
      images: [B, H, W, 3] float normal images in [0, 1].
      textures: [B, H, W, 3] uint8 anomaly textures (one per image).
      spec: the synthesis's choices.
      loop: how the textures' augmenters run over the batch (`augment_batch`).

    Returns:
      {"image": the (possibly rotated) normal images, the reconstruction target;
       "augmented": the images with their anomalies; "mask": [B, H, W] float in {0, 1};
       "label": [B] int32, 1 where the mask is not empty; "path": [B] int32, the path drawn
       (0 clean, 1 Perlin, 2 cutout)}.
    """
    if textures.shape[:3] != images.shape[:3]:
        raise ValueError(f"textures {textures.shape} do not match images {images.shape}: both "
                         f"need the same batch and size.")
    keys = jax.random.split(key, images.shape[0])
    sources = augment_batch(keys, textures, spec.augmenters, loop) / 255.0
    return jax.vmap(lambda k, x, t: _one(k, x, t, spec))(keys, images, sources)


def augment_batch(keys: jax.Array, textures: jax.Array, count: int,
                  loop: str | None = None) -> jax.Array:
    """[B, H, W, 3] float textures in [0, 255], each augmented by `count` drawn augmenters
    (one key per image). `loop` "map" runs the images one after another, "vmap" together;
    None picks "map" on a CPU and "vmap" elsewhere. Both give the same values.

    Under vmap `lax.switch` computes all ten augmenters for every draw: on a CPU that is half a
    small model's step, and a loop that runs only the drawn three is six times faster. On an
    accelerator the ten run in parallel, and a loop over the batch would serialise it (and
    gather a data-parallel batch onto every device).
    """
    loop = loop or ("map" if jax.default_backend() == "cpu" else "vmap")
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {', '.join(LOOPS)}, got {loop!r}.")

    def one(k, t):
        return augment(jax.random.fold_in(k, 1), t.astype(jnp.float32), count)

    if loop == "map":
        return jax.lax.map(lambda kt: one(*kt), (keys, textures))
    return jax.vmap(one)(keys, textures)
