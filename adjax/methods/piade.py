"""PIADE, the Pyramidal Image Anomaly DEtector (Mishra 2021, ch. 5; Int. J. Neural Systems
2020): the SE-ResNet + pyramid-capsule network of `adjax.models.piade` trained and scored as a
reconstruction method (`adjax.methods.reconstruction`: MSE + perceptual - SSIM).

PIADE decodes one of its two instantiation vectors (`config.model.decode`): `first` (thesis:
the first vector in training, the longest at test) or `longest` (the authors' code: always the
longest).
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from adjax.config import check_choice
from adjax.methods.reconstruction import ReconstructionMethod
from adjax.models.piade import PIADE as PIADENet

DECODES = ("first", "longest")


@dataclasses.dataclass(frozen=True, eq=False)
class PIADE(ReconstructionMethod):
    """PIADE; built from a piade config."""

    network = PIADENet

    def __post_init__(self):
        super().__post_init__()
        check_choice("config.model.decode", self.config.model.decode, DECODES)

    def net_kwargs(self, x: jax.Array, train: bool) -> dict[str, Any]:
        """The vector to decode: the first in training under `first`, else the longest."""
        first = self.config.model.decode == "first" and train
        return {"decode_index": jnp.zeros((x.shape[0],), jnp.int32) if first else None}
