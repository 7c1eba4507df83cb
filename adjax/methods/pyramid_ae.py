"""The pyramidal auto-encoder of Mishra 2021, ch. 4 (`adjax.models.pyramid_ae`), trained and
scored as a reconstruction method (`adjax.methods.reconstruction`: MSE + perceptual in
training, MSE as the score, eq. 4.3)."""

import dataclasses

from adjax.methods.reconstruction import ReconstructionMethod
from adjax.models.pyramid_ae import PyramidAE


@dataclasses.dataclass(frozen=True, eq=False)
class PyramidalAE(ReconstructionMethod):
    """The pyramidal auto-encoder; built from a pyramid_ae config."""

    network = PyramidAE
